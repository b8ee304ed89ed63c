"""Sliced inference for large images with small objects (SAHI's method, Akyon et al., ICIP 2022).

A 4000 x 3000 photo shrunk onto a 512-pixel input loses its 20-pixel
objects. :func:`predict_sliced` instead cuts the image, at its own
resolution, into overlapping square tiles of ``slice_size`` pixels (the grid
of :func:`slice_grid`), resizes each tile onto the model's input, runs the
tiles in batches, adds one pass over the whole image resized onto the input
(for objects larger than a tile), maps every box back to the image's pixels
and merges them: with the model's own NMS (its settings, class-agnostic and
soft-NMS included), or with SAHI's greedy non-maximum merging
(:func:`greedy_nmm`), which joins a box cut by a tile's edge with the rest of
its object. :class:`SlicedInference` wraps a model so that the evaluation and
prediction code runs sliced inference unchanged (``--slice_size``).

The ``sahi`` package is not used at run time: importing its slicing or
merging imports OpenCV (about 290 MB installed) and shapely, for about forty
lines of arithmetic, and its merge walks Python objects one prediction at a
time. :func:`slice_grid` and :func:`greedy_nmm` follow its
``get_slice_bboxes`` and ``GreedyNMMPostprocess`` exactly;
``tests/test_slicing.py`` compares them with ``sahi`` where it is installed.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_retina.model import postprocess

#: Fraction of a tile shared with its neighbour, SAHI's default.
DEFAULT_OVERLAP = 0.2
#: How the tiles' and the whole image's detections are merged (see :func:`predict_sliced`).
MERGES = ("nms", "greedy_nmm")
#: The default merge: of the two, the one with the higher AP on the generated large-image
#: dataset (docs/BENCHMARKS.md, "Inference options").
DEFAULT_MERGE = "nms"
#: Tiles per batch of the model.
DEFAULT_BATCH_SIZE = 8
#: The tile input size must be a multiple of this (the stride of P5), so that pyramid levels halve exactly.
SIZE_MULTIPLE = 32


def slice_grid(height: int, width: int, slice_size: int, overlap: float = DEFAULT_OVERLAP) -> np.ndarray:
    """The tiles of a ``height x width`` image: ``(T, 4)`` int64 ``[x1, y1, x2, y2]`` pixels, row by row.

    Tiles are ``slice_size`` square and step by ``slice_size - int(overlap *
    slice_size)``; the last tile of a row or column is moved back to end at
    the image's edge (so it overlaps its neighbour more), and is cut to the
    image where the image is smaller than a tile. This is the grid of
    ``sahi.slicing.get_slice_bboxes``.

    Args:
        height, width: the image's size in pixels, >= 1.
        slice_size: a tile's side in the image's pixels, >= 1.
        overlap: fraction of a tile shared with the next one, in [0, 1).

    Example:
        >>> slice_grid(100, 150, slice_size=64, overlap=0.25).tolist()
        [[0, 0, 64, 64], [48, 0, 112, 64], [86, 0, 150, 64], [0, 36, 64, 100], [48, 36, 112, 100], [86, 36, 150, 100]]
    """
    height, width, slice_size = int(height), int(width), int(slice_size)
    if height < 1 or width < 1:
        raise ValueError(f"slice_grid: the image must be at least 1 x 1 pixels, got {height} x {width}.")
    _check_options(slice_size, overlap)
    step = slice_size - int(overlap * slice_size)
    tiles = []
    y_min = y_max = 0
    while y_max < height:
        y_max = y_min + slice_size
        x_min = x_max = 0
        while x_max < width:
            x_max = x_min + slice_size
            if y_max > height or x_max > width:  # moved back inside the image (for the rest of the row too)
                x_max, y_max = min(width, x_max), min(height, y_max)
                x_min, y_min = max(0, x_max - slice_size), max(0, y_max - slice_size)
            tiles.append([x_min, y_min, x_max, y_max])
            x_min = x_max - (slice_size - step)
        y_min = y_max - (slice_size - step)
    return np.asarray(tiles, np.int64).reshape(-1, 4)


def _check_options(slice_size, overlap) -> None:
    if isinstance(slice_size, bool) or not isinstance(slice_size, (int, np.integer)) or slice_size < 1:
        raise ValueError(f"`slice_size` must be a positive number of pixels, got {slice_size!r}.")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, float, np.floating)) or not 0.0 <= overlap < 1.0:
        raise ValueError(f"`slice_overlap` must be a fraction in [0, 1), got {overlap!r}.")


def _overlaps(box: np.ndarray, others: np.ndarray, metric: str) -> np.ndarray:
    """IoU (``"iou"``) or intersection over the smaller box (``"ios"``) of ``box`` (4,) with ``others`` (N, 4)."""
    width = np.maximum(0.0, np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]))
    height = np.maximum(0.0, np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]))
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    denominator = area + areas - inter if metric == "iou" else np.minimum(area, areas)
    return np.where(denominator > 0, inter / np.where(denominator > 0, denominator, 1.0), 0.0)


def greedy_nmm(
    boxes, scores, classes, threshold: float = 0.5, metric: str = "ios", class_agnostic: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy non-maximum merging (SAHI's ``GREEDYNMM``): overlapping boxes are joined, not dropped.

    In order of score, each box not yet taken takes every lower-scored box of
    its class (any class with ``class_agnostic``) whose overlap with it is
    at least ``threshold``; then, in order of score, each taken box whose
    overlap with the box grown so far is still at least ``threshold`` grows
    it to their union; the score is the highest, the class the
    higher-scored box's. With ``metric="ios"`` (intersection over the smaller
    box) a fragment of an object cut by a tile's edge joins the whole object
    seen by the neighbouring tile or the whole-image pass.

    Args:
        boxes: ``(N, 4)`` xyxy pixels.
        scores: ``(N,)``.
        classes: ``(N,)`` int.
        threshold: the overlap at which boxes merge.
        metric: ``"ios"`` or ``"iou"``.
        class_agnostic: merge boxes of different classes too.

    Returns:
        ``(boxes (M, 4) float32, scores (M,) float32, classes (M,) int32)``, by decreasing score.

    Example:
        >>> boxes = np.array([[0, 0, 10, 10], [8, 0, 20, 10], [50, 50, 60, 60]], "float32")
        >>> merged = greedy_nmm(boxes, np.array([0.9, 0.6, 0.8]), np.array([1, 1, 1]), threshold=0.1)
        >>> merged[0].tolist(), merged[1].round(2).tolist()
        ([[0.0, 0.0, 20.0, 10.0], [50.0, 50.0, 60.0, 60.0]], [0.9, 0.8])
    """
    if metric not in ("ios", "iou"):
        raise ValueError(f"`metric` must be 'ios' or 'iou', got {metric!r}.")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    classes = np.asarray(classes, np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(classes):
        raise ValueError(f"greedy_nmm: {len(boxes)} boxes, {len(scores)} scores and {len(classes)} classes.")
    # Score first, ties broken by the coordinates, as sahi's numpy backend orders them.
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -scores))
    taken = np.zeros(len(boxes), bool)
    out_boxes, out_scores, out_classes = [], [], []
    for position, keep in enumerate(order):
        if taken[keep]:
            continue
        rest = order[position + 1 :]
        rest = rest[~taken[rest]]
        if not class_agnostic:
            rest = rest[classes[rest] == classes[keep]]
        group = rest[_overlaps(boxes[keep], boxes[rest], metric) >= threshold] if len(rest) else rest
        taken[group] = True
        box, score, label = boxes[keep].copy(), scores[keep], classes[keep]
        for other in group:  # grown one box at a time; each checked against the box so far
            if _overlaps(box, boxes[other][None], metric)[0] >= threshold:
                box = np.concatenate([np.minimum(box[:2], boxes[other][:2]), np.maximum(box[2:], boxes[other][2:])])
                label = label if score > scores[other] else classes[other]
                score = max(score, scores[other])
        out_boxes.append(box)
        out_scores.append(score)
        out_classes.append(label)
    if not out_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int32)
    out_scores = np.asarray(out_scores)
    by_score = np.argsort(-out_scores, kind="stable")
    return (
        np.asarray(out_boxes, np.float32)[by_score],
        out_scores.astype(np.float32)[by_score],
        np.asarray(out_classes, np.int32)[by_score],
    )


def _fit_whole_image(image: tf.Tensor, image_size: int) -> tuple[tf.Tensor, float]:
    """``image`` (H, W, 3) resized to fit an ``image_size`` square (aspect kept, as the evaluation pipeline does),
    zero-padded at the bottom and right; and the scale (resized / original)."""
    height, width = int(image.shape[0]), int(image.shape[1])
    scale = min(image_size / height, image_size / width)
    size = (max(round(height * scale), 1), max(round(width * scale), 1))
    resized = tf.image.resize(image, size, method="bilinear")
    return tf.pad(resized, [[0, image_size - size[0]], [0, image_size - size[1]], [0, 0]]), scale


def _detect_in_batches(detect, inputs: list[tf.Tensor], batch_size: int) -> list[dict]:
    """``detect`` on ``inputs`` (each (S, S, 3)) in batches of ``batch_size``; the last batch padded (one traced shape)."""
    found = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        batch = tf.stack(chunk + [tf.zeros_like(chunk[0])] * (batch_size - len(chunk)))
        out = {key: np.asarray(value) for key, value in detect(batch).items()}
        found.extend({key: value[i] for key, value in out.items()} for i in range(len(chunk)))
    return found


def predict_sliced(
    model,
    image,
    slice_size: int,
    slice_overlap: float = DEFAULT_OVERLAP,
    image_size: int | None = None,
    whole_image: bool = True,
    merge: str = DEFAULT_MERGE,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict:
    """Detections of ``model`` on one large ``image``, tile by tile plus one whole-image pass.

    Args:
        model: a :class:`keras_retina.RetinaNet` (or anything with its
            ``detect_function``, ``num_classes`` and ``inference_settings``).
        image: ``(H, W, 3)`` pixels in [0, 255], at the image's own resolution.
        slice_size: a tile's side in the image's pixels (tiles of
            :func:`slice_grid`; where the image is smaller, the tile is cut
            and zero-padded at the bottom and right).
        slice_overlap: fraction of a tile shared with its neighbour, in [0, 1).
        image_size: the model's input side: each tile is resized from
            ``slice_size`` to it, and the whole image fitted into it (a
            multiple of 32; default ``slice_size``).
        whole_image: also run the whole image resized onto the input
            (objects larger than a tile are found there).
        merge: ``"greedy_nmm"`` (:func:`greedy_nmm`, intersection over the
            smaller box >= 0.5, per class, or across classes with the
            model's ``class_agnostic_nms``) or ``"nms"`` (the model's own
            NMS and its settings).
        batch_size: tiles per call of the model.

    Returns:
        ``{"boxes": (1, D, 4) float32 xyxy pixels of image, "scores": (1, D),
        "classes": (1, D) int32 (-1 past num_detections), "num_detections":
        (1,) int32}``, ``D = model.max_detections``, as NumPy arrays.

    Example:
        >>> import numpy as np, keras_retina as kr
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16, head_channels=16,
        ...                      num_head_convs=1, max_detections=5)
        >>> out = predict_sliced(model, np.zeros((100, 150, 3), "uint8"), slice_size=64)
        >>> out["boxes"].shape, int(out["num_detections"][0]) <= 5
        ((1, 5, 4), True)
    """
    _check_options(slice_size, slice_overlap)
    image_size = int(slice_size if image_size is None else image_size)
    if image_size < SIZE_MULTIPLE or image_size % SIZE_MULTIPLE:
        raise ValueError(f"`image_size` (the model's input side) must be a multiple of {SIZE_MULTIPLE}, got {image_size}.")
    if merge not in MERGES:
        raise ValueError(f"`merge` must be one of {MERGES}, got {merge!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    image = tf.cast(tf.convert_to_tensor(image), tf.float32)
    if image.shape.rank != 3 or image.shape[-1] != 3:
        raise ValueError(f"predict_sliced takes one (H, W, 3) image, got shape {tuple(image.shape)}.")
    height, width = int(image.shape[0]), int(image.shape[1])

    tiles = slice_grid(height, width, slice_size, slice_overlap)
    factor = image_size / slice_size  # tile pixels -> input pixels
    inputs = []
    for x1, y1, x2, y2 in tiles:
        crop = tf.pad(image[y1:y2, x1:x2], [[0, slice_size - (y2 - y1)], [0, slice_size - (x2 - x1)], [0, 0]])
        inputs.append(crop if image_size == slice_size else tf.image.resize(crop, (image_size, image_size)))
    scales = [factor] * len(tiles)
    offsets = [(x1, y1) for x1, y1, _, _ in tiles]
    if whole_image:
        resized, scale = _fit_whole_image(image, image_size)
        inputs.append(resized)
        scales.append(scale)
        offsets.append((0, 0))
    found = _detect_in_batches(model.detect_function(), inputs, int(batch_size))

    boxes, scores, classes = [], [], []
    for out, scale, (dx, dy) in zip(found, scales, offsets):
        n = int(out["num_detections"])
        boxes.append(out["boxes"][:n] / scale + np.array([dx, dy, dx, dy], np.float32))
        scores.append(out["scores"][:n])
        classes.append(out["classes"][:n])
    # One padding row (class -1, never selected), so that NMS never sees an empty candidate list.
    boxes = np.clip(np.concatenate(boxes + [np.zeros((1, 4))]), 0.0, [width, height, width, height]).astype(np.float32)
    scores = np.concatenate(scores + [np.zeros(1)]).astype(np.float32)  # (K,)
    classes = np.concatenate(classes + [np.full(1, -1)]).astype(np.int32)
    settings = model.inference_settings
    if merge == "nms":
        merged = postprocess.select_detections(boxes[None], scores[None], classes[None], model.num_classes, settings)
        return {key: np.asarray(value) for key, value in merged.items()}
    real = classes >= 0
    boxes, scores, classes = greedy_nmm(boxes[real], scores[real], classes[real], class_agnostic=settings.class_agnostic_nms)
    count = min(len(scores), settings.max_detections)
    padding = settings.max_detections - count
    return {
        "boxes": np.pad(boxes[:count], [[0, padding], [0, 0]])[None],
        "scores": np.pad(scores[:count], [[0, padding]])[None],
        "classes": np.pad(classes[:count], [[0, padding]], constant_values=-1)[None],
        "num_detections": np.array([count], np.int32),
    }


class SlicedInference:
    """A model whose ``detect`` and ``detect_function`` run :func:`predict_sliced`; everything else is the model's.

    Lets the evaluation and prediction code (``--mode=evaluate
    --slice_size=N``, ``--mode=predict --slice_size=N``) use sliced
    inference without a change. It takes batches of images at their own
    resolution (each image sliced on its own), so the evaluation pipeline
    must not resize them (:func:`keras_retina.data.original_size_pipeline`).

    Args:
        model: a :class:`keras_retina.RetinaNet`.
        slice_size, slice_overlap, image_size, whole_image, merge, batch_size:
            as in :func:`predict_sliced`.

    Example:
        >>> import numpy as np, keras_retina as kr
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16, head_channels=16, num_head_convs=1)
        >>> sliced = SlicedInference(model, slice_size=64)
        >>> sliced.num_classes, sliced.detect_function()(np.zeros((1, 100, 150, 3), "float32"))["scores"].shape
        (2, TensorShape([1, 100]))
    """

    def __init__(
        self,
        model,
        slice_size: int,
        slice_overlap: float = DEFAULT_OVERLAP,
        image_size: int | None = None,
        whole_image: bool = True,
        merge: str = DEFAULT_MERGE,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        _check_options(slice_size, slice_overlap)
        if merge not in MERGES:
            raise ValueError(f"`merge` must be one of {MERGES}, got {merge!r}.")
        self.model = model
        self.options = dict(
            slice_size=int(slice_size), slice_overlap=float(slice_overlap), image_size=image_size,
            whole_image=bool(whole_image), merge=merge, batch_size=batch_size,
        )

    def detect(self, images, valid_shapes=None) -> dict:
        """:func:`predict_sliced` on each image of ``images`` ``(B, H, W, 3)``; its outputs stacked over ``B``, as tensors."""
        images = np.asarray(images)
        if valid_shapes is not None:  # each image's own extent within a padded batch
            shapes = np.asarray(valid_shapes).astype(int)
            each = [predict_sliced(self.model, image[:h, :w], **self.options) for image, (h, w) in zip(images, shapes)]
        else:
            each = [predict_sliced(self.model, image, **self.options) for image in images]
        return {key: tf.constant(np.concatenate([out[key] for out in each])) for key in each[0]}

    def detect_function(self):
        # Eager: the number of tiles depends on each image's size.
        return self.detect

    def __getattr__(self, name):
        return getattr(self.model, name)
