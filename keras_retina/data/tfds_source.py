"""Raw detection examples from TensorFlow Datasets (COCO, Pascal VOC, ...).

`tfds_dataset` loads any TFDS detection dataset whose examples have an
``image`` plus ``objects/bbox`` (``tfds.features.BBoxFeature``: normalised
``[ymin, xmin, ymax, xmax]``) and ``objects/label`` (``ClassLabel``), and
converts each example to the raw structure that every source of
:mod:`keras_retina.data` yields (docs/DATA.md)::

    {"image": uint8 (H, W, 3), "boxes": float32 (N, 4) xyxy absolute pixels,
     "classes": int32 (N,) contiguous from 0, "is_crowd": bool (N,),
     "image_id": int64 ()}

Image ids, in order of preference:

1. ``image/id`` when the dataset has it (COCO: the official COCO image id, so
   predictions can be scored with pycocotools against the original JSON).
2. Otherwise, from ``image/filename``: a basename whose stem is only digits
   and underscores becomes those digits as an integer (Pascal VOC:
   ``"000005.jpg"`` -> 5, ``"2008_000002.jpg"`` -> 2008000002, readable and
   stable); any other name becomes its 64-bit FarmHash fingerprint modulo
   2**63 - 1 (`tf.strings.to_hash_bucket_fast`, stable across runs, machines
   and TensorFlow versions).
3. Otherwise the example's position in the split (``0, 1, 2, ...``): stable
   only for the same split with ``shuffle_files=False`` (with an input
   context, the position in the whole split, not in the share).

With an ``input_context`` (``tf.distribute.InputContext``), input pipeline
``i`` of ``k`` reads only ``tfds.even_splits(split, k)[i]``: TFDS turns that
sub-split into read instructions over its record files, so the other shares'
records are skipped before they are parsed or decoded. (``tfds.ReadConfig``'s
own ``input_context`` shards whole files and refuses a split with fewer
files than pipelines, e.g. a small validation split.)
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from pycocotools.coco import COCO

from keras_retina.data.pipeline import input_share

#: Largest number of decimal digits parsed from a VOC-style file name before
#: falling back to the hash (int64 holds 18 digits safely).
_MAX_FILENAME_DIGITS = 18

#: The official COCO category id of each of TFDS ``coco/*``'s 80 labels
#: (labels follow the ascending category ids; 12, 26, 29, 30, 45, 66, 68, 69,
#: 71 and 83 are unused ids).
COCO_CATEGORY_IDS = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
)

#: Features every supported dataset must have (path in the features dict).
_REQUIRED_FEATURES = ("image", "objects/bbox", "objects/label")


def _feature_at(features: Any, path: str) -> Any | None:
    """Returns the feature at ``"a/b"`` in a TFDS FeaturesDict, or None."""
    node = features
    for part in path.split("/"):
        # A Sequence of a FeaturesDict (``objects``) indexes like a dict too.
        try:
            keys = node.keys()
        except AttributeError:
            try:
                keys = node.feature.keys()
            except AttributeError:
                return None
        if part not in keys:
            return None
        node = node[part]
    return node


def _check_detection_features(name: str, features: Any) -> None:
    """Raises ValueError naming ``name`` and the first missing feature."""
    for path in _REQUIRED_FEATURES:
        if _feature_at(features, path) is None:
            raise ValueError(
                f"tfds_dataset(name={name!r}): the dataset has no feature "
                f"{path!r}; expected a detection dataset with 'image', "
                "'objects/bbox' (tfds.features.BBoxFeature) and "
                "'objects/label' (tfds.features.ClassLabel). Its top-level "
                f"features are {sorted(features.keys())}."
            )
    image_feature = features["image"]
    channels = image_feature.shape[-1] if image_feature.shape else None
    if channels not in (1, 3, 4) or np.dtype(image_feature.np_dtype) != np.uint8:
        raise ValueError(
            f"tfds_dataset(name={name!r}): feature 'image' has shape "
            f"{image_feature.shape} and dtype {np.dtype(image_feature.np_dtype)}; "
            "expected uint8 with 1, 3 or 4 channels."
        )


def tfds_class_names(name: str, data_dir: str | None = None) -> tuple[str, ...]:
    """Class names of a TFDS detection dataset, indexed by class id.

    Read from the builder's ``info.features["objects"]["label"].names``; no
    data is downloaded. For COCO the real names (``"person"``, ...) are known
    only once the dataset is prepared in ``data_dir`` (TFDS fills them in from
    the annotation file); before that TFDS reports ``"0"``, ``"1"``, ...

    Args:
        name: TFDS name, e.g. ``"coco/2017"`` or ``"voc/2007"``.
        data_dir: TFDS data directory; ``None`` for TFDS' default.

    Returns:
        Tuple of ``num_classes`` strings; ``names[c]`` is the name of class
        ``c`` in the raw examples' ``"classes"``.

    Raises:
        ValueError: if the dataset has no ``objects/label`` feature.

    Example:
        >>> tfds_class_names("voc/2007")[:3]
        ('aeroplane', 'bicycle', 'bird')
    """
    features = tfds.builder(name, data_dir=data_dir).info.features
    _check_detection_features(name, features)
    return tuple(features["objects"]["label"].names)


def _image_id_from_filename(filename: tf.Tensor) -> tf.Tensor:
    """int64 id from a file name: its digits if VOC-style, else a hash."""
    basename = tf.strings.split(filename, "/")[-1]
    stem = tf.strings.regex_replace(basename, r"\.[^.]*$", "")
    digits = tf.strings.regex_replace(stem, "_", "")
    is_numeric = tf.logical_and(
        tf.strings.regex_full_match(stem, r"[0-9_]+"),
        tf.logical_and(
            tf.strings.length(digits) > 0,
            tf.strings.length(digits) <= _MAX_FILENAME_DIGITS,
        ),
    )
    return tf.cond(
        is_numeric,
        lambda: tf.strings.to_number(digits, out_type=tf.int64),
        lambda: tf.strings.to_hash_bucket_fast(filename, 2**63 - 1),
    )


def _to_raw_example(
    example: dict[str, Any], index: tf.Tensor, has_is_crowd: bool, id_source: str, channels: int
) -> dict[str, tf.Tensor]:
    """Converts one decoded TFDS example to the raw structure."""
    image = example["image"]
    if channels == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
        image = image[..., :3]  # RGBA -> RGB: drop alpha.
    shape = tf.shape(image)
    height = tf.cast(shape[0], tf.float32)
    width = tf.cast(shape[1], tf.float32)

    objects = example["objects"]
    bbox_rel_yxyx = tf.reshape(tf.cast(objects["bbox"], tf.float32), (-1, 4))
    boxes_xyxy = keras.utils.bounding_boxes.convert_format(
        bbox_rel_yxyx, source="rel_yxyx", target="xyxy", height=height, width=width
    )
    num_boxes = tf.shape(bbox_rel_yxyx)[0]
    if has_is_crowd:
        is_crowd = tf.cast(objects["is_crowd"], tf.bool)
    else:
        is_crowd = tf.zeros((num_boxes,), tf.bool)

    if id_source == "image/id":
        image_id = tf.cast(example["image/id"], tf.int64)
    elif id_source == "image/filename":
        image_id = _image_id_from_filename(example["image/filename"])
    else:
        image_id = tf.cast(index, tf.int64)

    return {
        "image": tf.ensure_shape(image, (None, None, 3)),
        "boxes": tf.ensure_shape(tf.cast(boxes_xyxy, tf.float32), (None, 4)),
        "classes": tf.cast(objects["label"], tf.int32),
        "is_crowd": is_crowd,
        "image_id": image_id,
    }


def tfds_dataset(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    shuffle_files: bool = False,
    read_config: tfds.ReadConfig | None = None,
    download: bool = True,
    num_parallel_calls: int = tf.data.AUTOTUNE,
    with_info: bool = False,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset | tuple[tf.data.Dataset, tfds.core.DatasetInfo]:
    """Loads a TFDS detection dataset as raw examples (xyxy pixel boxes).

    Runs the real ``tfds.load(name, split=split, data_dir=data_dir, ...)``;
    TFDS' normalised ``objects/bbox`` ``[ymin, xmin, ymax, xmax]`` becomes
    absolute-pixel ``xyxy`` using each image's height and width,
    ``objects/label`` becomes ``classes``, ``objects/is_crowd`` is kept where
    the dataset has it (COCO) and is all ``False`` otherwise (VOC). See the
    module docstring for how ``image_id`` is chosen. Grayscale and RGBA
    images become RGB. Boxes are not filtered here: TFDS' ``BBoxFeature``
    already guarantees ``0 <= min <= max <= 1`` when a dataset is prepared,
    and `make_pipeline` drops and counts boxes that are empty in pixels.

    Args:
        name: TFDS name, e.g. ``"coco/2017"``, ``"voc/2007"``, ``"voc/2012"``.
        split: TFDS split expression, e.g. ``"train"``, ``"validation[:500]"``.
        data_dir: TFDS data directory; ``None`` for TFDS' default.
        shuffle_files: passed to ``tfds.load`` (shuffles shard order).
        read_config: passed to ``tfds.load``, e.g.
            ``tfds.ReadConfig(shuffle_seed=0)`` for deterministic shuffling.
        download: passed to ``tfds.load``; ``False`` fails instead of
            downloading when the data is not prepared in ``data_dir``.
        num_parallel_calls: parallelism of the conversion ``map``.
        with_info: also return the ``tfds.core.DatasetInfo``.
        input_context: a ``tf.distribute.InputContext``: read only this input
            pipeline's share, ``tfds.even_splits(split, num_input_pipelines)
            [input_pipeline_id]`` (shares differ by at most one example);
            None for the whole split.

    Returns:
        A ``tf.data.Dataset`` of raw examples ``{"image": uint8 (H, W, 3),
        "boxes": float32 (N, 4) xyxy pixels, "classes": int32 (N,),
        "is_crowd": bool (N,), "image_id": int64 ()}``; with
        ``with_info=True`` a tuple ``(dataset, info)``. Class names are
        ``info.features["objects"]["label"].names`` (see `tfds_class_names`).

    Raises:
        ValueError: if the dataset lacks ``image``, ``objects/bbox`` or
            ``objects/label``; the message names the dataset and the feature.

    Example:
        Not run as a doctest: the first call downloads and prepares the
        dataset into ``data_dir``::

            raw, info = tfds_dataset("voc/2007", split="validation", with_info=True)
            example = next(iter(raw))
            example["boxes"]      # float32 (N, 4) xyxy pixels of example["image"]
            example["classes"]    # int32 (N,): info.features["objects"]["label"].names
    """
    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    # Checked before tfds.load so that a wrong dataset fails before any download.
    _check_detection_features(name, features)
    has_is_crowd = _feature_at(features, "objects/is_crowd") is not None
    if "image/id" in features.keys():
        id_source = "image/id"
    elif "image/filename" in features.keys():
        id_source = "image/filename"
    else:
        id_source = "index"
    channels = int(features["image"].shape[-1])
    num_pipelines, pipeline_id = input_share(input_context)
    first_index = 0  # position in the whole split of the share's first example
    if num_pipelines > 1:
        shares = tfds.even_splits(split, num_pipelines)
        if id_source == "index":
            first_index = sum(builder.info.splits[share].num_examples for share in shares[:pipeline_id])
        split = shares[pipeline_id]

    dataset, info = tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        shuffle_files=shuffle_files,
        read_config=read_config,
        download=download,
        with_info=True,
    )
    dataset = dataset.enumerate(start=first_index).map(
        lambda index, example: _to_raw_example(example, index, has_is_crowd, id_source, channels),
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    if with_info:
        return dataset, info
    return dataset


def coco_from_raw_dataset(
    raw: "tf.data.Dataset", class_names: Sequence[str], category_ids: Sequence[int] | None = None
) -> COCO:
    """Builds in-memory COCO ground truth from raw examples (used for TFDS splits).

    Category ids are ``category_ids[class]`` (default: the class ids); each annotation's ``area``
    is its box area (TFDS carries no mask areas), which can move a few
    objects between the small / medium / large buckets compared with the
    official annotation file.

    Args:
        raw: dataset of raw examples with ``image``, ``boxes`` (xyxy pixels),
            ``classes``, ``image_id`` and optionally ``is_crowd``.
        class_names: name of each contiguous class.
        category_ids: the id to record for each contiguous class.

    Returns:
        ``pycocotools.coco.COCO`` with ``images``, ``annotations`` and ``categories``.
    """
    category_ids = list(range(len(class_names))) if category_ids is None else [int(c) for c in category_ids]
    images, annotations = [], []
    for example in raw.as_numpy_iterator():
        image_id = int(example["image_id"])
        height, width = example["image"].shape[:2]
        images.append({"id": image_id, "height": int(height), "width": int(width)})
        crowd = example.get("is_crowd", np.zeros(len(example["classes"]), bool))
        for box, cls, is_crowd in zip(example["boxes"], example["classes"], crowd):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[int(cls)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(bool(is_crowd)),
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for cid, name in zip(category_ids, class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
