"""RetinaNet anchors: 9 per location on pyramid levels P3–P7."""

from __future__ import annotations

import functools
import math
from typing import Sequence

import keras
import numpy as np

DEFAULT_SCALES = (2.0**0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: Orders of the anchors within a cell (see :class:`AnchorGenerator`).
ANCHOR_ORDERS = ("scale_major", "ratio_major")


@keras.saving.register_keras_serializable(package="keras_retina")
class AnchorGenerator:
    """Generates the anchors of a feature pyramid, in the order the heads emit them.

    At level ``l`` (stride ``s = 2**l``) the feature map has
    ``ceil(H / s) x ceil(W / s)`` cells. Each cell ``(i, j)`` has its anchor
    centre at ``((j + offset) * s, (i + offset) * s)`` pixels: by default
    (``offset=0.5``) the centre of the cell it covers. Detectron2, keras-hub
    and torchvision put it at the cell's top-left corner (``offset=0.0``).
    For each scale ``k`` and aspect ratio ``r = height / width`` the anchor
    has size ``size = size_multiplier * s * k`` (area ``size**2``), width
    ``size / sqrt(r)`` and height ``size * sqrt(r)``.

    Order: level-major (P3 first), then row ``i``, column ``j``, then
    ``len(scales) * len(aspect_ratios)`` anchors per cell — the order in
    which ``(B, h, w, num_anchors * K)`` head outputs reshape to
    ``(B, h * w * num_anchors, K)``. Within a cell the anchors are
    scale-major (``order="scale_major"``: all ratios of the first scale
    first) or ratio-major (``"ratio_major"``, torchvision's order).

    ``round_to_pixels=True`` reproduces torchvision's ``AnchorGenerator``
    exactly, for its published weights (:mod:`keras_retina.pretrained`):
    each size is truncated to whole pixels (``int(size)``: 32, 40, 50 at
    P3) and each anchor's half width and half height are rounded to whole
    pixels (half to even), in float32; and a level's stride is the image
    size integer-divided by its feature size (``800 // 13 = 61`` at P6 of
    an 800-pixel side, where the paper's is 64).

    Args:
        min_level: lowest pyramid level (stride ``2**min_level``).
        max_level: highest pyramid level.
        size_multiplier: anchor base size in strides (4 in the paper:
            32 px at P3 up to 512 px at P7).
        scales: octave scales of the base size.
        aspect_ratios: height / width ratios.
        offset: anchor centre within its cell, in strides, in [0, 1)
            (0.5: the cell centre).
        order: ``"scale_major"`` or ``"ratio_major"``, see above.
        round_to_pixels: torchvision's rounding, see above.

    Example:
        >>> gen = AnchorGenerator()
        >>> gen((512, 512)).shape
        (49104, 4)
        >>> torchvision_like = AnchorGenerator(offset=0.0, order="ratio_major", round_to_pixels=True)
        >>> torchvision_like((512, 512))[:3]   # P3, cell (0, 0): ratio 0.5 at sizes 32, 40, 50
        array([[-23., -11.,  23.,  11.],
               [-28., -14.,  28.,  14.],
               [-35., -18.,  35.,  18.]], dtype=float32)
    """


    def __init__(
        self,
        min_level: int = 3,
        max_level: int = 7,
        size_multiplier: float = 4.0,
        scales: Sequence[float] = DEFAULT_SCALES,
        aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
        offset: float = 0.5,
        order: str = "scale_major",
        round_to_pixels: bool = False,
    ):
        if not 1 <= min_level <= max_level:
            raise ValueError(
                "AnchorGenerator: `min_level` and `max_level` must satisfy 1 <= min_level "
                f"<= max_level, got min_level={min_level!r}, max_level={max_level!r}."
            )
        if size_multiplier <= 0 or not scales or not aspect_ratios:
            raise ValueError(
                "AnchorGenerator: `size_multiplier` must be > 0 and `scales` / "
                f"`aspect_ratios` non-empty, got size_multiplier={size_multiplier!r}, "
                f"scales={scales!r}, aspect_ratios={aspect_ratios!r}."
            )
        if min(scales) <= 0 or min(aspect_ratios) <= 0:
            raise ValueError(
                f"AnchorGenerator: `scales` and `aspect_ratios` must be > 0, got "
                f"scales={scales!r}, aspect_ratios={aspect_ratios!r}."
            )
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"AnchorGenerator: `offset` must be in [0, 1), got {offset!r}.")
        if order not in ANCHOR_ORDERS:
            raise ValueError(f"AnchorGenerator: `order` must be one of {ANCHOR_ORDERS}, got {order!r}.")
        self.offset = float(offset)
        self.order = order
        self.round_to_pixels = bool(round_to_pixels)
        self.min_level = int(min_level)
        self.max_level = int(max_level)
        self.size_multiplier = float(size_multiplier)
        self.scales = tuple(float(s) for s in scales)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)

    @property
    def num_anchors_per_location(self) -> int:
        """Anchors per feature-map cell (9 by default)."""
        return len(self.scales) * len(self.aspect_ratios)

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(range(self.min_level, self.max_level + 1))

    def feature_sizes(self, image_shape: Sequence[int]) -> list[tuple[int, int]]:
        """``(height, width)`` of each level's feature map for an image ``(H, W)``."""
        height, width = _check_image_shape(image_shape)
        return [
            (math.ceil(height / 2**level), math.ceil(width / 2**level))
            for level in self.levels
        ]

    def strides(self, image_shape: Sequence[int]) -> list[tuple[int, int]]:
        """``(stride_y, stride_x)`` in pixels between neighbouring anchor centres on each level.

        ``2**level`` on both axes, but with torchvision's arithmetic
        (``round_to_pixels``), where it is the image size integer-divided by
        the feature size.

        Example:
            >>> AnchorGenerator(min_level=6, max_level=7).strides((800, 1088))
            [(64, 64), (128, 128)]
            >>> AnchorGenerator(min_level=6, max_level=7, round_to_pixels=True).strides((800, 1088))
            [(61, 64), (114, 120)]
        """
        height, width = _check_image_shape(image_shape)
        return [_level_grid(self._key(), level, height, width)[2:] for level in self.levels]

    def anchors_per_level(self, image_shape: Sequence[int]) -> list[int]:
        """Number of anchors on each level, in order."""
        return [
            h * w * self.num_anchors_per_location for h, w in self.feature_sizes(image_shape)
        ]

    def __call__(self, image_shape: Sequence[int]) -> np.ndarray:
        """Returns all anchors for an image of ``image_shape = (H, W)`` pixels.

        Returns:
            float32 NumPy array ``(A, 4)``, ``xyxy`` pixels; ``A`` is the sum
            of :meth:`anchors_per_level`. The result is cached per shape.
        """
        return _anchors(self._key(), tuple(_check_image_shape(image_shape)))

    def _key(self):
        return (
            self.min_level,
            self.max_level,
            self.size_multiplier,
            self.scales,
            self.aspect_ratios,
            self.offset,
            self.order,
            self.round_to_pixels,
        )

    def get_config(self) -> dict:
        return {
            "min_level": self.min_level,
            "max_level": self.max_level,
            "size_multiplier": self.size_multiplier,
            "scales": self.scales,
            "aspect_ratios": self.aspect_ratios,
            "offset": self.offset,
            "order": self.order,
            "round_to_pixels": self.round_to_pixels,
        }

    @classmethod
    def from_config(cls, config: dict) -> "AnchorGenerator":
        return cls(**config)

    def __eq__(self, other) -> bool:
        return isinstance(other, AnchorGenerator) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"AnchorGenerator({args})"


def _check_image_shape(image_shape) -> tuple[int, int]:
    if image_shape is None or len(image_shape) < 2 or None in tuple(image_shape[:2]):
        raise ValueError(
            "AnchorGenerator: `image_shape` must be a static (height, width), got "
            f"{image_shape!r}. Resize or pad images to a fixed size first."
        )
    height, width = int(image_shape[0]), int(image_shape[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"AnchorGenerator: `image_shape` must be positive, got {image_shape!r}.")
    return height, width


def _level_half_sizes(key, level: int) -> np.ndarray:
    """``(K, 2)`` half widths and half heights in pixels of one cell's anchors at ``level``."""
    _, _, size_multiplier, scales, aspect_ratios, _, order, round_to_pixels = key
    # Per-cell anchor shapes: K pairs (scale, ratio) in the generator's order.
    if order == "scale_major":
        shapes = [(scale, ratio) for scale in scales for ratio in aspect_ratios]
    else:
        shapes = [(scale, ratio) for ratio in aspect_ratios for scale in scales]
    # torchvision computes in float32 (and rounds there); the default in float64.
    dtype = np.float32 if round_to_pixels else np.float64
    sizes = np.array([size_multiplier * 2**level * scale for scale, _ in shapes])  # (K,)
    if round_to_pixels:
        sizes = np.trunc(sizes)
    ratios = np.array([ratio for _, ratio in shapes], dtype=dtype)  # (K,)
    height_factors = np.sqrt(ratios)
    width_factors = (1 / height_factors).astype(dtype)
    half_wh = np.stack(
        [width_factors * sizes.astype(dtype) / 2, height_factors * sizes.astype(dtype) / 2], axis=-1
    )  # (K, 2) half widths and half heights in pixels
    if round_to_pixels:
        half_wh = np.round(half_wh)  # half to even, as torch.round
    return half_wh


def _level_grid(key, level: int, height, width, ceil_div=lambda a, b: -(-a // b)):
    """``(rows, cols, stride_y, stride_x)`` of ``level`` for an image ``(height, width)`` (ints or int tensors).

    The stride is ``2**level``; with torchvision's arithmetic
    (``round_to_pixels``) it is the image size integer-divided by the
    feature size, as torchvision's ``AnchorGenerator`` computes it: 61 rather
    than 64 at P6 of an 800-pixel side (13 cells).
    """
    stride = 2**level
    rows, cols = ceil_div(height, stride), ceil_div(width, stride)
    if key[-1]:  # round_to_pixels
        return rows, cols, height // rows, width // cols
    return rows, cols, stride, stride


@functools.lru_cache(maxsize=32)
def _anchors(key, image_shape: tuple[int, int]) -> np.ndarray:
    min_level, max_level, offset = key[0], key[1], key[5]
    height, width = image_shape
    per_level = []
    for level in range(min_level, max_level + 1):
        half_wh = _level_half_sizes(key, level)
        rows, cols, stride_y, stride_x = _level_grid(key, level, height, width)
        cy, cx = np.meshgrid(
            (np.arange(rows) + offset) * stride_y, (np.arange(cols) + offset) * stride_x, indexing="ij"
        )
        centers = np.stack([cx, cy], axis=-1).reshape(-1, 1, 2)  # (rows*cols, 1, 2)
        level_anchors = np.concatenate([centers - half_wh, centers + half_wh], axis=-1)
        per_level.append(level_anchors.reshape(-1, 4))  # (rows*cols*K, 4)
    anchors = np.concatenate(per_level, axis=0).astype(np.float32)
    anchors.flags.writeable = False
    return anchors


def anchors_in_graph(generator: AnchorGenerator, height, width) -> tuple:
    """:class:`AnchorGenerator`'s anchors for an image size known only when the graph runs.

    The same arithmetic as ``generator((height, width))`` (in float64, then
    float32), for a serving graph whose input size varies per request.

    Args:
        generator: the anchors' :class:`AnchorGenerator`.
        height, width: int32 scalar tensors, pixels.

    Returns:
        ``(anchors, anchors_per_level)``: float32 ``(A, 4)`` xyxy pixels and
        a list of int32 scalars, one per level.

    Example:
        >>> import tensorflow as tf
        >>> gen = AnchorGenerator()
        >>> anchors, counts = anchors_in_graph(gen, tf.constant(96), tf.constant(160))
        >>> bool(np.array_equal(anchors.numpy(), gen((96, 160)))), [int(c) for c in counts] == gen.anchors_per_level((96, 160))
        (True, True)
    """
    import tensorflow as tf  # noqa: PLC0415  (the NumPy path above needs no TensorFlow)

    key = generator._key()
    offset = key[5]
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    per_level, counts = [], []
    for level in generator.levels:
        half_wh = tf.constant(_level_half_sizes(key, level), tf.float64)  # (K, 2)
        rows, cols, stride_y, stride_x = _level_grid(key, level, height, width)
        ys = (tf.cast(tf.range(rows), tf.float64) + offset) * tf.cast(stride_y, tf.float64)  # (rows,)
        xs = (tf.cast(tf.range(cols), tf.float64) + offset) * tf.cast(stride_x, tf.float64)  # (cols,)
        cy, cx = tf.meshgrid(ys, xs, indexing="ij")  # (rows, cols)
        centers = tf.reshape(tf.stack([cx, cy], axis=-1), (-1, 1, 2))  # (rows*cols, 1, 2)
        level_anchors = tf.concat([centers - half_wh, centers + half_wh], axis=-1)  # (rows*cols, K, 4)
        per_level.append(tf.reshape(level_anchors, (-1, 4)))
        counts.append(rows * cols * half_wh.shape[0])
    return tf.cast(tf.concat(per_level, axis=0), tf.float32), counts
