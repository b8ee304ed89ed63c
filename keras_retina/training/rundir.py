"""The run directory: what a training run writes, and reading it back.

::

    <model_dir>/
      config.json                 the resolved ExperimentConfig
      classes.json                contiguous class -> dataset category id, name
      checkpoints/latest.keras    every epoch; best.keras (+ .json) best val_AP
      backup/                     BackupAndRestore state while a run is unfinished
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

import keras
import tensorflow as tf
from absl import logging

from keras_retina import config as config_lib
from keras_retina.training import optimizer  # noqa: F401 (registers the schedule a checkpoint's optimizer names)

CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"
LATEST_CHECKPOINT = "checkpoints/latest.keras"
BEST_CHECKPOINT = "checkpoints/best.keras"
BACKUP_DIR = "backup"
TRAIN_LOG = "train_log.csv"
METRICS_FILE = "metrics.json"
DETECTIONS_FILE = "val_detections.json"
LOCK_FILE = ".lock"


class RunDirInUseError(RuntimeError):
    """Another process is training into this run directory."""


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


def load_trained_model(model_dir: str, which: str = "latest") -> keras.Model:
    """Loads ``checkpoints/<which>.keras`` (``"latest"`` or ``"best"``) from a run directory."""
    path = os.path.join(model_dir, LATEST_CHECKPOINT if which == "latest" else BEST_CHECKPOINT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path}: train first (--mode=train) or check --model_dir.")
    return keras.saving.load_model(path)


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
