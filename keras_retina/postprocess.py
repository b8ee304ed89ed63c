"""Inference post-processing: top-k per level, box decoding, class-wise NMS."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
from keras import ops

from keras_retina import boxes as box_ops


def decode_detections(
    cls_logits,
    box_deltas,
    anchors_xyxy: np.ndarray,
    anchors_per_level: Sequence[int],
    image_shape: Sequence[int],
    *,
    score_threshold: float = 0.05,
    pre_nms_topk: int = 1000,
    nms_iou_threshold: float = 0.5,
    max_detections: int = 100,
    box_weights: Sequence[float] = box_ops.DEFAULT_BOX_WEIGHTS,
) -> dict:
    """Turns raw head outputs into final detections (the paper's inference, Sec. 4).

    Per pyramid level, the ``pre_nms_topk`` highest (anchor, class) scores
    are kept; only those anchors' boxes are decoded. Candidates scoring at or
    below ``score_threshold`` are dropped, the rest go through per-class NMS
    at ``nms_iou_threshold`` and the best ``max_detections`` remain. Boxes are
    clipped to the image.

    Args:
        cls_logits: ``(B, A, C)`` logits, any float dtype.
        box_deltas: ``(B, A, 4)`` deltas.
        anchors_xyxy: ``(A, 4)`` float32 pixels from :class:`AnchorGenerator`.
        anchors_per_level: number of anchors on each level, summing to ``A``.
        image_shape: ``(H, W)`` of the model's input, pixels.
        score_threshold, pre_nms_topk, nms_iou_threshold, max_detections: as above.
        box_weights: delta weights used in training.

    Returns:
        dict of ``"boxes"`` float32 ``(B, max_detections, 4)`` xyxy pixels,
        ``"scores"`` float32 ``(B, max_detections)`` in (0, 1],
        ``"classes"`` int32 ``(B, max_detections)``, and
        ``"num_detections"`` int32 ``(B,)``. Rows past ``num_detections``
        have box 0, score 0 and class -1.

    Example:
        >>> gen = AnchorGenerator()
        >>> out = decode_detections(logits, deltas, gen((256, 256)),
        ...                         gen.anchors_per_level((256, 256)), (256, 256))
        >>> out["boxes"].shape
        (B, 100, 4)
    """
    cls_logits = ops.cast(cls_logits, "float32")
    box_deltas = ops.cast(box_deltas, "float32")
    num_classes = cls_logits.shape[-1]
    candidate_boxes, candidate_scores, candidate_classes = [], [], []
    start = 0
    for count in anchors_per_level:
        level_logits = cls_logits[:, start : start + count, :]  # (B, A_l, C)
        level_deltas = box_deltas[:, start : start + count, :]  # (B, A_l, 4)
        level_anchors = ops.convert_to_tensor(anchors_xyxy[start : start + count])
        start += count
        k = min(pre_nms_topk, count * num_classes)
        flat_logits = ops.reshape(level_logits, (-1, count * num_classes))  # (B, A_l * C)
        # top_k on logits, sigmoid on the k winners only: sigmoid is monotonic.
        top_logits, top_index = ops.top_k(flat_logits, k=k)  # (B, k)
        anchor_index = top_index // num_classes
        candidate_classes.append(top_index % num_classes)
        candidate_scores.append(ops.sigmoid(top_logits))
        deltas = ops.take_along_axis(level_deltas, ops.expand_dims(anchor_index, -1), axis=1)  # (B, k, 4)
        anchors = ops.take(level_anchors, anchor_index, axis=0)  # (B, k, 4)
        candidate_boxes.append(box_ops.decode_deltas(anchors, deltas, weights=box_weights))
    boxes = box_ops.clip_to_image(ops.concatenate(candidate_boxes, axis=1), image_shape)  # (B, K, 4)
    scores = ops.concatenate(candidate_scores, axis=1)  # (B, K)
    classes = ops.concatenate(candidate_classes, axis=1)  # (B, K)
    # Each candidate is one (anchor, class) pair: its score goes in its class's
    # column, so combined NMS suppresses only within a class.
    class_scores = ops.one_hot(classes, num_classes) * ops.expand_dims(scores, -1)  # (B, K, C)
    nmsed = tf.image.combined_non_max_suppression(
        boxes=ops.expand_dims(boxes, 2),  # (B, K, 1, 4): one box shared by all classes
        scores=class_scores,
        max_output_size_per_class=max_detections,
        max_total_size=max_detections,
        iou_threshold=nms_iou_threshold,
        score_threshold=score_threshold,
        pad_per_class=False,
        clip_boxes=False,  # pixel coordinates; already clipped above
    )
    num_detections = ops.cast(nmsed.valid_detections, "int32")
    valid = ops.arange(max_detections)[None, :] < num_detections[:, None]  # (B, D)
    return {
        "boxes": nmsed.nmsed_boxes,
        "scores": nmsed.nmsed_scores,
        "classes": ops.where(valid, ops.cast(nmsed.nmsed_classes, "int32"), -1),
        "num_detections": num_detections,
    }
