"""Training and evaluation runs: strategy, data, model, optimizer, callbacks.

Config objects stop here: everything below this module takes plain arguments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import weakref
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from pycocotools.coco import COCO

from keras_retina import config as config_lib
from keras_retina import compat, evaluation, visualize
from keras_retina.data.coco_json import CocoJsonSource
from keras_retina.data.pipeline import make_pipeline, to_original_pixels
from keras_retina.data.shapes import make_shapes_splits
from keras_retina.data.tfds_source import COCO_CATEGORY_IDS, tfds_class_names, tfds_dataset
from keras_retina.losses import FocalLoss
from keras_retina.model import RetinaNet

CONFIG_FILE = "config.json"
LATEST_CHECKPOINT = "checkpoints/latest.keras"
BEST_CHECKPOINT = "checkpoints/best.keras"


# ----------------------------------------------------------------- strategy
def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns the ``tf.distribute`` strategy called ``name``.

    ``auto``: MirroredStrategy over all visible GPUs when there are several,
    else the one device (GPU if any, else CPU). ``multi_worker`` reads the
    cluster from ``TF_CONFIG`` and must be created before any other
    TensorFlow op runs. ``tpu`` resolves the local TPU.

    Example:
        >>> strategy = make_strategy("auto")
        >>> with strategy.scope(): model = RetinaNet(num_classes=80)
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"strategy must be one of auto, one_device, mirrored, multi_worker, tpu; got {name!r}."
    )


def set_mixed_precision(name: str) -> None:
    """Sets Keras' global dtype policy: ``none``, ``float16`` or ``bfloat16``."""
    policies = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
    if name not in policies:
        raise ValueError(f"mixed_precision must be one of {sorted(policies)}, got {name!r}.")
    keras.config.set_dtype_policy(policies[name])


# --------------------------------------------------------------- optimizer
@keras.saving.register_keras_serializable(package="keras_retina")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then the rate divided by 10 at each milestone (Detectron's schedule).

    ``lr(step) = base * (factor + (1 - factor) * step / warmup_steps)`` during
    warm-up, then ``base * 0.1 ** k`` after ``k`` milestones.

    Args:
        base_learning_rate: peak rate (0.01 at batch 16 in the paper).
        milestones: steps at which the rate drops ×0.1 (60k, 80k of 90k).
        warmup_steps: length of the warm-up in steps.
        warmup_factor: rate at step 0 as a fraction of the base.

    Example:
        >>> schedule = WarmupStepDecay(0.01, milestones=(60000, 80000), warmup_steps=500)
        >>> float(schedule(70000))
        0.001
    """

    # Hand-written: Keras' schedules have warm-up only with cosine decay, and
    # PiecewiseConstantDecay has no warm-up.
    def __init__(
        self,
        base_learning_rate: float,
        milestones: Sequence[int] = (),
        warmup_steps: int = 0,
        warmup_factor: float = 1.0 / 3.0,
    ):
        self.base_learning_rate = float(base_learning_rate)
        self.milestones = tuple(int(m) for m in milestones)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rate = keras.ops.convert_to_tensor(self.base_learning_rate, "float32")
        for milestone in self.milestones:
            rate = keras.ops.where(step >= milestone, rate * 0.1, rate)
        if self.warmup_steps > 0:
            progress = keras.ops.minimum(step / self.warmup_steps, 1.0)
            rate = rate * (self.warmup_factor + (1.0 - self.warmup_factor) * progress)
        return rate

    def get_config(self) -> dict:
        return {
            "base_learning_rate": self.base_learning_rate,
            "milestones": self.milestones,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
        }


def build_optimizer(train: config_lib.TrainConfig, total_steps: int) -> keras.optimizers.Optimizer:
    """SGD with momentum (or Adam/AdamW), weight decay off for biases and norms, the paper's schedule.

    Keras applies weight decay decoupled from the gradient (``w -= lr * wd * w``),
    which for SGD matches the paper's L2 penalty up to its interaction
    with momentum. Under several replicas ``clipnorm`` clips each replica's
    gradient before the all-reduce (Keras' behaviour).

    Args:
        train: the training config (learning rate, momentum, decay, warm-up...).
        total_steps: planned optimizer steps; milestones are fractions of it.

    Returns:
        a ``keras.optimizers.Optimizer`` with a :class:`WarmupStepDecay` schedule.

    Example:
        >>> build_optimizer(TrainConfig(), total_steps=90000)._learning_rate.milestones
        (60000, 80000)
    """
    schedule = WarmupStepDecay(
        train.learning_rate,
        milestones=tuple(int(round(f * total_steps)) for f in train.decay_fractions),
        warmup_steps=min(train.warmup_steps, max(total_steps // 10, 1)),
        warmup_factor=train.warmup_factor,
    )
    common = dict(learning_rate=schedule, weight_decay=train.weight_decay or None, clipnorm=train.clipnorm)
    if train.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(momentum=train.momentum, **common)
    elif train.optimizer == "adam":
        optimizer = keras.optimizers.Adam(**common)
    else:
        optimizer = keras.optimizers.AdamW(**common)
    if train.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


# --------------------------------------------------------------------- data
@dataclasses.dataclass
class DataBundle:
    """What a run needs from its data: pipelines, class names, ids and ground truth."""

    train: tf.data.Dataset | None
    val: tf.data.Dataset
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    num_train_images: int | None
    coco_gt: object  # pycocotools COCO of the validation split
    val_annotation_file: str | None = None
    sources: dict = dataclasses.field(default_factory=dict)  # split -> CocoJsonSource


def _coco_files(config: config_lib.ExperimentConfig) -> dict:
    """``{"train": (annotations, images), "val": (...)}`` for shapes and coco_json (shapes are written first)."""
    data = config.data
    if data.dataset == "shapes":
        splits = make_shapes_splits(
            data.shapes_dir,
            num_train=data.shapes_num_train,
            num_val=data.shapes_num_val,
            seed=data.shapes_seed,
            image_size=(data.shapes_image_size, data.shapes_image_size),
        )
        return {name: (files.annotation_file, files.image_dir) for name, files in splits.items()}
    return {
        "train": (data.train_annotations, data.train_images),
        "val": (data.val_annotations, data.val_images),
    }


def build_raw(config: config_lib.ExperimentConfig, split: str) -> tf.data.Dataset:
    """Raw examples of the ``"train"`` or ``"val"`` split of the configured dataset."""
    data = config.data
    if data.dataset.startswith("tfds:"):
        name = data.dataset.split(":", 1)[1]
        return tfds_dataset(name, data.train_split if split == "train" else data.val_split, data_dir=data.tfds_data_dir)
    return CocoJsonSource(*_coco_files(config)[split], skip_invalid=data.skip_invalid).dataset()


def build_data(config: config_lib.ExperimentConfig, training: bool = True, resume_epoch: int = 0) -> DataBundle:
    """Builds the training and validation pipelines named by ``config.data``.

    ``shapes`` writes the synthetic dataset first (cached on disk);
    ``coco_json`` reads the user's files; ``tfds:<name>`` loads through
    tensorflow-datasets. Validation ground truth for COCOeval is the
    validation annotation file, or for TFDS a COCO object built from the
    split itself (box areas stand in for mask areas). A run resumed at
    ``resume_epoch`` draws a different shuffle and augmentation sequence
    than its first start (else it would replay the first epochs' draws).
    """
    data = config.data
    seed = config.train.seed + 1_000_003 * int(resume_epoch)
    if data.dataset in ("shapes", "coco_json"):
        files = _coco_files(config)
        val_source = CocoJsonSource(*files["val"], skip_invalid=data.skip_invalid)
        train_source = CocoJsonSource(*files["train"], skip_invalid=data.skip_invalid) if training else None
        if train_source is not None and tuple(train_source.category_ids) != tuple(val_source.category_ids):
            raise ValueError(
                f"Training categories {train_source.category_ids} ({files['train'][0]}) differ from "
                f"validation categories {val_source.category_ids} ({files['val'][0]})."
            )
        raw_train = train_source.dataset(shuffle=True, seed=seed) if train_source else None
        raw_val = val_source.dataset()
        class_names = tuple(val_source.class_names)
        category_ids = tuple(int(c) for c in val_source.category_ids)
        num_train = train_source.num_images if train_source else None
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(files["val"][0])
        val_annotation_file = files["val"][0]
        sources = {"val": val_source, **({"train": train_source} if train_source else {})}
    else:
        name = data.dataset.split(":", 1)[1]
        raw_train = (
            tfds_dataset(name, data.train_split, data_dir=data.tfds_data_dir, shuffle_files=True)
            if training
            else None
        )
        raw_val = build_raw(config, "val")
        class_names = tuple(tfds_class_names(name, data_dir=data.tfds_data_dir))
        # COCO's own ids, so that exported and predicted results score against
        # the official annotation files; other datasets use their label ids.
        category_ids = COCO_CATEGORY_IDS if name.startswith("coco/") else tuple(range(len(class_names)))
        num_train = None
        coco_gt = evaluation.coco_from_raw_dataset(raw_val, class_names, category_ids)
        val_annotation_file = None
        sources = {}

    train_pipeline = None
    if raw_train is not None:
        train_pipeline = make_pipeline(
            raw_train.repeat(),
            image_size=data.image_size,
            batch_size=data.batch_size,
            training=True,
            max_boxes=data.max_boxes,
            seed=seed,
            scale_jitter=data.scale_jitter,
            horizontal_flip=data.horizontal_flip,
        )
    val_pipeline = make_pipeline(
        raw_val, image_size=data.image_size, batch_size=data.batch_size, training=False, max_boxes=data.max_boxes
    )
    return DataBundle(
        train=train_pipeline,
        val=val_pipeline,
        class_names=class_names,
        category_ids=category_ids,
        num_train_images=num_train,
        coco_gt=coco_gt,
        val_annotation_file=val_annotation_file,
        sources=sources,
    )


# -------------------------------------------------------------------- model
def build_model(model_config: config_lib.ModelConfig, num_classes: int) -> RetinaNet:
    """A :class:`RetinaNet` from a :class:`ModelConfig` (losses are set at compile)."""
    kwargs = dataclasses.asdict(model_config)
    for key in ("focal_alpha", "focal_gamma", "box_loss"):
        kwargs.pop(key)
    return RetinaNet(num_classes=num_classes, **kwargs)


def compile_model(model: RetinaNet, config: config_lib.ExperimentConfig, total_steps: int) -> None:
    """Compiles ``model`` with the config's optimizer, focal loss (alpha, gamma), box loss and XLA choice."""
    model.compile(
        optimizer=build_optimizer(config.train, total_steps),
        classification_loss=FocalLoss(alpha=config.model.focal_alpha, gamma=config.model.focal_gamma),
        box_loss=config.model.box_loss,
        jit_compile=config.train.jit_compile,
    )


# ---------------------------------------------------------------- callbacks
class CocoEvaluationCallback(keras.callbacks.Callback):
    """Runs COCO evaluation after the first and last epochs of a run and every ``every_epochs`` epochs.

    Adds ``val_AP``, ``val_AP50``, ... to the epoch logs (so CSV and
    TensorBoard logs get them) and, with ``best_path``, saves the model there
    whenever the AP improves.
    """

    def __init__(
        self,
        dataset,
        coco_gt,
        category_ids,
        every_epochs: int = 1,
        best_path: str | None = None,
        class_names=None,
        image_log_dir: str | None = None,
    ):
        super().__init__()
        self.class_names = class_names
        self.image_writer = tf.summary.create_file_writer(image_log_dir) if image_log_dir else None
        self.dataset = dataset
        self.coco_gt = coco_gt
        self.category_ids = category_ids
        self.every_epochs = max(int(every_epochs), 1)
        self.best_path = best_path
        self.best_ap = _read_best_ap(best_path)
        self.last_metrics: dict | None = None
        self.history: list[dict] = []
        self._evaluated_in_this_run = False

    def on_train_begin(self, logs=None):
        self._evaluated_in_this_run = False

    def on_epoch_end(self, epoch, logs=None):
        last = self.params and epoch + 1 == self.params.get("epochs")
        # The first epoch of each fit() (a resumed run too) is always
        # evaluated: CSVLogger fixes its columns from the first logs it sees.
        first = not self._evaluated_in_this_run
        if (epoch + 1) % self.every_epochs and not last and not first:
            return
        self._evaluated_in_this_run = True
        metrics = evaluate_model(self.model, self.dataset, self.coco_gt, self.category_ids, verbose=False)
        self.last_metrics = metrics
        if logs is not None:
            for name in evaluation.METRIC_NAMES[:6]:
                logs[f"val_{name}"] = metrics[name]
        self.history.append({"epoch": epoch + 1, **{k: metrics[k] for k in evaluation.METRIC_NAMES[:6]}})
        print(f"\nepoch {epoch + 1}: COCO AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}")
        if self.image_writer is not None:
            grid = detection_grid(self.model, self.dataset, self.class_names)
            with self.image_writer.as_default():
                tf.summary.image("val_detections", grid[None], step=epoch + 1)
        if self.best_path and metrics["AP"] > self.best_ap:
            self.best_ap = metrics["AP"]
            self.model.save(self.best_path)
            with open(self.best_path + ".json", "w") as f:
                json.dump({"epoch": epoch + 1, "AP": metrics["AP"]}, f)


#: Detections drawn in pictures of predictions score at least this much.
DRAW_SCORE_THRESHOLD = 0.3


def detection_grid(model, dataset, class_names, max_images: int = 8) -> np.ndarray:
    """Detections (score >= 0.3) on the first batch of ``dataset``, drawn in a uint8 grid."""
    images, _ = next(iter(dataset))
    detections = {key: value.numpy() for key, value in _local_detect(model)(images).items()}
    keep = detections["scores"] >= DRAW_SCORE_THRESHOLD
    shown = {
        "boxes": detections["boxes"],
        "classes": np.where(keep, detections["classes"], -1),
        "scores": detections["scores"],
    }
    return visualize.draw_batch(images.numpy(), shown, class_names=class_names, max_images=max_images)


def _read_best_ap(best_path: str | None) -> float:
    """AP of the best checkpoint so far (its ``.json`` note), so a resumed run keeps the best."""
    if best_path and os.path.exists(best_path + ".json"):
        with open(best_path + ".json") as f:
            return float(json.load(f)["AP"])
    return -1.0


class TerminateOnNaNKeepingLast(keras.callbacks.Callback):
    """Stops training at the first NaN or inf batch loss, keeping the last good checkpoint.

    Used with :class:`FiniteModelCheckpoint` and :class:`FiniteBackupAndRestore`,
    which skip the save at the end of an epoch whose loss is not finite, so
    ``checkpoint_path`` keeps the state of the last good epoch.
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


class FiniteModelCheckpoint(_SaveOnlyFiniteEpochs, keras.callbacks.ModelCheckpoint):
    """``keras.callbacks.ModelCheckpoint`` that never saves a NaN/inf epoch."""


class FiniteBackupAndRestore(_SaveOnlyFiniteEpochs, compat.AtomicBackupSave, keras.callbacks.BackupAndRestore):
    """``keras.callbacks.BackupAndRestore`` that never backs up a NaN/inf epoch.

    On a local disk each backup is written beside the previous one and then
    renamed over it, so a process killed while saving leaves the previous
    backup whole: Keras writes in place, and a SIGKILL mid-write left an
    unreadable ``latest.weights.h5`` from which the run could not resume.
    """


# -------------------------------------------------------------- evaluation
def evaluate_model(model: RetinaNet, dataset: tf.data.Dataset, coco_gt, category_ids, verbose: bool = True) -> dict:
    """Predicts on an evaluation pipeline and scores the detections with COCOeval.

    ``dataset`` is a :func:`make_pipeline` evaluation pipeline (its ``y`` carries
    ``image_id``, ``scale`` and ``image_shape``). Returns the metrics of
    :func:`evaluation.coco_evaluate`.
    """
    results, image_ids = predict_to_coco(model, dataset, category_ids, verbose=verbose)
    return evaluation.coco_evaluate(coco_gt, results, image_ids=image_ids, verbose=verbose)


def _local_detect(model: RetinaNet):
    """``model.detect`` as a cached tf.function that runs on this worker only.

    Not ``predict_on_batch``: under MultiWorkerMirroredStrategy that is a
    collective call whose result concatenates every worker's batch, while
    each worker here evaluates the same local dataset.
    """
    # Cached beside the model, not on it: an attribute would be tracked by
    # Keras and saved into the SavedModel export.
    if model not in _LOCAL_DETECT:
        _LOCAL_DETECT[model] = tf.function(model.detect, reduce_retracing=True)
    return _LOCAL_DETECT[model]


_LOCAL_DETECT: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def predict_to_coco(model: RetinaNet, dataset, category_ids, verbose: bool = True):
    """COCO results (original pixels, dataset category ids) for every image of ``dataset``."""
    results, image_ids = [], []
    cardinality = int(dataset.cardinality())
    progress = keras.utils.Progbar(cardinality if cardinality > 0 else None, unit_name="batch", verbose=1 if verbose else 0)
    detect = _local_detect(model)
    for images, y in dataset:
        detections = {key: value.numpy() for key, value in detect(images).items()}
        ids = y["image_id"].numpy()
        image_ids.extend(int(i) for i in ids)
        boxes = to_original_pixels(detections["boxes"], y["scale"], y["image_shape"]).numpy()
        results.extend(
            evaluation.detections_to_coco(
                boxes, detections["scores"], detections["classes"], detections["num_detections"], ids, category_ids
            )
        )
        progress.add(1)
    return results, image_ids


# -------------------------------------------------------------------- runs
def steps_per_epoch(config: config_lib.ExperimentConfig, num_train_images: int | None) -> int:
    """``train.steps_per_epoch``, else one pass over the training images at the global batch size."""
    if config.train.steps_per_epoch:
        return config.train.steps_per_epoch
    if not num_train_images:
        raise ValueError("train.steps_per_epoch must be set for datasets of unknown size (TFDS).")
    return max(num_train_images // config.data.batch_size, 1)


def train(config: config_lib.ExperimentConfig, strategy: tf.distribute.Strategy | None = None):
    """Trains (resuming an interrupted run), evaluating every few epochs.

    Writes into ``config.resolved_model_dir()``: ``config.json``,
    ``checkpoints/latest.keras`` (every epoch), ``checkpoints/best.keras``
    (best ``val_AP``), ``backup/`` (BackupAndRestore state), ``train_log.csv``,
    ``logs/`` (TensorBoard) and ``metrics.json`` (the last evaluation).

    A NaN or inf loss stops training and raises :class:`TrainingDivergedError`
    (the last good checkpoint and backup are kept).

    Returns:
        ``(model, history, data, metrics)``: ``metrics`` is the COCO
        evaluation after the last epoch (:func:`evaluation.coco_evaluate`).
    """
    config_lib.validate(config)
    strategy = strategy or make_strategy(config.train.strategy)
    # Under MultiWorkerMirroredStrategy only the chief writes the run
    # directory; the other workers write their own copies under
    # workers/<task>/ (their backups too, so every worker can resume).
    model_dir = _worker_dir(config.resolved_model_dir(), strategy)
    os.makedirs(os.path.join(model_dir, "checkpoints"), exist_ok=True)
    config_lib.write_json(config, os.path.join(model_dir, CONFIG_FILE))
    keras.utils.set_random_seed(config.train.seed)
    set_mixed_precision(config.train.mixed_precision)
    backup_dir = os.path.join(model_dir, "backup")
    resume_epoch = _backup_epoch(backup_dir)
    if resume_epoch:
        logging.info("Resuming %s after epoch %d.", model_dir, resume_epoch)
    # Rows of epochs that run (again) now go: a fresh start, or a process
    # killed after logging an epoch but before backing it up.
    _trim_log(os.path.join(model_dir, "train_log.csv"), resume_epoch)
    data = build_data(config, training=True, resume_epoch=resume_epoch)
    write_classes(model_dir, data)
    steps = steps_per_epoch(config, data.num_train_images)
    total_steps = steps * config.train.epochs
    with strategy.scope():
        model = build_model(config.model, num_classes=len(data.class_names))
        image_size = config.data.image_size
        model.build((None, image_size, image_size, 3))  # BackupAndRestore needs built weights
        compile_model(model, config, total_steps)
    latest = os.path.join(model_dir, LATEST_CHECKPOINT)
    best = os.path.join(model_dir, BEST_CHECKPOINT)
    if not os.path.exists(backup_dir) and os.path.exists(best + ".json"):
        os.remove(best + ".json")  # a fresh run: an earlier run's best AP does not count
    evaluator = CocoEvaluationCallback(
        data.val,
        data.coco_gt,
        data.category_ids,
        every_epochs=config.train.eval_every_epochs,
        best_path=best,
        class_names=data.class_names,
        image_log_dir=os.path.join(model_dir, "logs", "detections") if config.train.tensorboard else None,
    )
    nan_stopper = TerminateOnNaNKeepingLast(latest)
    callbacks = [
        evaluator,
        FiniteModelCheckpoint(latest),
        nan_stopper,
        keras.callbacks.CSVLogger(os.path.join(model_dir, "train_log.csv"), append=True),
    ]
    if config.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"), write_graph=False))
    # Last, so that an epoch counts as done (for resuming) only once it has
    # been evaluated, checkpointed and logged; kept after a NaN stop so that a
    # rerun resumes from the last good epoch.
    callbacks.append(FiniteBackupAndRestore(backup_dir, save_freq="epoch", delete_checkpoint=False))
    history = model.fit(
        data.train, epochs=config.train.epochs, steps_per_epoch=steps, callbacks=callbacks, shuffle=False
    )
    _report_skipped(data)
    if nan_stopper.stopped_at is not None:
        raise TrainingDivergedError(
            f"The training loss became NaN or inf; training stopped. The last good state is {latest} "
            f"(and {backup_dir}, from which rerunning the same command resumes). Lower the learning "
            "rate or set --override=train.clipnorm=..."
        )
    shutil.rmtree(backup_dir, ignore_errors=True)  # finished: a rerun starts a new run
    evaluation.write_metrics(evaluator.last_metrics, os.path.join(model_dir, "metrics.json"))
    return model, history, data, evaluator.last_metrics


def _worker_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """``model_dir`` for the chief (or a single worker), ``model_dir/workers/<type>_<id>`` for the others."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return model_dir
    task_type, task_id = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and not has_chief):
        return model_dir
    return os.path.join(model_dir, "workers", f"{task_type}_{task_id}")


def _backup_epoch(backup_dir: str) -> int:
    """Epochs already done according to a BackupAndRestore directory (0 if none)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f).get("epoch", 0))


def _trim_log(path: str, resume_epoch: int) -> None:
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


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def _report_skipped(data: DataBundle) -> None:
    """Logs what the COCO-JSON sources skipped (``skip_invalid=True``)."""
    for split, source in data.sources.items():
        stats = source.stats
        if stats.images_skipped or stats.invalid_annotations:
            logging.warning(
                "%s split: %d images skipped (%d at load, %d while reading), %d invalid annotations. "
                "First reasons: %s",
                split,
                stats.images_skipped,
                stats.images_skipped_at_load,
                stats.images_skipped_at_read,
                stats.invalid_annotations,
                "; ".join(stats.reasons[:3]),
            )


def write_classes(model_dir: str, data: DataBundle) -> None:
    """Writes ``classes.json``: contiguous class → (dataset category id, name)."""
    with open(os.path.join(model_dir, "classes.json"), "w") as f:
        json.dump(
            {"class_names": list(data.class_names), "category_ids": list(data.category_ids)}, f, indent=2
        )


def read_classes(model_dir: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """``(class_names, category_ids)`` from a run directory's ``classes.json``."""
    with open(os.path.join(model_dir, "classes.json")) as f:
        values = json.load(f)
    return tuple(values["class_names"]), tuple(int(c) for c in values["category_ids"])


def load_trained_model(model_dir: str, which: str = "latest") -> RetinaNet:
    """Loads ``checkpoints/<which>.keras`` from a run directory."""
    path = os.path.join(model_dir, LATEST_CHECKPOINT if which == "latest" else BEST_CHECKPOINT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No checkpoint at {path}: train first (--mode=train) or check --model_dir.")
    return keras.saving.load_model(path)
