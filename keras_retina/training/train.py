"""Training a run: the model of a config, compiled, and :func:`train`.

Config objects stop here: everything below this module takes plain arguments.
The data comes from :class:`keras_retina.data.RunData`, the callbacks from
:mod:`keras_retina.training.callbacks`, the optimizer from
:mod:`keras_retina.training.optimizer`, and what a run writes is laid out in
:mod:`keras_retina.training.rundir`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Sequence

import keras
import tensorflow as tf
from absl import logging

from keras_retina import config as config_lib
from keras_retina import evaluation
from keras_retina.evaluation import preflight
from keras_retina.data import run_data
from keras_retina.model import AnchorGenerator, FocalLoss, RetinaNet
from keras_retina.training import callbacks as callbacks_lib
from keras_retina.training import rundir, transfer
from keras_retina.training.optimizer import build_optimizer
from keras_retina.training.strategy import make_strategy, set_mixed_precision


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

    Writes the run directory (:mod:`keras_retina.training.rundir`) under
    ``config.resolved_model_dir()``: ``config.json``, ``classes.json``,
    ``checkpoints/latest.keras`` (every epoch; the epoch before as
    ``previous.keras``; each written whole or not at all), ``checkpoints/best.keras``
    (best ``val_AP``), ``backup/`` (BackupAndRestore state), ``train_log.csv``,
    ``logs/`` (TensorBoard), ``metrics.json`` (the last evaluation) and
    ``val_detections.json`` (its detections).

    A NaN or inf loss stops training and raises :class:`TrainingDivergedError`
    (the last good checkpoint and backup are kept). A directory another
    process is training into raises :class:`keras_retina.training.rundir.RunDirInUseError`
    before anything in it is touched (:func:`keras_retina.training.rundir.claim`).

    Returns:
        ``(model, history, data, metrics)``: ``data`` is the run's
        :class:`keras_retina.data.run_data.RunData`, ``metrics`` the COCO
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


def check_data_before_training(
    data: run_data.RunData, config: config_lib.ExperimentConfig, init_source: transfer.InitSource | None = None
) -> preflight.PreflightReport:
    """The pre-flight check of a fresh run's data (:func:`keras_retina.evaluation.preflight.check_data`), printed.

    Runs on the run's anchors and input size; when fine-tuning, it compares
    the data's classes with ``init_source``'s (mapped by name, as
    :func:`transfer.transfer_weights` maps them). Warnings never stop training.

    Raises:
        keras_retina.evaluation.preflight.PreflightError: the data cannot train a detector
            (the message names each error and its fix).

    Example:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> _ = kr.data.make_shapes_splits(directory, num_train=20, num_val=5, image_size=(64, 64), verbose=False)
        >>> config = config_lib.override(config_lib.ExperimentConfig(), [
        ...     f"data.shapes_dir={directory}", "shapes_num_train=20", "shapes_num_val=5", "shapes_image_size=64",
        ...     "image_size=64"])
        >>> report = check_data_before_training(run_data.RunData(config.data), config)  # doctest: +ELLIPSIS
        Pre-flight check of the data at image_size 64: 0 errors, ...
        >>> report.ok
        True
    """
    report = preflight.check_data(
        data,
        build_anchor_generator(config.model),
        num_model_classes=init_source.model.num_classes if init_source is not None else None,
        model_class_names=init_source.class_names if init_source is not None else None,
        fine_tuning=init_source is not None,
        model_description=init_source.description if init_source is not None else "the model",
        match_classes=transfer.match_classes,
        foreground_iou=config.model.foreground_iou,
        allow_low_quality_matches=config.model.allow_low_quality_matches,
    )
    print(report.format())
    if not report.ok:
        raise preflight.PreflightError(report)
    return report


def _train_in(model_dir, config, strategy, init_source, callbacks):
    """:func:`train` once ``model_dir`` is held: resume or start, fit, write the results."""
    rundir.write_config(model_dir, config)
    keras.utils.set_random_seed(config.train.seed)
    backup_dir = os.path.join(model_dir, rundir.BACKUP_DIR)
    # An unreadable last backup gives way to the one before, with a warning naming it.
    resume_epoch = rundir.check_backup(backup_dir)
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
    data = run_data.RunData(
        config.data, seed=config.train.seed + 1_000_003 * resume_epoch, data_service_job=service_job
    )
    if not resume_epoch and model_dir == config.resolved_model_dir():  # a fresh start, on the chief
        check_data_before_training(data, config, init_source)
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
        callbacks_lib.FiniteModelCheckpoint(latest, previous_path=os.path.join(model_dir, rundir.PREVIOUS_CHECKPOINT)),
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
    # images and batches per replica (run_data.RunData.distributed_pipeline).
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
