"""Focal loss (Lin et al. 2017) and box regression losses.

Pure functions do the maths; thin ``keras.losses.Loss`` classes wrap them.
Every function computes in float32, whatever the inputs' dtype, so the losses
are safe under ``mixed_float16`` / ``mixed_bfloat16`` policies.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

# Smallest normal float32: (1 - p_t) is floored here before the power, so that
# d/dx (1 - p_t)**gamma stays finite for gamma < 1 when a logit saturates.
_TINY = 1.1754944e-38


def focal_loss(
    y_true,
    y_pred,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    from_logits: bool = True,
    label_smoothing: float = 0.0,
):
    """Sigmoid focal loss, summed over the class axis.

    ``FL(p_t) = -alpha_t * (1 - p_t)**gamma * log(p_t)`` element-wise, where
    ``p = sigmoid(y_pred)``, ``p_t = p if y = 1 else 1 - p`` and
    ``alpha_t = alpha if y = 1 else 1 - alpha``. For soft labels ``y`` in
    [0, 1], ``1 - p_t = y (1 - p) + (1 - y) p`` and
    ``alpha_t = y alpha + (1 - y)(1 - alpha)``, and ``-log(p_t)`` becomes the
    binary cross-entropy ``-(y log p + (1 - y) log(1 - p))`` (equal for 0/1
    targets), computed from logits in the stable form
    ``max(x, 0) - x y + log(1 + exp(-|x|))``.

    Args:
        y_true: ``(..., C)`` one-hot (or soft) targets in [0, 1].
        y_pred: ``(..., C)`` logits (or probabilities if ``from_logits=False``).
        alpha: weight of the positive class in [0, 1]; ``None`` disables it.
        gamma: focusing parameter >= 0; ``gamma=0`` gives (alpha-balanced) CE.
        from_logits: whether ``y_pred`` holds logits.
        label_smoothing: in [0, 1); targets become ``y (1 - s) + s / 2``.

    Returns:
        float32 ``y_true.shape[:-1]``: the loss summed over classes.

    Example:
        An easy negative (logit -4.6, ``p = 0.01``) and an unsure positive
        (logit 0, ``p = 0.5``): ``0.75 * 0.01**2 * 0.01 + 0.25 * 0.5**2 * log(2)``.

        >>> np.asarray(focal_loss([[0., 1.]], [[-4.6, 0.0]]))
        array([0.0433], dtype=float32)
    """
    y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(y_true, "float32")
    if label_smoothing:
        y_true = y_true * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if from_logits:
        cross_entropy = (
            ops.relu(y_pred) - y_pred * y_true + ops.log1p(ops.exp(-ops.abs(y_pred)))
        )
        probs = ops.sigmoid(y_pred)
    else:
        probs = ops.clip(y_pred, keras.backend.epsilon(), 1.0 - keras.backend.epsilon())
        cross_entropy = -(y_true * ops.log(probs) + (1.0 - y_true) * ops.log1p(-probs))
    loss = cross_entropy
    if gamma:
        one_minus_p_t = y_true * (1.0 - probs) + (1.0 - y_true) * probs
        loss = ops.power(ops.maximum(one_minus_p_t, _TINY), gamma) * loss
    if alpha is not None:
        alpha_t = y_true * alpha + (1.0 - y_true) * (1.0 - alpha)
        loss = alpha_t * loss
    return ops.sum(loss, axis=-1)


# Hand-written because nothing in Keras fuses element-wise maths: unfused,
# each of the ~20 element-wise ops of the loss and of its gradient makes a
# pass over the (B, A, C) tensor. XLA fuses them, but a jit-compiled
# tf.function called from an ordinary graph gets an uncompiled gradient, so
# the forward and backward passes are two compiled functions joined by
# tf.custom_gradient. Forward + backward on (8, 49104, 80) float32 logits:
# 165 ms, against 570 ms with jit_compile=False (3.45x), on 2 AVX-512 cores
# (docs/benchmarks.json of 2026-11-26; `python -m benchmarks.run --only=loss`
# re-measures, docs/BENCHMARKS.md explains the case).
@tf.function(jit_compile=True, reduce_retracing=True)
def _focal_forward(y_true, y_pred, alpha, gamma, from_logits, label_smoothing):
    return focal_loss(y_true, y_pred, alpha, gamma, from_logits, label_smoothing)


@tf.function(jit_compile=True, reduce_retracing=True)
def _focal_backward(y_true, y_pred, upstream, alpha, gamma, from_logits, label_smoothing):
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = focal_loss(y_true, y_pred, alpha, gamma, from_logits, label_smoothing)
    return tape.gradient(loss, y_pred, output_gradients=upstream)


def _focal_loss_xla(y_true, y_pred, alpha, gamma, from_logits, label_smoothing):
    """:func:`focal_loss` with its forward and backward passes each one XLA cluster.

    Same values and gradient with respect to ``y_pred`` within float32
    rounding; ``y_true`` gets no gradient.
    """
    y_true = tf.convert_to_tensor(y_true)
    y_pred = tf.convert_to_tensor(y_pred)
    if not y_pred.dtype.is_floating:
        y_pred = tf.cast(y_pred, "float32")
    params = (alpha, gamma, from_logits, label_smoothing)

    @tf.custom_gradient
    def loss_of_predictions(predictions):
        def gradient(upstream):
            return _focal_backward(y_true, predictions, upstream, *params)

        return _focal_forward(y_true, predictions, *params), gradient

    return loss_of_predictions(y_pred)


@keras.saving.register_keras_serializable(package="keras_retina")
class FocalLoss(keras.losses.Loss):
    """Focal loss for dense detection, as in RetinaNet (Lin et al. 2017).

    Unlike ``keras.losses.BinaryFocalCrossentropy``, the alpha balancing is on
    by default (``alpha=0.25``, the paper's value with ``gamma=2``) and the
    loss is summed over the class axis, giving one value per anchor; RetinaNet
    then sums over anchors and divides by the number of foreground anchors.
    See :func:`focal_loss` for the formula.

    Args:
        alpha: positive-class weight in [0, 1], or ``None`` for no weighting.
        gamma: focusing parameter >= 0.
        from_logits: whether predictions are logits (default) or probabilities.
        label_smoothing: in [0, 1).
        jit_compile: compute the loss, and its gradient, each as one XLA
            cluster (default ``True``; about 3.4x faster forward + backward
            on a CPU, see docs/BENCHMARKS.md; same values within float32
            rounding; the targets get no gradient). ``False`` runs plain
            TensorFlow ops.
        reduction: a Keras reduction: ``"sum_over_batch_size"`` (default),
            ``"sum"``, ``"mean"``, ``"mean_with_sample_weight"`` or ``None``
            (one value per anchor, shape ``y_true.shape[:-1]``). A
            ``sample_weight`` must broadcast against ``y_true.shape[:-1]``:
            per-image weights of a ``(B, A, C)`` input have shape ``(B, 1)``.
        name: loss name.

    The loss always computes in float32 (its dtype policy is not
    configurable), also under mixed-precision policies.

    Example:
        >>> loss = FocalLoss(reduction=None)
        >>> tuple(loss(ops.one_hot([1, 0], 3), ops.zeros((2, 3))).shape)   # one per anchor
        (2,)
    """

    def __init__(
        self,
        alpha: float | None = 0.25,
        gamma: float = 2.0,
        from_logits: bool = True,
        label_smoothing: float = 0.0,
        jit_compile: bool = True,
        reduction: str | None = "sum_over_batch_size",
        name: str = "focal_loss",
    ):
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"FocalLoss: `alpha` must be in [0, 1] or None, got {alpha!r}.")
        if gamma < 0:
            raise ValueError(f"FocalLoss: `gamma` must be >= 0, got {gamma!r}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"FocalLoss: `label_smoothing` must be in [0, 1), got {label_smoothing!r}."
            )
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.alpha = None if alpha is None else float(alpha)
        self.gamma = float(gamma)
        self.from_logits = bool(from_logits)
        self.label_smoothing = float(label_smoothing)
        self.jit_compile = bool(jit_compile)

    def call(self, y_true, y_pred):
        loss_fn = _focal_loss_xla if self.jit_compile else focal_loss
        return loss_fn(y_true, y_pred, self.alpha, self.gamma, self.from_logits, self.label_smoothing)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            alpha=self.alpha,
            gamma=self.gamma,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
            jit_compile=self.jit_compile,
        )
        return config


def hard_example_weights(
    per_anchor_loss,
    weights,
    foreground,
    batch_size_per_image: int = 128,
    positive_fraction: float | None = None,
):
    """Online hard example mining (OHEM): per image, keeps the highest-loss anchors.

    The paper's Table 1d baseline (Sec. 5.2): every anchor is scored by its
    classification loss and each image's minibatch is built from the
    highest-scoring ones; the rest get weight 0. Anchors with weight 0 on
    input (ignored, or images of sample weight 0) are never chosen.

    * ``positive_fraction=None`` ("no ratio"): the ``batch_size_per_image``
      highest-loss anchors, foreground or background.
    * ``positive_fraction=f`` (``0.25`` is the paper's "1:3", after SSD):
      up to ``floor(f * batch_size_per_image)`` foreground anchors by loss,
      then ``round(k_pos * (1 - f) / f)`` background anchors by loss
      (``3 * k_pos`` for 1:3), no more than the batch leaves. As in SSD, an
      image with no foreground anchor contributes no anchor.

    Named deviation: the paper applies NMS (IoU 0.7 or 0.5) to the scored
    anchors before choosing the minibatch; this selection skips the NMS.
    Ties are broken by anchor order (the first anchor wins).

    Args:
        per_anchor_loss: ``(B, A)`` loss per anchor (its gradient is not
            touched: the selection is a constant mask).
        weights: ``(B, A)`` float classification weights (0 = not eligible).
        foreground: ``(B, A)`` bool, the foreground anchors.
        batch_size_per_image: anchors kept per image (128 or 256 in the paper), >= 1.
        positive_fraction: ``None`` or the most foreground share, in (0, 1).

    Returns:
        float32 ``(B, A)``: ``weights`` on the chosen anchors, 0 elsewhere.

    Example:
        Six anchors, the second one foreground. Without a ratio the two
        highest losses are kept; with 1:3 (``batch_size_per_image=8``) the
        one positive and the three highest-loss negatives:

        >>> loss = [[0.1, 0.2, 0.9, 0.5, 0.3, 0.05]]
        >>> fg = [[False, True, False, False, False, False]]
        >>> w = hard_example_weights(loss, ops.ones((1, 6)), fg, batch_size_per_image=2)
        >>> np.asarray(w).astype("int32")
        array([[0, 0, 1, 1, 0, 0]], dtype=int32)
        >>> w = hard_example_weights(loss, ops.ones((1, 6)), fg, 8, positive_fraction=0.25)
        >>> np.asarray(w).astype("int32")
        array([[0, 1, 1, 1, 1, 0]], dtype=int32)
    """
    if int(batch_size_per_image) != batch_size_per_image or batch_size_per_image < 1:
        raise ValueError(
            f"hard_example_weights: `batch_size_per_image` must be an int >= 1, got {batch_size_per_image!r}."
        )
    if positive_fraction is not None and not 0.0 < positive_fraction < 1.0:
        raise ValueError(
            f"hard_example_weights: `positive_fraction` must be None or in (0, 1), got {positive_fraction!r}."
        )
    loss = ops.stop_gradient(ops.cast(per_anchor_loss, "float32"))  # (B, A)
    weights = ops.cast(weights, "float32")  # (B, A)
    eligible = weights > 0
    foreground = ops.logical_and(ops.cast(foreground, "bool"), eligible)
    background = ops.logical_and(ops.logical_not(foreground), eligible)

    # Hand-written: tf.math.top_k takes one k for the whole batch, while the
    # 1:3 rule needs a k per image; a rank per anchor (0 = highest loss among
    # its group in its image) gives exact per-image counts with static shapes.
    def rank_within(group):
        scores = ops.where(group, loss, -float("inf"))
        order = ops.argsort(-scores, axis=-1)  # (B, A), stable: ties keep anchor order
        return ops.argsort(order, axis=-1)  # (B, A) int rank

    batch = int(batch_size_per_image)
    if positive_fraction is None:
        chosen = ops.logical_and(eligible, rank_within(eligible) < batch)
    else:
        num_foreground = ops.sum(ops.cast(foreground, "int32"), axis=-1, keepdims=True)  # (B, 1)
        k_pos = ops.minimum(num_foreground, int(positive_fraction * batch))  # (B, 1)
        per_positive = (1.0 - positive_fraction) / positive_fraction
        k_neg = ops.minimum(
            batch - k_pos, ops.cast(ops.round(ops.cast(k_pos, "float32") * per_positive), "int32")
        )  # (B, 1)
        chosen = ops.logical_or(
            ops.logical_and(foreground, rank_within(foreground) < k_pos),
            ops.logical_and(background, rank_within(background) < k_neg),
        )
    return weights * ops.cast(chosen, "float32")


def smooth_l1_loss(y_true, y_pred, beta: float = 0.11):
    """Smooth L1 summed over the last axis (the 4 box deltas).

    Element-wise ``0.5 d**2 / beta`` if ``|d| < beta`` else ``|d| - 0.5 beta``
    with ``d = y_pred - y_true``; ``beta = 0`` gives plain L1.

    Args:
        y_true, y_pred: ``(..., 4)`` box deltas.
        beta: transition point; 0.11 as in Detectron's RetinaNet.

    Returns:
        float32 ``y_true.shape[:-1]``.

    Example:
        >>> np.asarray(smooth_l1_loss([[0., 0., 0., 0.]], [[1., 0., 0., 0.]]))   # 1 - 0.11 / 2
        array([0.945], dtype=float32)
    """
    diff = ops.abs(ops.cast(y_pred, "float32") - ops.cast(y_true, "float32"))
    if beta <= 0:
        return ops.sum(diff, axis=-1)
    loss = ops.where(diff < beta, 0.5 * ops.square(diff) / beta, diff - 0.5 * beta)
    return ops.sum(loss, axis=-1)


def huber_loss(y_true, y_pred, delta: float = 1.0):
    """Huber loss summed over the last axis: ``0.5 d**2`` if ``|d| <= delta`` else ``delta (|d| - 0.5 delta)``.

    Equals ``delta * smooth_l1_loss(beta=delta)``; unlike
    ``keras.losses.Huber`` it sums (not averages) over the 4 deltas.
    Returns float32 ``y_true.shape[:-1]``.
    """
    diff = ops.abs(ops.cast(y_pred, "float32") - ops.cast(y_true, "float32"))
    loss = ops.where(diff <= delta, 0.5 * ops.square(diff), delta * (diff - 0.5 * delta))
    return ops.sum(loss, axis=-1)


@keras.saving.register_keras_serializable(package="keras_retina")
class SmoothL1Loss(keras.losses.Loss):
    """Smooth L1 box loss, one value per anchor (see :func:`smooth_l1_loss`).

    Args:
        beta: transition point (0.11, Detectron's RetinaNet; 0 gives L1).
        reduction, name: as for ``keras.losses.Loss`` (computes in float32).

    Example:
        >>> tuple(SmoothL1Loss(reduction=None)(ops.zeros((2, 4)), ops.ones((2, 4))).shape)
        (2,)
    """

    def __init__(self, beta: float = 0.11, reduction="sum_over_batch_size", name="smooth_l1"):
        if beta < 0:
            raise ValueError(f"SmoothL1Loss: `beta` must be >= 0, got {beta!r}.")
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.beta = float(beta)

    def call(self, y_true, y_pred):
        return smooth_l1_loss(y_true, y_pred, beta=self.beta)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(beta=self.beta)
        return config


@keras.saving.register_keras_serializable(package="keras_retina")
class HuberLoss(keras.losses.Loss):
    """Huber box loss summed over the 4 deltas, one value per anchor (see :func:`huber_loss`).

    Example:
        >>> np.asarray(HuberLoss(delta=1.0, reduction=None)(ops.zeros((2, 4)), ops.ones((2, 4))))
        array([2., 2.], dtype=float32)
    """

    def __init__(self, delta: float = 1.0, reduction="sum_over_batch_size", name="huber"):
        if delta <= 0:
            raise ValueError(f"HuberLoss: `delta` must be > 0, got {delta!r}.")
        super().__init__(name=name, reduction=reduction, dtype="float32")
        self.delta = float(delta)

    def call(self, y_true, y_pred):
        return huber_loss(y_true, y_pred, delta=self.delta)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(delta=self.delta)
        return config


_BOX_LOSSES = {
    "smooth_l1": lambda: SmoothL1Loss(),
    "huber": lambda: HuberLoss(),
    "l1": lambda: SmoothL1Loss(beta=0.0, name="l1"),
}


def get_box_loss(identifier) -> keras.losses.Loss:
    """Returns a box loss from a name (``"smooth_l1"``, ``"huber"``, ``"l1"``) or an instance.

    The loss's ``call(y_true, y_pred)`` must map ``(B, A, 4)`` deltas to
    ``(B, A)`` per-anchor values; RetinaNet does its own reduction.

    Example:
        >>> get_box_loss("l1").beta
        0.0
    """
    if identifier is None:
        return SmoothL1Loss()
    if isinstance(identifier, keras.losses.Loss):
        return identifier
    if isinstance(identifier, str) and identifier in _BOX_LOSSES:
        return _BOX_LOSSES[identifier]()
    raise ValueError(
        f"`box_loss` must be one of {sorted(_BOX_LOSSES)} or a keras.losses.Loss, "
        f"got {identifier!r}."
    )
