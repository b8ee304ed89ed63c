"""The tf.data pipeline: raw examples -> augmented, resized, padded batches.

`make_pipeline` turns a dataset of raw examples, what every source of
:mod:`keras_retina.data` yields (docs/DATA.md)::

    {"image": uint8 (H, W, 3), "boxes": float32 (N, 4) xyxy pixels,
     "classes": int32 (N,), "is_crowd": bool (N,), "image_id": int64 ()}

into the batches the model consumes::

    images: float32 (B, S_h, S_w, 3), pixel values 0-255
    y: {"boxes": float32 (B, max_boxes, 4) xyxy pixels of the padded image,
        "classes": int32 (B, max_boxes), -1 on padding rows,
        "is_crowd": bool (B, max_boxes), False on padding rows,
        "num_dropped_boxes": int32 (B,), "num_truncated_boxes": int32 (B,),
        # evaluation (training=False) only:
        "image_id": int64 (B,), "scale": float32 (B, 2), "image_shape": int32 (B, 2)}

Geometry, per example: the image is resized keeping its aspect ratio so that
it fits ``image_size`` (long side = ``image_size`` for a square target),
multiplied in training by a random scale-jitter factor; where that makes it
larger than ``image_size`` a random window of ``image_size`` is cropped; in
training it is flipped left-right with probability 0.5; it is then padded with
zeros at the bottom and right (top-left anchored, so box coordinates only
scale and shift) to the square ``image_size``, or to the next multiple of
``pad_to_multiple``.

Nothing is dropped silently:

* ``num_dropped_boxes``: boxes whose width or height is not positive after
  scaling, cropping and clipping to the visible image (for example a box
  cropped away by scale jitter, a box outside the image, or a degenerate
  input box). They are removed.
* ``num_truncated_boxes``: boxes beyond the first ``max_boxes`` kept ones,
  removed so that the batch has a static shape.

Both travel with each example in ``y`` (stateless, exact under any
parallelism or distribution strategy); `summarize_box_counts` adds them up and
logs them, e.g. before training or at the end of an evaluation pass.

Evaluation metadata travels as extra keys of ``y`` (the model's
``compute_loss`` reads only ``boxes``, ``classes`` and ``is_crowd``;
``model.predict`` ignores ``y``): ``image_id``, ``scale`` = ``(scale_y,
scale_x)`` such that ``resized = original * scale``, and the original
``image_shape`` = ``(height, width)``. `to_original_pixels` maps predicted
boxes back.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import tensorflow as tf
from absl import logging

#: Class id of padding rows in ``y["classes"]`` (matches the model's convention).
PADDING_CLASS = -1

#: Extra keys of ``y`` in evaluation mode.
EVAL_KEYS = ("image_id", "scale", "image_shape")


def input_share(input_context: "tf.distribute.InputContext | None", argument: str = "input_context") -> tuple[int, int]:
    """``(num_input_pipelines, input_pipeline_id)`` of a ``tf.distribute.InputContext``; ``(1, 0)`` for None.

    The sources (:func:`keras_retina.data.coco_json_dataset`,
    :func:`keras_retina.data.tfds_dataset`) keep pipeline ``i``'s share of
    the images, before any file is read, from these two numbers.

    Raises:
        TypeError: ``input_context`` is not an ``InputContext`` (the message
            names ``argument``).

    Example:
        >>> input_share(tf.distribute.InputContext(num_input_pipelines=4, input_pipeline_id=1))
        (4, 1)
        >>> input_share(None)
        (1, 0)
    """
    if input_context is None:
        return 1, 0
    if not isinstance(input_context, tf.distribute.InputContext):
        raise TypeError(
            f"`{argument}` must be a tf.distribute.InputContext (what "
            f"strategy.distribute_datasets_from_function passes) or None, got {input_context!r}."
        )
    return int(input_context.num_input_pipelines), int(input_context.input_pipeline_id)


def _as_size_pair(value: Any, argument: str) -> tuple[int, int]:
    """``512`` or ``(512, 640)`` -> ``(height, width)``, validated."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(
            f"`{argument}` must be a positive int or a (height, width) pair of "
            f"positive ints, got {value!r}."
        )
    if min(pair) <= 0:
        raise ValueError(f"`{argument}` must be positive, got {value!r}.")
    return pair


def output_image_size(
    image_size: int | tuple[int, int], pad_to_multiple: int | None = None
) -> tuple[int, int]:
    """Static ``(height, width)`` of the padded images `make_pipeline` returns.

    Args:
        image_size: target size: an int for a square, or ``(height, width)``.
        pad_to_multiple: if set, each side is rounded up to a multiple of it
            (e.g. 128, the stride of P7).

    Returns:
        ``(height, width)`` in pixels.

    Example:
        >>> output_image_size(600, pad_to_multiple=128)
        (640, 640)
    """
    target_h, target_w = _as_size_pair(image_size, "image_size")
    if pad_to_multiple is None:
        return target_h, target_w
    if (
        not isinstance(pad_to_multiple, (int, np.integer))
        or isinstance(pad_to_multiple, bool)
        or pad_to_multiple <= 0
    ):
        raise ValueError(f"`pad_to_multiple` must be None or a positive int, got {pad_to_multiple!r}.")
    m = int(pad_to_multiple)
    return math.ceil(target_h / m) * m, math.ceil(target_w / m) * m


def shorter_side_size(height, width, min_size: int, max_size: int, jitter=1.0) -> tuple[tf.Tensor, tf.Tensor]:
    """Size of an image resized by torchvision's and detectron2's rule: shorter side ``min_size``, longer at most ``max_size``.

    The scale is ``min(min_size / shorter, max_size / longer)`` (times
    ``jitter``) and each side ``floor(side * scale)``, in float64, as
    ``torchvision.models.detection.transform`` resizes: a 640 x 480 photo
    becomes 1066 x 800 at (800, 1333).

    Args:
        height, width: the image's size in pixels (ints or scalar tensors).
        min_size, max_size: the rule's sizes in pixels.
        jitter: a factor on the scale (training's scale jitter).

    Returns:
        ``(resized_height, resized_width)``: float32 scalar tensors, each >= 1.

    Example:
        >>> [int(side) for side in shorter_side_size(480, 640, 800, 1333)]
        [800, 1066]
        >>> [int(side) for side in shorter_side_size(300, 2000, 800, 1333)]   # the longer side caps it
        [199, 1333]
    """
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    scale = tf.minimum(min_size / tf.minimum(h, w), max_size / tf.maximum(h, w)) * tf.cast(jitter, tf.float64)
    resized_h = tf.floor(h * scale)
    resized_w = tf.floor(w * scale)
    return tf.maximum(tf.cast(resized_h, tf.float32), 1.0), tf.maximum(tf.cast(resized_w, tf.float32), 1.0)


def check_resize_rule(min_size, max_size, image_size, argument: str = "min_size") -> None:
    """A ValueError unless ``(min_size, max_size)`` is both None, or a rule whose images fit the canvas ``image_size``.

    Example:
        >>> check_resize_rule(800, 1333, 1344)
        >>> check_resize_rule(800, 1333, 800)
        Traceback (most recent call last):
        ...
        ValueError: `max_size` (1333) must be at most the canvas `image_size` (800): a resized image would be cut.
    """
    if min_size is None and max_size is None:
        return
    if min_size is None or max_size is None:
        raise ValueError(f"`{argument}` and `max_size` are given together or not at all, got {min_size!r}, {max_size!r}.")
    if not 0 < int(min_size) <= int(max_size):
        raise ValueError(f"`{argument}` and `max_size` must satisfy 0 < min_size <= max_size, got {min_size!r}, {max_size!r}.")
    if int(max_size) > min(_as_size_pair(image_size, "image_size")):
        raise ValueError(
            f"`max_size` ({max_size}) must be at most the canvas `image_size` ({image_size}): a resized image would be cut."
        )


def transform_example(
    example: dict[str, tf.Tensor],
    image_size: int | tuple[int, int] = 512,
    *,
    max_boxes: int = 100,
    pad_to_multiple: int | None = None,
    jitter: float | tf.Tensor = 1.0,
    flip: bool | tf.Tensor = False,
    crop_fraction: tuple[float, float] | tf.Tensor = (0.0, 0.0),
    min_size: int | None = None,
    max_size: int | None = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """Resizes, crops, flips and pads one raw example; boxes follow exactly.

    The deterministic core of `make_pipeline` (which draws ``jitter``,
    ``flip`` and ``crop_fraction`` at random in training). With the defaults
    it is the evaluation transform: aspect-preserving resize to fit
    ``image_size``, then zero padding at the bottom and right.

    Hand-written rather than Keras ``RandomFlip(bounding_box_format=...)`` +
    keras-cv ``JitteredResize``: measured inside tf.data on 2 CPU cores with
    640x480 JPEGs (decode alone 913 images/s), decode + those two layers ran
    at 151 images/s (192 with the flip alone) against 331 for decode + this
    function, batched; neither layer reports the boxes it removes (keras-cv
    keeps them with class -1), and a flip after padding would move the image
    off the top-left anchor.

    Args:
        example: raw example: ``"image"`` uint8 (or 0-255 float) ``(H, W, 3)``,
            ``"boxes"`` float32 ``(N, 4)`` xyxy pixels, ``"classes"`` int32
            ``(N,)``, optional ``"is_crowd"`` bool ``(N,)`` (False if absent)
            and ``"image_id"`` int64 ``()`` (0 if absent).
        image_size: target size, an int (square) or ``(height, width)``.
        max_boxes: rows of the padded box tensors.
        pad_to_multiple: round the padded size up to a multiple of this.
        jitter: factor applied to the fit-to-``image_size`` scale.
        flip: mirror the image left-right (before resizing, so the crop
            window is placed on the mirrored image).
        crop_fraction: ``(fy, fx)`` in [0, 1]: where the crop window sits
            when the resized image exceeds ``image_size`` (0: top/left, 1:
            bottom/right).
        min_size, max_size: if given, resize by :func:`shorter_side_size`
            (shorter side ``min_size``, longer at most ``max_size``; the
            source's rule for published COCO weights) instead of fitting
            ``image_size``, which stays the padded canvas.

    Returns:
        ``(image, y)``: ``image`` float32 ``(S_h, S_w, 3)`` (0-255), ``y`` a
        dict with ``"boxes"`` float32 ``(max_boxes, 4)``, ``"classes"`` int32
        ``(max_boxes,)`` (-1 padding), ``"is_crowd"`` bool ``(max_boxes,)``,
        ``"num_dropped_boxes"`` and ``"num_truncated_boxes"`` int32 ``()``,
        ``"image_id"`` int64 ``()``, ``"scale"`` float32 ``(2,)``
        ``(scale_y, scale_x)`` and ``"image_shape"`` int32 ``(2,)`` (original
        height, width).

    Example:
        >>> ex = {"image": tf.zeros((100, 200, 3), tf.uint8),
        ...       "boxes": tf.constant([[20., 10., 60., 50.]]),
        ...       "classes": tf.constant([3])}
        >>> image, y = transform_example(ex, image_size=400, max_boxes=2)
        >>> tuple(image.shape)   # scale 2: 200 x 400 pixels, zero rows 200-399
        (400, 400, 3)
        >>> y["boxes"].numpy(), y["classes"].numpy()
        (array([[ 40.,  20., 120., 100.],
               [  0.,   0.,   0.,   0.]], dtype=float32), array([ 3, -1], dtype=int32))
        >>> y["scale"].numpy(), y["image_shape"].numpy()
        (array([2., 2.], dtype=float32), array([100, 200], dtype=int32))
    """
    target_h, target_w = _as_size_pair(image_size, "image_size")
    out_h, out_w = output_image_size(image_size, pad_to_multiple)

    image = example["image"]
    image_shape = tf.shape(image)[:2]
    height = tf.cast(image_shape[0], tf.float32)
    width = tf.cast(image_shape[1], tf.float32)
    boxes = tf.reshape(tf.cast(example["boxes"], tf.float32), (-1, 4))  # (N, 4)

    # Flip first, on the (smaller, uint8) input: half the cost of flipping
    # the float32 resized image, and the same distribution of outputs.
    def flipped():
        x_min, y_min, x_max, y_max = tf.unstack(boxes, axis=-1)
        mirrored = tf.stack([width - x_max, y_min, width - x_min, y_max], axis=-1)
        return tf.reverse(image, axis=[1]), mirrored

    if isinstance(flip, (bool, np.bool_)):  # Static: no tf.cond in the graph.
        if flip:
            image, boxes = flipped()
    else:
        image, boxes = tf.cond(tf.convert_to_tensor(flip, tf.bool), flipped, lambda: (image, boxes))

    # Aspect-preserving fit, times the jitter factor; per-axis scales are
    # those of the rounded size, so boxes match the resized pixels exactly.
    if min_size is not None:
        check_resize_rule(min_size, max_size, image_size)
        resized_h, resized_w = shorter_side_size(height, width, min_size, max_size, jitter)
    else:
        fit = tf.minimum(target_h / height, target_w / width)
        scale = fit * tf.cast(jitter, tf.float32)
        resized_h = tf.maximum(tf.round(height * scale), 1.0)
        resized_w = tf.maximum(tf.round(width * scale), 1.0)
    scale_y = resized_h / height
    scale_x = resized_w / width
    resized = tf.image.resize(
        image, tf.cast(tf.stack([resized_h, resized_w]), tf.int32), method="bilinear"
    )  # float32 (rh, rw, 3)

    # Crop a target-size window where the jittered image is larger.
    crop_fraction = tf.clip_by_value(tf.cast(crop_fraction, tf.float32), 0.0, 1.0)
    offset_y = tf.floor(crop_fraction[0] * tf.maximum(resized_h - target_h, 0.0))
    offset_x = tf.floor(crop_fraction[1] * tf.maximum(resized_w - target_w, 0.0))
    visible_h = tf.minimum(resized_h, float(target_h))
    visible_w = tf.minimum(resized_w, float(target_w))
    oy, ox = tf.cast(offset_y, tf.int32), tf.cast(offset_x, tf.int32)
    vh, vw = tf.cast(visible_h, tf.int32), tf.cast(visible_w, tf.int32)
    visible = resized[oy : oy + vh, ox : ox + vw, :]  # (vh, vw, 3)

    boxes = boxes * tf.stack([scale_x, scale_y, scale_x, scale_y]) - tf.stack(
        [offset_x, offset_y, offset_x, offset_y]
    )
    boxes = tf.clip_by_value(boxes, 0.0, tf.stack([visible_w, visible_h, visible_w, visible_h]))

    padded = tf.pad(visible, [[0, out_h - vh], [0, out_w - vw], [0, 0]])
    padded = tf.ensure_shape(padded, (out_h, out_w, 3))

    # Drop boxes that are empty after clipping (also NaN or inverted ones).
    num_boxes = tf.shape(boxes)[0]
    classes = tf.reshape(tf.cast(example["classes"], tf.int32), (-1,))
    if "is_crowd" in example:
        is_crowd = tf.reshape(tf.cast(example["is_crowd"], tf.bool), (-1,))
    else:
        is_crowd = tf.zeros((num_boxes,), tf.bool)
    image_id = example.get("image_id", tf.constant(0, tf.int64))
    rows_match = tf.logical_and(
        tf.equal(tf.shape(classes)[0], num_boxes), tf.equal(tf.shape(is_crowd)[0], num_boxes)
    )
    with tf.control_dependencies(
        [
            tf.debugging.Assert(
                rows_match,
                [
                    tf.strings.format(
                        "raw example image_id={}: fields boxes, classes, is_crowd have {}, {}, {} "
                        "rows; expected the same number (one row per box) in each",
                        (image_id, num_boxes, tf.shape(classes)[0], tf.shape(is_crowd)[0]),
                    )
                ],
            )
        ]
    ):
        boxes = tf.identity(boxes)
    keep = tf.logical_and(boxes[:, 2] > boxes[:, 0], boxes[:, 3] > boxes[:, 1])
    boxes = tf.boolean_mask(boxes, keep)
    classes = tf.boolean_mask(classes, keep)
    is_crowd = tf.boolean_mask(is_crowd, keep)
    num_kept = tf.shape(boxes)[0]
    num_dropped = num_boxes - num_kept

    # Truncate to max_boxes (first ones kept) and pad to a static shape.
    num_truncated = tf.maximum(num_kept - max_boxes, 0)
    boxes = boxes[:max_boxes]
    classes = classes[:max_boxes]
    is_crowd = is_crowd[:max_boxes]
    pad_rows = max_boxes - tf.shape(boxes)[0]
    boxes = tf.pad(boxes, [[0, pad_rows], [0, 0]])
    classes = tf.pad(classes, [[0, pad_rows]], constant_values=PADDING_CLASS)
    is_crowd = tf.pad(is_crowd, [[0, pad_rows]], constant_values=False)

    y = {
        "boxes": tf.ensure_shape(boxes, (max_boxes, 4)),
        "classes": tf.ensure_shape(classes, (max_boxes,)),
        "is_crowd": tf.ensure_shape(is_crowd, (max_boxes,)),
        "num_dropped_boxes": tf.cast(num_dropped, tf.int32),
        "num_truncated_boxes": tf.cast(num_truncated, tf.int32),
        "image_id": tf.cast(image_id, tf.int64),
        "scale": tf.ensure_shape(tf.stack([scale_y, scale_x]), (2,)),
        "image_shape": tf.ensure_shape(tf.cast(image_shape, tf.int32), (2,)),
    }
    return padded, y


def _check_raw_spec(raw: tf.data.Dataset, training: bool) -> None:
    """Raises ValueError if ``raw`` is not a dataset of raw examples."""
    if not isinstance(raw, tf.data.Dataset):
        raise ValueError(
            f"`raw` must be a tf.data.Dataset of raw examples, got a {type(raw).__name__}."
        )
    spec = raw.element_spec
    required = ("image", "boxes", "classes") + (() if training else ("image_id",))
    missing = [k for k in required if not isinstance(spec, dict) or k not in spec]
    if missing:
        raise ValueError(
            f"`raw` examples must be dicts with keys {list(required)} (a raw example: "
            '{"image": uint8 (H, W, 3), "boxes": float32 (N, 4) xyxy pixels, "classes": '
            'int32 (N,), optional "is_crowd": bool (N,), "image_id": int64 ()}), missing '
            f"{missing}, got element_spec={spec!r}."
        )
    image_spec = spec["image"]
    if image_spec.shape.rank != 3 or image_spec.shape[-1] not in (None, 3):
        raise ValueError(
            f"`raw` images must have shape (H, W, 3) (unbatched RGB), got image spec {image_spec!r}."
        )
    if spec["boxes"].shape.rank != 2 or spec["boxes"].shape[-1] not in (None, 4):
        raise ValueError(
            f"`raw` boxes must have shape (N, 4) xyxy pixels (unbatched), got boxes spec {spec['boxes']!r}."
        )


def make_pipeline(
    raw: tf.data.Dataset,
    image_size: int | tuple[int, int] = 512,
    batch_size: int = 8,
    training: bool = True,
    *,
    max_boxes: int = 100,
    shuffle_buffer: int = 256,
    seed: int | None = None,
    deterministic: bool | None = None,
    scale_jitter: tuple[float, float] | None = (0.8, 1.25),
    horizontal_flip: bool = True,
    pad_to_multiple: int | None = None,
    drop_remainder: bool | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    prefetch: int = tf.data.AUTOTUNE,
    data_service: str | None = None,
    data_service_job: str | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
) -> tf.data.Dataset:
    """Builds the batched training or evaluation dataset from raw examples.

    Training: shuffle (``shuffle_buffer``, ``seed``), random scale jitter
    with a random crop where the image outgrows ``image_size``, random
    horizontal flip, resize and pad, batch with ``drop_remainder=True``.
    Evaluation (``training=False``): resize and pad only, in input order,
    keeping the last partial batch, with ``image_id``, ``scale`` and
    ``image_shape`` in ``y``. See the module docstring for the output
    structure, the geometry and the box counts.

    Random draws use stateless ops seeded per example from
    ``tf.data.Dataset.random(seed)``, so with a ``seed`` the output is the
    same for every run and every degree of parallelism, and each epoch (each
    new iterator) draws new augmentations.

    Args:
        raw: dataset of raw examples (the structure in the module docstring);
            ``image_id`` is required for evaluation, ``is_crowd`` defaults
            to False.
        image_size: target size in pixels: an int (square) or
            ``(height, width)``.
        batch_size: examples per batch.
        training: augment and shuffle (True) or evaluate (False).
        max_boxes: rows of ``y["boxes"]`` / ``y["classes"]`` per example.
        shuffle_buffer: training shuffle buffer in raw (decoded) examples;
            memory is about ``shuffle_buffer`` x one decoded image. 0 turns
            shuffling off.
        seed: seed of the shuffle and of the augmentations; None draws fresh
            randomness.
        deterministic: keep element order under parallel ``map``; None means
            True for evaluation or when ``seed`` is set, else False (faster).
        scale_jitter: ``(low, high)`` range of the uniform random factor on
            the fit-to-``image_size`` scale in training; None for no jitter.
        horizontal_flip: flip left-right with probability 0.5 in training.
        pad_to_multiple: round the padded size up to a multiple of this
            (e.g. 128); None pads to ``image_size`` exactly.
        drop_remainder: drop the last partial batch; None means ``training``.
        num_parallel_calls: parallelism of the per-example ``map``.
        prefetch: batches to prefetch.
        data_service: training only: ``grpc://HOST:PORT`` of a tf.data
            service dispatcher. Reading, decoding and augmentation run on
            its workers, each example once per epoch (dynamic sharding);
            batching and prefetching here. ``raw`` may be repeated (as for
            local training): each repetition is handed out once.
        data_service_job: the service job's name; trainers that pass the
            same name share one epoch between them (multi-worker). None: a
            job of this iterator alone.
        min_size, max_size: resize by the shorter side instead of fitting
            ``image_size`` (:func:`shorter_side_size`; the canvas stays
            ``image_size``, which must hold ``max_size``).

    Returns:
        ``tf.data.Dataset`` of ``(images, y)``: ``images`` float32
        ``(B, S_h, S_w, 3)`` 0-255; ``y`` as in the module docstring. Every
        dimension is static except ``B`` when ``drop_remainder`` is False.

    Raises:
        ValueError: for a ``raw`` that is not a dataset of raw examples or an
            argument out of range; the message names the argument, what was
            expected and the value it got.

    Example:
        >>> raw = tf.data.Dataset.from_tensors(
        ...     {"image": tf.zeros((100, 200, 3), tf.uint8), "boxes": [[20., 10., 60., 50.]],
        ...      "classes": [3], "image_id": tf.constant(7, tf.int64)}).repeat(4)
        >>> train = make_pipeline(raw, image_size=128, batch_size=2, seed=0)
        >>> images, y = next(iter(train))
        >>> tuple(images.shape), tuple(y["boxes"].shape), tuple(y["classes"].shape)
        ((2, 128, 128, 3), (2, 100, 4), (2, 100))
        >>> sorted(y)
        ['boxes', 'classes', 'is_crowd', 'num_dropped_boxes', 'num_truncated_boxes']
        >>> images, y = next(iter(make_pipeline(raw, image_size=128, batch_size=2, training=False)))
        >>> y["image_id"].numpy(), y["scale"].numpy()   # evaluation keeps the metadata
        (array([7, 7]), array([[0.64, 0.64],
               [0.64, 0.64]], dtype=float32))
    """
    _check_raw_spec(raw, training)
    output_image_size(image_size, pad_to_multiple)  # Validates both arguments.
    check_resize_rule(min_size, max_size, image_size)
    for argument, value, minimum in (
        ("batch_size", batch_size, 1),
        ("max_boxes", max_boxes, 1),
        ("shuffle_buffer", shuffle_buffer, 0),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"`{argument}` must be an int >= {minimum}, got {value!r}.")
    if scale_jitter is not None:
        if (
            not isinstance(scale_jitter, (tuple, list))
            or len(scale_jitter) != 2
            or not 0 < scale_jitter[0] <= scale_jitter[1]
        ):
            raise ValueError(
                f"`scale_jitter` must be None or (low, high) with 0 < low <= high, got {scale_jitter!r}."
            )
    if deterministic is None:
        deterministic = (not training) or seed is not None
    if drop_remainder is None:
        drop_remainder = training
    transform_kwargs = dict(
        image_size=image_size, max_boxes=int(max_boxes), pad_to_multiple=pad_to_multiple,
        min_size=min_size, max_size=max_size,
    )

    if training:
        dataset = raw
        if shuffle_buffer > 0:
            dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        # One stateless seed pair per example: reproducible under parallel map.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds))
        jitter_low, jitter_high = scale_jitter if scale_jitter is not None else (1.0, 1.0)

        def train_map(example, seed_pair):
            jitter_seed, flip_seed, crop_seed = tf.unstack(
                tf.random.experimental.stateless_split(seed_pair, 3)
            )
            jitter = (
                tf.random.stateless_uniform([], jitter_seed, minval=jitter_low, maxval=jitter_high)
                if scale_jitter is not None
                else 1.0
            )
            flip = tf.random.stateless_uniform([], flip_seed) < 0.5 if horizontal_flip else False
            crop_fraction = tf.random.stateless_uniform([2], crop_seed)
            image, y = transform_example(
                example,
                jitter=jitter,
                flip=flip,
                crop_fraction=crop_fraction,
                **transform_kwargs,
            )
            # Jittered scale/flip cannot map back to the original: eval only.
            for key in EVAL_KEYS:
                del y[key]
            return image, y

        dataset = dataset.map(
            train_map, num_parallel_calls=num_parallel_calls, deterministic=deterministic
        )
    else:
        dataset = raw.map(
            lambda example: transform_example(example, **transform_kwargs),
            num_parallel_calls=num_parallel_calls,
            deterministic=deterministic,
        )

    if data_service is not None:
        if not training:
            raise ValueError("`data_service` is for training pipelines (training=True) only.")
        # DYNAMIC ("distributed_epoch"): the dispatcher hands the source's
        # elements (here: the file index) out to the workers one split at a
        # time, and a repeated source once per repetition, so every example is
        # processed exactly once per epoch over all workers and consumers
        # (OFF: every worker processes the whole dataset, each example once
        # per worker and epoch). Batching stays here so that no worker
        # drops a remainder of its own.
        dataset = dataset.apply(
            tf.data.experimental.service.distribute(
                processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC,
                service=data_service,
                job_name=data_service_job,
            )
        )
    dataset = dataset.batch(
        batch_size,
        drop_remainder=drop_remainder,
        num_parallel_calls=num_parallel_calls,
        deterministic=deterministic,
    )
    options = tf.data.Options()
    options.deterministic = deterministic
    dataset = dataset.with_options(options)
    return dataset.prefetch(prefetch)


def original_size_pipeline(raw: tf.data.Dataset) -> tf.data.Dataset:
    """One image a batch at its own resolution, in an evaluation pipeline's ``(images, y)`` format.

    For inference that sizes each image itself (sliced inference,
    :class:`keras_retina.model.slicing.SlicedInference`): ``images`` is
    float32 ``(1, H, W, 3)`` with ``H, W`` the image's own, ``y`` has
    ``image_id`` ``(1,)``, ``scale`` ``(1, 2)`` of ones, ``image_shape``
    ``(1, 2)`` ``(H, W)``, ``boxes`` ``(1, N, 4)`` xyxy pixels and
    ``classes`` ``(1, N)``, so :func:`to_original_pixels` leaves boxes as they are.

    Example:
        >>> raw = tf.data.Dataset.from_tensor_slices({
        ...     "image": np.zeros((2, 48, 80, 3), "uint8"), "boxes": np.zeros((2, 1, 4), "float32"),
        ...     "classes": np.zeros((2, 1), "int32"), "image_id": np.array([7, 8], "int64")})
        >>> images, y = next(iter(original_size_pipeline(raw)))
        >>> images.shape, y["scale"].numpy().tolist(), y["image_shape"].numpy().tolist()
        (TensorShape([1, 48, 80, 3]), [[1.0, 1.0]], [[48, 80]])
    """
    _check_raw_spec(raw, training=False)

    def to_pair(example):
        image = tf.cast(example["image"], tf.float32)
        y = {
            "image_id": tf.cast(example["image_id"], tf.int64),
            "scale": tf.ones((2,), tf.float32),
            "image_shape": tf.shape(image)[:2],
            "boxes": tf.cast(example["boxes"], tf.float32),
            "classes": tf.cast(example["classes"], tf.int32),
        }
        return image, y

    return raw.map(to_pair, num_parallel_calls=tf.data.AUTOTUNE).batch(1).prefetch(1)


def to_original_pixels(boxes_xyxy: Any, scale: Any, image_shape: Any | None = None) -> tf.Tensor:
    """Maps boxes from the padded, resized image back to original pixels.

    Args:
        boxes_xyxy: float ``(..., N, 4)`` xyxy pixels in the pipeline's image.
        scale: float ``(..., 2)`` ``(scale_y, scale_x)`` from ``y["scale"]``.
        image_shape: optional int ``(..., 2)`` ``(height, width)`` from
            ``y["image_shape"]``; when given, boxes are clipped to it.

    Returns:
        float32 ``(..., N, 4)`` xyxy in original-image pixels.

    Example:
        >>> to_original_pixels([[[40., 20., 120., 100.]]], [[2., 2.]], [[100, 200]]).numpy()
        array([[[20., 10., 60., 50.]]], dtype=float32)
    """
    boxes = tf.convert_to_tensor(boxes_xyxy, tf.float32)
    scale = tf.convert_to_tensor(scale, tf.float32)
    scale_xyxy = tf.stack([scale[..., 1], scale[..., 0]] * 2, axis=-1)[..., tf.newaxis, :]
    boxes = boxes / scale_xyxy
    if image_shape is not None:
        shape = tf.cast(tf.convert_to_tensor(image_shape), tf.float32)
        limits = tf.stack([shape[..., 1], shape[..., 0]] * 2, axis=-1)[..., tf.newaxis, :]
        boxes = tf.clip_by_value(boxes, 0.0, limits)
    return boxes


def summarize_box_counts(
    batches: Iterable[tuple[Any, dict[str, Any]]], max_batches: int | None = None
) -> dict[str, int]:
    """Adds up the box counts of a batched pipeline and logs them.

    Args:
        batches: a dataset from `make_pipeline` (or any iterable of
            ``(images, y)`` with the count keys).
        max_batches: stop after this many batches (for an infinite dataset).

    Returns:
        ``{"examples", "boxes", "dropped_boxes", "truncated_boxes"}``: numbers
        of examples, of boxes kept (class >= 0), of boxes dropped as empty
        after clipping, and of boxes cut by ``max_boxes``.

    Example:
        Three examples with two boxes each, one of them outside the image:

        >>> raw = tf.data.Dataset.from_tensors(
        ...     {"image": tf.zeros((64, 64, 3), tf.uint8),
        ...      "boxes": [[8., 8., 32., 32.], [70., 70., 90., 90.]], "classes": [0, 1],
        ...      "image_id": tf.constant(1, tf.int64)}).repeat(3)
        >>> summarize_box_counts(make_pipeline(raw, image_size=64, batch_size=2, training=False))
        {'examples': 3, 'boxes': 3, 'dropped_boxes': 3, 'truncated_boxes': 0}
    """
    totals = {"examples": 0, "boxes": 0, "dropped_boxes": 0, "truncated_boxes": 0}
    for i, (_, y) in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        classes = np.asarray(y["classes"])
        totals["examples"] += int(classes.shape[0])
        totals["boxes"] += int(np.sum(classes >= 0))
        totals["dropped_boxes"] += int(np.sum(np.asarray(y["num_dropped_boxes"])))
        totals["truncated_boxes"] += int(np.sum(np.asarray(y["num_truncated_boxes"])))
    if totals["dropped_boxes"] or totals["truncated_boxes"]:
        logging.warning(
            "Input pipeline: %d boxes dropped (empty after resize/crop/clip) and "
            "%d truncated by max_boxes, over %d examples with %d boxes kept.",
            totals["dropped_boxes"],
            totals["truncated_boxes"],
            totals["examples"],
            totals["boxes"],
        )
    else:
        logging.info("Input pipeline: %s", totals)
    return totals
