"""Raw examples from a COCO-format instances JSON and a folder of images.

The annotation file is parsed and validated once, in Python
(:mod:`keras_retina.data.coco_annotations`); the images are
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

import dataclasses
import os
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from keras_retina.data.coco_annotations import (
    DEFAULT_BOX_TOLERANCE,
    CocoAnnotations,
    CocoFormatError,
    ImageRecord,
    SkipStats,
)
from keras_retina.data.image_headers import IMAGE_FORMAT_NAMES, IMAGE_MAGIC_BYTES
from keras_retina.data.orientation import ORIENTATION_UPRIGHT, exif_orientation, upright
from keras_retina.data.pipeline import input_share

__all__ = [
    "DEFAULT_BOX_TOLERANCE",
    "CocoFormatError",
    "CocoJsonSource",
    "ImageRecord",
    "SkipStats",
    "coco_json_dataset",
]


class CocoJsonSource(CocoAnnotations):
    """A validated COCO instances annotation file, and its ``tf.data`` dataset.

    The parsing, class mapping and image records are those of
    :class:`~keras_retina.data.coco_annotations.CocoAnnotations`; this class
    adds :meth:`dataset`, which reads and decodes the images.
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
        self._lock = threading.Lock()
        self._skipped_read_ids: set[int] = set()
        super().__init__(annotation_file, image_dir, skip_invalid=skip_invalid, box_tolerance=box_tolerance)

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
