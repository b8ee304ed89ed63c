"""RetinaNet's class and box subnets, shared across the pyramid's levels."""

from __future__ import annotations

import math

import keras
from keras import ops

#: The paper's prior probability of foreground at initialisation (Sec. 4.1).
PRIOR_PROBABILITY = 0.01
#: Keras' GroupNormalization epsilon (PyTorch's is 1e-5).
GROUP_NORM_EPSILON = 1e-3


def _head_kernel_init():
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


class _DenseHead(keras.layers.Layer):
    """Shared subnet: ``num_convs`` x (3x3 conv, ReLU) then a 3x3 conv to ``K * outputs``.

    Applied with the same weights to every pyramid level; the per-level
    outputs ``(B, h, w, K * outputs)`` are flattened to ``(B, h * w * K, outputs)``
    and concatenated level-major, the order of :class:`AnchorGenerator`.
    """

    def __init__(
        self,
        outputs_per_anchor: int,
        num_anchors: int = 9,
        num_convs: int = 4,
        channels: int = 256,
        use_group_norm: bool = False,
        final_bias: float = 0.0,
        group_norm_epsilon: float = GROUP_NORM_EPSILON,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.group_norm_epsilon = float(group_norm_epsilon)
        self.outputs_per_anchor = int(outputs_per_anchor)
        self.num_anchors = int(num_anchors)
        self.num_convs = int(num_convs)
        self.channels = int(channels)
        self.use_group_norm = bool(use_group_norm)
        self.final_bias = float(final_bias)
        self.convs = [
            keras.layers.Conv2D(
                self.channels,
                3,
                padding="same",
                kernel_initializer=_head_kernel_init(),
                bias_initializer="zeros",
                name=f"conv{i}",
                dtype=self.dtype_policy,
            )
            for i in range(self.num_convs)
        ]
        self.norms = (
            [
                keras.layers.GroupNormalization(
                    groups=32, epsilon=self.group_norm_epsilon, name=f"gn{i}", dtype=self.dtype_policy
                )
                for i in range(self.num_convs)
            ]
            if self.use_group_norm
            else []
        )
        self.output_conv = keras.layers.Conv2D(
            self.num_anchors * self.outputs_per_anchor,
            3,
            padding="same",
            kernel_initializer=_head_kernel_init(),
            bias_initializer=keras.initializers.Constant(self.final_bias),
            name="output",
            dtype=self.dtype_policy,
        )

    def build(self, input_shapes):
        shape = (None, None, None, input_shapes[0][-1])
        for i, conv in enumerate(self.convs):
            conv.build(shape)
            shape = (None, None, None, self.channels)
            if self.norms:
                self.norms[i].build(shape)
        self.output_conv.build(shape)

    def call(self, features):
        outputs = []
        for feature in features:
            x = feature
            for i, conv in enumerate(self.convs):
                x = conv(x)
                if self.norms:
                    x = self.norms[i](x)
                x = ops.relu(x)
            x = self.output_conv(x)  # (B, h, w, K * outputs)
            batch = ops.shape(x)[0]
            outputs.append(ops.reshape(x, (batch, -1, self.outputs_per_anchor)))  # (B, h*w*K, outputs)
        return ops.concatenate(outputs, axis=1)  # (B, A, outputs)

    def compute_output_shape(self, input_shapes):
        total = 0
        for shape in input_shapes:
            if shape[1] is None or shape[2] is None:
                total = None
                break
            total += shape[1] * shape[2] * self.num_anchors
        return (input_shapes[0][0], total, self.outputs_per_anchor)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_anchors=self.num_anchors,
            num_convs=self.num_convs,
            channels=self.channels,
            use_group_norm=self.use_group_norm,
            group_norm_epsilon=self.group_norm_epsilon,
        )
        return config


@keras.saving.register_keras_serializable(package="keras_retina")
class ClassificationHead(_DenseHead):
    """Class subnet: per anchor and class, a logit of "object of this class here".

    Four 3x3 convs (256, ReLU; optional GroupNorm) then a 3x3 conv to
    ``num_anchors * num_classes``; all kernels N(0, 0.01), biases 0 except the
    last, which starts at ``-log((1 - pi) / pi)`` so that every anchor's
    initial foreground probability is ``pi`` (``prior_probability``, 0.01):
    this keeps the background's loss from swamping the first iterations.

    Args:
        num_classes: C, without a background class (sigmoid per class).
        num_anchors: K anchors per location.
        num_convs, channels, use_group_norm: the subnet's tower.
        prior_probability: pi above.
        group_norm_epsilon: GroupNorm's epsilon (Keras' 1e-3; torchvision's
            weights were trained with 1e-5).

    Call args:
        features: list of ``(B, h_l, w_l, channels_in)`` maps (P3..P7).

    Returns:
        ``(B, A, C)`` logits, ``A = sum_l h_l * w_l * K``.

    Example:
        >>> head = ClassificationHead(num_classes=3, channels=32)
        >>> tuple(head([ops.zeros((2, 4, 4, 32)), ops.zeros((2, 2, 2, 32))]).shape)
        (2, 180, 3)
    """

    def __init__(
        self,
        num_classes: int,
        num_anchors: int = 9,
        num_convs: int = 4,
        channels: int = 256,
        use_group_norm: bool = False,
        prior_probability: float = PRIOR_PROBABILITY,
        group_norm_epsilon: float = GROUP_NORM_EPSILON,
        **kwargs,
    ):
        if not 0.0 < prior_probability < 1.0:
            raise ValueError(
                f"ClassificationHead: `prior_probability` must be in (0, 1), got {prior_probability!r}."
            )
        if num_classes < 1:
            raise ValueError(f"ClassificationHead: `num_classes` must be >= 1, got {num_classes!r}.")
        self.num_classes = int(num_classes)
        self.prior_probability = float(prior_probability)
        super().__init__(
            outputs_per_anchor=num_classes,
            num_anchors=num_anchors,
            num_convs=num_convs,
            channels=channels,
            use_group_norm=use_group_norm,
            final_bias=-math.log((1.0 - prior_probability) / prior_probability),
            group_norm_epsilon=group_norm_epsilon,
            **kwargs,
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(num_classes=self.num_classes, prior_probability=self.prior_probability)
        return config


@keras.saving.register_keras_serializable(package="keras_retina")
class BoxHead(_DenseHead):
    """Box subnet: per anchor, 4 deltas ``(dx, dy, dw, dh)`` to the object's box.

    Same tower as :class:`ClassificationHead` (own weights), class-agnostic
    output ``num_anchors * 4``, every kernel N(0, 0.01) and bias 0.

    Args:
        num_anchors, num_convs, channels, use_group_norm, group_norm_epsilon:
            as :class:`ClassificationHead`'s.

    Call args:
        features: list of ``(B, h_l, w_l, channels_in)`` maps (P3..P7).

    Returns:
        ``(B, A, 4)`` deltas, decoded with :func:`keras_retina.model.boxes.decode_deltas`.

    Example:
        >>> tuple(BoxHead(channels=32)([ops.zeros((2, 4, 4, 32))]).shape)
        (2, 144, 4)
    """

    def __init__(
        self,
        num_anchors: int = 9,
        num_convs: int = 4,
        channels: int = 256,
        use_group_norm: bool = False,
        group_norm_epsilon: float = GROUP_NORM_EPSILON,
        **kwargs,
    ):
        super().__init__(
            outputs_per_anchor=4,
            num_anchors=num_anchors,
            num_convs=num_convs,
            channels=channels,
            use_group_norm=use_group_norm,
            final_bias=0.0,
            group_norm_epsilon=group_norm_epsilon,
            **kwargs,
        )
