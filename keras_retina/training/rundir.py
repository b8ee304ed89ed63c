"""The run directory: what a training run writes, and reading it back.

::

    <model_dir>/
      config.json                 the resolved ExperimentConfig
      classes.json                contiguous class -> dataset category id, name
      checkpoints/latest.keras    every epoch; previous.keras the epoch before; best.keras (+ .json) best val_AP
      backup/                     BackupAndRestore state while a run is unfinished (and the epoch before's)
      train_log.csv               one row per epoch
      logs/                       TensorBoard
      metrics.json                the last COCO evaluation
      val_detections.json         its detections (COCO results, with the images evaluated)
      timing.json                 python main.py: seconds per stage, and the machine
      workers/<type>_<id>/        what the non-chief workers of a multi-worker run write
      .lock                       held while a process trains here (which pid, on which host)
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import zipfile

import keras
import tensorflow as tf
from absl import logging

from keras_retina import config as config_lib
from keras_retina.training import optimizer  # noqa: F401 (registers the schedule a checkpoint's optimizer names)

CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"
LATEST_CHECKPOINT = "checkpoints/latest.keras"
BEST_CHECKPOINT = "checkpoints/best.keras"
PREVIOUS_CHECKPOINT = "checkpoints/previous.keras"
BACKUP_DIR = "backup"
TRAIN_LOG = "train_log.csv"
METRICS_FILE = "metrics.json"
DETECTIONS_FILE = "val_detections.json"
LOCK_FILE = ".lock"


class RunDirInUseError(RuntimeError):
    """Another process is training into this run directory."""


class UnreadableCheckpointError(ValueError):
    """No readable checkpoint (or backup) is left in a run directory; the message names each file tried and why."""


@contextlib.contextmanager
def claim(model_dir: str):
    """Holds ``model_dir`` for one trainer; a second process that tries gets :class:`RunDirInUseError`.

    Two trainers in one directory (a rerun started while the first still
    runs, or an orphan left by killing a parent) would both write
    ``latest.keras``, ``backup/`` and ``train_log.csv``: the checkpoint is
    then one run's, the log both. The lock is an advisory ``flock`` on
    ``<model_dir>/.lock``, which the operating system drops when its
    process ends, however it ends: a killed run leaves no stale lock. The
    file says who holds it (pid and host), for the error. Where ``fcntl``
    is missing (Windows) nothing is locked. ``model_dir`` must exist.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d, claim(d):
        ...     try:
        ...         with claim(d):
        ...             pass
        ...     except RunDirInUseError as e:
        ...         print("refused:", "is being trained by" in str(e))
        refused: True
    """
    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # no flock on this platform
        yield
        return
    path = os.path.join(model_dir, LOCK_FILE)
    handle = open(path, "a+")  # noqa: SIM115 (held for the whole block)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "owner unknown"
        handle.close()
        raise RunDirInUseError(
            f"{model_dir} is being trained by another process ({owner}, from {path}). Wait for it, stop it, "
            "or pass another --model_dir."
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing drops the flock


def worker_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """``model_dir`` for the chief (or a single worker), ``model_dir/workers/<type>_<id>`` for the others.

    Under MultiWorkerMirroredStrategy only the chief writes the run
    directory; the other workers write their own copies (their backups too,
    so that every worker can resume).

    Example:
        >>> worker_dir("runs/shapes", tf.distribute.get_strategy())
        'runs/shapes'
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return model_dir
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_dir(model_dir, resolver.task_type, resolver.task_id, has_chief)


def task_dir(model_dir: str, task_type: str | None, task_id: int | None, has_chief: bool) -> str:
    """Where task ``(task_type, task_id)`` of a cluster writes: the chief ``model_dir``, the others a sub-directory.

    The chief is the ``chief`` task, or worker 0 when the cluster has none.

    Example:
        >>> task_dir("runs/x", "worker", 0, has_chief=False), task_dir("runs/x", "worker", 0, has_chief=True)
        ('runs/x', 'runs/x/workers/worker_0')
    """
    if task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and not has_chief):
        return model_dir
    return os.path.join(model_dir, "workers", f"{task_type}_{task_id}")


def write_config(model_dir: str, config: config_lib.ExperimentConfig) -> None:
    """Writes the resolved config as ``config.json``."""
    config_lib.write_json(config, os.path.join(model_dir, CONFIG_FILE))


def read_config(model_dir: str) -> config_lib.ExperimentConfig | None:
    """The ``config.json`` of a run directory, or ``None`` if it has none."""
    path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return config_lib.from_dict(json.load(f))


def write_classes(model_dir: str, class_names, category_ids) -> None:
    """Writes ``classes.json``: contiguous class → (dataset category id, name).

    Example:
        >>> import tempfile
        >>> run = tempfile.mkdtemp()
        >>> write_classes(run, ("cat", "dog"), (17, 18)); read_classes(run)
        (('cat', 'dog'), (17, 18))
    """
    with open(os.path.join(model_dir, CLASSES_FILE), "w") as f:
        json.dump({"class_names": list(class_names), "category_ids": [int(c) for c in category_ids]}, f, indent=2)


def write_detections(model_dir: str, results: list[dict], image_ids) -> None:
    """Writes ``val_detections.json``: the last evaluation's COCO results and the ids of the images it saw.

    ``results`` are :func:`keras_retina.evaluation.detections_to_coco`
    entries (``image_id``, ``category_id``, ``bbox`` xywh in original pixels,
    ``score``); the file's ``"results"`` list is what
    ``pycocotools.coco.COCO.loadRes`` takes.

    Example:
        >>> import tempfile
        >>> run = tempfile.mkdtemp()
        >>> write_detections(run, [{"image_id": 3, "category_id": 1, "bbox": [1.0, 2.0, 3.0, 4.0], "score": 0.9}], [3, 4])
        >>> read_detections(run)[1]
        [3, 4]
    """
    with open(os.path.join(model_dir, DETECTIONS_FILE), "w") as f:
        json.dump({"image_ids": [int(i) for i in image_ids], "results": results}, f)


def read_detections(model_dir: str) -> tuple[list[dict], list[int]]:
    """``(results, image_ids)`` from a run directory's ``val_detections.json`` (:func:`write_detections`)."""
    path = os.path.join(model_dir, DETECTIONS_FILE)
    with open(path) as f:
        values = json.load(f)
    if not isinstance(values, dict) or not isinstance(values.get("results"), list) or not isinstance(
        values.get("image_ids"), list
    ):
        raise ValueError(f"{path}: expected an object with lists 'results' and 'image_ids'.")
    return values["results"], [int(i) for i in values["image_ids"]]


def read_classes(model_dir: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``(class_names, category_ids)`` from a run directory's ``classes.json``: the classes the model was trained on."""
    path = os.path.join(model_dir, CLASSES_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No {CLASSES_FILE} in {model_dir}: train first (--mode=train) or check --model_dir.")
    with open(path) as f:
        values = json.load(f)
    return tuple(values["class_names"]), tuple(int(c) for c in values["category_ids"])


def save_checkpoint(model: keras.Model, path: str, previous: str | None = None) -> None:
    """Saves ``model`` to the ``.keras`` file ``path`` whole or not at all; the file it replaces becomes ``previous``.

    Keras writes a ``.keras`` zip in place: a process killed or a disk full
    mid-save would leave a truncated ``path``. Here the model is written to
    ``.incoming-<name>`` beside it and renamed over ``path``
    (``os.replace`` is atomic on one file system); a failed write removes
    the partial file and leaves ``path`` as it was. With ``previous``, the
    old ``path`` is renamed there first (no copy), so the epoch before is
    kept as well: :func:`load_trained_model` falls back to it. Remote paths
    (``gs://``...) are written by Keras directly.

    Example:
        >>> import tempfile
        >>> run = tempfile.mkdtemp()
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> save_checkpoint(model, os.path.join(run, "latest.keras"), previous=os.path.join(run, "previous.keras"))
        >>> save_checkpoint(model, os.path.join(run, "latest.keras"), previous=os.path.join(run, "previous.keras"))
        >>> sorted(os.listdir(run))
        ['latest.keras', 'previous.keras']
    """
    if "://" in path:
        model.save(path, overwrite=True)
        return
    directory, name = os.path.split(path)
    incoming = os.path.join(directory, f".incoming-{name}")  # still ends in .keras, as Keras requires
    try:
        model.save(incoming, overwrite=True)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(incoming)
        raise
    if previous and os.path.exists(path):
        os.replace(path, previous)
    os.replace(incoming, path)


def keras_file_problem(path: str) -> str | None:
    """Why the ``.keras`` file ``path`` cannot be loaded (a short reason), or ``None`` if it is a whole zip archive.

    Checks the archive (every member's CRC), not the model inside: Keras
    itself says only "File not found" for a truncated or corrupt file.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "latest.keras")
        >>> open(path, "wb").close(); keras_file_problem(path)
        'empty file (0 bytes)'
    """
    if not os.path.exists(path):
        return "missing"
    size = os.path.getsize(path)
    if size == 0:
        return "empty file (0 bytes)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"not a whole .keras zip archive ({size} bytes; {error})"
    if bad is not None:
        return f"corrupt member {bad} in the .keras zip archive"
    return None


def load_trained_model(model_dir: str, which: str = "latest") -> keras.Model:
    """Loads ``checkpoints/<which>.keras`` (``"latest"`` or ``"best"``) from a run directory, or the last good one.

    A checkpoint that cannot be loaded (truncated, empty, overwritten with
    other bytes) is skipped with a warning that names it, why, and the file
    used instead; the order tried is ``latest.keras``, ``previous.keras``
    (the epoch before), ``best.keras`` for ``"latest"``, and ``best.keras``
    first for ``"best"``.

    Raises:
        FileNotFoundError: the run directory has no checkpoint at all.
        UnreadableCheckpointError: none of its checkpoints can be loaded
            (the message names each file tried and why).
    """
    first = LATEST_CHECKPOINT if which == "latest" else BEST_CHECKPOINT
    order = [first] + [name for name in (LATEST_CHECKPOINT, PREVIOUS_CHECKPOINT, BEST_CHECKPOINT) if name != first]
    paths = [os.path.join(model_dir, name) for name in order]
    if not any(os.path.exists(path) for path in paths):
        raise FileNotFoundError(f"No checkpoint at {paths[0]}: train first (--mode=train) or check --model_dir.")
    tried = []
    for path in paths:
        if not os.path.exists(path):
            continue
        problem = keras_file_problem(path)
        if problem is None:
            try:
                model = keras.saving.load_model(path)
            except Exception as error:  # noqa: BLE001 (any failure: try the next checkpoint, the reason is reported)
                problem = f"{type(error).__name__}: {error}"
        if problem is not None:
            logging.warning("Checkpoint %s cannot be loaded: %s.", path, problem)
            tried.append(f"{path}: {problem}")
            continue
        if path != paths[0]:
            skipped = "; ".join(tried) if tried else f"{paths[0]}: missing"
            logging.warning("Using %s instead of %s (%s).", path, paths[0], skipped)
        return model
    raise UnreadableCheckpointError(
        f"No readable checkpoint in {model_dir}: " + "; ".join(tried) + ". Train again (--mode=train) into a new "
        "--model_dir, or copy a good .keras file to " + paths[0] + "."
    )


def read_best_ap(best_path: str | None) -> float:
    """AP of the best checkpoint so far (its ``.json`` note), -1 if none, so a resumed run keeps the best."""
    if best_path and os.path.exists(best_path + ".json"):
        with open(best_path + ".json") as f:
            return float(json.load(f)["AP"])
    return -1.0


def write_best_ap(best_path: str, epoch: int, ap: float) -> None:
    """Writes the note beside ``best.keras``: which epoch it is and its AP."""
    with open(best_path + ".json", "w") as f:
        json.dump({"epoch": int(epoch), "AP": float(ap)}, f)


def backup_epoch(backup_dir: str) -> int:
    """Epochs already done according to a BackupAndRestore directory (0 if none)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))


BACKUP_WEIGHTS = "latest.weights.h5"
BACKUP_METADATA = "training_metadata.json"
#: The attribute of a backup weights file that holds its epoch
#: (written by :class:`keras_retina.compat.AtomicBackupSave`).
BACKUP_EPOCH_ATTRIBUTE = "keras_retina_epoch"


def _backup_weights_problem(path: str) -> str | None:
    """Why the HDF5 weights file ``path`` is unreadable (every dataset is read), or ``None``."""
    import h5py  # noqa: PLC0415 (Keras' own dependency; only needed here)

    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    try:
        with h5py.File(path, "r") as f:
            f.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
    except Exception as error:  # noqa: BLE001 (h5py raises OSError, KeyError, ValueError... for damaged files)
        return f"{type(error).__name__}: {error}"
    return None


def _backup_epoch_of(weights: str, metadata: str) -> int | None:
    """The epoch of a backup weights file: its own attribute, else its metadata file's (older backups), else None."""
    import h5py  # noqa: PLC0415

    with h5py.File(weights, "r") as f:
        if BACKUP_EPOCH_ATTRIBUTE in f.attrs:
            return int(f.attrs[BACKUP_EPOCH_ATTRIBUTE])
    try:
        with open(metadata) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_backup(backup_dir: str) -> int:
    """Makes ``backup_dir`` resumable from its last readable backup; returns the epochs it holds (0: none).

    :class:`keras_retina.compat.AtomicBackupSave` keeps the last backup
    (``latest.weights.h5``) and the one before (``latest.weights.h5.bkp``),
    each weights file carrying its epoch. If the last is unreadable
    (truncated, empty, other bytes) or lacks its metadata, the one before
    takes its place, with a warning naming the bad file: the run repeats
    one epoch rather than failing with an HDF5 traceback. The metadata file
    Keras reads (``training_metadata.json``) is rewritten to match the
    weights used.

    Raises:
        UnreadableCheckpointError: backup files exist but none is readable
            (the message names each and why, and how to start afresh).

    Example:
        >>> import tempfile
        >>> check_backup(tempfile.mkdtemp())   # no backup: a fresh start
        0
    """
    weights = os.path.join(backup_dir, BACKUP_WEIGHTS)
    metadata = os.path.join(backup_dir, BACKUP_METADATA)
    candidates = [(weights, metadata), (weights + ".bkp", metadata + ".bkp")]
    if not any(os.path.exists(path) for pair in candidates for path in pair):
        return 0
    tried = []
    for path, path_metadata in candidates:
        if not os.path.exists(path):
            tried.append(f"{path}: missing")
            continue
        problem = _backup_weights_problem(path)
        epoch = None if problem else _backup_epoch_of(path, path_metadata)
        if problem is None and epoch is None:
            problem = f"its epoch is unknown ({path_metadata} missing or unreadable)"
        if problem is not None:
            logging.warning("Backup %s cannot be resumed from: %s.", path, problem)
            tried.append(f"{path}: {problem}")
            continue
        if path != weights:
            logging.warning("Resuming from %s (after epoch %d) instead of %s.", path, epoch, weights)
            os.replace(path, weights)
        incoming = metadata + ".incoming"
        with open(incoming, "w") as f:
            json.dump({"epoch": epoch, "batch": 0}, f)
        os.replace(incoming, metadata)
        return epoch
    raise UnreadableCheckpointError(
        f"No readable backup to resume from in {backup_dir}: " + "; ".join(tried) + f". Remove {backup_dir} to "
        "start the run afresh (the last finished epoch's model is checkpoints/latest.keras beside it)."
    )


def trim_log(path: str, resume_epoch: int) -> None:
    """Drops rows of epochs >= ``resume_epoch`` from a CSVLogger file: those epochs run again.

    A process killed after logging an epoch but before its backup was saved
    resumes at that epoch; without this, the epoch would be logged twice. A
    fresh start (``resume_epoch`` 0) keeps only the header.
    """
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().splitlines()
    kept = lines[:1] + [line for line in lines[1:] if line and int(line.split(",")[0]) < resume_epoch]
    if len(kept) < len(lines):
        logging.info("%s: dropped %d row(s) of epochs to be run again.", path, len(lines) - len(kept))
        with open(path, "w") as f:
            f.write("\n".join(kept) + "\n")
