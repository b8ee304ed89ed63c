"""Raw examples from a COCO-format instances JSON and a folder of images.

The annotation file is parsed and validated once, in Python; the images are
read and decoded inside the ``tf.data`` graph (``tf.io.read_file`` +
``tf.io.decode_image``), in parallel, and turned upright by their EXIF
orientation (:mod:`keras_retina.data.orientation`), as the annotation tool
showed them: the JSON's width, height and boxes are those of the displayed image.

A raw example is::

    {"image":    uint8 (H, W, 3) RGB,
     "boxes":    float32 (N, 4) xyxy in pixels,
     "classes":  int32 (N,) contiguous ids from 0, in ascending category-id order,
     "is_crowd": bool (N,),
     "image_id": int64 ()}

Bad input: a malformed annotation file, an invalid
annotation (bbox of wrong length, zero or negative size, outside the image,
unknown category id or image id) or an image file that is missing, empty,
corrupt, truncated, not an image or of another size than the JSON says
raises an error naming the file, the image id and the field. With
``skip_invalid=True`` the image is skipped instead and counted in
``CocoJsonSource.stats``; the counts are logged (absl) when a pass over the
dataset ends. Nothing is dropped silently. An image with an invalid
annotation is skipped as a whole: keeping it without that box would teach
the model that the object is background.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import os
import threading
from typing import Any, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from keras_retina.data.image_headers import IMAGE_FORMAT_NAMES, IMAGE_MAGIC_BYTES
from keras_retina.data.orientation import ORIENTATION_UPRIGHT, exif_orientation, upright
from keras_retina.data.pipeline import input_share

#: Default slack, in pixels, for boxes that leave the image: COCO's own boxes
#: overshoot by rounding; within it a box is clipped, beyond it is invalid.
DEFAULT_BOX_TOLERANCE = 1.0

_REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")
_REQUIRED_IMAGE_FIELDS = ("id", "file_name", "height", "width")
_REQUIRED_CATEGORY_FIELDS = ("id", "name")
_REQUIRED_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox")
_NUMBER_TYPES = (int, float)  # as json.loads makes them; bool excluded on purpose

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
        >>> source = CocoJsonSource(files.annotation_file, files.image_dir, skip_invalid=True)
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
        >>> source = CocoJsonSource(files.annotation_file, files.image_dir)
        >>> record = source.image_record(1)
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


class CocoJsonSource:
    """A validated COCO instances annotation file, and its ``tf.data`` dataset.

    Category ids are mapped to contiguous classes ``0 .. num_classes - 1`` in
    ascending category-id order; ``category_ids[c]`` is the JSON's id of class
    ``c`` and ``class_names[c]`` its name. Images keep the JSON's order; those
    without annotations are kept (all background).

    Args:
        annotation_file: path of a COCO instances JSON (``images``,
            ``annotations``, ``categories``); any ``tf.io.gfile`` path.
        image_dir: folder that the images' ``file_name`` entries are relative to.
        skip_invalid: if False (default), bad input raises an error naming the
            file, image id and field; if True, the image is skipped and
            counted in ``stats`` (and the reason logged), and the counts are
            logged when a pass over ``dataset()`` ends.
        box_tolerance: pixels a box may leave the image by (it is then
            clipped); a box further out is invalid.

    Attributes:
        category_ids: tuple of the JSON's category ids, ascending; index ``c``
            is contiguous class ``c``.
        class_names: tuple of category names, same order.
        image_ids: tuple of the image ids that ``dataset()`` yields, in the
            JSON's order (images skipped at load left out).
        stats: ``SkipStats``: what ``skip_invalid=True`` skipped, at load and
            while reading (updated as the dataset is iterated).

    Raises:
        CocoFormatError: the file is not COCO instances JSON (a top-level list
            or a required field of an image, annotation or category missing;
            this raises even with ``skip_invalid``), or (with
            ``skip_invalid=False``) an annotation is invalid.
        FileNotFoundError: the annotation file or ``image_dir`` does not
            exist, or (with ``skip_invalid=False``) an image file is missing.

    Example:
        A synthetic shapes dataset (COCO format, category ids 1 to 5):

        >>> import tempfile
        >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
        ...                                     image_size=(64, 64), verbose=False)
        >>> source = CocoJsonSource(files.annotation_file, files.image_dir)
        >>> source.num_classes, source.class_names[:2], source.image_ids
        (5, ('circle', 'square'), (1, 2))
        >>> example = next(iter(source.dataset()))
        >>> tuple(example["image"].shape), example["boxes"].numpy(), example["classes"].numpy()
        ((64, 64, 3), array([[25.,  8., 57., 50.]], dtype=float32), array([1], dtype=int32))
        >>> source.class_to_category_id(example["classes"])   # the JSON's ids
        array([2])
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
        self._lock = threading.Lock()
        self._skipped_read_ids: set[int] = set()

        coco = _load_json(self.annotation_file)
        categories = self._parse_categories(coco["categories"])
        #: JSON category id of each contiguous class, ascending.
        self.category_ids: tuple[int, ...] = tuple(sorted(categories))
        #: Name of each contiguous class.
        self.class_names: tuple[str, ...] = tuple(categories[i] for i in self.category_ids)
        self._class_of_category = {cid: c for c, cid in enumerate(self.category_ids)}
        images = self._parse_images(coco["images"])
        self._records = self._parse_annotations(coco["annotations"], images)
        #: Image ids of the examples, in the JSON's order (skipped ones left out).
        self.image_ids: tuple[int, ...] = tuple(r.image_id for r in self._records)
        self._record_by_id = {r.image_id: r for r in self._records}
        if self.stats.images_skipped_at_load or self.stats.invalid_annotations:
            logging.warning(
                "%s: skipped %d images and %d invalid annotations while loading "
                "(skip_invalid=True); see CocoJsonSource.stats.reasons.",
                self.annotation_file,
                self.stats.images_skipped_at_load,
                self.stats.invalid_annotations,
            )

    # ------------------------------------------------------------------ mapping

    @property
    def num_classes(self) -> int:
        """Number of categories (contiguous classes)."""
        return len(self.category_ids)

    @property
    def num_images(self) -> int:
        """Number of images the dataset yields per pass (if none fails to decode)."""
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
            >>> source = CocoJsonSource(files.annotation_file, files.image_dir)
            >>> source.class_to_category_id([0, 2])
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
            >>> source = CocoJsonSource(files.annotation_file, files.image_dir)
            >>> source.category_id_to_class([1, 3])
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
            KeyError: ``image_id`` is not an example of this source.

        Example:
            >>> import tempfile
            >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
            ...                                     image_size=(64, 64), verbose=False)
            >>> source = CocoJsonSource(files.annotation_file, files.image_dir)
            >>> source.image_record(2).path == os.path.join(files.image_dir, "000002.jpg")
            True
        """
        try:
            return self._record_by_id[int(image_id)]
        except KeyError:
            raise KeyError(
                f"image_id={image_id!r} is not an example of {self.annotation_file!r} "
                "(not in its images, or skipped)."
            ) from None

    # ------------------------------------------------------------------ dataset

    def dataset(
        self,
        shuffle: bool = False,
        seed: int | None = None,
        num_parallel_calls: int = tf.data.AUTOTUNE,
        deterministic: bool | None = None,
        input_context: tf.distribute.InputContext | None = None,
    ) -> tf.data.Dataset:
        """One pass over the images as raw examples, decoded in the graph.

        Shuffling (if asked) happens on the file list, before any file is
        read, and differs in every pass when the dataset is repeated.
        With an ``input_context`` the file list is sharded first: pipeline
        ``i`` of ``k`` keeps the images at positions ``i, i + k, i + 2k, ...``
        of :attr:`image_ids` (``tf.data.Dataset.shard`` on the index), so it
        opens and decodes only its own files.

        Args:
            shuffle: shuffle the image order.
            seed: seed of that shuffle; None for a random one.
            num_parallel_calls: files read and decoded in parallel.
            deterministic: passed to ``interleave``; None follows
                ``tf.data.Options.deterministic`` (True by default). False
                may be faster but gives a run-dependent order.
            input_context: a ``tf.distribute.InputContext`` (from
                ``strategy.distribute_datasets_from_function``): yield only
                this input pipeline's share of the images; None for all.

        Returns:
            A ``tf.data.Dataset`` of raw examples ``{"image": uint8 (H, W, 3),
            "boxes": float32 (N, 4) xyxy pixels, "classes": int32 (N,),
            "is_crowd": bool (N,), "image_id": int64 ()}``.

            Iterating raises ``tf.errors.InvalidArgumentError`` naming the file
            and image id for an unreadable image unless ``skip_invalid``.
            With ``skip_invalid`` the dataset counts and logs through
            ``tf.py_function`` (run only for a skipped image and once at the
            end of a pass), so it cannot be serialised (tf.data service); it
            works with ``tf.distribute`` strategies on one host. Without
            ``skip_invalid`` the cardinality is known (``num_images``).

        Example:
            >>> import tempfile
            >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
            ...                                     image_size=(64, 64), verbose=False)
            >>> source = CocoJsonSource(files.annotation_file, files.image_dir)
            >>> for example in source.dataset():
            ...     print(int(example["image_id"]), example["image"].shape, example["boxes"].shape)
            1 (64, 64, 3) (1, 4)
            2 (64, 64, 3) (0, 4)
        """
        num_pipelines, pipeline_id = input_share(input_context)
        index = self._index_dataset()
        num_images = self.num_images
        if num_pipelines > 1:
            # The index holds no pixels: sharding it means no other file is opened.
            index = index.shard(num_pipelines, pipeline_id)
            num_images = self.share_size(input_context)
        if shuffle:
            index = index.shuffle(max(num_images, 1), seed=seed, reshuffle_each_iteration=True)
        decoded = index.interleave(
            _read_and_decode,
            cycle_length=num_parallel_calls,
            block_length=1,
            num_parallel_calls=num_parallel_calls,
            deterministic=deterministic,
        )
        if not self.skip_invalid:
            examples = decoded.map(
                self._assert_valid, num_parallel_calls=num_parallel_calls, deterministic=deterministic
            )
            # Each file gives exactly one example (or an error): tell tf.data,
            # which cannot see through interleave, so that Keras knows the steps.
            return examples.apply(tf.data.experimental.assert_cardinality(num_images))
        counter = _PassCounter()

        def flag_invalid(element):
            return self._flag_invalid(element, counter)

        def is_valid(valid, example):
            return valid

        def drop_flag(valid, example):
            return example

        def report_pass(example):
            return self._report_pass(example, counter)

        def never(example):
            return False

        examples = decoded.map(
            flag_invalid, num_parallel_calls=num_parallel_calls, deterministic=deterministic
        )
        examples = examples.filter(is_valid).map(drop_flag)
        # A last, always-dropped element that logs the pass's counts: it runs
        # only after every image of the pass has been read.
        report = tf.data.Dataset.from_tensors(_empty_example()).map(report_pass).filter(never)
        return examples.concatenate(report)

    def share_size(self, input_context: tf.distribute.InputContext | None) -> int:
        """Images in ``input_context``'s share (every ``k``-th from position ``i``); all for None.

        Example:
            >>> import tempfile
            >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=5,
            ...                                     image_size=(64, 64), verbose=False)
            >>> source = CocoJsonSource(files.annotation_file, files.image_dir)
            >>> [source.share_size(tf.distribute.InputContext(2, i)) for i in (0, 1)]
            [3, 2]
        """
        num_pipelines, pipeline_id = input_share(input_context)
        return len(range(pipeline_id, self.num_images, num_pipelines))

    def _index_dataset(self) -> tf.data.Dataset:
        """Per-image metadata (no pixels): path, id, size and ragged boxes."""
        records = self._records
        row_splits = np.zeros(len(records) + 1, np.int64)
        row_splits[1:] = np.cumsum([len(r.classes) for r in records], dtype=np.int64)

        def flat(field, dtype, inner_shape=()):
            parts = [getattr(r, field) for r in records]
            if not parts:
                return np.zeros((0, *inner_shape), dtype)
            return np.concatenate(parts).astype(dtype).reshape((-1, *inner_shape))

        def ragged(values):
            return tf.RaggedTensor.from_row_splits(values, row_splits, validate=False)

        return tf.data.Dataset.from_tensor_slices(
            {
                "path": tf.constant([r.path for r in records], tf.string),
                "image_id": np.asarray([r.image_id for r in records], np.int64),
                "height": np.asarray([r.height for r in records], np.int32),
                "width": np.asarray([r.width for r in records], np.int32),
                "boxes": ragged(flat("boxes", np.float32, (4,))),
                "classes": ragged(flat("classes", np.int32)),
                "is_crowd": ragged(flat("is_crowd", bool)),
            }
        )

    def _failure_message(self, element):
        """A string tensor naming the file, the image id and what is wrong."""
        image_shape = tf.shape(element["image"])
        decoded_size = tf.strings.join(
            [tf.strings.as_string(image_shape[0]), "x", tf.strings.as_string(image_shape[1])]
        )
        json_size = tf.strings.join(
            [tf.strings.as_string(element["height"]), "x", tf.strings.as_string(element["width"])]
        )
        orientation = element["orientation"]
        turned = tf.where(
            orientation == ORIENTATION_UPRIGHT,
            tf.constant(""),
            tf.strings.format(
                " (upright, after its EXIF orientation {}, as a viewer shows it; the JSON must "
                "give the displayed size)",
                orientation,
            ),
        )
        reason = tf.where(
            element["decoded"],
            tf.strings.join(
                [
                    "field height x width: the JSON says ",
                    json_size,
                    " but the image decodes to ",
                    decoded_size,
                    turned,
                ]
            ),
            _decode_failure_reason(element["contents"]),
        )
        return tf.strings.join(
            [
                "Image file ",
                element["path"],
                " (image_id ",
                tf.strings.as_string(element["image_id"]),
                ", listed in ",
                self.annotation_file,
                ") is invalid: ",
                reason,
                ".",
            ]
        )

    def _assert_valid(self, element):
        """Passes a valid example through; fails the iterator with a named error."""
        message = tf.strings.join(
            [self._failure_message(element), " Pass skip_invalid=True to skip and count such images."]
        )
        check = tf.debugging.Assert(_is_valid(element), [message])
        with tf.control_dependencies([check]):
            return _output(element)

    def _flag_invalid(self, element, counter):
        """``(valid, example)``; an invalid image is recorded and logged."""
        valid = _is_valid(element)

        def record():
            tf.py_function(
                lambda image_id, message: self._record_read_failure(image_id, message, counter),
                [element["image_id"], self._failure_message(element)],
                Tout=[],
            )
            return tf.constant(False)

        valid = tf.cond(valid, lambda: tf.constant(True), record)
        return valid, _output(element)

    def _record_read_failure(self, image_id, message, counter):
        image_id = int(image_id.numpy())
        message = message.numpy().decode("utf-8", "replace")
        logging.warning("Skipping an image (skip_invalid=True): %s", message)
        with self._lock:
            counter.skipped += 1
            if image_id not in self._skipped_read_ids:
                self._skipped_read_ids.add(image_id)
                self.stats.images_skipped_at_read += 1
                self.stats.reasons.append(message)

    def _report_pass(self, example, counter):
        def log_counts():
            with self._lock:
                skipped, counter.skipped = counter.skipped, 0
                stats = dataclasses.replace(self.stats)
            anything_skipped = skipped or stats.images_skipped or stats.invalid_annotations
            logging.log(
                logging.WARNING if anything_skipped else logging.INFO,
                "Finished a pass over %s: %d of %d images yielded, %d skipped while "
                "reading in this pass; in all %d images and %d annotations skipped at "
                "load, %d images at read (skip_invalid=True; see CocoJsonSource.stats).",
                self.annotation_file,
                self.num_images - skipped,
                self.num_images,
                skipped,
                stats.images_skipped_at_load,
                stats.invalid_annotations,
                stats.images_skipped_at_read,
            )
            return True

        done = tf.py_function(log_counts, [], Tout=tf.bool)
        with tf.control_dependencies([done]):
            return tf.nest.map_structure(tf.identity, example)

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
                if image_id in images:
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
        image = images.get(image_id) if isinstance(image_id, int) else None
        if image is None:
            return (
                f"annotation id {annotation_id!r} (image_id {image_id!r}): field 'image_id' "
                f"= {image_id!r} is not an id in 'images'."
            )

        def where():
            return f"annotation id {annotation_id!r} (image_id {image_id}, file {image['path']})"

        category_id = annotation["category_id"]
        class_id = self._class_of_category.get(category_id) if isinstance(category_id, int) else None
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
            and math.isfinite(bbox[0] + bbox[1] + bbox[2] + bbox[3])  # nan or inf propagate
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


def coco_json_dataset(
    annotation_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    skip_invalid: bool = False,
    shuffle: bool = False,
    seed: int | None = None,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    deterministic: bool | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Raw examples from a COCO instances JSON and its image folder.

    A shortcut for ``CocoJsonSource(...).dataset(...)``; use
    ``CocoJsonSource`` to read the class mapping (``category_ids``,
    ``class_names``) or the skip counts (``stats``).

    Args:
        annotation_file: path of a COCO instances JSON.
        image_dir: folder that the images' ``file_name`` entries are relative to.
        skip_invalid: skip and count bad images and annotations instead of
            raising (counts logged at the end of each pass).
        shuffle: shuffle the image order (before reading files).
        seed: seed of that shuffle.
        num_parallel_calls: files read and decoded in parallel.
        deterministic: see ``CocoJsonSource.dataset``.
        input_context: a ``tf.distribute.InputContext``: only this input
            pipeline's share of the images (every ``num_input_pipelines``-th
            from ``input_pipeline_id``), chosen before any file is opened.

    Returns:
        A ``tf.data.Dataset`` of ``{"image": uint8 (H, W, 3), "boxes": float32
        (N, 4) xyxy pixels, "classes": int32 (N,), "is_crowd": bool (N,),
        "image_id": int64 ()}``.

    Example:
        >>> import tempfile
        >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
        ...                                     image_size=(64, 64), verbose=False)
        >>> raw = coco_json_dataset(files.annotation_file, files.image_dir)
        >>> sorted(raw.element_spec)
        ['boxes', 'classes', 'image', 'image_id', 'is_crowd']
        >>> [tuple(example["boxes"].shape) for example in raw]
        [(1, 4), (0, 4)]
        >>> share = coco_json_dataset(files.annotation_file, files.image_dir,
        ...                           input_context=tf.distribute.InputContext(2, 1))
        >>> [int(example["image_id"]) for example in share]   # pipeline 1 of 2
        [2]
    """
    source = CocoJsonSource(annotation_file, image_dir, skip_invalid=skip_invalid)
    return source.dataset(
        shuffle=shuffle,
        seed=seed,
        num_parallel_calls=num_parallel_calls,
        deterministic=deterministic,
        input_context=input_context,
    )


# ---------------------------------------------------------------------- helpers


class _PassCounter:
    """Images skipped while reading in the current pass of one dataset."""

    def __init__(self):
        self.skipped = 0


def _load_json(annotation_file: str) -> dict:
    """The parsed JSON, checked to have COCO instances' top-level lists."""
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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise CocoFormatError(f"{annotation_file}: {where} is {value!r}; expected an integer.")
    return int(value)


def _read_and_decode(element: dict) -> tf.data.Dataset:
    """A one-element dataset: ``element`` plus ``image``, ``contents``, ``orientation``, ``decoded``.

    ``tf.io.decode_image`` raises on bad bytes and a graph cannot catch it,
    so the decode runs in a one-element dataset whose error is turned, by
    ``ignore_errors`` scoped to this single file, into ``decoded=False`` with
    an empty image; ``_assert_valid`` / ``_flag_invalid`` then raise or
    count it by name. No example is dropped here.
    """
    contents = tf.io.read_file(element["path"])
    orientation = exif_orientation(contents)  # never raises; 1 for anything but an oriented JPEG
    failed = tf.data.Dataset.from_tensors((tf.zeros((0, 0, 3), tf.uint8), tf.constant(False)))
    decoded = (
        tf.data.Dataset.from_tensors(contents)
        .map(lambda contents: _decode_rgb(contents, orientation))
        .ignore_errors()
        .map(lambda image: (image, tf.constant(True)))
        .concatenate(failed)
        .take(1)
    )
    return decoded.map(
        lambda image, ok: {
            **element,
            "image": image,
            "contents": contents,
            "orientation": orientation,
            "decoded": ok,
        }
    )


def _decode_rgb(contents, orientation):
    """uint8 ``(H, W, 3)`` as displayed (turned by the EXIF ``orientation``).

    Grayscale, RGBA, CMYK and palette images become RGB. The JSON's size and
    boxes are those of the displayed image (annotation tools show it so).
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8, expand_animations=False)
    return upright(tf.ensure_shape(image, (None, None, 3)), orientation)


def _decode_failure_reason(contents):
    """Why ``contents`` failed to decode, as a string tensor."""
    known = [tf.strings.substr(contents, 0, len(magic)) == magic for magic, _ in IMAGE_MAGIC_BYTES]
    names = tf.constant([name for _, name in IMAGE_MAGIC_BYTES])
    is_known = tf.reduce_any(tf.stack(known))
    format_name = tf.gather(names, tf.argmax(tf.cast(tf.stack(known), tf.int32)))
    return tf.where(
        tf.strings.length(contents) == 0,
        tf.constant("the file is empty"),
        tf.where(
            is_known,
            tf.strings.join(["corrupt or truncated ", format_name, " data (decode failed)"]),
            tf.constant(f"not an image: the bytes are not {IMAGE_FORMAT_NAMES}"),
        ),
    )


def _is_valid(element):
    """True if the image decoded to the JSON's height and width."""
    shape = tf.shape(element["image"])
    return (
        element["decoded"]
        & tf.equal(shape[0], element["height"])
        & tf.equal(shape[1], element["width"])
    )


def _output(element):
    """The raw example's fields, as dense tensors."""
    return {
        "image": element["image"],
        "boxes": tf.ensure_shape(tf.convert_to_tensor(element["boxes"]), (None, 4)),
        "classes": tf.convert_to_tensor(element["classes"]),
        "is_crowd": tf.convert_to_tensor(element["is_crowd"]),
        "image_id": element["image_id"],
    }


def _empty_example():
    return {
        "image": tf.zeros((0, 0, 3), tf.uint8),
        "boxes": tf.zeros((0, 4), tf.float32),
        "classes": tf.zeros((0,), tf.int32),
        "is_crowd": tf.zeros((0,), tf.bool),
        "image_id": tf.constant(-1, tf.int64),
    }
