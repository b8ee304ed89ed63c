"""Data: sources (COCO JSON, YOLO, TFDS, synthetic shapes), image orientation, the tf.data pipeline, a run's data.

Every source yields raw examples ``{"image": uint8 (H, W, 3), "boxes":
float32 (N, 4) xyxy pixels, "classes": int32 (N,), "is_crowd": bool (N,),
"image_id": int64}``; :func:`make_pipeline` turns them into batches for
``RetinaNet.fit`` / ``predict``.

* :mod:`~keras_retina.data.coco_json`, :mod:`~keras_retina.data.yolo`, :mod:`~keras_retina.data.tfds_source`,
  :mod:`~keras_retina.data.shapes`: the sources (**a new data source** is a module beside them);
* :mod:`~keras_retina.data.coco_annotations`: a COCO instances JSON read and validated (classes,
  image records, skip counts), for everything that reads one;
* :mod:`~keras_retina.data.orientation`: EXIF orientation, images decoded upright;
* :mod:`~keras_retina.data.pipeline`: decode → augment → resize/pad → batch;
* :mod:`~keras_retina.data.run_data`: :class:`RunData`, a config's dataset chosen once for every mode
  (**a new kind of dataset** for ``--dataset``).
"""

from keras_retina.data.coco_json import CocoFormatError, CocoJsonSource, coco_json_dataset
from keras_retina.data.orientation import decode_upright, exif_orientation, upright
from keras_retina.data.pipeline import (
    make_pipeline,
    original_size_pipeline,
    output_image_size,
    summarize_box_counts,
    to_original_pixels,
    transform_example,
)
from keras_retina.data.run_data import RunData
from keras_retina.data.shapes import SHAPE_CLASSES, make_shapes_dataset, make_shapes_splits
from keras_retina.data.shapes import LARGE_IMAGES_SMALL_OBJECTS, SMALL_OBJECTS_IN_CLUTTER, WIDE_OBJECTS_IN_CLUTTER
from keras_retina.data.tfds_source import coco_from_raw_dataset, tfds_class_names, tfds_dataset
from keras_retina.data.yolo import YoloFormatError, YoloSource, write_yolo_dataset, yolo_dataset

__all__ = [
    "LARGE_IMAGES_SMALL_OBJECTS",
    "SHAPE_CLASSES",
    "SMALL_OBJECTS_IN_CLUTTER",
    "WIDE_OBJECTS_IN_CLUTTER",
    "CocoFormatError",
    "CocoJsonSource",
    "RunData",
    "YoloFormatError",
    "YoloSource",
    "coco_from_raw_dataset",
    "coco_json_dataset",
    "decode_upright",
    "exif_orientation",
    "make_pipeline",
    "original_size_pipeline",
    "make_shapes_dataset",
    "make_shapes_splits",
    "output_image_size",
    "summarize_box_counts",
    "tfds_class_names",
    "tfds_dataset",
    "to_original_pixels",
    "transform_example",
    "upright",
    "write_yolo_dataset",
    "yolo_dataset",
]
