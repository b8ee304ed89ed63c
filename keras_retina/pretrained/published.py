"""Published COCO checkpoints by name: download on request, check the hash, convert once, cache."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import tempfile

import keras
from absl import logging

from keras_retina.pretrained import torchvision as tv


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A published checkpoint: where it is, what it converts to.

    Attributes:
        url: the file's address.
        version: its torchvision RetinaNet version (``"v1"`` or ``"v2"``).
        sha256_prefix: leading hex digits of the file's SHA-256, as in
            torchvision's file names (``...-eeacb38b.pth``).
        coco_ap: COCO val2017 box AP that torchvision reports for it.
    """

    url: str
    version: str
    sha256_prefix: str
    coco_ap: float


#: Names accepted by :func:`load` (and by ``main.py --init_weights``).
CHECKPOINTS = {
    "torchvision_v1_coco": Checkpoint(
        url="https://download.pytorch.org/models/retinanet_resnet50_fpn_coco-eeacb38b.pth",
        version="v1",
        sha256_prefix="eeacb38b",
        coco_ap=36.4,
    ),
    "torchvision_v2_coco": Checkpoint(
        url="https://download.pytorch.org/models/retinanet_resnet50_fpn_v2_coco-5905b1c5.pth",
        version="v2",
        sha256_prefix="5905b1c5",
        coco_ap=41.5,
    ),
}


def default_cache_dir() -> str:
    """``$KERAS_RETINA_CACHE``, else ``~/.keras/keras_retina``."""
    return os.environ.get("KERAS_RETINA_CACHE") or os.path.join(os.path.expanduser("~"), ".keras", "keras_retina")


def load(name: str, cache_dir: str | None = None):
    """A published COCO RetinaNet as a :class:`keras_retina.RetinaNet`, downloaded only now.

    The first call downloads torchvision's file (about 140 MB, with a
    progress bar), checks its SHA-256 against the prefix torchvision
    publishes, converts it with :func:`keras_retina.pretrained.from_torchvision`
    and keeps both the file and the converted ``<name>.keras`` in
    ``cache_dir``; later calls load the ``.keras`` file. Nothing is
    downloaded on import, in tests or in the default run.

    Class ``i`` of the returned model is COCO category id ``i``, named by
    :data:`keras_retina.pretrained.COCO_CATEGORIES` (91 classes).

    Args:
        name: a key of :data:`CHECKPOINTS`: ``"torchvision_v1_coco"`` (COCO
            AP 36.4) or ``"torchvision_v2_coco"`` (41.5).
        cache_dir: where files are kept (default :func:`default_cache_dir`).

    Returns:
        the converted ``RetinaNet``.

    Raises:
        ValueError: for an unknown ``name``, or when the downloaded file's
            hash does not match (the file is deleted).

    Example:
        >>> sorted(CHECKPOINTS)   # kr.pretrained.load("torchvision_v2_coco") downloads one
        ['torchvision_v1_coco', 'torchvision_v2_coco']
    """
    checkpoint = checkpoint_info(name)
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    converted = os.path.join(cache_dir, f"{name}.keras")
    if os.path.exists(converted):
        return keras.saving.load_model(converted, compile=False)
    model = tv.from_torchvision(download(name, cache_dir), version=checkpoint.version)
    # Written under a temporary name first: an interrupted save leaves no half file to load.
    handle, partial = tempfile.mkstemp(suffix=".keras", dir=cache_dir)
    os.close(handle)
    model.save(partial)
    os.replace(partial, converted)
    logging.info("Converted %s to %s.", name, converted)
    return model


def checkpoint_info(name: str) -> Checkpoint:
    """The :class:`Checkpoint` called ``name``; an unknown name lists the known ones."""
    if name not in CHECKPOINTS:
        raise ValueError(f"Unknown published checkpoint {name!r}: expected one of {sorted(CHECKPOINTS)}.")
    return CHECKPOINTS[name]


#: Seconds a download may wait for the server (connecting, or between two reads) before it is refused.
DOWNLOAD_TIMEOUT_S = 20.0


class WeightsUnavailableError(ConnectionError):
    """A published checkpoint could not be downloaded (offline, a firewall, a proxy); the message says what to pass instead."""


def download(name: str, cache_dir: str | None = None) -> str:
    """Downloads checkpoint ``name``'s file into ``cache_dir`` (once) and returns its path, hash checked.

    Raises:
        WeightsUnavailableError: within :data:`DOWNLOAD_TIMEOUT_S` seconds
            when the server cannot be reached; the message names the file
            to fetch elsewhere and the flags that do without it.
    """
    checkpoint = checkpoint_info(name)
    cache_dir = cache_dir or default_cache_dir()
    filename = os.path.basename(checkpoint.url)
    previous_timeout = socket.getdefaulttimeout()
    # keras.utils.get_file has no timeout argument; urllib takes the socket default.
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        path = keras.utils.get_file(fname=filename, origin=checkpoint.url, cache_dir=cache_dir, cache_subdir=".")
    except Exception as error:  # get_file wraps URLError / HTTPError / timeouts in a bare Exception
        raise WeightsUnavailableError(
            f"Could not download {name} from {checkpoint.url} ({error}). Offline or behind a firewall: "
            f"fetch that file elsewhere and pass --init_weights=PATH (the .pth file), or copy it to "
            f"{os.path.join(cache_dir, filename)}; or train without these weights: --init_weights=none "
            "--backbone_weights=none (from scratch: far weaker), or --experiment=cpu_small (a small model "
            "from weights shipped in the package)."
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    digest = sha256(path)
    if not digest.startswith(checkpoint.sha256_prefix):
        os.remove(path)
        raise ValueError(
            f"{path}: SHA-256 {digest} does not start with {checkpoint.sha256_prefix} as published for "
            f"{name} ({checkpoint.url}); the file was deleted. Download it again."
        )
    return path


def sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
