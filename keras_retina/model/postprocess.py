"""Inference post-processing: top-k per level, box decoding, class-wise NMS.

:func:`decode_detections` is the paper's inference (Sec. 4) in two stages:
:func:`decode_levels` picks each pyramid level's best (anchor, class) pairs
and decodes their boxes (:func:`decode_level`, one level),
:func:`class_wise_nms` keeps the best non-overlapping candidates of each
class. The four settings live together in one :class:`InferenceSettings`.
An export whose runtime lacks ``combined_non_max_suppression`` runs
:func:`decode_levels` and its own NMS (:mod:`keras_retina.deploy.litert`).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Sequence

import numpy as np
import tensorflow as tf
from keras import ops

from keras_retina.model import boxes as box_ops


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """The inference settings of :func:`decode_detections`, validated (defaults: the paper's).

    Frozen: change one with :meth:`replace`, which validates again.
    :class:`keras_retina.RetinaNet` holds one as ``model.inference_settings``.

    Attributes:
        score_threshold: candidates scoring at or below it are dropped; in
            [0, 1] (0.05).
        pre_nms_topk: (anchor, class) pairs kept per pyramid level before
            NMS; an integer >= 1 (1000).
        nms_iou_threshold: a candidate overlapping a higher-scoring one of
            its class by more than this IoU is suppressed; in [0, 1] (0.5).
        max_detections: detections returned per image, ``D``; an integer
            >= 1 (100).
        class_agnostic_nms: suppress overlapping boxes whatever their
            classes (one object, one box), not only within a class (False).
        soft_nms_sigma: Gaussian soft-NMS (Bodla et al. 2017): instead of
            being removed, every box has its score multiplied by
            ``exp(-IoU**2 / sigma)`` for each higher-scoring box it
            overlaps, and is dropped once that score is at or below
            ``score_threshold``; ``nms_iou_threshold`` is then unused.
            ``sigma >= 0``; 0 is hard NMS (0.0; the paper's soft-NMS
            uses 0.5).

    Example:
        >>> settings = InferenceSettings(score_threshold=0.3)
        >>> settings.replace(max_detections=10)
        InferenceSettings(score_threshold=0.3, pre_nms_topk=1000, nms_iou_threshold=0.5, max_detections=10, class_agnostic_nms=False, soft_nms_sigma=0.0)
        >>> settings.replace(max_detections=0)
        Traceback (most recent call last):
        ...
        ValueError: `max_detections` must be an integer >= 1, got 0.
    """

    score_threshold: float = 0.05
    pre_nms_topk: int = 1000
    nms_iou_threshold: float = 0.5
    max_detections: int = 100
    class_agnostic_nms: bool = False
    soft_nms_sigma: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "score_threshold", _fraction("score_threshold", self.score_threshold))
        object.__setattr__(self, "pre_nms_topk", _positive_int("pre_nms_topk", self.pre_nms_topk))
        object.__setattr__(self, "nms_iou_threshold", _fraction("nms_iou_threshold", self.nms_iou_threshold))
        object.__setattr__(self, "max_detections", _positive_int("max_detections", self.max_detections))
        if not isinstance(self.class_agnostic_nms, (bool, np.bool_)):
            raise ValueError(f"`class_agnostic_nms` must be True or False, got {self.class_agnostic_nms!r}.")
        object.__setattr__(self, "class_agnostic_nms", bool(self.class_agnostic_nms))
        sigma = self.soft_nms_sigma
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not 0.0 <= sigma < float("inf"):
            raise ValueError(f"`soft_nms_sigma` must be a number >= 0 (0: hard NMS), got {sigma!r}.")
        object.__setattr__(self, "soft_nms_sigma", float(sigma))

    def replace(self, **changes) -> "InferenceSettings":
        """A copy with ``changes`` (field names as keywords), validated."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """The fields as keyword arguments of :func:`decode_detections`."""
        return dataclasses.asdict(self)


def _fraction(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}.")
    return float(value)


def _positive_int(name: str, value) -> int:
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and float(value).is_integer()
    )
    if isinstance(value, bool) or not integral or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}.")
    return int(value)


def decode_level(
    level_logits,
    level_deltas,
    level_anchors_xyxy,
    image_shape: Sequence[int],
    *,
    pre_nms_topk: int = 1000,
    box_coder: box_ops.BoxCoder | None = None,
) -> tuple:
    """One pyramid level's candidates: its top-scoring (anchor, class) pairs, boxes decoded.

    Each (anchor, class) pair is one candidate. The ``K = min(pre_nms_topk,
    A_l * C)`` highest-scoring pairs are kept and only their anchors' boxes
    are decoded, then clipped to the image.

    Args:
        level_logits: ``(B, A_l, C)`` float32 logits of the level's anchors
            (``A_l`` may be unknown when traced; ``C`` must be static).
        level_deltas: ``(B, A_l, 4)`` float32 box deltas.
        level_anchors_xyxy: ``(A_l, 4)`` float32 anchors, pixels, with a
            static ``A_l``.
        image_shape: ``(H, W)`` of the model's input, pixels (or per-image
            ``(B, 1)`` heights and widths, to clip each image to its own extent).
        pre_nms_topk: most pairs kept.
        box_coder: the :class:`keras_retina.model.boxes.BoxCoder` used in
            training (default: weights all 1).

    Returns:
        ``(boxes, scores, classes)``: float32 ``(B, K, 4)`` xyxy pixels
        inside the image, float32 ``(B, K)`` sigmoid scores in descending
        order, int32 ``(B, K)`` class ids.

    Example:
        Two anchors, two classes: the best pairs are (anchor 1, class 0) and
        (anchor 0, class 1).

        >>> logits = np.array([[[-3., 1.], [2., -1.]]], "float32")   # (B=1, A_l=2, C=2)
        >>> deltas = np.zeros((1, 2, 4), "float32")
        >>> anchors = np.array([[0., 0., 10., 10.], [50., 50., 70., 90.]], "float32")
        >>> boxes, scores, classes = decode_level(logits, deltas, anchors, (64, 64), pre_nms_topk=2)
        >>> ops.convert_to_numpy(boxes)
        array([[[50., 50., 64., 64.],
                [ 0.,  0., 10., 10.]]], dtype=float32)
        >>> ops.convert_to_numpy(scores), ops.convert_to_numpy(classes)
        (array([[0.8808, 0.7311]], dtype=float32), array([[0, 1]], dtype=int32))
    """
    box_coder = box_coder or box_ops.BoxCoder()
    # A_l from the anchors: static even where the logits' shape is not (the
    # SavedModel export traces with an unknown batch), unless the image size
    # itself is known only when the graph runs (then A_l and K are tensors).
    num_classes = level_logits.shape[-1]
    if level_anchors_xyxy.shape[0] is not None:
        num_anchors = int(level_anchors_xyxy.shape[0])
        k = min(int(pre_nms_topk), num_anchors * num_classes)
    else:
        num_anchors = tf.shape(level_anchors_xyxy)[0]
        k = tf.minimum(int(pre_nms_topk), num_anchors * num_classes)
    flat_logits = tf.reshape(level_logits, (-1, num_anchors * num_classes))  # (B, A_l * C)
    # top_k on logits, sigmoid on the k winners only: sigmoid is monotonic.
    top_logits, top_index = tf.math.top_k(flat_logits, k=k)  # (B, K)
    anchor_index = top_index // num_classes  # (B, K)
    classes = top_index % num_classes  # (B, K)
    scores = ops.sigmoid(top_logits)  # (B, K)
    deltas = ops.take_along_axis(level_deltas, ops.expand_dims(anchor_index, -1), axis=1)  # (B, K, 4)
    anchors = ops.take(ops.convert_to_tensor(level_anchors_xyxy), anchor_index, axis=0)  # (B, K, 4)
    boxes = box_ops.clip_to_image(box_coder.decode(anchors, deltas), image_shape)  # (B, K, 4)
    return boxes, scores, classes


def decode_levels(
    cls_logits,
    box_deltas,
    anchors_xyxy,
    anchors_per_level: Sequence[int],
    image_shape: Sequence[int],
    *,
    pre_nms_topk: int = 1000,
    box_coder: box_ops.BoxCoder | None = None,
) -> tuple:
    """Every pyramid level's candidates (:func:`decode_level`), concatenated over the levels.

    The candidates :func:`decode_detections` hands to NMS: per level the
    ``pre_nms_topk`` highest-scoring (anchor, class) pairs, their boxes
    decoded and clipped to the image. ``K = sum_l min(pre_nms_topk, A_l * C)``.

    Args:
        cls_logits: ``(B, A, C)`` logits, any float dtype (computed in float32).
        box_deltas: ``(B, A, 4)`` deltas.
        anchors_xyxy: ``(A, 4)`` float32 pixels from :class:`AnchorGenerator`.
        anchors_per_level: number of anchors on each level, summing to ``A``.
        image_shape: ``(H, W)`` of the model's input, pixels (or per-image
            ``(B, 1)`` heights and widths, to clip each image to its own extent).
        pre_nms_topk: most pairs kept per level.
        box_coder: the :class:`keras_retina.model.boxes.BoxCoder` used in
            training (default: weights all 1).

    Returns:
        ``(boxes, scores, classes)``: float32 ``(B, K, 4)`` xyxy pixels,
        float32 ``(B, K)`` sigmoid scores (descending within each level),
        int32 ``(B, K)`` class ids; the levels in order, finest first.

    Example:
        Two levels of two anchors each, one class: with ``pre_nms_topk=1``
        each level gives its best anchor.

        >>> logits = np.array([[[0.], [2.], [-1.], [1.]]], "float32")   # (B=1, A=4, C=1)
        >>> anchors = np.array([[0, 0, 8, 8], [8, 0, 16, 8], [0, 0, 16, 16], [16, 0, 32, 16]], "float32")
        >>> boxes, scores, classes = decode_levels(logits, np.zeros((1, 4, 4), "float32"), anchors, (2, 2),
        ...                                        (32, 32), pre_nms_topk=1)
        >>> ops.convert_to_numpy(boxes)
        array([[[ 8.,  0., 16.,  8.],
                [16.,  0., 32., 16.]]], dtype=float32)
        >>> ops.convert_to_numpy(scores)
        array([[0.8808, 0.7311]], dtype=float32)
    """
    cls_logits = ops.cast(cls_logits, "float32")  # (B, A, C)
    box_deltas = ops.cast(box_deltas, "float32")  # (B, A, 4)
    candidate_boxes, candidate_scores, candidate_classes = [], [], []
    start = 0
    for count in anchors_per_level:
        boxes, scores, classes = decode_level(
            cls_logits[:, start : start + count, :],  # (B, A_l, C)
            box_deltas[:, start : start + count, :],  # (B, A_l, 4)
            anchors_xyxy[start : start + count],  # (A_l, 4)
            image_shape,
            pre_nms_topk=pre_nms_topk,
            box_coder=box_coder,
        )
        start += count
        candidate_boxes.append(boxes)
        candidate_scores.append(scores)
        candidate_classes.append(classes)
    return (
        ops.concatenate(candidate_boxes, axis=1),  # (B, K, 4), K summed over levels
        ops.concatenate(candidate_scores, axis=1),  # (B, K)
        ops.concatenate(candidate_classes, axis=1),  # (B, K)
    )


def class_wise_nms(
    boxes_xyxy,
    scores,
    classes,
    num_classes: int,
    *,
    score_threshold: float = 0.05,
    nms_iou_threshold: float = 0.5,
    max_detections: int = 100,
) -> dict:
    """Per-class non-maximum suppression of candidates; the best ``max_detections`` remain.

    Candidates scoring at or below ``score_threshold`` are dropped; a
    candidate overlapping a higher-scoring one of the same class by more than
    ``nms_iou_threshold`` is suppressed (boxes of different classes never
    suppress each other). Runs ``tf.image.combined_non_max_suppression``,
    which has no XLA kernel.

    Args:
        boxes_xyxy: ``(B, K, 4)`` float32 candidate boxes, pixels.
        scores: ``(B, K)`` float32 scores in [0, 1].
        classes: ``(B, K)`` int class ids in ``[0, num_classes)``.
        num_classes: C.
        score_threshold, nms_iou_threshold, max_detections: see
            :class:`InferenceSettings`.

    Returns:
        dict of ``"boxes"`` float32 ``(B, D, 4)``, ``"scores"`` float32
        ``(B, D)`` in descending order, ``"classes"`` int32 ``(B, D)`` and
        ``"num_detections"`` int32 ``(B,)``, ``D = max_detections``. Rows
        past ``num_detections`` have box 0, score 0 and class -1.

    Example:
        Two overlapping boxes of class 0 and one like them of class 1:

        >>> boxes = np.array([[[0., 0., 10., 10.], [1., 0., 11., 10.], [0., 0., 10., 10.]]], "float32")
        >>> scores = np.array([[0.9, 0.8, 0.7]], "float32")
        >>> out = class_wise_nms(boxes, scores, np.array([[0, 0, 1]]), 2, max_detections=4)
        >>> ops.convert_to_numpy(out["classes"]), ops.convert_to_numpy(out["num_detections"])
        (array([[ 0,  1, -1, -1]], dtype=int32), array([2], dtype=int32))
        >>> ops.convert_to_numpy(out["scores"])
        array([[0.9, 0.7, 0. , 0. ]], dtype=float32)
    """
    # Each candidate is one (anchor, class) pair: its score goes in its class's
    # column, so combined NMS suppresses only within a class.
    class_scores = ops.one_hot(classes, num_classes) * ops.expand_dims(scores, -1)  # (B, K, C)
    nmsed = tf.image.combined_non_max_suppression(
        boxes=ops.expand_dims(boxes_xyxy, 2),  # (B, K, 1, 4): one box shared by all classes
        scores=class_scores,
        max_output_size_per_class=max_detections,
        max_total_size=max_detections,
        iou_threshold=nms_iou_threshold,
        score_threshold=score_threshold,
        pad_per_class=False,
        clip_boxes=False,  # pixel coordinates, not [0, 1]
    )
    num_detections = ops.cast(nmsed.valid_detections, "int32")  # (B,)
    valid = ops.arange(max_detections)[None, :] < num_detections[:, None]  # (B, D)
    return {
        "boxes": nmsed.nmsed_boxes,
        "scores": nmsed.nmsed_scores,
        "classes": ops.where(valid, ops.cast(nmsed.nmsed_classes, "int32"), -1),
        "num_detections": num_detections,
    }


def single_image_nms(
    boxes_xyxy,
    scores,
    classes,
    *,
    score_threshold: float = 0.05,
    nms_iou_threshold: float = 0.5,
    max_detections: int = 100,
    class_agnostic_nms: bool = False,
    soft_nms_sigma: float = 0.0,
) -> tuple:
    """NMS of one image's candidates with every option: class-wise or class-agnostic, hard or Gaussian soft.

    One ``NonMaxSuppressionV5`` (``tf.image.non_max_suppression_with_scores``,
    which has soft-NMS; ``combined_non_max_suppression`` has not): class-wise
    by moving each class's boxes to a region of their own (torchvision's
    ``batched_nms``), so boxes of different classes never overlap.

    Args:
        boxes_xyxy: ``(K, 4)`` float32 candidates, pixels (>= 0).
        scores: ``(K,)`` float32 in [0, 1].
        classes: ``(K,)`` int class ids.
        score_threshold, nms_iou_threshold, max_detections,
        class_agnostic_nms, soft_nms_sigma: see :class:`InferenceSettings`.

    Returns:
        ``(selected, selected_scores, count)``: int32 ``(D,)`` indices into
        the candidates, float32 ``(D,)`` their (soft-NMS: decayed) scores in
        descending order, int32 ``()`` how many are valid; ``D =
        max_detections``, padded with index 0 and score 0.

    Example:
        Two overlapping boxes of different classes: class-wise NMS keeps
        both, class-agnostic NMS the better one.
        >>> boxes = np.array([[0., 0., 10., 10.], [1., 0., 11., 10.]], "float32")
        >>> scores, classes = np.array([0.9, 0.8], "float32"), np.array([0, 1])
        >>> [int(single_image_nms(boxes, scores, classes, max_detections=2, class_agnostic_nms=agnostic)[2])
        ...  for agnostic in (False, True)]
        [2, 1]
    """
    boxes_xyxy = tf.convert_to_tensor(boxes_xyxy, tf.float32)
    if not class_agnostic_nms:
        span = tf.reduce_max(boxes_xyxy) + 1.0 if boxes_xyxy.shape[0] != 0 else 1.0
        boxes_xyxy = boxes_xyxy + (tf.cast(classes, tf.float32) * span)[:, None]  # (K, 4): a region per class
    selected, selected_scores, count = tf.raw_ops.NonMaxSuppressionV5(
        boxes=boxes_xyxy,
        scores=tf.convert_to_tensor(scores, tf.float32),
        max_output_size=max_detections,
        # Soft-NMS as the paper's, on every overlap: no hard cut-off.
        iou_threshold=1.0 if soft_nms_sigma > 0 else nms_iou_threshold,
        score_threshold=score_threshold,
        # TensorFlow's weight is exp(-0.5 * IoU**2 / s); the paper's exp(-IoU**2 / sigma): s = sigma / 2.
        soft_nms_sigma=soft_nms_sigma / 2.0,
        pad_to_max_output_size=True,
    )
    return selected, selected_scores, count


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
    box_weights: Sequence[float] | None = None,
    box_coder: box_ops.BoxCoder | None = None,
    class_agnostic_nms: bool = False,
    soft_nms_sigma: float = 0.0,
) -> dict:
    """Turns raw head outputs into final detections (the paper's inference, Sec. 4).

    Per pyramid level, the ``pre_nms_topk`` highest (anchor, class) scores
    are kept; only those anchors' boxes are decoded and clipped to the image
    (:func:`decode_levels`). Candidates scoring at or below ``score_threshold``
    are dropped, the rest go through per-class NMS at ``nms_iou_threshold``
    and the best ``max_detections`` remain (:func:`class_wise_nms`).

    Args:
        cls_logits: ``(B, A, C)`` logits, any float dtype.
        box_deltas: ``(B, A, 4)`` deltas.
        anchors_xyxy: ``(A, 4)`` float32 pixels from :class:`AnchorGenerator`.
        anchors_per_level: number of anchors on each level, summing to ``A``.
        image_shape: ``(H, W)`` of the model's input, pixels (or per-image
            ``(B, 1)`` heights and widths, to clip each image to its own extent).
        score_threshold, pre_nms_topk, nms_iou_threshold, max_detections:
            see :class:`InferenceSettings` (validated the same way).
        box_weights: ``(wx, wy, ww, wh)`` used in training: shorthand for
            ``box_coder=BoxCoder(box_weights)``; default all 1.
        box_coder: the :class:`keras_retina.model.boxes.BoxCoder` used in training;
            give it or ``box_weights``, not both.
        class_agnostic_nms, soft_nms_sigma: NMS options (see
            :class:`InferenceSettings`); with either, each image runs
            :func:`single_image_nms` instead of :func:`class_wise_nms`.

    Returns:
        dict of ``"boxes"`` float32 ``(B, max_detections, 4)`` xyxy pixels,
        ``"scores"`` float32 ``(B, max_detections)`` in (0, 1],
        ``"classes"`` int32 ``(B, max_detections)``, and
        ``"num_detections"`` int32 ``(B,)``. Rows past ``num_detections``
        have box 0, score 0 and class -1.

    Example:
        Raw outputs for one 128 × 128 image where a single anchor is sure of
        class 1 (all deltas 0: the boxes are the anchors):

        >>> gen = kr.AnchorGenerator()
        >>> anchors, per_level = gen((128, 128)), gen.anchors_per_level((128, 128))
        >>> logits = np.full((1, len(anchors), 2), -10., "float32")   # (B, A, C)
        >>> logits[0, 100, 1] = 5.
        >>> out = decode_detections(logits, np.zeros((1, len(anchors), 4), "float32"),
        ...                         anchors, per_level, (128, 128), max_detections=3)
        >>> out["boxes"].shape, ops.convert_to_numpy(out["num_detections"])
        (TensorShape([1, 3, 4]), array([1], dtype=int32))
        >>> ops.convert_to_numpy(out["classes"]), ops.convert_to_numpy(out["scores"])
        (array([[ 1, -1, -1]], dtype=int32), array([[0.9933, 0.    , 0.    ]], dtype=float32))
        >>> bool(np.allclose(out["boxes"][0, 0], np.clip(anchors[100], 0, 128)))
        True
    """
    settings = InferenceSettings(
        score_threshold=score_threshold,
        pre_nms_topk=pre_nms_topk,
        nms_iou_threshold=nms_iou_threshold,
        max_detections=max_detections,
        class_agnostic_nms=class_agnostic_nms,
        soft_nms_sigma=soft_nms_sigma,
    )
    boxes, scores, classes = decode_levels(
        cls_logits,
        box_deltas,
        anchors_xyxy,
        anchors_per_level,
        image_shape,
        pre_nms_topk=settings.pre_nms_topk,
        box_coder=box_ops.BoxCoder.resolve(box_coder, box_weights),
    )  # (B, K, 4), (B, K), (B, K)
    return select_detections(boxes, scores, classes, cls_logits.shape[-1], settings)


def select_detections(boxes_xyxy, scores, classes, num_classes: int, settings: InferenceSettings) -> dict:
    """The NMS ``settings`` ask for, on candidates ``(B, K, 4)``, ``(B, K)``, ``(B, K)``: :func:`decode_detections`' output.

    :func:`class_wise_nms` for the paper's NMS; :func:`single_image_nms` on
    each image with ``class_agnostic_nms`` or ``soft_nms_sigma``. Candidates
    of class -1 (padding) are never selected.

    Example:
        >>> boxes = np.array([[[0., 0., 10., 10.], [1., 0., 11., 10.]]], "float32")
        >>> out = select_detections(boxes, np.array([[0.9, 0.8]], "float32"), np.array([[0, 1]]), 2,
        ...                         InferenceSettings(max_detections=2, class_agnostic_nms=True))
        >>> ops.convert_to_numpy(out["num_detections"]), ops.convert_to_numpy(out["classes"])
        (array([1], dtype=int32), array([[ 0, -1]], dtype=int32))
    """
    scores = ops.where(classes >= 0, scores, -1.0)  # padding rows: below any score threshold
    if settings.class_agnostic_nms or settings.soft_nms_sigma > 0:
        return _nms_each_image(boxes_xyxy, scores, ops.maximum(classes, 0), settings)
    return class_wise_nms(
        boxes_xyxy,
        scores,
        ops.maximum(classes, 0),
        num_classes,
        score_threshold=settings.score_threshold,
        nms_iou_threshold=settings.nms_iou_threshold,
        max_detections=settings.max_detections,
    )


def _nms_each_image(boxes_xyxy, scores, classes, settings: InferenceSettings) -> dict:
    """:func:`single_image_nms` on each image of a batch, in :func:`class_wise_nms`'s output format."""
    options = dict(
        score_threshold=settings.score_threshold,
        nms_iou_threshold=settings.nms_iou_threshold,
        max_detections=settings.max_detections,
        class_agnostic_nms=settings.class_agnostic_nms,
        soft_nms_sigma=settings.soft_nms_sigma,
    )

    def one_image(args):
        image_boxes, image_scores, image_classes = args  # (K, 4), (K,), (K,)
        selected, selected_scores, count = single_image_nms(image_boxes, image_scores, image_classes, **options)
        valid = tf.range(settings.max_detections) < count  # (D,)
        return (
            tf.where(valid[:, None], tf.gather(image_boxes, selected), 0.0),
            tf.where(valid, selected_scores, 0.0),
            tf.where(valid, tf.gather(tf.cast(image_classes, tf.int32), selected), -1),
            tf.cast(count, tf.int32),
        )

    spec = (
        tf.TensorSpec((settings.max_detections, 4), tf.float32),
        tf.TensorSpec((settings.max_detections,), tf.float32),
        tf.TensorSpec((settings.max_detections,), tf.int32),
        tf.TensorSpec((), tf.int32),
    )
    out_boxes, out_scores, out_classes, counts = tf.map_fn(
        one_image, (boxes_xyxy, scores, classes), fn_output_signature=spec
    )
    return {"boxes": out_boxes, "scores": out_scores, "classes": out_classes, "num_detections": counts}
