"""Box maths: format conversion, pairwise IoU, and anchor-relative deltas (:class:`BoxCoder`).

All functions take and return float tensors (or NumPy arrays) in absolute
pixels. ``xyxy`` is ``(x_min, y_min, x_max, y_max)``; see
``keras.utils.bounding_boxes.convert_format`` for the other format names
(``xywh``, ``yxyx``, ``center_xywh``, ``rel_xyxy``, ...).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Sequence

import keras
from keras import ops

#: Largest allowed log-scale delta when decoding, log(1000 / 16) as in
#: Detectron: it keeps ``exp(dw)`` finite for an untrained model.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)

#: Default delta weights (wx, wy, ww, wh); RetinaNet uses 1 for all four.
DEFAULT_BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def convert_format(
    boxes,
    source: str,
    target: str,
    image_shape: Sequence[int] | None = None,
):
    """Converts boxes between formats (thin wrapper over Keras).

    Args:
        boxes: float tensor ``(..., 4)``.
        source: format of ``boxes``, e.g. ``"xyxy"``, ``"xywh"``, ``"yxyx"``.
        target: format to return.
        image_shape: ``(height, width)`` in pixels; needed only for the
            relative formats (``rel_xyxy`` and friends).

    Returns:
        float tensor ``(..., 4)`` in ``target`` format.

    Example:
        >>> ops.convert_to_numpy(convert_format([[10., 20., 30., 40.]], "xywh", "xyxy"))
        array([[10., 20., 40., 60.]], dtype=float32)
    """
    height = width = None
    if image_shape is not None:
        height, width = image_shape[0], image_shape[1]
    if source == target:
        return ops.convert_to_tensor(boxes, "float32")
    return keras.utils.bounding_boxes.convert_format(
        ops.convert_to_tensor(boxes, "float32"),
        source=source,
        target=target,
        height=height,
        width=width,
    )


def box_area(boxes_xyxy):
    """Area of ``xyxy`` boxes, ``(..., 4)`` -> ``(...)`` in pixels²; 0 if degenerate.

    Example:
        >>> ops.convert_to_numpy(box_area(np.array([[0., 0., 10., 5.], [3., 3., 1., 9.]], "float32")))
        array([50.,  0.], dtype=float32)
    """
    widths = ops.maximum(boxes_xyxy[..., 2] - boxes_xyxy[..., 0], 0.0)
    heights = ops.maximum(boxes_xyxy[..., 3] - boxes_xyxy[..., 1], 0.0)
    return widths * heights


def pairwise_intersection(boxes1_xyxy, boxes2_xyxy):
    """Intersection areas (pixels²) of every pair: ``(..., N, 4), (..., M, 4) -> (..., N, M)``.

    Example:
        >>> ops.convert_to_numpy(pairwise_intersection(np.array([[0., 0., 10., 10.]], "float32"),
        ...                                            np.array([[5., 0., 15., 10.]], "float32")))
        array([[50.]], dtype=float32)
    """
    b1 = ops.expand_dims(boxes1_xyxy, -2)  # (..., N, 1, 4)
    b2 = ops.expand_dims(boxes2_xyxy, -3)  # (..., 1, M, 4)
    widths = ops.minimum(b1[..., 2], b2[..., 2]) - ops.maximum(b1[..., 0], b2[..., 0])
    heights = ops.minimum(b1[..., 3], b2[..., 3]) - ops.maximum(b1[..., 1], b2[..., 1])
    return ops.maximum(widths, 0.0) * ops.maximum(heights, 0.0)


def pairwise_iou(boxes1_xyxy, boxes2_xyxy):
    """Pairwise IoU of two sets of ``xyxy`` boxes.

    Args:
        boxes1_xyxy: ``(N, 4)`` or ``(B, N, 4)`` pixels.
        boxes2_xyxy: ``(M, 4)`` or ``(B, M, 4)`` pixels (same batch rank).

    Returns:
        ``(N, M)`` or ``(B, N, M)`` IoU in [0, 1]; 0 where either box is empty.

    Example:
        >>> ops.convert_to_numpy(pairwise_iou([[0., 0., 10., 10.]], [[5., 0., 15., 10.]]))
        array([[0.3333]], dtype=float32)
    """
    # Hand-written instead of keras.utils.bounding_boxes.compute_iou: that one
    # needs the same batch rank on both sides (anchors are unbatched here) and
    # masks padding by negative coordinates, while ours is marked by class -1.
    return pairwise_iou_and_intersection(boxes1_xyxy, boxes2_xyxy)[0]


def pairwise_iou_and_intersection(boxes1_xyxy, boxes2_xyxy):
    """:func:`pairwise_iou` and :func:`pairwise_intersection` from one pass.

    Returns:
        ``(iou, intersection)``, each ``(..., N, M)``; the intersection in pixels².

    Example:
        >>> iou, inter = pairwise_iou_and_intersection([[0., 0., 10., 10.]], [[5., 0., 15., 10.]])
        >>> ops.convert_to_numpy(iou), ops.convert_to_numpy(inter)
        (array([[0.3333]], dtype=float32), array([[50.]], dtype=float32))
    """
    boxes1_xyxy = ops.convert_to_tensor(boxes1_xyxy, "float32")
    boxes2_xyxy = ops.convert_to_tensor(boxes2_xyxy, "float32")
    intersection = pairwise_intersection(boxes1_xyxy, boxes2_xyxy)
    union = (
        ops.expand_dims(box_area(boxes1_xyxy), -1)
        + ops.expand_dims(box_area(boxes2_xyxy), -2)
        - intersection
    )
    iou = ops.where(union > 0.0, intersection / ops.maximum(union, 1e-8), 0.0)
    return iou, intersection


def pairwise_ioa(boxes1_xyxy, regions_xyxy):
    """Intersection over the area of ``boxes1``: ``(..., N, 4), (..., M, 4) -> (..., N, M)``.

    Used to find anchors inside crowd regions (an anchor wholly inside a
    crowd box has IoA 1 whatever the crowd box's size). Values in [0, 1].

    Example:
        >>> ops.convert_to_numpy(pairwise_ioa(np.array([[0., 0., 10., 10.]], "float32"),
        ...                                   np.array([[0., 0., 100., 5.]], "float32")))
        array([[0.5]], dtype=float32)
    """
    intersection = pairwise_intersection(boxes1_xyxy, regions_xyxy)
    area1 = ops.expand_dims(box_area(boxes1_xyxy), -1)
    return ops.where(area1 > 0.0, intersection / ops.maximum(area1, 1e-8), 0.0)


@keras.saving.register_keras_serializable(package="keras_retina")
@dataclasses.dataclass(frozen=True)
class BoxCoder:
    """Anchor-relative box deltas ``(dx, dy, dw, dh)``: encoding and decoding.

    ``dx = wx * (x_box - x_anchor) / w_anchor``, ``dy = wy * (y_box -
    y_anchor) / h_anchor``, ``dw = ww * log(w_box / w_anchor)``, ``dh = wh *
    log(h_box / h_anchor)``, with centres ``x``, ``y`` and sizes ``w``, ``h``
    (Girshick et al., R-CNN). When decoding, ``dw / ww`` and ``dh / wh`` are
    clamped at ``scale_clamp`` so that ``exp`` stays finite for an untrained
    model.

    The one object that matching (:func:`keras_retina.model.matching.assign_targets`,
    encoding the regression targets) and post-processing
    (:func:`keras_retina.model.postprocess.decode_detections`, decoding the
    predictions) share: :class:`keras_retina.RetinaNet` builds it once from
    its ``box_weights``.

    Args:
        weights: ``(wx, wy, ww, wh)``, positive multipliers of the deltas
            (RetinaNet: all 1).
        scale_clamp: largest ``dw / ww`` and ``dh / wh`` when decoding,
            log(1000 / 16) as in Detectron.

    Example:
        >>> coder = BoxCoder(weights=(10., 10., 5., 5.))
        >>> deltas = coder.encode([[0., 0., 10., 10.]], [[1., 0., 11., 10.]])
        >>> ops.convert_to_numpy(deltas)
        array([[1., 0., 0., 0.]], dtype=float32)
        >>> ops.convert_to_numpy(coder.decode([[0., 0., 10., 10.]], deltas))
        array([[ 1.,  0., 11., 10.]], dtype=float32)
    """

    weights: tuple[float, float, float, float] = DEFAULT_BOX_WEIGHTS
    scale_clamp: float = BBOX_XFORM_CLIP

    def __post_init__(self):
        try:
            weights = tuple(float(w) for w in self.weights)
        except (TypeError, ValueError):
            weights = ()
        if len(weights) != 4 or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(
                f"`weights` must be 4 positive numbers (wx, wy, ww, wh), got {self.weights!r}."
            )
        if isinstance(self.scale_clamp, bool) or not isinstance(self.scale_clamp, numbers.Real) or not (
            self.scale_clamp > 0
        ):
            raise ValueError(f"`scale_clamp` must be a positive number, got {self.scale_clamp!r}.")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "scale_clamp", float(self.scale_clamp))

    @classmethod
    def resolve(cls, box_coder: "BoxCoder | None", box_weights: Sequence[float] | None) -> "BoxCoder":
        """``box_coder``, or one made from ``box_weights`` (default weights when both are None).

        For functions that take either; giving both is an error.

        Example:
            >>> BoxCoder.resolve(None, (10., 10., 5., 5.)).weights
            (10.0, 10.0, 5.0, 5.0)
        """
        if box_coder is None:
            return cls(DEFAULT_BOX_WEIGHTS if box_weights is None else box_weights)
        if box_weights is not None:
            raise ValueError(f"`box_weights` must be None when `box_coder` is given, got {box_weights!r}.")
        return box_coder

    def encode(self, anchors_xyxy, boxes_xyxy):
        """Encodes boxes as deltas relative to their anchors.

        Args:
            anchors_xyxy: ``(A, 4)`` pixels.
            boxes_xyxy: ``(A, 4)`` or ``(B, A, 4)`` pixels, one box per anchor.

        Returns:
            float32 deltas (unitless), ``boxes_xyxy``'s shape.
        """
        variance = [1.0 / w for w in self.weights]
        return keras.utils.bounding_boxes.encode_box_to_deltas(
            anchors=ops.convert_to_tensor(anchors_xyxy, "float32"),
            boxes=ops.convert_to_tensor(boxes_xyxy, "float32"),
            anchor_format="xyxy",
            box_format="xyxy",
            encoding_format="center_xywh",
            variance=variance,
        )

    def decode(self, anchors_xyxy, deltas):
        """Inverse of :meth:`encode`, with ``dw``/``dh`` clamped at ``scale_clamp``.

        Args:
            anchors_xyxy: ``(A, 4)`` pixels, or ``(B, A, 4)`` (one anchor per delta).
            deltas: ``(A, 4)`` or ``(B, A, 4)`` float deltas, any float dtype.

        Returns:
            float32 ``xyxy`` boxes in pixels, ``deltas``' shape.
        """
        # Hand-written: keras.utils.bounding_boxes.decode_deltas_to_boxes does not
        # clamp dw/dh, so an untrained model's exp(dw) overflows to inf.
        anchors_xyxy = ops.convert_to_tensor(anchors_xyxy, "float32")
        deltas = ops.cast(deltas, "float32")
        widths = anchors_xyxy[..., 2] - anchors_xyxy[..., 0]
        heights = anchors_xyxy[..., 3] - anchors_xyxy[..., 1]
        centers_x = anchors_xyxy[..., 0] + 0.5 * widths
        centers_y = anchors_xyxy[..., 1] + 0.5 * heights
        wx, wy, ww, wh = self.weights
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = ops.minimum(deltas[..., 2] / ww, self.scale_clamp)
        dh = ops.minimum(deltas[..., 3] / wh, self.scale_clamp)
        pred_cx = dx * widths + centers_x
        pred_cy = dy * heights + centers_y
        pred_w = ops.exp(dw) * widths
        pred_h = ops.exp(dh) * heights
        return ops.stack(
            [
                pred_cx - 0.5 * pred_w,
                pred_cy - 0.5 * pred_h,
                pred_cx + 0.5 * pred_w,
                pred_cy + 0.5 * pred_h,
            ],
            axis=-1,
        )

    def get_config(self) -> dict:
        return {"weights": self.weights, "scale_clamp": self.scale_clamp}

    @classmethod
    def from_config(cls, config: dict) -> "BoxCoder":
        return cls(**config)


def encode_deltas(anchors_xyxy, boxes_xyxy, weights: Sequence[float] = DEFAULT_BOX_WEIGHTS):
    """``BoxCoder(weights).encode(anchors_xyxy, boxes_xyxy)``: see :class:`BoxCoder`.

    Args:
        anchors_xyxy: ``(A, 4)`` pixels.
        boxes_xyxy: ``(A, 4)`` or ``(B, A, 4)`` pixels, one box per anchor.
        weights: ``(wx, wy, ww, wh)`` multipliers.

    Returns:
        ``boxes_xyxy.shape`` float32 deltas (unitless).

    Example:
        >>> ops.convert_to_numpy(encode_deltas([[0., 0., 10., 10.]], [[1., 0., 11., 10.]]))
        array([[0.1, 0. , 0. , 0. ]], dtype=float32)
    """
    return BoxCoder(weights).encode(anchors_xyxy, boxes_xyxy)


def decode_deltas(
    anchors_xyxy,
    deltas,
    weights: Sequence[float] = DEFAULT_BOX_WEIGHTS,
    clip: float = BBOX_XFORM_CLIP,
):
    """``BoxCoder(weights, clip).decode(anchors_xyxy, deltas)``: see :class:`BoxCoder`.

    Args:
        anchors_xyxy: ``(A, 4)`` pixels.
        deltas: ``(A, 4)`` or ``(B, A, 4)`` float deltas.
        weights: ``(wx, wy, ww, wh)`` used when encoding.
        clip: largest ``dw``/``dh`` after dividing by the weights.

    Returns:
        ``deltas.shape`` float32 boxes, ``xyxy`` pixels.

    Example:
        >>> ops.convert_to_numpy(decode_deltas([[0., 0., 10., 10.]], [[0.1, 0., 0., 0.]]))
        array([[ 1.,  0., 11., 10.]], dtype=float32)
    """
    return BoxCoder(weights, clip).decode(anchors_xyxy, deltas)


def clip_to_image(boxes_xyxy, image_shape: Sequence[int]):
    """Clips ``xyxy`` boxes ``(..., 4)`` to ``[0, width] x [0, height]`` pixels.

    Args:
        boxes_xyxy: float ``(..., 4)`` pixels.
        image_shape: ``(height, width)`` pixels.

    Example:
        >>> ops.convert_to_numpy(clip_to_image(np.array([[-5., 3., 130., 70.]], "float32"), (64, 128)))
        array([[  0.,   3., 128.,  64.]], dtype=float32)
    """
    height, width = ops.cast(image_shape[0], "float32"), ops.cast(image_shape[1], "float32")  # ints or tensors
    x1 = ops.clip(boxes_xyxy[..., 0], 0.0, width)
    y1 = ops.clip(boxes_xyxy[..., 1], 0.0, height)
    x2 = ops.clip(boxes_xyxy[..., 2], 0.0, width)
    y2 = ops.clip(boxes_xyxy[..., 3], 0.0, height)
    return ops.stack([x1, y1, x2, y2], axis=-1)
