"""A COCO instances annotation file, read and validated in Python: classes, image records, skip counts.

:class:`CocoAnnotations` reads the JSON once and checks every image, category
and annotation against the COCO instances format; :class:`CocoJsonSource`
(:mod:`keras_retina.data.coco_json`) adds the ``tf.data`` dataset that
decodes the images, and anything else that reads a COCO file (crops for
backbone pre-training, the shapes generator's cache check) uses this module
too, so that a bad file gets the same error everywhere.

Category ids map to contiguous classes ``0 .. num_classes - 1`` in ascending
category-id order. Boxes become float32 xyxy pixels, clipped to the image
when they overshoot it by at most ``box_tolerance`` pixels.

Bad input: a file that is not COCO instances JSON (not JSON, a top-level
list, a required field missing or of the wrong type, repeated ids, no
categories) raises :class:`CocoFormatError` naming the file and the entry.
An invalid annotation (bbox of wrong length, zero or negative size, outside
the image, unknown category id or image id, ``iscrowd`` not 0 or 1) or a
missing image file raises an error naming the file, the image id and the
field; with ``skip_invalid=True`` its image is left out instead and counted
in :class:`SkipStats`. An image with an invalid annotation is left out as a
whole: keeping it without that box would teach the model that the object is
background.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

#: Default slack, in pixels, for boxes that leave the image: COCO's own boxes
#: overshoot by rounding; within it a box is clipped, beyond it is invalid.
DEFAULT_BOX_TOLERANCE = 1.0

_REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")
_REQUIRED_IMAGE_FIELDS = ("id", "file_name", "height", "width")
_REQUIRED_CATEGORY_FIELDS = ("id", "name")
_REQUIRED_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox")
_NUMBER_TYPES = (int, float)  # as json.loads makes them; bool excluded on purpose
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # ids and sizes become int64 arrays


class CocoFormatError(ValueError):
    """An annotation file or an annotation that breaks the COCO instances format."""


@dataclasses.dataclass
class SkipStats:
    """What ``skip_invalid=True`` skipped; counts grow while the dataset is read.

    Attributes:
        invalid_annotations: annotations that failed validation when the JSON
            was read (their images, where known, are skipped too).
        images_skipped_at_load: images left out when the JSON was read: the
            file is missing, or one of its annotations is invalid.
        images_skipped_at_read: distinct images skipped while decoding
            (empty, corrupt, truncated or non-image bytes, wrong size), over
            all passes so far.
        reasons: one line per skipped image or annotation, naming the file,
            the image id, the annotation id where relevant, and why.

    Example:
        A two-image dataset whose first image file is not an image:

        >>> import os, tempfile
        >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
        ...                                     image_size=(64, 64), verbose=False)
        >>> with open(os.path.join(files.image_dir, "000001.jpg"), "wb") as f:
        ...     _ = f.write(b"not a JPEG")
        >>> source = kr.data.CocoJsonSource(files.annotation_file, files.image_dir, skip_invalid=True)
        >>> [int(example["image_id"]) for example in source.dataset()]
        [2]
        >>> source.stats.images_skipped
        1
        >>> print(source.stats.reasons[0])
        Image file .../images/000001.jpg (image_id 1, listed in .../annotations.json) is
        invalid: not an image: the bytes are not JPEG, PNG, GIF, BMP or WebP.
    """

    invalid_annotations: int = 0
    images_skipped_at_load: int = 0
    images_skipped_at_read: int = 0
    reasons: list[str] = dataclasses.field(default_factory=list)

    @property
    def images_skipped(self) -> int:
        """All images skipped so far, at load and at read time."""
        return self.images_skipped_at_load + self.images_skipped_at_read


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image of the annotation file, as validated.

    Attributes:
        image_id: the JSON's image id.
        file_name: path relative to ``image_dir``, as in the JSON.
        path: ``image_dir`` joined with ``file_name``.
        height: height in pixels, from the JSON.
        width: width in pixels, from the JSON.
        boxes: float32 ``(N, 4)`` xyxy pixels, clipped to the image.
        classes: int32 ``(N,)`` contiguous class ids.
        is_crowd: bool ``(N,)``.
        annotation_ids: int64 ``(N,)`` the JSON's annotation ids.

    Example:
        >>> import tempfile
        >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
        ...                                     image_size=(64, 64), verbose=False)
        >>> annotations = CocoAnnotations(files.annotation_file, files.image_dir)
        >>> record = annotations.image_record(1)
        >>> record.file_name, record.boxes, record.classes
        ('000001.jpg', array([[25.,  8., 57., 50.]], dtype=float32), array([1], dtype=int32))
    """

    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    boxes: np.ndarray
    classes: np.ndarray
    is_crowd: np.ndarray
    annotation_ids: np.ndarray


class CocoAnnotations:
    """A validated COCO instances annotation file: its classes and one record per image.

    Reads no pixels: the image files are only checked to exist.
    Images keep the JSON's order; those without annotations are kept (all
    background).

    Args:
        annotation_file: path of a COCO instances JSON (``images``,
            ``annotations``, ``categories``); any ``tf.io.gfile`` path.
        image_dir: folder that the images' ``file_name`` entries are relative to.
        skip_invalid: if False (default), an invalid annotation or a missing
            image file raises an error naming the file, image id and field;
            if True, the image is left out and counted in ``stats`` (and the
            reason logged).
        box_tolerance: pixels a box may leave the image by (it is then
            clipped); a box further out is invalid.

    Attributes:
        category_ids: tuple of the JSON's category ids, ascending; index ``c``
            is contiguous class ``c``.
        class_names: tuple of category names, same order.
        image_ids: tuple of the ids of the images kept, in the JSON's order.
        stats: ``SkipStats``: what ``skip_invalid=True`` left out.

    Raises:
        CocoFormatError: the file is not COCO instances JSON (this raises
            even with ``skip_invalid``), or (with ``skip_invalid=False``) an
            annotation is invalid.
        FileNotFoundError: the annotation file or ``image_dir`` does not
            exist, or (with ``skip_invalid=False``) an image file is missing.

    Example:
        A synthetic shapes dataset (COCO format, category ids 1 to 5):

        >>> import tempfile
        >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
        ...                                     image_size=(64, 64), verbose=False)
        >>> annotations = CocoAnnotations(files.annotation_file, files.image_dir)
        >>> annotations.num_classes, annotations.class_names[:2], annotations.image_ids
        (5, ('circle', 'square'), (1, 2))
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        skip_invalid: bool = False,
        box_tolerance: float = DEFAULT_BOX_TOLERANCE,
    ):
        self.annotation_file = os.fspath(annotation_file)
        self.image_dir = os.fspath(image_dir)
        self.skip_invalid = bool(skip_invalid)
        self.box_tolerance = float(box_tolerance)
        if not self.box_tolerance >= 0.0:
            raise ValueError(f"`box_tolerance` must be >= 0 pixels, got {box_tolerance!r}.")
        if not tf.io.gfile.isdir(self.image_dir):
            raise FileNotFoundError(
                f"image_dir={self.image_dir!r} is not a directory (annotation file "
                f"{self.annotation_file!r})."
            )
        self.stats = SkipStats()

        coco = load_coco_json(self.annotation_file)
        categories = self._parse_categories(coco["categories"])
        #: JSON category id of each contiguous class, ascending.
        self.category_ids: tuple[int, ...] = tuple(sorted(categories))
        #: Name of each contiguous class.
        self.class_names: tuple[str, ...] = tuple(categories[i] for i in self.category_ids)
        self._class_of_category = {cid: c for c, cid in enumerate(self.category_ids)}
        images = self._parse_images(coco["images"])
        self._records = self._parse_annotations(coco["annotations"], images)
        #: Image ids of the records kept, in the JSON's order.
        self.image_ids: tuple[int, ...] = tuple(r.image_id for r in self._records)
        self._record_by_id = {r.image_id: r for r in self._records}
        if self.stats.images_skipped_at_load or self.stats.invalid_annotations:
            logging.warning(
                "%s: skipped %d images and %d invalid annotations while loading "
                "(skip_invalid=True); see %s.stats.reasons.",
                self.annotation_file,
                self.stats.images_skipped_at_load,
                self.stats.invalid_annotations,
                type(self).__name__,
            )

    # ------------------------------------------------------------------ mapping

    @property
    def num_classes(self) -> int:
        """Number of categories (contiguous classes)."""
        return len(self.category_ids)

    @property
    def num_images(self) -> int:
        """Number of image records kept: the images a dataset yields per pass (if none fails to decode)."""
        return len(self._records)

    def class_to_category_id(self, classes) -> np.ndarray:
        """Maps contiguous class ids back to the JSON's category ids.

        Args:
            classes: int array-like of any shape, values in ``[0, num_classes)``.

        Returns:
            int64 array of the same shape with the JSON's category ids.

        Raises:
            ValueError: a class id is out of range.

        Example:
            >>> import tempfile
            >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
            ...                                     image_size=(64, 64), verbose=False)
            >>> annotations = CocoAnnotations(files.annotation_file, files.image_dir)
            >>> annotations.class_to_category_id([0, 2])
            array([1, 3])
        """
        classes = np.asarray(classes)
        if classes.size and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(
                f"classes must be in [0, {self.num_classes}), got values from "
                f"{classes.min()} to {classes.max()}."
            )
        return np.asarray(self.category_ids, np.int64)[classes.astype(np.int64)]

    def category_id_to_class(self, category_ids) -> np.ndarray:
        """Maps the JSON's category ids to contiguous class ids.

        Args:
            category_ids: int array-like of any shape.

        Returns:
            int32 array of the same shape with values in ``[0, num_classes)``.

        Raises:
            ValueError: a category id is not in the file's ``categories``.

        Example:
            >>> import tempfile
            >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
            ...                                     image_size=(64, 64), verbose=False)
            >>> annotations = CocoAnnotations(files.annotation_file, files.image_dir)
            >>> annotations.category_id_to_class([1, 3])
            array([0, 2], dtype=int32)
        """
        category_ids = np.asarray(category_ids, np.int64)
        unknown = sorted(set(category_ids.ravel().tolist()) - set(self.category_ids))
        if unknown:
            raise ValueError(
                f"category_ids {unknown} are not in the categories of "
                f"{self.annotation_file!r}, which are {list(self.category_ids)}."
            )
        lookup = np.vectorize(self._class_of_category.__getitem__, otypes=[np.int32])
        return lookup(category_ids) if category_ids.size else category_ids.astype(np.int32)

    def image_record(self, image_id: int) -> ImageRecord:
        """The validated record of one image: file, size and annotations.

        Args:
            image_id: an id from ``image_ids``.

        Returns:
            An ``ImageRecord``.

        Raises:
            KeyError: ``image_id`` is not an example of this file (not in it, or skipped).

        Example:
            >>> import tempfile
            >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
            ...                                     image_size=(64, 64), verbose=False)
            >>> annotations = CocoAnnotations(files.annotation_file, files.image_dir)
            >>> annotations.image_record(2).path == os.path.join(files.image_dir, "000002.jpg")
            True
        """
        try:
            return self._record_by_id[int(image_id)]
        except KeyError:
            raise KeyError(
                f"image_id={image_id!r} is not an example of {self.annotation_file!r} "
                "(not in its images, or skipped)."
            ) from None


    # ------------------------------------------------------------------ parsing

    def _fail(self, message: str) -> None:
        """Raises ``CocoFormatError`` or, with ``skip_invalid``, records it."""
        full = f"{self.annotation_file}: {message}"
        if not self.skip_invalid:
            raise CocoFormatError(full + " Pass skip_invalid=True to skip and count it instead.")
        self.stats.reasons.append(full)
        logging.warning("Skipping (skip_invalid=True): %s", full)

    def _parse_categories(self, categories: list) -> dict[int, str]:
        names = {}
        for position, category in enumerate(categories):
            where = f"categories[{position}]"
            _require_fields(self.annotation_file, where, category, _REQUIRED_CATEGORY_FIELDS)
            category_id = _as_int(self.annotation_file, f"{where} field 'id'", category["id"])
            if category_id in names:
                raise CocoFormatError(
                    f"{self.annotation_file}: {where} repeats category id {category_id}; "
                    "expected unique ids."
                )
            names[category_id] = str(category["name"])
        if not names:
            raise CocoFormatError(
                f"{self.annotation_file}: field 'categories' is empty; expected at least one category."
            )
        return names

    def _parse_images(self, images: list) -> dict[int, dict]:
        parsed = {}
        for position, image in enumerate(images):
            where = f"images[{position}]"
            _require_fields(self.annotation_file, where, image, _REQUIRED_IMAGE_FIELDS)
            image_id = _as_int(self.annotation_file, f"{where} field 'id'", image["id"])
            where = f"image_id {image_id}"
            if image_id in parsed:
                raise CocoFormatError(
                    f"{self.annotation_file}: {where} appears twice in 'images'; expected unique ids."
                )
            height = _as_int(self.annotation_file, f"{where} field 'height'", image["height"])
            width = _as_int(self.annotation_file, f"{where} field 'width'", image["width"])
            if height < 1 or width < 1:
                raise CocoFormatError(
                    f"{self.annotation_file}: {where} has height={height}, width={width}; "
                    "expected positive pixel sizes."
                )
            file_name = image["file_name"]
            if not isinstance(file_name, str) or not file_name:
                raise CocoFormatError(
                    f"{self.annotation_file}: {where} field 'file_name' is {file_name!r}; "
                    "expected a non-empty string."
                )
            parsed[image_id] = {
                "file_name": file_name,
                "path": os.path.join(self.image_dir, file_name),
                "height": height,
                "width": width,
            }
        return parsed

    def _parse_annotations(self, annotations: list, images: dict[int, dict]) -> list[ImageRecord]:
        per_image = collections.defaultdict(list)
        bad_images = set()
        for position, annotation in enumerate(annotations):
            where = f"annotations[{position}]"
            _require_fields(self.annotation_file, where, annotation, _REQUIRED_ANNOTATION_FIELDS)
            parsed = self._parse_annotation(annotation, images)
            if isinstance(parsed, str):  # the reason it is invalid
                self.stats.invalid_annotations += 1
                self._fail(parsed)
                image_id = annotation.get("image_id")
                if type(image_id) is int and image_id in images:  # any JSON value: a list is unhashable
                    bad_images.add(image_id)
                continue
            per_image[parsed[0]].append(parsed[1:])

        missing = self._missing_files(images)
        records = []
        for image_id, image in images.items():
            if image_id in missing:
                message = (
                    f"image file {image['path']} (image_id {image_id}, field 'file_name' "
                    f"= {image['file_name']!r}) does not exist."
                )
                if not self.skip_invalid:
                    raise FileNotFoundError(
                        f"{self.annotation_file}: {message} Pass skip_invalid=True to skip "
                        "and count it instead."
                    )
                self._fail(message)
                self.stats.images_skipped_at_load += 1
                continue
            if image_id in bad_images:
                self.stats.images_skipped_at_load += 1
                self.stats.reasons.append(
                    f"{self.annotation_file}: image_id {image_id} ({image['path']}) skipped "
                    "because one of its annotations is invalid."
                )
                continue
            rows = per_image.get(image_id, [])
            records.append(
                ImageRecord(
                    image_id=image_id,
                    file_name=image["file_name"],
                    path=image["path"],
                    height=image["height"],
                    width=image["width"],
                    boxes=np.asarray([r[0] for r in rows], np.float32).reshape(-1, 4),
                    classes=np.asarray([r[1] for r in rows], np.int32),
                    is_crowd=np.asarray([r[2] for r in rows], bool),
                    annotation_ids=np.asarray([r[3] for r in rows], np.int64),
                )
            )
        return records

    def _parse_annotation(self, annotation: dict, images: dict[int, dict]):
        """``(image_id, box_xyxy, class, is_crowd, annotation_id)`` or the reason it is invalid.

        Runs once per annotation (860k for COCO train), so messages are only
        formatted on failure.
        """
        annotation_id = annotation["id"]
        image_id = annotation["image_id"]
        if type(annotation_id) is not int or not _INT64_MIN <= annotation_id <= _INT64_MAX:
            return (
                f"annotation id {annotation_id!r} (image_id {image_id!r}): field 'id' = {annotation_id!r}; "
                "expected an integer (64-bit)."
            )
        image = images.get(image_id) if type(image_id) is int else None
        if image is None:
            return (
                f"annotation id {annotation_id!r} (image_id {image_id!r}): field 'image_id' "
                f"= {image_id!r} is not an id in 'images'."
            )

        def where():
            return f"annotation id {annotation_id!r} (image_id {image_id}, file {image['path']})"

        category_id = annotation["category_id"]
        class_id = self._class_of_category.get(category_id) if type(category_id) is int else None
        if class_id is None:
            return (
                f"{where()}: field 'category_id' = {category_id!r} is not an id in "
                f"'categories' {list(self.category_ids)}."
            )
        bbox = annotation["bbox"]
        if not (
            type(bbox) in (list, tuple)
            and len(bbox) == 4
            and all(type(v) in _NUMBER_TYPES for v in bbox)
            and _finite_sum(bbox)
        ):
            return (
                f"{where()}: field 'bbox' = {bbox!r}; expected 4 finite numbers "
                "[x, y, width, height]."
            )
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            return (
                f"{where()}: field 'bbox' = {bbox!r} has width {float(w)} and height "
                f"{float(h)}; expected both > 0."
            )
        width, height, tol = image["width"], image["height"], self.box_tolerance
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return (
                f"{where()}: field 'bbox' = {bbox!r} (xyxy [{x}, {y}, {x + w}, {y + h}]) lies "
                f"outside the image of width {width} and height {height} by more than {tol} "
                "pixel(s)."
            )
        is_crowd = annotation.get("iscrowd", 0)
        if is_crowd not in (0, 1):  # True and False compare equal to 1 and 0
            return f"{where()}: field 'iscrowd' = {is_crowd!r}; expected 0 or 1."
        box_xyxy = (  # clipped to the image: within tolerance, that is rounding
            min(max(x, 0.0), width),
            min(max(y, 0.0), height),
            min(max(x + w, 0.0), width),
            min(max(y + h, 0.0), height),
        )
        return image_id, box_xyxy, class_id, bool(is_crowd), annotation_id

    def _missing_files(self, images: dict[int, dict]) -> set[int]:
        """Ids of images whose file does not exist: one directory listing per folder."""
        by_folder = collections.defaultdict(list)
        for image_id, image in images.items():
            folder, base = os.path.split(image["path"])
            by_folder[folder].append((image_id, base))
        missing = set()
        for folder, entries in by_folder.items():
            try:
                present = set(tf.io.gfile.listdir(folder))
            except tf.errors.NotFoundError:
                present = set()
            missing.update(image_id for image_id, base in entries if base not in present)
        return missing


def load_coco_json(annotation_file: str | os.PathLike) -> dict:
    """The parsed JSON of ``annotation_file``, checked to have COCO instances' top-level lists.

    Only the file level is checked: an object with ``images``,
    ``annotations`` and ``categories`` lists (other keys, such as ``info``,
    are kept as they are). :class:`CocoAnnotations` validates the entries.

    Args:
        annotation_file: any ``tf.io.gfile`` path.

    Returns:
        The JSON object as a dict.

    Raises:
        FileNotFoundError: the file does not exist.
        CocoFormatError: it is not JSON, not an object, or lacks one of the lists.

    Example:
        >>> import tempfile
        >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
        ...                                     image_size=(64, 64), verbose=False)
        >>> coco = load_coco_json(files.annotation_file)
        >>> len(coco["images"]), coco["info"]["description"]
        (2, 'keras_retina synthetic shapes')
        >>> path = os.path.join(tempfile.mkdtemp(), "results.json")
        >>> with open(path, "w") as f:
        ...     _ = f.write("[]")
        >>> load_coco_json(path)
        Traceback (most recent call last):
        ...
        keras_retina.data.coco_annotations.CocoFormatError: annotation_file='.../results.json' holds
        a JSON list (a list looks like a detection results file); expected a COCO instances JSON
        object with 'images', 'annotations' and 'categories'.
    """
    annotation_file = os.fspath(annotation_file)
    if not tf.io.gfile.exists(annotation_file):
        raise FileNotFoundError(f"annotation_file={annotation_file!r} does not exist.")
    try:
        with tf.io.gfile.GFile(annotation_file, "rb") as f:
            coco = json.loads(f.read())
    except (ValueError, UnicodeDecodeError) as error:
        raise CocoFormatError(
            f"annotation_file={annotation_file!r} is not valid JSON ({error}); expected a COCO "
            "instances JSON object with 'images', 'annotations' and 'categories'."
        ) from None
    except RecursionError:  # json.loads' own recursion limit: lists or objects nested ~1000 deep
        raise CocoFormatError(
            f"annotation_file={annotation_file!r} nests lists or objects deeper than Python's JSON reader "
            "goes; expected a COCO instances JSON object with 'images', 'annotations' and 'categories'."
        ) from None
    if not isinstance(coco, dict):
        hint = " (a list looks like a detection results file)" if isinstance(coco, list) else ""
        raise CocoFormatError(
            f"annotation_file={annotation_file!r} holds a JSON {type(coco).__name__}{hint}; "
            "expected a COCO instances JSON object with 'images', 'annotations' and 'categories'."
        )
    for key in _REQUIRED_TOP_LEVEL:
        if key not in coco:
            raise CocoFormatError(
                f"annotation_file={annotation_file!r} has no field {key!r}; expected a COCO "
                f"instances JSON with {list(_REQUIRED_TOP_LEVEL)} (found {sorted(coco)})."
            )
        if not isinstance(coco[key], list):
            raise CocoFormatError(
                f"annotation_file={annotation_file!r}: field {key!r} is a "
                f"{type(coco[key]).__name__}; expected a list."
            )
    return coco


def _require_fields(annotation_file: str, where: str, entry: Any, fields: Sequence[str]) -> None:
    if not isinstance(entry, dict):
        raise CocoFormatError(
            f"{annotation_file}: {where} is a {type(entry).__name__}; expected an object."
        )
    for field in fields:
        if field not in entry:
            ident = f" (id {entry['id']!r})" if "id" in entry else ""
            raise CocoFormatError(
                f"{annotation_file}: {where}{ident} has no field {field!r}; expected {list(fields)}."
            )


def _as_int(annotation_file: str, where: str, value) -> int:
    # json.loads reads Infinity and NaN as floats, which int() refuses with its own errors, and
    # integers of any size, which math.isfinite refuses past 1e308 (ids become int64 tensors).
    if type(value) is float and math.isfinite(value) and value == int(value):
        value = int(value)
    if type(value) is not int or not _INT64_MIN <= value <= _INT64_MAX:
        raise CocoFormatError(f"{annotation_file}: {where} is {value!r}; expected an integer (64-bit).")
    return value


def _finite_sum(numbers: Sequence) -> bool:
    """True if the sum of ``numbers`` (ints or floats) is a finite float: nan and inf propagate, huge ints overflow."""
    try:
        return math.isfinite(float(sum(numbers)))
    except OverflowError:
        return False
