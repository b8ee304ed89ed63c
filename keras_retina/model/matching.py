"""Anchor ↔ ground-truth assignment: classification and box targets with weights.

Runs inside the train step: batched, static shapes, Keras ops only.
"""

from __future__ import annotations

from typing import Sequence

from keras import ops

from keras_retina.model import boxes as box_ops

#: Class target of an anchor matched to no object.
BACKGROUND = -1
#: Class target of an anchor left out of the classification loss
#: (IoU between the two thresholds, or inside a crowd region).
IGNORE = -2


def assign_targets(
    anchors_xyxy,
    gt_boxes_xyxy,
    gt_classes,
    gt_is_crowd=None,
    *,
    foreground_iou: float = 0.5,
    background_iou: float = 0.4,
    allow_low_quality_matches: bool = True,
    crowd_ioa: float = 0.5,
    box_weights: Sequence[float] | None = None,
    box_coder: box_ops.BoxCoder | None = None,
) -> dict:
    """Labels every anchor as foreground, background or ignored.

    Rules (the paper's, Sec. 4): an anchor whose best IoU with a ground-truth
    box is >= ``foreground_iou`` is foreground, with that box's class and
    regression target; < ``background_iou`` is background; in between it is
    ignored. With ``allow_low_quality_matches`` (default True, as in the
    paper's Detectron code) each ground-truth box also claims the anchors
    with its highest IoU (ties included), so that no object goes unmatched
    because its shape fits no anchor. Rows with class < 0 (padding), zero or
    negative width/height, or ``is_crowd`` are never positives; an anchor
    that would be background but covers a crowd box with intersection /
    anchor area >= ``crowd_ioa`` is ignored (mmdetection's ``ignore_iof_thr``).
    An image with no valid box is all background.

    Args:
        anchors_xyxy: ``(A, 4)`` float32 pixels.
        gt_boxes_xyxy: ``(B, N, 4)`` float32 pixels.
        gt_classes: ``(B, N)`` int, contiguous class ids; -1 marks padding.
        gt_is_crowd: optional ``(B, N)`` bool.
        foreground_iou: IoU at or above which an anchor is foreground.
        background_iou: IoU below which an anchor is background.
        allow_low_quality_matches: see above.
        crowd_ioa: intersection-over-anchor-area with a crowd box at or
            above which a background anchor is ignored.
        box_weights: ``(wx, wy, ww, wh)``: shorthand for
            ``box_coder=BoxCoder(box_weights)``; default all 1.
        box_coder: the :class:`keras_retina.model.boxes.BoxCoder` that encodes the
            box targets (the one decoding will use); give it or
            ``box_weights``, not both.

    Returns:
        dict with
        ``"cls_targets"``: int32 ``(B, A)``, a class id, :data:`BACKGROUND`
        or :data:`IGNORE`;
        ``"box_targets"``: float32 ``(B, A, 4)`` encoded deltas (meaningful
        only where foreground);
        ``"foreground"``: bool ``(B, A)``;
        ``"cls_weights"``: float32 ``(B, A)``, 0 where ignored, else 1.

    Example:
        One image (B = 1) with one 32-pixel box of class 3, against the 3069
        anchors of a 128 × 128 input:

        >>> anchors = kr.AnchorGenerator()((128, 128))
        >>> t = assign_targets(anchors, [[[0., 0., 32., 32.]]], [[3]])
        >>> t["cls_targets"].shape, t["box_targets"].shape
        (TensorShape([1, 3069]), TensorShape([1, 3069, 4]))
        >>> cls_targets = ops.convert_to_numpy(t["cls_targets"])[0]
        >>> [int((cls_targets == label).sum()) for label in (3, BACKGROUND, IGNORE)]
        [16, 3021, 32]
    """
    if background_iou > foreground_iou:
        raise ValueError(
            f"`background_iou` must be <= `foreground_iou` ({foreground_iou}), got {background_iou}."
        )
    box_coder = box_ops.BoxCoder.resolve(box_coder, box_weights)
    anchors_xyxy = ops.convert_to_tensor(anchors_xyxy, "float32")
    gt_boxes_xyxy = ops.cast(gt_boxes_xyxy, "float32")
    gt_classes = ops.cast(gt_classes, "int32")
    if gt_boxes_xyxy.shape[1] == 0:
        # Zero box slots: add one padding row so the max/argmax below are defined.
        gt_boxes_xyxy = ops.pad(gt_boxes_xyxy, [[0, 0], [0, 1], [0, 0]])
        gt_classes = ops.pad(gt_classes, [[0, 0], [0, 1]], constant_values=-1)
        gt_is_crowd = None if gt_is_crowd is None else ops.pad(gt_is_crowd, [[0, 0], [0, 1]])

    widths = gt_boxes_xyxy[..., 2] - gt_boxes_xyxy[..., 0]
    heights = gt_boxes_xyxy[..., 3] - gt_boxes_xyxy[..., 1]
    real = (gt_classes >= 0) & (widths > 0) & (heights > 0)  # (B, N)
    if gt_is_crowd is not None:
        crowd = real & ops.cast(gt_is_crowd, "bool")
        matchable = real & ops.logical_not(crowd)
    else:
        crowd = None
        matchable = real

    # One (B, A, N) intersection serves both the IoU and, for crowd boxes,
    # the intersection over the anchor's area.
    iou, intersection = box_ops.pairwise_iou_and_intersection(anchors_xyxy, gt_boxes_xyxy)  # (B, A, N)
    iou = ops.where(ops.expand_dims(matchable, 1), iou, -1.0)
    max_iou = ops.max(iou, axis=-1)  # (B, A)
    matched_index = ops.argmax(iou, axis=-1)  # (B, A)

    foreground = max_iou >= foreground_iou
    background = max_iou < background_iou
    if allow_low_quality_matches:
        best_iou_per_gt = ops.max(iou, axis=1, keepdims=True)  # (B, 1, N)
        is_best = (iou == best_iou_per_gt) & (best_iou_per_gt > 0.0)  # (B, A, N)
        is_best = is_best & ops.expand_dims(matchable, 1)
        foreground = foreground | ops.any(is_best, axis=-1)
    background = background & ops.logical_not(foreground)

    if crowd is not None:

        def _in_crowd():
            anchor_area = ops.expand_dims(box_ops.box_area(anchors_xyxy), -1)  # (A, 1)
            ioa = intersection / ops.maximum(anchor_area, 1e-8)  # (B, A, N)
            ioa = ops.where(ops.expand_dims(crowd, 1), ioa, 0.0)
            return ops.max(ioa, axis=-1) >= crowd_ioa  # (B, A)

        in_crowd = ops.cond(
            ops.any(crowd), _in_crowd, lambda: ops.zeros_like(background)
        )
        background = background & ops.logical_not(in_crowd)

    matched_classes = ops.take_along_axis(gt_classes, matched_index, axis=1)  # (B, A)
    cls_targets = ops.where(
        foreground,
        matched_classes,
        ops.where(background, BACKGROUND, IGNORE),
    )
    matched_boxes = ops.take_along_axis(
        gt_boxes_xyxy, ops.expand_dims(matched_index, -1), axis=1
    )  # (B, A, 4)
    box_targets = box_coder.encode(anchors_xyxy, matched_boxes)  # (B, A, 4)
    box_targets = ops.where(ops.expand_dims(foreground, -1), box_targets, 0.0)
    return {
        "cls_targets": ops.cast(cls_targets, "int32"),
        "box_targets": box_targets,
        "foreground": foreground,
        "cls_weights": ops.cast(cls_targets != IGNORE, "float32"),
    }
