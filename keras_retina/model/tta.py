"""Test-time augmentation: detections of flipped and rescaled copies of the images, merged.

:func:`predict_tta` runs :meth:`keras_retina.RetinaNet.detect` on each
augmented copy (every scale, with and without a horizontal flip), maps each
copy's boxes back to the input's pixels, and merges all of them: by weighted
box fusion (:func:`weighted_box_fusion`, Solovyev et al. 2021, the default:
it measured higher than NMS) or by the model's own NMS
(:func:`keras_retina.model.postprocess.select_detections`: its settings,
class-agnostic and soft-NMS included). :class:`TestTimeAugmentation`
wraps a model so that evaluation and prediction code that calls
``detect`` / ``detect_function`` runs the augmented inference unchanged.

Weighted box fusion is written here rather than taken from the authors'
``ensemble-boxes`` package: that package pulls numba and pandas (about 150 MB)
for one loop, and exits the process on inputs of mismatched lengths.
``tests/test_tta.py`` compares :func:`weighted_box_fusion` with it where it
is installed.
"""

from __future__ import annotations

from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_retina.model import postprocess

#: Scales (factors on the input size) when none are given: of the sets measured on the default run's model
#: (docs/BENCHMARKS.md, "Inference options"), the one with the highest AP.
DEFAULT_SCALES = (1.0, 1.25, 1.5)
#: Each copy's sides are rounded to a multiple of this (the stride of P5).
SIZE_MULTIPLE = 32
#: How the copies' detections are merged: weighted box fusion or the model's NMS.
MERGES = ("wbf", "nms")
#: Of the two, the one with the higher AP at the default scales (docs/BENCHMARKS.md, "Inference options").
DEFAULT_MERGE = "wbf"
#: Weighted box fusion's IoU for a box to join a cluster (the authors' default).
WBF_IOU_THRESHOLD = 0.55


def _check(scales: Sequence[float], flip: bool, merge: str = DEFAULT_MERGE) -> tuple[tuple[float, ...], bool]:
    if merge not in MERGES:
        raise ValueError(f"`merge` must be one of {MERGES}, got {merge!r}.")
    scales = tuple(float(s) for s in scales)
    if not scales or any(not 0.1 <= s <= 4.0 for s in scales):
        raise ValueError(f"`scales` must be factors in [0.1, 4], at least one, got {scales!r}.")
    if not isinstance(flip, bool):
        raise ValueError(f"`flip` must be True or False, got {flip!r}.")
    return scales, flip


def predict_tta(
    model, images, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True, merge: str = DEFAULT_MERGE
) -> dict:
    """Detections of ``model`` on ``images`` with test-time augmentation.

    Args:
        model: a :class:`keras_retina.RetinaNet`.
        images: ``(B, H, W, 3)`` pixels in [0, 255] (``H, W`` static).
        scales: factors on the input size; each copy is resized to
            ``H * s x W * s`` rounded to multiples of :data:`SIZE_MULTIPLE`
            (its boxes mapped back with the exact ratios).
        flip: also run each scale on the left-right mirrored images.
        merge: ``"wbf"``: :func:`weighted_box_fusion` of the copies (per
            class; a fused box's score is its cluster's mean score times
            the fraction of copies that found it; the model's NMS options
            do not apply); ``"nms"``: the model's NMS and its settings.

    Returns:
        the dict of :meth:`keras_retina.RetinaNet.detect`: ``"boxes"``
        float32 ``(B, D, 4)`` xyxy pixels of ``images``, ``"scores"``,
        ``"classes"`` (-1 past ``num_detections``), ``"num_detections"``;
        ``D = model.max_detections``. Tensors.

    Example:
        >>> import numpy as np, keras_retina as kr
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16, head_channels=16,
        ...                      num_head_convs=1, max_detections=5)
        >>> predict_tta(model, np.zeros((1, 64, 64, 3), "float32"), scales=(1.0, 1.5))["boxes"].shape
        TensorShape([1, 5, 4])
    """
    _check(scales, flip, merge)
    copies = augmented_detections(model, images, scales, flip)
    if merge == "wbf":
        return _fuse_each_image(copies, model.inference_settings.max_detections)
    return postprocess.select_detections(
        tf.concat([c["boxes"] for c in copies], axis=1),  # (B, n * D, 4)
        tf.concat([c["scores"] for c in copies], axis=1),
        tf.concat([c["classes"] for c in copies], axis=1),  # -1 on each copy's padding rows
        model.num_classes,
        model.inference_settings,
    )


def augmented_detections(model, images, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True) -> list[dict]:
    """Each augmented copy's detections, mapped back to ``images``' pixels, before any merge.

    The copies of :func:`predict_tta`, in order: every scale, unflipped then
    (with ``flip``) mirrored. Each is :meth:`keras_retina.RetinaNet.detect`'s
    dict (``"boxes"`` ``(B, D, 4)`` xyxy pixels of ``images``, ``"scores"``,
    ``"classes"`` -1 past ``"num_detections"``): for a merge other than NMS
    (``benchmarks/bench_inference_options.py`` measures weighted box fusion).

    Example:
        >>> import numpy as np, keras_retina as kr
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16, head_channels=16,
        ...                      num_head_convs=1, max_detections=5)
        >>> len(augmented_detections(model, np.zeros((1, 64, 64, 3), "float32"), scales=(1.0, 1.5)))
        4
    """
    scales, flip = _check(scales, flip)
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)  # (B, H, W, 3)
    height, width = int(images.shape[1]), int(images.shape[2])
    copies = []
    for scale in scales:
        # A multiple of 32, so that the pyramid's levels halve exactly and match their anchors.
        size = (max(round(height * scale / SIZE_MULTIPLE), 1) * SIZE_MULTIPLE,
                max(round(width * scale / SIZE_MULTIPLE), 1) * SIZE_MULTIPLE)
        resized = images if size == (height, width) else tf.image.resize(images, size)
        for mirrored in (False, True) if flip else (False,):
            copy = tf.reverse(resized, axis=[2]) if mirrored else resized
            found = model.detect(copy)
            x1, y1, x2, y2 = tf.unstack(found["boxes"], axis=-1)  # (B, D) each, pixels of the copy
            if mirrored:  # back to the unmirrored copy
                x1, x2 = size[1] - x2, size[1] - x1
            sx, sy = size[1] / width, size[0] / height
            copies.append({**found, "boxes": tf.stack([x1 / sx, y1 / sy, x2 / sx, y2 / sy], axis=-1)})
    return copies


def weighted_box_fusion(
    boxes: Sequence, scores: Sequence, classes: Sequence, iou_threshold: float = WBF_IOU_THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted box fusion (Solovyev, Wang and Gabruseva, 2021) of ``T`` detectors' boxes, every detector weighted 1.

    Per class, in order of score, each box joins the cluster whose fused box
    overlaps it most if that IoU is above ``iou_threshold``, else starts a
    cluster; a cluster's fused box is its boxes' score-weighted mean, its
    score the mean score times ``min(T, cluster size) / T``, so that a box
    only some of the copies found counts less. Boxes of zero area are left out.

    Args:
        boxes: ``T`` arrays ``(N_t, 4)`` xyxy (any unit: pixels or normalised).
        scores: ``T`` arrays ``(N_t,)``.
        classes: ``T`` arrays ``(N_t,)`` int.
        iou_threshold: the IoU above which a box joins a cluster.

    Returns:
        ``(boxes (M, 4) float32, scores (M,) float32, classes (M,) int32)``, by decreasing score.

    Example:
        >>> fused = weighted_box_fusion([np.array([[0., 0., 10., 10.]]), np.array([[2., 0., 12., 10.]])],
        ...                             [np.array([0.9]), np.array([0.3])], [np.array([1]), np.array([1])])
        >>> fused[0].round(2).tolist(), fused[1].round(2).tolist(), fused[2].tolist()
        ([[0.5, 0.0, 10.5, 10.0]], [0.6], [1])
    """
    if not len(boxes) == len(scores) == len(classes) or not len(boxes):
        raise ValueError(f"weighted_box_fusion: {len(boxes)} box arrays, {len(scores)} score arrays and "
                         f"{len(classes)} class arrays; one of each per detector, at least one.")
    num_copies = len(boxes)
    every_box = np.concatenate([np.asarray(b, np.float64).reshape(-1, 4) for b in boxes])
    every_score = np.concatenate([np.asarray(s, np.float64).reshape(-1) for s in scores])
    every_class = np.concatenate([np.asarray(c, np.int64).reshape(-1) for c in classes])
    if not len(every_box) == len(every_score) == len(every_class):
        raise ValueError("weighted_box_fusion: each detector needs as many scores and classes as boxes.")
    keep = (every_box[:, 2] - every_box[:, 0]) * (every_box[:, 3] - every_box[:, 1]) > 0
    fused_boxes, fused_scores, fused_classes = [], [], []
    for label in np.unique(every_class[keep]):
        mine = np.flatnonzero(keep & (every_class == label))
        mine = mine[np.argsort(every_score[mine])[::-1]]  # by decreasing score
        members: list[list[int]] = []
        centres = np.zeros((0, 4))  # each cluster's fused box so far
        for index in mine:
            box = every_box[index]
            if len(centres):
                width = np.maximum(np.minimum(centres[:, 2], box[2]) - np.maximum(centres[:, 0], box[0]), 0)
                height = np.maximum(np.minimum(centres[:, 3], box[3]) - np.maximum(centres[:, 1], box[1]), 0)
                inter = width * height
                areas = (centres[:, 2] - centres[:, 0]) * (centres[:, 3] - centres[:, 1])
                iou = inter / (areas + (box[2] - box[0]) * (box[3] - box[1]) - inter)
                best = int(np.argmax(iou))
            if len(centres) and iou[best] > iou_threshold:
                members[best].append(index)
                weights = every_score[members[best]]
                centres[best] = weights @ every_box[members[best]] / weights.sum()
            else:
                members.append([index])
                centres = np.vstack([centres, box])
        for cluster, centre in zip(members, centres):
            fused_boxes.append(centre)
            fused_scores.append(every_score[cluster].mean() * min(num_copies, len(cluster)) / num_copies)
            fused_classes.append(label)
    if not fused_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
    order = np.argsort(np.asarray(fused_scores))[::-1]
    return (np.asarray(fused_boxes, np.float32)[order], np.asarray(fused_scores, np.float32)[order],
            np.asarray(fused_classes, np.int32)[order])


def _fuse_each_image(copies: list[dict], max_detections: int) -> dict:
    """:func:`weighted_box_fusion` of the copies' detections on each image, in ``detect``'s output format.

    Runs as a ``tf.numpy_function``, so that a traced caller (the serving
    graph of ``--mode=predict``, ``detect_function``) can run it too.
    """

    def fuse(boxes, scores, classes, counts):  # (C, B, D, 4), (C, B, D), (C, B, D), (C, B)
        batch = boxes.shape[1]
        out_boxes = np.zeros((batch, max_detections, 4), np.float32)
        out_scores = np.zeros((batch, max_detections), np.float32)
        out_classes = np.full((batch, max_detections), -1, np.int32)
        out_counts = np.zeros(batch, np.int32)
        for b in range(batch):
            fused = weighted_box_fusion(*(
                [values[c, b, : counts[c, b]] for c in range(len(counts))] for values in (boxes, scores, classes)
            ))
            n = min(len(fused[1]), max_detections)
            out_boxes[b, :n], out_scores[b, :n], out_classes[b, :n] = fused[0][:n], fused[1][:n], fused[2][:n]
            out_counts[b] = n
        return out_boxes, out_scores, out_classes, out_counts

    stacked = [tf.stack([tf.cast(copy[key], dtype) for copy in copies]) for key, dtype in
               (("boxes", tf.float32), ("scores", tf.float32), ("classes", tf.int32), ("num_detections", tf.int32))]
    boxes, scores, classes, counts = tf.numpy_function(
        fuse, stacked, [tf.float32, tf.float32, tf.int32, tf.int32], stateful=False
    )
    batch = stacked[1].shape[1]
    boxes.set_shape((batch, max_detections, 4))
    scores.set_shape((batch, max_detections))
    classes.set_shape((batch, max_detections))
    counts.set_shape((batch,))
    return {"boxes": boxes, "scores": scores, "classes": classes, "num_detections": counts}


class TestTimeAugmentation:
    """A model whose ``detect`` and ``detect_function`` run :func:`predict_tta`; everything else is the model's.

    Lets the evaluation and prediction code (``--mode=evaluate --tta``,
    ``--mode=predict --tta``) use augmented inference without a change.

    Args:
        model: a :class:`keras_retina.RetinaNet`.
        scales, flip, merge: as in :func:`predict_tta`.

    Example:
        >>> import numpy as np, keras_retina as kr
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16, head_channels=16, num_head_convs=1)
        >>> tta = TestTimeAugmentation(model, scales=(1.0,), flip=True)
        >>> tta.num_classes, tta.detect_function()(np.zeros((1, 64, 64, 3), "float32"))["scores"].shape
        (2, TensorShape([1, 100]))
    """

    __test__ = False  # not a pytest test class

    def __init__(self, model, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True, merge: str = DEFAULT_MERGE):
        self.model = model
        self.scales, self.flip = _check(scales, flip, merge)
        self.merge = merge
        self._function = None

    def detect(self, images, valid_shapes=None) -> dict:
        if valid_shapes is not None:
            raise ValueError("TestTimeAugmentation: per-image valid shapes (the shorter-side resize rule) are not supported.")
        return predict_tta(self.model, images, self.scales, self.flip, self.merge)

    def detect_function(self):
        if self._function is None:
            # Traced for a Keras model; eager for anything else (an exported file run by its own runtime).
            traced = isinstance(self.model, keras.Model)
            self._function = tf.function(self.detect, reduce_retracing=True) if traced else self.detect
        return self._function

    def __getattr__(self, name):
        return getattr(self.model, name)
