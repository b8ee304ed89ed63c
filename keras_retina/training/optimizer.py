"""The optimizer and learning-rate schedule of a :class:`~keras_retina.config.TrainConfig`.

:class:`WarmupStepDecay` is registered with Keras when ``keras_retina`` is
imported, so that ``keras.saving.load_model`` reads a run's checkpoint (its
optimizer names the schedule) after ``import keras_retina`` alone.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras

from keras_retina import config as config_lib


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
