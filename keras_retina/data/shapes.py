"""A deterministic synthetic detection dataset in COCO format ("shapes").

``make_shapes_dataset`` draws coloured shapes (circles, squares, triangles,
diamonds, crosses) on textured backgrounds and writes them to disk as JPEG
images plus one COCO instances JSON, so that the default run and the tests
need no download and exercise exactly the code path of a user's own
COCO-format data (``keras_retina.data.coco_json``).

Layout written under ``directory``::

    directory/annotations.json     COCO instances JSON
    directory/images/000001.jpg    one JPEG per image, ids from 1

Properties the tests rely on:

- The same arguments give byte-identical files. All randomness comes from
  ``numpy.random.default_rng``: image ``i`` uses ``default_rng((*seed, i))``,
  so the first ``n`` images do not depend on ``num_images``.
- Every ``bbox`` is the tight box of the shape's *visible* pixels, in COCO's
  continuous pixel coordinates (pixel ``(x, y)`` covers ``[x, x + 1) ×
  [y, y + 1)``); ``area`` is the visible pixel count, as COCO's mask area is.
- Objects may overlap, but every object keeps at least
  ``MIN_VISIBLE_FRACTION`` of its pixels visible.
- Object sizes cover COCO's three area buckets (small < 32², medium 32²–96²,
  large > 96² pixels); the short side of almost every object is ≥ 16 px so
  that RetinaNet's smallest anchors (32 × 32 px at P3) can match it.
- About ``empty_fraction`` of the images contain no object at all.

A second setting, :data:`SMALL_OBJECTS_IN_CLUTTER` (``make_shapes_dataset(...,
**SMALL_OBJECTS_IN_CLUTTER)``), is made for the paper's question:
small objects among many unannotated look-alikes (irregular blobs and hollow
outlines of the five shapes), so that foreground anchors are about 1 in 1000
of all anchors, as on COCO
(``experiments.study_measure.foreground_anchor_ratio``
measures it with the library's own anchors and matching). A third,
:data:`WIDE_OBJECTS_IN_CLUTTER`, is the second with small and medium objects
of width / height 1/3 to 3, for the anchor-density question (table 1c).
Their options (``min_objects``, ``size_probabilities``, ``max_clutter``,
``aspect_range``) draw nothing extra at their defaults: the default data
stays byte-identical.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, ImageDraw

from keras_retina.data.coco_annotations import load_coco_json

#: Class names, in category-id order (category ids are 1, 2, ... in this order).
SHAPE_CLASSES = ("circle", "square", "triangle", "diamond", "cross")

#: Name of the annotation file and the image folder inside ``directory``.
ANNOTATION_FILE_NAME = "annotations.json"
IMAGE_DIR_NAME = "images"

#: Each object keeps at least this fraction of its own pixels visible.
MIN_VISIBLE_FRACTION = 0.6

#: Probabilities of drawing a small, medium or large object.
SIZE_BUCKET_PROBABILITIES = (0.35, 0.4, 0.25)

#: The range of an object's width / height (log-uniform): near square by default.
ASPECT_RANGE = (0.7, 1.0 / 0.7)

#: The paper study's setting, keyword arguments of
#: :func:`make_shapes_dataset`: 192-pixel images (6,921 anchors with the
#: paper's 9 per location on P3-P7) holding 1 or 2 small objects (side 16-30
#: px, COCO's "small") among 8 to 16 unannotated look-alikes (blobs, hollow
#: outlines) on the textured backgrounds. Measured with the library's anchors
#: and matching: about 1 foreground anchor in 1000, COCO's imbalance
#: (docs/paper_study.md). More objects per image cannot keep that ratio at
#: this size: each small object claims 4-7 anchors (tied low-quality
#: matches), and 192 px have only 6,921 anchors.
SMALL_OBJECTS_IN_CLUTTER = {
    "image_size": (192, 192),
    "min_objects": 1,
    "max_objects": 2,
    "size_probabilities": (1.0, 0.0, 0.0),
    "max_clutter": 16,
    "empty_fraction": 0.0,
}

#: :data:`SMALL_OBJECTS_IN_CLUTTER` with the spread of shapes and sizes that table 1c's
#: question needs: half the objects small (16-30 px), half medium (36-92 px),
#: width / height from 1/3 to 3, distractors alike. In the near-square small setting
#: every anchor set fits the objects equally (the same 32-pixel square is best); here
#: more scales and ratios fit them better (docs/paper_study.md, table 1c_wide).
WIDE_OBJECTS_IN_CLUTTER = {
    **SMALL_OBJECTS_IN_CLUTTER,
    "size_probabilities": (0.5, 0.5, 0.0),
    "aspect_range": (1.0 / 3.0, 3.0),
}

#: Large images with small objects, where sliced inference matters: 1024 x 1536 pixels holding 10 to
#: 30 objects of side 16-30 px (COCO's "small"), with no empty image. Shrunk whole onto a 256-pixel
#: input the objects are 3-5 px; cut into 256-pixel tiles they keep their size
#: (docs/BENCHMARKS.md, "Inference options").
LARGE_IMAGES_SMALL_OBJECTS = {
    "image_size": (1024, 1536),
    "min_objects": 10,
    "max_objects": 30,
    "size_probabilities": (1.0, 0.0, 0.0),
    "empty_fraction": 0.0,
}

#: Bumped whenever the drawing changes, so that cached datasets are redrawn.
_GENERATOR_VERSION = 1

# Smallest Euclidean RGB distance wanted between an object's colour and the
# background's colour segment; best of _COLOUR_TRIES candidates otherwise.
_MIN_COLOUR_DISTANCE = 90.0
_COLOUR_TRIES = 16
_PLACEMENT_TRIES = 10


@dataclasses.dataclass(frozen=True)
class ShapesFiles:
    """Where a shapes dataset was written, and what it holds.

    Attributes:
        annotation_file: path of the COCO instances JSON.
        image_dir: folder holding the JPEG images (``file_name`` in the JSON
            is relative to it).
        num_images: number of images.
        num_annotations: number of boxes over all images.
        class_names: class names in category-id order (ids 1, 2, ...).

    Example:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> files = make_shapes_dataset(directory, num_images=2, image_size=(64, 64), verbose=False)
        >>> os.path.relpath(files.annotation_file, directory), os.path.relpath(files.image_dir, directory)
        ('annotations.json', 'images')
        >>> files.num_images, files.num_annotations
        (2, 1)
    """

    annotation_file: str
    image_dir: str
    num_images: int
    num_annotations: int
    class_names: tuple[str, ...]


def make_shapes_dataset(
    directory: str | os.PathLike,
    num_images: int,
    seed: int | Sequence[int] = 0,
    image_size: tuple[int, int] = (256, 256),
    max_objects: int = 8,
    empty_fraction: float = 0.08,
    jpeg_quality: int = 90,
    overwrite: bool = False,
    verbose: bool = True,
    min_objects: int = 1,
    size_probabilities: Sequence[float] = SIZE_BUCKET_PROBABILITIES,
    max_clutter: int = 0,
    aspect_range: Sequence[float] = ASPECT_RANGE,
) -> ShapesFiles:
    """Writes a synthetic COCO-format detection dataset of coloured shapes.

    Each image has a textured background (gradient, stripes, blotchy noise or
    checks, plus pixel noise) and 0 to ``max_objects`` shapes of the classes
    in ``SHAPE_CLASSES`` with random colour, size, aspect ratio and position.
    With ``max_clutter > 0``, ``max_clutter // 2`` to ``max_clutter``
    unannotated distractors (blobs, hollow outlines) are drawn under the
    objects first. The JSON is written last, so a complete annotation file means a complete
    dataset. When ``overwrite`` is False and ``directory`` already holds a
    dataset written with the same arguments, it is reused as is.

    Args:
        directory: output folder; created if missing.
        num_images: number of images to write, ≥ 1.
        seed: integer seed (or sequence of integers) for
            ``numpy.random.default_rng``; equal seeds give byte-identical files.
        image_size: ``(height, width)`` of every image in pixels; each side
            at least 64.
        max_objects: most shapes per non-empty image, ≥ 1.
        empty_fraction: probability in ``[0, 1]`` that an image has no shape.
        jpeg_quality: JPEG quality, 1–95.
        overwrite: redraw even if a matching dataset is already there.
        verbose: show a progress bar while writing.
        min_objects: fewest shapes per non-empty image, in
            ``[1, max_objects]``.
        size_probabilities: probabilities of a small (side 16-30 px),
            medium (36-92) and large (104 up to 3/4 of the image) object;
            three numbers >= 0 summing to 1.
        max_clutter: most unannotated distractors per image, >= 0 (0: none,
            and no random draw for them).
        aspect_range: ``(low, high)``, the range of an object's (and a
            distractor's) width / height, drawn log-uniformly; ``0 < low <=
            high``. The default, 0.7 to 1/0.7, keeps shapes near square.

    Returns:
        A ``ShapesFiles`` with the annotation file and image folder paths.

    Raises:
        ValueError: if an argument is out of range.

    Example:
        >>> import tempfile
        >>> files = make_shapes_dataset(tempfile.mkdtemp(), num_images=4, seed=0,
        ...                             image_size=(64, 96), verbose=False)
        >>> sorted(os.listdir(files.image_dir))
        ['000001.jpg', '000002.jpg', '000003.jpg', '000004.jpg']
        >>> raw = kr.data.coco_json_dataset(files.annotation_file, files.image_dir)
        >>> [tuple(example["image"].shape) for example in raw]
        [(64, 96, 3), (64, 96, 3), (64, 96, 3), (64, 96, 3)]
    """
    seed_key = _seed_key(seed)
    height, width = _check_arguments(
        num_images, image_size, max_objects, empty_fraction, jpeg_quality
    )
    size_probabilities = _check_setting(min_objects, max_objects, size_probabilities, max_clutter)
    aspect_range = _check_aspect_range(aspect_range)
    directory = os.fspath(directory)
    annotation_file = os.path.join(directory, ANNOTATION_FILE_NAME)
    image_dir = os.path.join(directory, IMAGE_DIR_NAME)
    params = {
        "generator_version": _GENERATOR_VERSION,
        "seed": list(seed_key),
        "num_images": int(num_images),
        "image_size": [height, width],
        "max_objects": int(max_objects),
        "empty_fraction": float(empty_fraction),
        "jpeg_quality": int(jpeg_quality),
    }
    setting = {
        "min_objects": int(min_objects),
        "size_probabilities": list(size_probabilities),
        "max_clutter": int(max_clutter),
    }
    if aspect_range != ASPECT_RANGE:  # recorded only when set, as the setting is
        setting["aspect_range"] = list(aspect_range)
    if setting != _DEFAULT_SETTING:  # recorded only when set: the default JSON stays byte-identical
        params["setting"] = setting
    if not overwrite:
        existing = _load_if_matching(annotation_file, image_dir, params)
        if existing is not None:
            logging.info("Reusing the shapes dataset in %s.", directory)
            return existing

    os.makedirs(image_dir, exist_ok=True)
    progbar = keras.utils.Progbar(num_images, unit_name="image", verbose=1 if verbose else 0)
    images, annotations = [], []
    for index in range(num_images):
        image_id = index + 1
        rng = np.random.default_rng((*seed_key, index))
        pixels, objects, _ = _draw_image(
            rng, height, width, max_objects, empty_fraction,
            min_objects, size_probabilities, max_clutter, aspect_range,
        )
        file_name = f"{image_id:06d}.jpg"
        Image.fromarray(pixels).save(
            os.path.join(image_dir, file_name), format="JPEG", quality=jpeg_quality
        )
        images.append(
            {"id": image_id, "file_name": file_name, "height": height, "width": width}
        )
        for obj in objects:
            x_min, y_min, x_max, y_max = obj["box_xyxy"]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj["class_index"] + 1,
                    "bbox": [float(x_min), float(y_min), float(x_max - x_min), float(y_max - y_min)],
                    "area": float(obj["area"]),
                    "iscrowd": 0,
                }
            )
        progbar.update(index + 1)

    coco = {
        "info": {
            "description": "keras_retina synthetic shapes",
            "version": str(_GENERATOR_VERSION),
            "keras_retina_shapes": params,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"}
            for i, name in enumerate(SHAPE_CLASSES)
        ],
    }
    # Written to a temporary name and renamed, so a killed run never leaves a
    # complete-looking annotation file over incomplete images.
    tmp_file = annotation_file + ".tmp"
    with open(tmp_file, "w", encoding="ascii") as f:
        f.write(json.dumps(coco, sort_keys=True, separators=(",", ":")))
    os.replace(tmp_file, annotation_file)
    logging.info(
        "Wrote %d shapes images with %d boxes to %s.", num_images, len(annotations), directory
    )
    return ShapesFiles(annotation_file, image_dir, num_images, len(annotations), SHAPE_CLASSES)


def make_shapes_splits(
    directory: str | os.PathLike,
    num_train: int,
    num_val: int,
    seed: int = 0,
    **kwargs,
) -> dict[str, ShapesFiles]:
    """Writes a training and a validation shapes dataset side by side.

    The splits are ``directory/train`` and ``directory/val``; they use
    independent random streams (``seed`` and ``(seed, 1)``), so no image is
    shared between them. Image ids start at 1 in each split.

    Args:
        directory: output folder; created if missing.
        num_train: number of training images, ≥ 1.
        num_val: number of validation images, ≥ 1.
        seed: integer seed.
        **kwargs: passed to ``make_shapes_dataset`` (``image_size``,
            ``max_objects``, ``empty_fraction``, ``jpeg_quality``,
            ``overwrite``, ``verbose``).

    Returns:
        ``{"train": ShapesFiles, "val": ShapesFiles}``.

    Example:
        >>> import tempfile
        >>> directory = tempfile.mkdtemp()
        >>> splits = make_shapes_splits(directory, num_train=3, num_val=2,
        ...                             image_size=(64, 64), verbose=False)
        >>> os.path.relpath(splits["val"].annotation_file, directory)
        'val/annotations.json'
        >>> splits["train"].num_images, splits["val"].num_images
        (3, 2)
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"`seed` must be an int, got {seed!r}.")
    directory = os.fspath(directory)
    return {
        "train": make_shapes_dataset(os.path.join(directory, "train"), num_train, seed, **kwargs),
        "val": make_shapes_dataset(os.path.join(directory, "val"), num_val, (seed, 1), **kwargs),
    }


def _seed_key(seed) -> tuple[int, ...]:
    """``seed`` as a tuple of non-negative ints (``default_rng`` entropy)."""
    values = (seed,) if isinstance(seed, (int, np.integer)) else tuple(seed)
    if not values or any(
        isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values
    ):
        raise ValueError(
            f"`seed` must be a non-negative int or a sequence of them, got {seed!r}."
        )
    return tuple(int(v) for v in values)


def _check_arguments(num_images, image_size, max_objects, empty_fraction, jpeg_quality):
    if not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"`num_images` must be an int >= 1, got {num_images!r}.")
    if len(image_size) != 2 or min(image_size) < 64:
        raise ValueError(
            f"`image_size` must be (height, width) with both sides >= 64 pixels, got {image_size!r}."
        )
    if not isinstance(max_objects, (int, np.integer)) or max_objects < 1:
        raise ValueError(f"`max_objects` must be an int >= 1, got {max_objects!r}.")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"`empty_fraction` must be in [0, 1], got {empty_fraction!r}.")
    if not 1 <= jpeg_quality <= 95:
        raise ValueError(f"`jpeg_quality` must be in [1, 95], got {jpeg_quality!r}.")
    return int(image_size[0]), int(image_size[1])


_DEFAULT_SETTING = {
    "min_objects": 1,
    "size_probabilities": list(SIZE_BUCKET_PROBABILITIES),
    "max_clutter": 0,
}


def _check_setting(min_objects, max_objects, size_probabilities, max_clutter) -> tuple[float, ...]:
    """Validates the dense-setting arguments; returns ``size_probabilities`` as floats."""
    if not isinstance(min_objects, (int, np.integer)) or not 1 <= min_objects <= max_objects:
        raise ValueError(
            f"`min_objects` must be an int in [1, max_objects={max_objects}], got {min_objects!r}."
        )
    probabilities = tuple(float(p) for p in size_probabilities)
    if len(probabilities) != 3 or min(probabilities) < 0 or abs(sum(probabilities) - 1.0) > 1e-6:
        raise ValueError(
            "`size_probabilities` must be 3 numbers >= 0 (small, medium, large) summing to 1, "
            f"got {size_probabilities!r}."
        )
    if not isinstance(max_clutter, (int, np.integer)) or max_clutter < 0:
        raise ValueError(f"`max_clutter` must be an int >= 0, got {max_clutter!r}.")
    return probabilities


def _check_aspect_range(aspect_range) -> tuple[float, float]:
    """Validates ``aspect_range``; returns it as two floats."""
    try:
        low, high = (float(v) for v in aspect_range)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not 0.0 < low <= high < math.inf:
        raise ValueError(f"`aspect_range` must be (low, high) with 0 < low <= high (width / height), got {aspect_range!r}.")
    return low, high


def _load_if_matching(annotation_file, image_dir, params) -> ShapesFiles | None:
    """The existing dataset if it was written with ``params`` and is complete; None otherwise.

    None too when the file is missing, unreadable or not COCO instances JSON
    (``CocoFormatError`` is a ``ValueError``): the dataset is then redrawn.
    """
    try:
        coco = load_coco_json(annotation_file)
    except (OSError, ValueError, tf.errors.OpError):
        return None
    info = coco.get("info")
    if not isinstance(info, dict) or info.get("keras_retina_shapes") != params:
        return None
    if not all(
        isinstance(im, dict)
        and isinstance(im.get("file_name"), str)
        and os.path.isfile(os.path.join(image_dir, im["file_name"]))
        for im in coco["images"]
    ):
        return None
    return ShapesFiles(
        annotation_file, image_dir, len(coco["images"]), len(coco["annotations"]), SHAPE_CLASSES
    )


def _draw_image(
    rng,
    height,
    width,
    max_objects,
    empty_fraction,
    min_objects=1,
    size_probabilities=SIZE_BUCKET_PROBABILITIES,
    max_clutter=0,
    aspect_range=ASPECT_RANGE,
):
    """Draws one image (the dense options at their defaults draw no random numbers).

    Returns:
        ``(pixels, objects, label_map)``: uint8 ``(height, width, 3)``; a list
        of dicts with ``class_index``, ``box_xyxy`` (int pixels, max
        exclusive), ``area`` (visible pixels), ``full_area`` (pixels before
        occlusion) and ``instance``; and int32
        ``(height, width)`` with 0 for background and ``k`` where object
        ``objects[k - 1]`` is visible (tests compare boxes against it).
    """
    colour_a = rng.uniform(0.0, 255.0, size=3)
    colour_b = np.clip(colour_a + rng.uniform(-70.0, 70.0, size=3), 0.0, 255.0)
    texture = _background_texture(rng, height, width)  # (H, W) in [0, 1]
    image = colour_a + texture[..., None] * (colour_b - colour_a)  # (H, W, 3) float

    if max_clutter:  # under the objects; no rng draw at all when off (default data unchanged)
        _draw_clutter(rng, image, colour_a, colour_b, max_clutter, aspect_range)

    label_map = np.zeros((height, width), np.int32)
    full_areas, visible = [], []  # per object, in pixels
    placed = []
    num_objects = (
        0 if rng.random() < empty_fraction else int(rng.integers(min_objects, max_objects + 1))
    )
    for _ in range(num_objects):
        class_index = int(rng.integers(len(SHAPE_CLASSES)))
        box_w, box_h = _object_size(rng, height, width, size_probabilities, aspect_range)
        mask = _shape_mask(rng, SHAPE_CLASSES[class_index], box_w, box_h)  # (h, w) bool
        colour = _object_colour(rng, colour_a, colour_b)
        for _ in range(_PLACEMENT_TRIES):
            x0 = int(rng.integers(0, width - box_w + 1))
            y0 = int(rng.integers(0, height - box_h + 1))
            region = label_map[y0 : y0 + box_h, x0 : x0 + box_w]
            covered = np.bincount(region[mask], minlength=len(placed) + 1)[1:]
            remaining = np.asarray(visible, np.int64) - covered
            if np.all(remaining >= MIN_VISIBLE_FRACTION * np.asarray(full_areas)):
                break
        else:
            continue  # No placement keeps the others visible enough: skip it.
        region[mask] = len(placed) + 1
        visible = list(remaining) + [int(mask.sum())]
        full_areas.append(int(mask.sum()))
        # Gentle shading across the object so that it is not perfectly flat.
        ys, xs = np.nonzero(mask)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(box_w, box_h)
        shade = 1.0 + rng.uniform(0.0, 0.15) * (ramp - ramp.mean())
        image[y0 + ys, x0 + xs] = np.clip(colour * shade[:, None], 0.0, 255.0)
        placed.append((class_index, x0, y0, box_w, box_h))

    image += rng.normal(0.0, rng.uniform(2.0, 8.0), size=image.shape)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    objects = []
    for k, (class_index, x0, y0, box_w, box_h) in enumerate(placed, start=1):
        own = label_map[y0 : y0 + box_h, x0 : x0 + box_w] == k  # visible pixels only
        rows, cols = np.nonzero(own.any(axis=1))[0], np.nonzero(own.any(axis=0))[0]
        objects.append(
            {
                "class_index": class_index,
                "box_xyxy": (
                    x0 + int(cols[0]),
                    y0 + int(rows[0]),
                    x0 + int(cols[-1]) + 1,  # max exclusive: pixel x covers [x, x + 1)
                    y0 + int(rows[-1]) + 1,
                ),
                "area": int(own.sum()),
                "full_area": full_areas[k - 1],
                "instance": k,
            }
        )
    return pixels, objects, label_map


def _background_texture(rng, height, width) -> np.ndarray:
    """A float32 ``(height, width)`` texture in ``[0, 1]``: one of four kinds."""
    kind = int(rng.integers(4))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)  # (H, W) pixels
    if kind == 0:  # linear gradient
        return (along - along.min()) / max(float(np.ptp(along)), 1.0)
    if kind == 1:  # stripes
        period = rng.uniform(8.0, 48.0)
        return 0.5 + 0.5 * np.sin(2.0 * math.pi * along / period + rng.uniform(0.0, 2.0 * math.pi))
    if kind == 2:  # blotchy low-frequency noise: a coarse random grid, upsampled
        cell = int(rng.integers(16, 64))
        coarse = rng.random((height // cell + 2, width // cell + 2)).astype(np.float32)
        return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    cell = int(rng.integers(8, 40))  # checks
    return (((xs // cell) + (ys // cell)) % 2).astype(np.float32)


def _draw_clutter(rng, image, colour_a, colour_b, max_clutter, aspect_range=ASPECT_RANGE) -> None:
    """Paints ``max_clutter // 2`` to ``max_clutter`` unannotated distractors into ``image`` in place.

    Half are blobs (2-4 overlapping ellipses: no class's shape), half hollow
    outlines of a class shape (the right contour, but not a filled object);
    both take object-like sizes and colours, so the detector has to learn
    what is *not* an object.
    """
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(max_clutter // 2, max_clutter + 1))):
        box_w, box_h = _object_size(rng, height, width, (0.7, 0.3, 0.0), aspect_range)
        if rng.random() < 0.5:
            canvas = Image.new("1", (box_w, box_h), 0)
            draw = ImageDraw.Draw(canvas)
            for _ in range(int(rng.integers(2, 5))):
                cx, cy = rng.uniform(0.2, 0.8) * box_w, rng.uniform(0.2, 0.8) * box_h
                rx, ry = rng.uniform(0.15, 0.35) * box_w, rng.uniform(0.15, 0.35) * box_h
                draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=1)
            mask = np.asarray(canvas, dtype=bool)
        else:
            name = SHAPE_CLASSES[int(rng.integers(len(SHAPE_CLASSES)))]
            filled = _shape_mask(rng, name, box_w, box_h)
            inner = np.zeros_like(filled)  # the mask eroded by 2 px: a 2-px outline remains
            inner[2:-2, 2:-2] = (
                filled[2:-2, 2:-2] & filled[:-4, 2:-2] & filled[4:, 2:-2] & filled[2:-2, :-4] & filled[2:-2, 4:]
            )
            mask = filled & ~inner
        x0 = int(rng.integers(0, width - box_w + 1))
        y0 = int(rng.integers(0, height - box_h + 1))
        ys, xs = np.nonzero(mask)
        image[y0 + ys, x0 + xs] = _object_colour(rng, colour_a, colour_b)


def _object_size(rng, height, width, probabilities=SIZE_BUCKET_PROBABILITIES, aspect_range=ASPECT_RANGE) -> tuple[int, int]:
    """Box ``(width, height)`` in pixels: a size bucket, then a side and an aspect."""
    bucket = int(rng.choice(3, p=probabilities))
    largest = 0.75 * min(height, width)
    low, high = ((16.0, 30.0), (36.0, 92.0), (104.0, max(largest, 105.0)))[bucket]
    high = min(high, largest)
    side = rng.uniform(min(low, high), high)
    aspect = math.exp(rng.uniform(math.log(aspect_range[0]), math.log(aspect_range[1])))  # width / height
    box_w = int(round(side * math.sqrt(aspect)))
    box_h = int(round(side / math.sqrt(aspect)))
    return min(max(box_w, 12), width), min(max(box_h, 12), height)


def _shape_mask(rng, name, box_w, box_h) -> np.ndarray:
    """Bool ``(box_h, box_w)`` mask of one shape that touches all four edges."""
    canvas = Image.new("1", (box_w, box_h), 0)
    draw = ImageDraw.Draw(canvas)
    right, bottom = box_w - 1, box_h - 1
    if name == "circle":
        draw.ellipse((0, 0, right, bottom), fill=1)
    elif name == "square":
        draw.rectangle((0, 0, right, bottom), fill=1)
    elif name == "triangle":
        apex_x = rng.uniform(0.2, 0.8) * right
        if rng.random() < 0.5:
            draw.polygon([(0, bottom), (right, bottom), (apex_x, 0)], fill=1)
        else:
            draw.polygon([(0, 0), (right, 0), (apex_x, bottom)], fill=1)
    elif name == "diamond":
        middle_x, middle_y = right / 2, bottom / 2
        draw.polygon([(middle_x, 0), (right, middle_y), (middle_x, bottom), (0, middle_y)], fill=1)
    elif name == "cross":
        thickness = rng.uniform(0.3, 0.4)
        half_w, half_h = thickness * box_w / 2, thickness * box_h / 2
        draw.rectangle((right / 2 - half_w, 0, right / 2 + half_w, bottom), fill=1)
        draw.rectangle((0, bottom / 2 - half_h, right, bottom / 2 + half_h), fill=1)
    else:
        raise ValueError(f"`name` must be one of {SHAPE_CLASSES}, got {name!r}.")
    return np.asarray(canvas, dtype=bool)


def _object_colour(rng, colour_a, colour_b) -> np.ndarray:
    """An RGB colour far from the background's colour segment [a, b]."""
    segment = colour_b - colour_a
    best, best_distance = None, -1.0
    for _ in range(_COLOUR_TRIES):
        colour = rng.uniform(0.0, 255.0, size=3)
        t = np.dot(colour - colour_a, segment) / max(np.dot(segment, segment), 1e-6)
        t = np.clip(t, 0.0, 1.0)  # nearest point of the segment
        distance = float(np.linalg.norm(colour - (colour_a + t * segment)))
        if distance > best_distance:
            best, best_distance = colour, distance
        if distance >= _MIN_COLOUR_DISTANCE:
            break
    return best
