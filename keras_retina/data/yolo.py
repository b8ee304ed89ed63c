"""Raw examples from a YOLO-format dataset: a ``data.yaml``, image folders and one label file per image.

Labelling tools (Roboflow, CVAT, Label Studio, Ultralytics) export this layout::

    data.yaml                path: .            # dataset root, relative to the yaml; optional
                             train: images/train  # a folder of images, a .txt list of them, or a list of both
                             val: images/val
                             names: [cat, dog]  # or {0: cat, 1: dog}; nc: 2 optional
    images/train/a.jpg       labels/train/a.txt   one object a line: class cx cy w h, normalised to [0, 1]

An image's label file is its path with the last ``images`` folder replaced
by ``labels`` and the extension by ``.txt`` (beside the image when the path
has no ``images`` folder); a missing or empty label file is an image with no
objects. The normalised coordinates are of the image as displayed, after its
EXIF orientation (what the labelling tool showed), so they become pixels with
the displayed size read from the image's header
(:func:`~keras_retina.data.image_headers.read_image_size`, width and height
swapped for EXIF orientations 5-8).

The labels are turned into the records of a COCO file
(:class:`~keras_retina.data.coco_annotations.ImageRecord`): :class:`YoloSource`
is a :class:`~keras_retina.data.coco_json.CocoJsonSource`, so decoding, EXIF
orientation, size checks, skip counts and sharding are those of COCO JSON,
and :meth:`YoloSource.coco_gt` is pycocotools ground truth (category ids
``0 .. nc - 1``, box areas).

Bad input (a label line other than 5 numbers ``class cx cy w h``, a class
outside ``names``, a size <= 0, a box that leaves the image by more than
``box_tolerance`` pixels, a missing or unreadable image, a label file without
its image, a bad ``data.yaml``, a file over its ``MAX_*_BYTES`` cap) raises an
error naming the file, the line and the field; with ``skip_invalid=True`` the
image is left out and counted in ``stats`` (each bad line an invalid annotation).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import threading

import numpy as np
import tensorflow as tf
import yaml
from absl import logging
from pycocotools.coco import COCO

from keras_retina.data.coco_annotations import (
    DEFAULT_BOX_TOLERANCE,
    CocoAnnotations,
    CocoFormatError,
    ImageRecord,
    SkipStats,
)
from keras_retina.data.coco_json import CocoJsonSource
from keras_retina.data.image_headers import HEADER_FORMATS, IMAGE_FORMAT_NAMES, read_image_size
from keras_retina.data.orientation import exif_orientation

__all__ = ["YoloFormatError", "YoloSource", "label_path", "write_yolo_dataset", "yolo_dataset"]

#: Largest data.yaml, image list (.txt) and label file read, in bytes.
MAX_YAML_BYTES = 1 << 20
MAX_LIST_BYTES = 64 << 20
MAX_LABEL_BYTES = 4 << 20
#: Image files in a split folder: the formats ``tf.io.decode_image`` reads.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
#: Image files that labelling tools export but TensorFlow cannot decode: named as errors, not passed over.
UNREADABLE_IMAGE_EXTENSIONS = (".tif", ".tiff", ".dng", ".heic", ".heif", ".avif", ".pfm", ".mpo")
#: The splits a data.yaml may name.
SPLITS = ("train", "val", "test")
#: Bytes read for the header; the whole file when the size is not in them (or for a GIF).
_HEADER_PREFIX_BYTES = 256 << 10
_FIX = " Pass skip_invalid=True (--skip_invalid) to skip and count it instead."


class YoloFormatError(CocoFormatError):
    """A data.yaml, label file or image of a YOLO-format dataset that breaks the format.

    A :class:`~keras_retina.data.coco_annotations.CocoFormatError` (a
    ``ValueError``), so code that handles bad annotations handles both.
    """


def label_path(image_path: str) -> str:
    """The label file of an image: the last ``/images/`` folder becomes ``/labels/``, the extension ``.txt``.

    Example:
        >>> label_path("/data/images/train/cat.1.jpg")
        '/data/labels/train/cat.1.txt'
        >>> label_path("/data/train/cat.png")   # no images folder: beside the image
        '/data/train/cat.txt'
    """
    head, found, tail = image_path.rpartition("/images/")
    path = head + "/labels/" + tail if found else image_path
    return os.path.splitext(path)[0] + ".txt"


class YoloSource(CocoJsonSource):
    """One split of a YOLO-format dataset, as a :class:`~keras_retina.data.coco_json.CocoJsonSource`.

    Images get ids ``1, 2, ...`` in listing order (a folder's files sorted by
    path, then the next entry's); category ids are the YOLO class ids
    ``0 .. len(names) - 1``, so ``class_to_category_id`` is the identity.

    Args:
        data_yaml: the dataset's ``data.yaml``; any ``tf.io.gfile`` path.
        split: ``"train"``, ``"val"`` or ``"test"``: the data.yaml key.
        skip_invalid: if False (default), bad input raises an error naming
            the file, line and field; if True, the image is left out and
            counted in ``stats`` (and the reason logged).
        box_tolerance: pixels a box may leave the image by (it is then
            clipped); a box further out is invalid.

    Attributes:
        data_yaml, split, root: the yaml, the split and the dataset root.
        class_names, category_ids, image_ids, stats: as ``CocoJsonSource``'s.
        annotation_file: ``"<data_yaml> (<split>)"``, for messages.

    Raises:
        YoloFormatError: the yaml is not a data.yaml, or (without
            ``skip_invalid``) a label line or an image is invalid.
        FileNotFoundError: the yaml or a split folder or list is missing, or
            (without ``skip_invalid``) an image or a label file's image.

    Example:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> os.makedirs(f"{root}/images/val"); os.makedirs(f"{root}/labels/val")
        >>> _ = open(f"{root}/images/val/a.png", "wb").write(tf.io.encode_png(np.zeros((40, 80, 3), np.uint8)).numpy())
        >>> _ = open(f"{root}/labels/val/a.txt", "w").write("1 0.5 0.5 0.25 0.5\\n")
        >>> _ = open(f"{root}/data.yaml", "w").write("train: images/val\\nval: images/val\\nnames: [cat, dog]\\n")
        >>> source = YoloSource(f"{root}/data.yaml", "val")
        >>> source.class_names, source.image_ids, source.image_record(1).boxes
        (('cat', 'dog'), (1,), array([[30., 10., 50., 30.]], dtype=float32))
        >>> example = next(iter(source.dataset()))
        >>> tuple(example["image"].shape), example["classes"].numpy()
        ((40, 80, 3), array([1], dtype=int32))
    """

    def __init__(self, data_yaml: str | os.PathLike, split: str = "train", skip_invalid: bool = False,
                 box_tolerance: float = DEFAULT_BOX_TOLERANCE):
        # The attributes CocoAnnotations.__init__ sets, from the yaml and labels instead of a JSON.
        self._lock = threading.Lock()
        self._skipped_read_ids: set[int] = set()
        self.data_yaml = _absolute(os.fspath(data_yaml))
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        self.split = split
        self.annotation_file = f"{self.data_yaml} ({split})"
        self.skip_invalid = bool(skip_invalid)
        self.box_tolerance = float(box_tolerance)
        if not self.box_tolerance >= 0.0:
            raise ValueError(f"`box_tolerance` must be >= 0 pixels, got {box_tolerance!r}.")
        self.stats = SkipStats()
        self.root, names, entries = _read_data_yaml(self.data_yaml, split)
        self.image_dir = self.root
        self.category_ids = tuple(range(len(names)))
        self.class_names = tuple(names)
        self._class_of_category = {c: c for c in self.category_ids}
        self._records = self._read_records(entries)
        self.image_ids = tuple(r.image_id for r in self._records)
        self._record_by_id = {r.image_id: r for r in self._records}
        if self.stats.images_skipped_at_load or self.stats.invalid_annotations:
            logging.warning(
                "%s: skipped %d images and %d invalid label lines while loading (skip_invalid=True); see "
                "YoloSource.stats.reasons.",
                self.annotation_file, self.stats.images_skipped_at_load, self.stats.invalid_annotations,
            )

    def coco_dict(self) -> dict:
        """The split as a COCO instances JSON object (``area``: the box's), e.g. to save with ``json.dump``.

        Example:
            >>> import tempfile
            >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
            ...                                     image_size=(64, 64), verbose=False)
            >>> source = YoloSource(write_yolo_dataset(tempfile.mkdtemp(), {"train": files, "val": files}), "val")
            >>> source.coco_dict()["annotations"]
            [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [25.0, 8.0, 32.0, 42.0], 'area': 1344.0, 'iscrowd': 0}]
            >>> source.coco_gt().getAnnIds(imgIds=[1])
            [1]
        """
        images, annotations = [], []
        for record in self._records:
            images.append({"id": record.image_id, "file_name": record.file_name,
                           "height": record.height, "width": record.width})
            for (x1, y1, x2, y2), class_id, annotation_id in zip(
                record.boxes.tolist(), record.classes.tolist(), record.annotation_ids.tolist()
            ):
                annotations.append({"id": annotation_id, "image_id": record.image_id, "category_id": class_id,
                                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        categories = [{"id": c, "name": name} for c, name in zip(self.category_ids, self.class_names)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def coco_gt(self) -> COCO:
        """pycocotools ground truth of the split (:meth:`coco_dict`), for ``COCOeval`` (example there)."""
        coco = COCO()
        coco.dataset = self.coco_dict()
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its timings
            coco.createIndex()
        return coco

    # ------------------------------------------------------------------ reading

    def _skip(self, error: Exception) -> None:
        """Raises ``error`` (with the skip hint), or records it under ``skip_invalid``."""
        if not self.skip_invalid:
            raise type(error)(f"{error}{_FIX}")
        self.stats.reasons.append(str(error))
        logging.warning("Skipping (skip_invalid=True): %s", error)

    def _read_records(self, entries: list[tuple[str, str]]) -> list[ImageRecord]:
        images = []  # (image path, where it is listed)
        for entry, where in entries:
            images.extend(self._list_images(entry, where))
        present = _label_files({os.path.dirname(label_path(path)) for path, _ in images})
        expected = {label_path(path) for path, _ in images}
        if images and not expected & present:
            logging.warning("%s: none of the %d images has a label file (looked for %s ...): every image "
                            "is background.", self.annotation_file, len(images), label_path(images[0][0]))
        records, self._num_annotations = [], 0
        for image_id, (path, where) in enumerate(images, start=1):
            record = self._read_image(image_id, path, where, label_path(path) in present)
            if record is None:
                self.stats.images_skipped_at_load += 1
            else:
                records.append(record)
        if all(where is None for _, where in images):  # folders only: a list names only some of a folder's files
            for orphan in sorted(present - expected):
                # Only in a labels folder (other .txt files may sit beside images), and not a class list
                # that some tools write beside the labels.
                if "/labels/" in orphan and os.path.basename(orphan) != "classes.txt":
                    self.stats.invalid_annotations += _count_lines(orphan)
                    head, found, tail = os.path.splitext(orphan)[0].rpartition("/labels/")
                    image = head + "/images/" + tail if found else head + tail
                    self._skip(FileNotFoundError(
                        f"{self.annotation_file}: label file {orphan} has no image: no {image}.* with an extension "
                        f"of {'/'.join(IMAGE_EXTENSIONS)} in the split's folders (is the image missing or renamed?)."))
        return records

    def _list_images(self, entry: str, where: str) -> list[tuple[str, str | None]]:
        """``(path, list file and line or None)`` of the images an entry names, in order."""
        if tf.io.gfile.isdir(entry):
            paths = []
            for folder, _, files in tf.io.gfile.walk(entry):
                paths.extend(os.path.join(folder, name) for name in files if _is_image_file(name))
            return [(path, None) for path in sorted(paths)]
        listed = []
        for number, line in enumerate(_read_text(entry, MAX_LIST_BYTES, where).splitlines(), start=1):
            line = line.strip()
            if line:
                line = _path_text(line, f"{entry} line {number}")
                path = line if _is_absolute(line) else os.path.normpath(os.path.join(os.path.dirname(entry), line))
                listed.append((path, f"{entry} line {number}"))
        return listed

    def _read_image(self, image_id: int, path: str, listed_at: str | None, has_labels: bool) -> ImageRecord | None:
        """The validated record of one image, or None if skipped (counted by the caller)."""
        source = f" (listed at {listed_at})" if listed_at else ""
        if listed_at and not tf.io.gfile.exists(path):
            self._skip(FileNotFoundError(f"{self.annotation_file}: image file {path}{source} does not exist."))
            return None
        if not path.lower().endswith(IMAGE_EXTENSIONS):
            self._skip(YoloFormatError(f"{self.annotation_file}: image file {path}{source}: TensorFlow decodes only "
                                       f"{'/'.join(IMAGE_EXTENSIONS)} files; convert it (e.g. to PNG)."))
            return None
        size = _displayed_size(path)
        if isinstance(size, str):
            self._skip(YoloFormatError(f"{self.annotation_file}: image file {path}{source} (image_id {image_id}) "
                                       f"is invalid: {size}."))
            return None
        width, height = size
        rows, errors = [], []
        if has_labels:
            try:
                text = _read_text(label_path(path), MAX_LABEL_BYTES, f"label file of image {path}")
            except YoloFormatError as error:
                self._skip(error)
                return None
            for number, line in enumerate(text.splitlines(), start=1):
                parsed = self._parse_line(line, width, height) if line.strip() else None
                if isinstance(parsed, str):
                    errors.append(f"{self.annotation_file}: {label_path(path)} line {number} (image {path}, "
                                  f"image_id {image_id}, {width}x{height} pixels): {parsed}")
                elif parsed is not None:
                    rows.append(parsed)
        if errors:
            self.stats.invalid_annotations += len(errors)
            for message in errors:
                self._skip(YoloFormatError(message))
            return None
        file_name = os.path.relpath(path, self.root) if path.startswith(self.root + "/") else path
        first_id, self._num_annotations = self._num_annotations + 1, self._num_annotations + len(rows)
        return ImageRecord(
            image_id=image_id, file_name=file_name, path=path, height=height, width=width,
            boxes=np.asarray([r[1:] for r in rows], np.float32).reshape(-1, 4),
            classes=np.asarray([r[0] for r in rows], np.int32),
            is_crowd=np.zeros(len(rows), bool),
            annotation_ids=np.arange(first_id, first_id + len(rows), dtype=np.int64),  # 1, 2, ... over the split
        )

    def _parse_line(self, line: str, width: int, height: int):
        """``(class, x1, y1, x2, y2)`` in pixels, clipped, or the reason the line is invalid."""
        fields = line.split()
        shown = line.strip() if len(line) <= 80 else line.strip()[:77] + "..."
        if len(fields) != 5:
            hint = (" (a segmentation polygon or keypoints, not a box: export boxes)"
                    if len(fields) > 5 else "")
            return f"{len(fields)} fields in {shown!r}{hint}; expected 5: class x_center y_center width height."
        values = []
        for name, text in zip(("class", "x_center", "y_center", "width", "height"), fields):
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                return f"field {name!r} = {text!r} is not a finite number (line {shown!r})."
            values.append(value)
        class_id, cx, cy, w, h = values
        if class_id != int(class_id) or not 0 <= class_id < len(self.class_names):
            return (f"field 'class' = {fields[0]!r} is not a class id: expected an integer in "
                    f"[0, {len(self.class_names)}) (the data.yaml's names: {list(self.class_names)}).")
        if w <= 0 or h <= 0:
            return f"field 'width' = {fields[3]!r}, 'height' = {fields[4]!r}; expected both > 0."
        x1, x2, y1, y2 = (cx - w / 2) * width, (cx + w / 2) * width, (cy - h / 2) * height, (cy + h / 2) * height
        tol = self.box_tolerance
        if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
            hint = " (pixels? YOLO labels are normalised by the image's width and height)" if max(values[1:]) > 1.5 else ""
            return (f"box {fields[1:]} (xyxy pixels [{x1:g}, {y1:g}, {x2:g}, {y2:g}]) leaves the normalised [0, 1] "
                    f"image by more than {tol:g} pixel(s){hint}.")
        return (int(class_id), min(max(x1, 0.0), width), min(max(y1, 0.0), height),
                min(max(x2, 0.0), width), min(max(y2, 0.0), height))


def yolo_dataset(
    data_yaml: str | os.PathLike, split: str = "train", *, skip_invalid: bool = False, shuffle: bool = False,
    seed: int | None = None, num_parallel_calls: int = tf.data.AUTOTUNE, deterministic: bool | None = None,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Raw examples of one split of a YOLO-format dataset, as :func:`~keras_retina.data.coco_json_dataset` gives.

    A shortcut for ``YoloSource(data_yaml, split, skip_invalid).dataset(...)``;
    use :class:`YoloSource` for the class names, skip counts or ground truth.

    Args:
        data_yaml: the dataset's ``data.yaml``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        skip_invalid: skip and count bad images and label lines instead of raising.
        shuffle, seed, num_parallel_calls, deterministic, input_context: as
            :meth:`~keras_retina.data.coco_json.CocoJsonSource.dataset`'s.

    Returns:
        A ``tf.data.Dataset`` of ``{"image": uint8 (H, W, 3), "boxes": float32
        (N, 4) xyxy pixels, "classes": int32 (N,), "is_crowd": bool (N,) (all
        False), "image_id": int64 ()}``.

    Example:
        >>> import tempfile
        >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
        ...                                     image_size=(64, 64), verbose=False)
        >>> data_yaml = write_yolo_dataset(tempfile.mkdtemp(), {"train": files, "val": files})
        >>> raw = yolo_dataset(data_yaml, "val")
        >>> sorted(raw.element_spec)
        ['boxes', 'classes', 'image', 'image_id', 'is_crowd']
        >>> [example["boxes"].numpy().round(3).tolist() for example in raw]
        [[[25.0, 8.0, 57.0, 50.0]], []]
    """
    source = YoloSource(data_yaml, split, skip_invalid=skip_invalid)
    return source.dataset(shuffle=shuffle, seed=seed, num_parallel_calls=num_parallel_calls,
                          deterministic=deterministic, input_context=input_context)


def write_yolo_dataset(out_dir: str | os.PathLike, splits: dict, decimals: int = 6) -> str:
    """Writes COCO-format splits as a YOLO-format dataset; returns its ``data.yaml``.

    Layout: ``data.yaml`` (``path: .``, a key per split, ``names``, ``nc``),
    ``images/<split>/`` (the images copied, same relative names) and
    ``labels/<split>/`` (a ``.txt`` per image, empty for an image without
    boxes). Crowd boxes are left out (YOLO has no crowd flag; the count is
    logged).

    Args:
        out_dir: where the dataset goes (created).
        splits: ``{"train": ..., "val": ...}``, each an ``(annotation_file,
            image_dir)`` pair or a :class:`~keras_retina.data.shapes.ShapesFiles`;
            all with the same categories.
        decimals: decimals of the normalised coordinates.

    Returns:
        The path of the data.yaml.

    Example:
        >>> import tempfile
        >>> files = kr.data.make_shapes_dataset(tempfile.mkdtemp(), num_images=2,
        ...                                     image_size=(64, 64), verbose=False)
        >>> data_yaml = write_yolo_dataset(tempfile.mkdtemp(), {"train": files, "val": files})
        >>> print(open(os.path.join(os.path.dirname(data_yaml), "labels/val/000001.txt")).read())
        1 0.640625 0.453125 0.500000 0.656250
    """
    if not {"train", "val"} <= set(splits) <= set(SPLITS):
        raise ValueError(f"splits must have 'train' and 'val' (and may have 'test'), got {sorted(splits)}.")
    out_dir = _absolute(os.fspath(out_dir))
    names, content = None, {"path": "."}
    for split, files in splits.items():
        annotation_file, image_dir = (files.annotation_file, files.image_dir) if hasattr(files, "image_dir") else files
        coco = CocoAnnotations(annotation_file, image_dir)
        if names is not None and coco.class_names != names:
            raise ValueError(f"splits[{split!r}] has categories {coco.class_names}, the others {names}.")
        names, crowd = coco.class_names, 0
        for image_id in coco.image_ids:
            record = coco.image_record(image_id)
            image = os.path.join(out_dir, "images", split, record.file_name)
            tf.io.gfile.makedirs(os.path.dirname(image))
            tf.io.gfile.copy(record.path, image, overwrite=True)
            lines = []
            for (x1, y1, x2, y2), class_id, is_crowd in zip(record.boxes, record.classes, record.is_crowd):
                crowd += int(is_crowd)
                if not is_crowd:
                    values = ((x1 + x2) / 2 / record.width, (y1 + y2) / 2 / record.height,
                              (x2 - x1) / record.width, (y2 - y1) / record.height)
                    lines.append(" ".join([str(int(class_id))] + [f"{v:.{decimals}f}" for v in values]) + "\n")
            tf.io.gfile.makedirs(os.path.dirname(label_path(image)))
            with tf.io.gfile.GFile(label_path(image), "w") as f:
                f.write("".join(lines))
        if crowd:
            logging.warning("%s: %d crowd boxes left out of the YOLO labels (YOLO has no crowd flag).", annotation_file, crowd)
        content[split] = f"images/{split}"
    content.update(names=list(names or ()), nc=len(names or ()))
    data_yaml = os.path.join(out_dir, "data.yaml")
    with tf.io.gfile.GFile(data_yaml, "w") as f:
        f.write(yaml.safe_dump(content, sort_keys=False))
    return data_yaml


# ---------------------------------------------------------------------- helpers


def _is_absolute(path: str) -> bool:
    return os.path.isabs(path) or "://" in path


def _absolute(path: str) -> str:
    return path if "://" in path else os.path.abspath(path)


def _is_image_file(name: str) -> bool:
    """An image a folder split holds: TensorFlow-readable, or an image format named as an error later."""
    return name.lower().endswith(IMAGE_EXTENSIONS + UNREADABLE_IMAGE_EXTENSIONS)


def _read_text(path: str, max_bytes: int, what: str) -> str:
    """The UTF-8 text of ``path`` (at most ``max_bytes``); ``YoloFormatError`` naming it otherwise."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except tf.errors.NotFoundError:
        raise FileNotFoundError(f"{what}: {path} does not exist.") from None
    if len(data) > max_bytes:
        raise YoloFormatError(f"{what}: {path} is over {max_bytes} bytes, the most read; is it the right file?")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise YoloFormatError(f"{what}: {path} is not UTF-8 text ({error}).") from None


def _count_lines(path: str) -> int:
    """Non-blank lines of a label file (1 if it cannot be read): the annotations it stands for."""
    try:
        return max(1, sum(1 for line in _read_text(path, MAX_LABEL_BYTES, "label file").splitlines() if line.strip()))
    except (YoloFormatError, FileNotFoundError):
        return 1


def _label_files(folders: set[str]) -> set[str]:
    """Every ``.txt`` file under ``folders`` (one listing per folder tree)."""
    found = set()
    for top in sorted(folders):
        for folder, _, files in tf.io.gfile.walk(top):  # nothing for a missing folder
            found.update(os.path.join(folder, name) for name in files if name.endswith(".txt"))
    return found


def _read_data_yaml(data_yaml: str, split: str) -> tuple[str, tuple[str, ...], list[tuple[str, str]]]:
    """``(root, names, [(entry path, where it is in the yaml)])`` of ``split``, every field checked."""
    if not tf.io.gfile.exists(data_yaml):
        raise FileNotFoundError(f"data_yaml={data_yaml!r} does not exist.")
    text = _read_text(data_yaml, MAX_YAML_BYTES, "data.yaml")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        content = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or error
        raise YoloFormatError(f"{data_yaml}{line}: not YAML ({problem}).") from None
    except RecursionError:  # PyYAML's composer recurses once per level of nesting
        raise YoloFormatError(f"{data_yaml}: nests lists or mappings deeper than the YAML reader goes; "
                              "expected a mapping with 'train', 'val' and 'names'.") from None
    if not isinstance(content, dict):
        raise YoloFormatError(f"{data_yaml}: holds a YAML {type(content).__name__}; expected a mapping with "
                              "'train', 'val' and 'names' (and optionally 'path' and 'nc').")
    lines = {key.value: key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}

    def where(key):
        return f"{data_yaml} line {lines.get(key, '?')} field {key!r}"

    for key in ("names", "train", "val") + ((split,) if split == "test" else ()):
        if content.get(key) in (None, "", []):
            raise YoloFormatError(f"{data_yaml}: no field {key!r} (or it is empty); a data.yaml needs 'train', "
                                  f"'val' and 'names' (found {sorted(map(str, content))}).")
    names = content["names"]
    if isinstance(names, dict):
        if sorted(names, key=str) != sorted(range(len(names)), key=str):
            raise YoloFormatError(f"{where('names')}: the keys {sorted(names, key=str)} are not the class ids "
                                  f"0 .. {len(names) - 1}.")
        names = [names[c] for c in range(len(names))]
    if not isinstance(names, list) or not names or any(isinstance(n, (dict, list)) for n in names):
        raise YoloFormatError(f"{where('names')}: {names!r}; expected a list of names or {{id: name}}.")
    nc = content.get("nc")
    if nc is not None and nc != len(names):
        raise YoloFormatError(f"{where('nc')}: nc = {nc!r} but 'names' has {len(names)} names.")
    root = os.path.dirname(data_yaml)
    if content.get("path"):
        root = _absolute(os.path.normpath(os.path.join(root, _path_text(content["path"], where("path")))))
        if not tf.io.gfile.isdir(root):
            raise FileNotFoundError(f"{where('path')}: the dataset root {root} is not a directory.")
    entries = content[split] if isinstance(content[split], list) else [content[split]]
    resolved = []
    for entry in entries:
        text = _path_text(entry, where(split))
        path = text if _is_absolute(text) else os.path.normpath(os.path.join(root, text))
        if not (tf.io.gfile.isdir(path) or (path.endswith(".txt") and tf.io.gfile.exists(path))):
            raise FileNotFoundError(f"{where(split)}: {entry!r} ({path}) is neither a folder of images nor a "
                                    ".txt list of images.")
        resolved.append((path, where(split)))
    return root, tuple(str(n) for n in names), resolved


def _path_text(value, where: str) -> str:
    """``str(value)``, a path TensorFlow's file system can take; ``YoloFormatError`` naming ``where`` otherwise."""
    text = str(value)
    try:
        text.encode("utf-8")  # YAML's "\ud800" escapes make lone surrogates, which no path can hold
    except UnicodeEncodeError as error:
        raise YoloFormatError(f"{where}: {text!r} is not a path ({error.reason}).") from None
    if "\0" in text:  # TensorFlow's file system would cut the path there: another folder, or a walk without end
        raise YoloFormatError(f"{where}: {text!r} is not a path (it holds a NUL character).")
    return text


@functools.cache
def _header_function():
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def header(contents):
        size = read_image_size(contents)
        return size["format"], size["width"], size["height"], size["problem"], exif_orientation(contents)

    return header


def _displayed_size(path: str) -> tuple[int, int] | str:
    """``(width, height)`` of the image as displayed (after EXIF orientation), or why it cannot be read."""
    with tf.io.gfile.GFile(path, "rb") as f:
        contents = f.read(_HEADER_PREFIX_BYTES)
        whole = len(contents) < _HEADER_PREFIX_BYTES
        if contents[:4] == b"GIF8" and not whole:  # a GIF's size is its largest frame: all of them are read
            contents, whole = contents + f.read(), True
        while True:
            if not contents:
                return "the file is empty"
            try:
                image_format, width, height, problem, orientation = (t.numpy() for t in _header_function()(contents))
                reason = problem.decode("utf-8", "replace")
            except tf.errors.InvalidArgumentError:
                reason = "corrupt or truncated JPEG data (its header does not parse)"
            if not reason or whole:
                break
            contents, whole = contents + f.read(), True  # the size lies past the first bytes read
    if reason:
        return reason
    if HEADER_FORMATS[image_format] == "unknown":
        return f"not an image: the bytes are not {IMAGE_FORMAT_NAMES}"
    if min(width, height) < 1:
        return f"its header gives a size of {width}x{height} pixels"
    return (int(height), int(width)) if orientation >= 5 else (int(width), int(height))

