"""Keras callbacks of a training run: COCO evaluation, NaN stop, checkpoints that skip NaN epochs."""

from __future__ import annotations

import math

import keras
import tensorflow as tf
from absl import logging

from keras_retina import compat, evaluation
from keras_retina.training import rundir


class CocoEvaluationCallback(keras.callbacks.Callback):
    """Runs COCO evaluation after the first and last epochs of a run and every ``every_epochs`` epochs.

    Epochs are counted from the start of the run, not of this ``fit()``: a
    run resumed by ``BackupAndRestore`` evaluates its first epoch only if
    the schedule says so (``epoch`` is the absolute index Keras passes).

    Adds ``val_AP``, ``val_AP50``, ... to the epoch logs (so CSV and
    TensorBoard logs get them), draws the first validation batch's
    detections into TensorBoard (``image_log_dir``) and, with ``best_path``,
    saves the model there whenever the AP improves.

    Args:
        dataset: an evaluation pipeline (:meth:`keras_retina.data.run_data.RunData.pipeline`).
        coco_gt: its pycocotools ground truth.
        category_ids: the dataset's category id of each contiguous class.
        every_epochs: evaluate every this many epochs.
        best_path: where the best model is saved (with a ``.json`` note).
        class_names: for the TensorBoard picture.
        image_log_dir: TensorBoard directory of the picture; None for none.
        distributed_dataset: ``dataset`` distributed by the model's strategy
            (:meth:`keras_retina.data.run_data.RunData.distributed_pipeline`):
            evaluation then runs on every replica, each worker on its share
            of the images, the detections gathered
            (:func:`keras_retina.evaluation.predict_distributed`); None: on
            this device, over ``dataset``.

    Attributes:
        last_metrics: the metrics of the last evaluation
            (:func:`keras_retina.evaluation.coco_evaluate`).
    """

    #: The names it adds to an evaluated epoch's logs.
    LOG_NAMES = tuple(f"val_{name}" for name in evaluation.METRIC_NAMES[:6])

    def __init__(
        self,
        dataset,
        coco_gt,
        category_ids,
        every_epochs: int = 1,
        best_path: str | None = None,
        class_names=None,
        image_log_dir: str | None = None,
        distributed_dataset=None,
    ):
        super().__init__()
        self.distributed_dataset = distributed_dataset
        self.class_names = class_names
        self.image_writer = tf.summary.create_file_writer(image_log_dir) if image_log_dir else None
        self.dataset = dataset
        self.coco_gt = coco_gt
        self.category_ids = category_ids
        self.every_epochs = max(int(every_epochs), 1)
        self.best_path = best_path
        self.best_ap = rundir.read_best_ap(best_path)
        self.last_metrics: dict | None = None
        self.last_results: tuple[list, list] | None = None

    def on_epoch_end(self, epoch, logs=None):
        last = self.params and epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every_epochs and not last:
            return
        dataset = self.dataset if self.distributed_dataset is None else self.distributed_dataset
        results, image_ids = evaluation.predict_to_coco(self.model, dataset, self.category_ids, verbose=False)
        metrics = evaluation.coco_evaluate(self.coco_gt, results, image_ids=image_ids, verbose=False)
        self.last_metrics = metrics
        self.last_results = (results, image_ids)
        if logs is not None:
            for name in evaluation.METRIC_NAMES[:6]:
                logs[f"val_{name}"] = metrics[name]  # LOG_NAMES
        print(f"\nepoch {epoch + 1}: COCO AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}")
        if self.image_writer is not None:
            grid = evaluation.detection_grid(self.model, self.dataset, self.class_names)
            with self.image_writer.as_default():
                tf.summary.image("val_detections", grid[None], step=epoch + 1)
        if self.best_path and metrics["AP"] > self.best_ap:
            self.best_ap = metrics["AP"]
            rundir.save_checkpoint(self.model, self.best_path)  # whole or not at all
            rundir.write_best_ap(self.best_path, epoch + 1, metrics["AP"])


class ResumableCSVLogger(keras.callbacks.CSVLogger):
    """``keras.callbacks.CSVLogger`` whose columns are known before the first epoch ends.

    Keras' logger takes its columns from the first epoch's logs of each
    ``fit()``: a run whose first epoch is not evaluated would lose its
    ``val_AP``... columns, and a resumed one would write rows under a header
    with other columns (shifted). Here a new file's columns are the first
    logs' plus ``columns`` (the evaluation's, which come only every few
    epochs), and an appended file keeps its header's; a value an epoch
    lacks is written ``NA``.

    Args:
        filename: the CSV file.
        columns: names always in a new file's header, besides the first
            epoch's logs.
        **kwargs: ``keras.callbacks.CSVLogger``'s (``separator``, ``append``).

    Example:
        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "log.csv")
        >>> open(path, "w").write("epoch,loss,val_AP\\n0,1.0,0.5\\n") and None
        >>> logger = ResumableCSVLogger(path, append=True)
        >>> logger.on_train_begin(); logger.on_epoch_end(1, {"loss": 0.5}); logger.on_train_end()
        >>> open(path).read().splitlines()[-1]
        '1,0.5,NA'
        >>> fresh = ResumableCSVLogger(os.path.join(tempfile.mkdtemp(), "log.csv"), columns=["val_AP"])
        >>> fresh.on_train_begin(); fresh.on_epoch_end(0, {"loss": 0.5}); fresh.on_train_end()
        >>> open(fresh.filename).read().splitlines()
        ['epoch,loss,val_AP', '0,0.5,NA']
    """

    def __init__(self, filename: str, columns=(), **kwargs):
        super().__init__(filename, **kwargs)
        self.columns = tuple(columns)

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None and self.columns:
            self.keys = sorted(set(logs or {}) | set(self.columns))
        super().on_epoch_end(epoch, logs)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.append and not self.append_header:  # the file has a header: keep its columns
            with tf.io.gfile.GFile(self.filename, "r") as f:
                header = f.readline().rstrip("\r\n").split(self.sep)
            self.keys = [key for key in header if key != "epoch"]


class TerminateOnNaNKeepingLast(keras.callbacks.Callback):
    """Stops training at the first NaN or inf batch loss, keeping the last good checkpoint.

    Used with :class:`FiniteModelCheckpoint` and :class:`FiniteBackupAndRestore`,
    which skip the save at the end of an epoch whose loss is not finite, so
    ``checkpoint_path`` keeps the state of the last good epoch.

    Attributes:
        stopped_at: the batch at which the loss stopped being finite, or None.
    """

    def __init__(self, checkpoint_path: str):
        super().__init__()
        self.checkpoint_path = checkpoint_path
        self.stopped_at = None

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.stopped_at = batch
            self.model.stop_training = True
            logging.error(
                "Loss became %s at batch %d: training stopped. The last good state is %s.",
                loss,
                batch,
                self.checkpoint_path,
            )


class _SaveOnlyFiniteEpochs:
    """Mixin for saving callbacks: no save at the end of an epoch whose loss is NaN or inf."""

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            logging.warning("%s: not saving epoch %d, its loss is %s.", type(self).__name__, epoch + 1, loss)
            return
        super().on_epoch_end(epoch, logs)


class AtomicModelCheckpoint(keras.callbacks.Callback):
    """Saves the whole model (``.keras``) at the end of every epoch, whole or not at all, keeping the epoch before.

    Keras' ``ModelCheckpoint`` writes the file in place, so a process killed
    or a disk filling up mid-save leaves a truncated ``latest.keras``; here
    each save goes through :func:`keras_retina.training.rundir.save_checkpoint`
    (a file beside it, renamed over it), and the file it replaces is
    renamed to ``previous_path``.

    Args:
        filepath: the ``.keras`` file written every epoch.
        previous_path: where the epoch before's file is kept; None: not kept.

    Example:
        >>> import os, tempfile
        >>> run = tempfile.mkdtemp()
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> saver = AtomicModelCheckpoint(f"{run}/latest.keras", previous_path=f"{run}/previous.keras")
        >>> _ = model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=2, verbose=0, callbacks=[saver])
        >>> sorted(os.listdir(run))
        ['latest.keras', 'previous.keras']
    """

    def __init__(self, filepath: str, previous_path: str | None = None):
        super().__init__()
        self.filepath = filepath
        self.previous_path = previous_path

    def on_epoch_end(self, epoch, logs=None):
        rundir.save_checkpoint(self.model, self.filepath, previous=self.previous_path)


class FiniteModelCheckpoint(_SaveOnlyFiniteEpochs, AtomicModelCheckpoint):
    """:class:`AtomicModelCheckpoint` that never saves a NaN/inf epoch."""


class FiniteBackupAndRestore(_SaveOnlyFiniteEpochs, compat.AtomicBackupSave, keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` that never backs up a NaN/inf epoch.

    On a local disk each backup is written beside the previous one and then
    renamed over it (:class:`keras_retina.compat.AtomicBackupSave`), so a
    process killed while saving leaves the previous backup whole.
    """
