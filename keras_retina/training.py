"""Training: strategy, learning-rate schedule, optimizer, model, and :func:`train`.

Config objects stop here: everything below this module takes plain arguments.
The data comes from :mod:`keras_retina.datasets`, the callbacks from
:mod:`keras_retina.callbacks`, and what a run writes is laid out in
:mod:`keras_retina.rundir`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Sequence

import keras
import tensorflow as tf
from absl import logging

from keras_retina import callbacks as callbacks_lib
from keras_retina import config as config_lib
from keras_retina import datasets, evaluation, rundir
from keras_retina.anchors import AnchorGenerator
from keras_retina.losses import FocalLoss
from keras_retina.model import RetinaNet
from keras_retina.pretrained import transfer


# ----------------------------------------------------------------- strategy
def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns the ``tf.distribute`` strategy called ``name``.

    ``auto``: MirroredStrategy over all visible GPUs when there are several,
    OneDeviceStrategy on the one GPU, and with no GPU TensorFlow's default
    strategy (no wrapping at all): on the CPU, ``fit`` under
    ``OneDeviceStrategy("/cpu:0")`` took 2.3 times as long a step
    (``benchmarks/bench_strategy.py``, ``docs/BENCHMARKS.md``). ``one_device``
    asks for OneDeviceStrategy anyway. ``multi_worker`` reads the cluster
    from ``TF_CONFIG`` and must be created before any other TensorFlow op
    runs. ``tpu`` resolves the local TPU.

    Example:
        >>> strategy = make_strategy("auto")
        >>> with strategy.scope(): model = RetinaNet(num_classes=80)
        >>> strategy.num_replicas_in_sync
        1
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.OneDeviceStrategy(gpus[0].name) if gpus else tf.distribute.get_strategy()
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


def scaled_for_batch(train: config_lib.TrainConfig, batch_size: int | None) -> config_lib.TrainConfig:
    """``train`` with the linear scaling rule applied for global batch ``batch_size``.

    With ``train.reference_batch_size = R`` (the batch that
    ``learning_rate`` and ``warmup_steps`` were tuned for, 16 in the paper)
    a run at global batch ``B`` uses ``learning_rate * B / R`` and
    ``warmup_steps * R / B`` steps of warm-up (Goyal et al. 2017; detectron2's
    ``REFERENCE_WORLD_SIZE`` rule); milestones are fractions of the run and
    follow its steps. Unchanged when ``reference_batch_size`` or
    ``batch_size`` is None.

    Example:
        >>> from keras_retina.config import TrainConfig
        >>> scaled = scaled_for_batch(TrainConfig(learning_rate=0.01, reference_batch_size=16), 64)
        >>> round(scaled.learning_rate, 6), scaled.warmup_steps   # 4x the batch: 4x the rate, 1/4 the warm-up
        (0.04, 125)
    """
    reference = train.reference_batch_size
    if not reference or not batch_size:
        return train
    factor = batch_size / reference
    return dataclasses.replace(
        train,
        learning_rate=train.learning_rate * factor,
        warmup_steps=max(int(round(train.warmup_steps / factor)), 0),
    )


def build_optimizer(
    train: config_lib.TrainConfig, total_steps: int, batch_size: int | None = None
) -> keras.optimizers.Optimizer:
    """SGD with momentum (or Adam/AdamW), weight decay off for biases and norms, the paper's schedule.

    Keras applies weight decay decoupled from the gradient (``w -= lr * wd * w``),
    which for SGD matches the paper's L2 penalty up to its interaction
    with momentum. Under several replicas ``clipnorm`` clips each replica's
    gradient before the all-reduce (Keras' behaviour).

    Args:
        train: the training config (learning rate, momentum, decay, warm-up...).
        total_steps: planned optimizer steps; milestones are fractions of it.
        batch_size: the global batch; with ``train.reference_batch_size``
            the rate and warm-up follow it (:func:`scaled_for_batch`).

    Returns:
        a ``keras.optimizers.Optimizer`` with a :class:`WarmupStepDecay`
        schedule, or with ``train.schedule="cosine"`` Keras' ``CosineDecay``
        (the same linear warm-up from ``warmup_factor``, then a cosine from
        the peak to 0 at ``total_steps``).

    Example:
        >>> from keras_retina.config import TrainConfig
        >>> optimizer = build_optimizer(TrainConfig(), total_steps=90000)
        >>> round(float(optimizer.learning_rate), 5)   # step 0: a third of 0.01, warming up
        0.00333
    """
    train = scaled_for_batch(train, batch_size)
    warmup_steps = min(train.warmup_steps, max(total_steps // 10, 1))
    if train.schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=train.learning_rate * train.warmup_factor,
            decay_steps=max(total_steps - warmup_steps, 1),
            warmup_target=train.learning_rate,
            warmup_steps=warmup_steps,
        )
    else:
        schedule = WarmupStepDecay(
            train.learning_rate,
            milestones=tuple(int(round(f * total_steps)) for f in train.decay_fractions),
            warmup_steps=warmup_steps,
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


# -------------------------------------------------------------------- model
def build_model(model_config: config_lib.ModelConfig, num_classes: int) -> RetinaNet:
    """A :class:`RetinaNet` from a :class:`ModelConfig` (losses are set at compile).

    Example:
        >>> from keras_retina.config import ModelConfig, override, ExperimentConfig
        >>> config = override(ExperimentConfig(), ["backbone=tiny", "model.anchors.size_multiplier=2"])
        >>> build_model(config.model, num_classes=3).anchor_generator.size_multiplier
        2.0
    """
    kwargs = {f.name: getattr(model_config, f.name) for f in dataclasses.fields(model_config)}
    for key in ("focal_alpha", "focal_gamma", "box_loss"):  # compile's
        kwargs.pop(key)
    del kwargs["anchors"]
    return RetinaNet(num_classes=num_classes, anchor_generator=build_anchor_generator(model_config), **kwargs)


def build_anchor_generator(model_config: config_lib.ModelConfig) -> AnchorGenerator:
    """The :class:`AnchorGenerator` of ``model_config.anchors``, on the pyramid's levels P3..``max_level``."""
    anchors = model_config.anchors
    return AnchorGenerator(
        min_level=3,
        max_level=model_config.max_level,
        size_multiplier=anchors.size_multiplier,
        scales=anchors.scales,
        aspect_ratios=anchors.aspect_ratios,
        offset=anchors.offset,
        order=anchors.order,
        round_to_pixels=anchors.round_to_pixels,
    )


def compile_model(model: RetinaNet, config: config_lib.ExperimentConfig, total_steps: int) -> None:
    """Compiles ``model`` with the config's optimizer, focal loss (alpha, gamma), box loss and XLA choice."""
    model.compile(
        optimizer=build_optimizer(config.train, total_steps, batch_size=config.data.batch_size),
        classification_loss=FocalLoss(alpha=config.model.focal_alpha, gamma=config.model.focal_gamma),
        box_loss=config.model.box_loss,
        jit_compile=config.train.jit_compile,
    )


def build_compiled_model(
    config: config_lib.ExperimentConfig, num_classes: int, total_steps: int, strategy: tf.distribute.Strategy | None = None
) -> RetinaNet:
    """The run's model as :func:`train` makes it: built at ``data.image_size`` and compiled, in ``strategy``'s scope.

    Sets the config's mixed-precision policy first.
    """
    set_mixed_precision(config.train.mixed_precision)
    with (strategy or tf.distribute.get_strategy()).scope():
        model = build_model(config.model, num_classes=num_classes)
        image_size = config.data.image_size
        model.build((None, image_size, image_size, 3))  # BackupAndRestore needs built weights
        compile_model(model, config, total_steps=total_steps)
    return model


# -------------------------------------------------------------------- runs
def steps_per_epoch(config: config_lib.ExperimentConfig, num_train_images: int | None) -> int:
    """``train.steps_per_epoch``, else one pass over the training images at the global batch size."""
    if config.train.steps_per_epoch:
        return config.train.steps_per_epoch
    if not num_train_images:
        raise ValueError("train.steps_per_epoch must be set for datasets of unknown size (TFDS).")
    return max(num_train_images // config.data.batch_size, 1)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def train(
    config: config_lib.ExperimentConfig,
    strategy: tf.distribute.Strategy | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
):
    """Trains (resuming an interrupted run), evaluating every few epochs.

    ``callbacks`` run after the COCO evaluation of each epoch (its
    ``val_AP``... are in their logs) and before the checkpoints are written.

    Writes the run directory (:mod:`keras_retina.rundir`) under
    ``config.resolved_model_dir()``: ``config.json``, ``classes.json``,
    ``checkpoints/latest.keras`` (every epoch), ``checkpoints/best.keras``
    (best ``val_AP``), ``backup/`` (BackupAndRestore state), ``train_log.csv``,
    ``logs/`` (TensorBoard), ``metrics.json`` (the last evaluation) and
    ``val_detections.json`` (its detections).

    A NaN or inf loss stops training and raises :class:`TrainingDivergedError`
    (the last good checkpoint and backup are kept). A directory another
    process is training into raises :class:`keras_retina.rundir.RunDirInUseError`
    before anything in it is touched (:func:`keras_retina.rundir.claim`).

    Returns:
        ``(model, history, data, metrics)``: ``data`` is the run's
        :class:`keras_retina.datasets.RunData`, ``metrics`` the COCO
        evaluation after the last epoch (:func:`evaluation.coco_evaluate`).
    """
    config_lib.validate(config)
    init_source = None
    if config.train.init_weights:
        # Fine-tuning: the run takes the source's architecture (recorded in config.json).
        init_source = transfer.open_source(config.train.init_weights)
        config = dataclasses.replace(config, model=transfer.finetune_model_config(config.model, init_source.model))
        config_lib.validate(config)
    strategy = strategy or make_strategy(config.train.strategy)
    model_dir = rundir.worker_dir(config.resolved_model_dir(), strategy)
    os.makedirs(os.path.join(model_dir, "checkpoints"), exist_ok=True)
    with rundir.claim(model_dir):  # one trainer per run directory
        return _train_in(model_dir, config, strategy, init_source, callbacks)


def _train_in(model_dir, config, strategy, init_source, callbacks):
    """:func:`train` once ``model_dir`` is held: resume or start, fit, write the results."""
    rundir.write_config(model_dir, config)
    keras.utils.set_random_seed(config.train.seed)
    backup_dir = os.path.join(model_dir, rundir.BACKUP_DIR)
    resume_epoch = rundir.backup_epoch(backup_dir)
    if resume_epoch:
        logging.info("Resuming %s after epoch %d.", model_dir, resume_epoch)
    # Rows of epochs that run (again) now go: a fresh start, or a process
    # killed after logging an epoch but before backing it up.
    rundir.trim_log(os.path.join(model_dir, rundir.TRAIN_LOG), resume_epoch)
    # A resumed run draws a different shuffle and augmentation sequence than
    # its first start (else it would replay the first epochs' draws).
    # Trainers of one multi-worker run share one tf.data service job (one
    # epoch split over all of them); a lone trainer has a job of its own.
    service_job = None
    if config.data.data_service and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        service_job = f"keras_retina:{config.resolved_model_dir()}:{resume_epoch}"
    data = datasets.RunData(
        config.data, seed=config.train.seed + 1_000_003 * resume_epoch, data_service_job=service_job
    )
    rundir.write_classes(model_dir, data.class_names, data.category_ids)
    steps = steps_per_epoch(config, data.num_train_images)
    model = build_compiled_model(config, len(data.class_names), steps * config.train.epochs, strategy)
    if init_source is not None and not resume_epoch:  # a resumed run restores its own weights
        transfer.transfer_weights(init_source.model, model, data.class_names, init_source.class_names)
    latest = os.path.join(model_dir, rundir.LATEST_CHECKPOINT)
    best = os.path.join(model_dir, rundir.BEST_CHECKPOINT)
    if not os.path.exists(backup_dir) and os.path.exists(best + ".json"):
        os.remove(best + ".json")  # a fresh run: an earlier run's best AP does not count
    # Evaluation on every replica (each worker its share of the images, the
    # detections gathered) when there are several; else on this device.
    distributed_val = data.distributed_pipeline("val", strategy) if strategy.num_replicas_in_sync > 1 else None
    evaluator = callbacks_lib.CocoEvaluationCallback(
        data.pipeline("val"),
        data.coco_gt,
        data.category_ids,
        every_epochs=config.train.eval_every_epochs,
        best_path=best,
        class_names=data.class_names,
        image_log_dir=os.path.join(model_dir, "logs", "detections") if config.train.tensorboard else None,
        distributed_dataset=distributed_val,
    )
    nan_stopper = callbacks_lib.TerminateOnNaNKeepingLast(latest)
    run_callbacks = [
        evaluator,
        *callbacks,
        callbacks_lib.FiniteModelCheckpoint(latest),
        nan_stopper,
        callbacks_lib.ResumableCSVLogger(
            os.path.join(model_dir, rundir.TRAIN_LOG), columns=callbacks_lib.CocoEvaluationCallback.LOG_NAMES, append=True
        ),
    ]
    if config.train.tensorboard:
        run_callbacks.append(keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"), write_graph=False))
    # Last, so that an epoch counts as done (for resuming) only once it has
    # been evaluated, checkpointed and logged; kept after a NaN stop so that a
    # rerun resumes from the last good epoch.
    run_callbacks.append(callbacks_lib.FiniteBackupAndRestore(backup_dir, save_freq="epoch", delete_checkpoint=False))
    # Each input pipeline (one per worker) reads only its share of the
    # images and batches per replica (datasets.RunData.distributed_pipeline).
    history = model.fit(
        data.distributed_pipeline("train", strategy), epochs=config.train.epochs, steps_per_epoch=steps, callbacks=run_callbacks, shuffle=False
    )
    data.report_skipped()
    if nan_stopper.stopped_at is not None:
        raise TrainingDivergedError(
            f"The training loss became NaN or inf; training stopped. The last good state is {latest} "
            f"(and {backup_dir}, from which rerunning the same command resumes). Lower the learning "
            "rate or set --override=train.clipnorm=..."
        )
    shutil.rmtree(backup_dir, ignore_errors=True)  # finished: a rerun starts a new run
    evaluation.write_metrics(evaluator.last_metrics, os.path.join(model_dir, rundir.METRICS_FILE))
    if evaluator.last_results is not None:  # the report (runs.train_and_evaluate) reuses them
        rundir.write_detections(model_dir, *evaluator.last_results)
    return model, history, data, evaluator.last_metrics
