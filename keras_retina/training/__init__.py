"""Training a run: strategy, optimizer and schedule, callbacks, the run directory, weight transfer, :func:`train`.

* :mod:`~keras_retina.training.train`: a config's model, compiled; :func:`train` (resumable);
* :mod:`~keras_retina.training.strategy`: ``tf.distribute`` strategy, mixed precision;
* :mod:`~keras_retina.training.optimizer`: SGD / Adam with :class:`WarmupStepDecay`, the linear scaling rule;
* :mod:`~keras_retina.training.callbacks`: COCO evaluation, NaN stop, checkpoints, backups (**a new callback**);
* :mod:`~keras_retina.training.rundir`: what a run directory holds, and reading it back;
* :mod:`~keras_retina.training.transfer`: ``--init_weights``, fine-tuning from a trained detector;
* :mod:`~keras_retina.training.backbone_pretraining`: pre-training a backbone on crops of a detection dataset.

Example:
    >>> from keras_retina import training
    >>> training.make_strategy("auto").num_replicas_in_sync
    1
"""

from keras_retina.training import callbacks, rundir, transfer
from keras_retina.training import backbone_pretraining
from keras_retina.training.optimizer import WarmupStepDecay, build_optimizer, scaled_for_batch
from keras_retina.training.strategy import make_strategy, set_mixed_precision
from keras_retina.training.train import (
    TrainingDivergedError,
    build_anchor_generator,
    build_compiled_model,
    build_model,
    compile_model,
    steps_per_epoch,
    train,
)

__all__ = [
    "TrainingDivergedError",
    "WarmupStepDecay",
    "backbone_pretraining",
    "build_anchor_generator",
    "build_compiled_model",
    "build_model",
    "build_optimizer",
    "callbacks",
    "compile_model",
    "make_strategy",
    "rundir",
    "scaled_for_batch",
    "set_mixed_precision",
    "steps_per_epoch",
    "train",
    "transfer",
]
