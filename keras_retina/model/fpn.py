"""The feature pyramid (FPN) with RetinaNet's P6 and P7, on a backbone's C3-C5."""

from __future__ import annotations

import math

import keras
from keras import ops

#: Paddings of :class:`FeaturePyramid`'s strided convs.
PADDINGS = ("same", "symmetric")


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
