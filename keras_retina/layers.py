"""RetinaNet layers: the feature pyramid and the class / box subnets."""

from __future__ import annotations

import math

import keras
from keras import ops

#: The paper's prior probability of foreground at initialisation (Sec. 4.1).
PRIOR_PROBABILITY = 0.01
#: Paddings of :class:`FeaturePyramid`'s strided convs.
PADDINGS = ("same", "symmetric")
#: Keras' GroupNormalization epsilon (PyTorch's is 1e-5).
GROUP_NORM_EPSILON = 1e-3


def _head_kernel_init():
    return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


@keras.saving.register_keras_serializable(package="keras_retina")
class FeaturePyramid(keras.layers.Layer):
    """Feature Pyramid Network (Lin et al. 2017) with RetinaNet's P6 and P7.

    ``P5..P3``: 1x1 lateral convs on ``C5..C3`` plus the nearest-upsampled
    level above, each followed by a 3x3 output conv. ``P6``: 3x3 stride-2 conv
    on ``C5`` (the paper) or on ``P5`` (``p6_from="p5"``, as in FCOS);
    ``P7`` and higher: 3x3 stride-2 conv on ``ReLU`` of the level below.
    Kernels use Keras' default Glorot-uniform init (Detectron's FPN uses
    Xavier too); the paper's N(0, 0.01) init applies to the subnets.

    Args:
        channels: output channels of every level (256 in the paper).
        max_level: top level, >= 5 (7 in the paper). The bottom level is P3.
        p6_from: ``"c5"`` (paper) or ``"p5"``.
        padding: of the stride-2 convs of P6 and up: ``"same"`` (Keras:
            on an even input, one row and column at the bottom and right
            only) or ``"symmetric"`` (one on every side, as PyTorch's
            ``padding=1``; for torchvision's weights).

    Call args:
        features: list ``[C3, C4, C5]`` of ``(B, H/8, W/8, c3)``,
            ``(B, H/16, W/16, c4)``, ``(B, H/32, W/32, c5)`` maps (sizes
            rounded up).

    Returns:
        list ``[P3, ..., P<max_level>]``, ``(B, ceil(H / 2**l), ceil(W / 2**l), channels)``.

    Example:
        >>> fpn = FeaturePyramid(channels=64)
        >>> [p.shape[1] for p in fpn([ops.zeros((1, 16, 16, 8)),
        ...                          ops.zeros((1, 8, 8, 16)), ops.zeros((1, 4, 4, 32))])]
        [16, 8, 4, 2, 1]
    """

    def __init__(
        self, channels: int = 256, max_level: int = 7, p6_from: str = "c5", padding: str = "same", **kwargs
    ):
        super().__init__(**kwargs)
        if padding not in PADDINGS:
            raise ValueError(f"FeaturePyramid: `padding` must be one of {PADDINGS}, got {padding!r}.")
        if max_level < 5:
            raise ValueError(f"FeaturePyramid: `max_level` must be >= 5, got {max_level!r}.")
        if p6_from not in ("c5", "p5"):
            raise ValueError(f"FeaturePyramid: `p6_from` must be 'c5' or 'p5', got {p6_from!r}.")
        self.channels = int(channels)
        self.max_level = int(max_level)
        self.p6_from = p6_from
        self.padding = padding
        conv = keras.layers.Conv2D
        self.lateral_convs = [
            conv(self.channels, 1, padding="same", name=f"lateral_c{level}", dtype=self.dtype_policy)
            for level in (3, 4, 5)
        ]
        self.output_convs = [
            conv(self.channels, 3, padding="same", name=f"output_p{level}", dtype=self.dtype_policy)
            for level in (3, 4, 5)
        ]
        self.extra_convs = [
            conv(
                self.channels,
                3,
                strides=2,
                padding="same" if padding == "same" else "valid",
                name=f"p{level}",
                dtype=self.dtype_policy,
            )
            for level in range(6, self.max_level + 1)
        ]
        self.upsample = keras.layers.UpSampling2D(2, interpolation="nearest", dtype=self.dtype_policy)

    def build(self, input_shapes):
        c3_shape, c4_shape, c5_shape = input_shapes
        for conv, shape in zip(self.lateral_convs, (c3_shape, c4_shape, c5_shape)):
            conv.build(shape)
        out_shape = (None, None, None, self.channels)
        for conv in self.output_convs:
            conv.build(out_shape)
        for i, conv in enumerate(self.extra_convs):
            conv.build((None, None, None, c5_shape[-1]) if i == 0 and self.p6_from == "c5" else out_shape)

    def call(self, features):
        c3, c4, c5 = features
        laterals = [conv(c) for conv, c in zip(self.lateral_convs, (c3, c4, c5))]
        merged = [None, None, laterals[2]]
        for i in (1, 0):
            above = self.upsample(merged[i + 1])
            # An odd-sized level upsamples one cell too many: crop to the lateral.
            height, width = ops.shape(laterals[i])[1], ops.shape(laterals[i])[2]
            merged[i] = laterals[i] + above[:, :height, :width, :]
        outputs = [conv(m) for conv, m in zip(self.output_convs, merged)]
        previous = c5 if self.p6_from == "c5" else outputs[-1]
        for i, conv in enumerate(self.extra_convs):
            x = previous if i == 0 else ops.relu(previous)
            if self.padding == "symmetric":
                x = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            level = conv(x)
            outputs.append(level)
            previous = level
        return outputs

    def compute_output_shape(self, input_shapes):
        batch, height, width = input_shapes[0][:3]
        shapes = []
        for level in range(3, self.max_level + 1):
            factor = 2 ** (level - 3)
            h = None if height is None else math.ceil(height / factor)
            w = None if width is None else math.ceil(width / factor)
            shapes.append((batch, h, w, self.channels))
        return shapes

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            channels=self.channels, max_level=self.max_level, p6_from=self.p6_from, padding=self.padding
        )
        return config


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
        ``(B, A, 4)`` deltas, decoded with :func:`keras_retina.boxes.decode_deltas`.

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
