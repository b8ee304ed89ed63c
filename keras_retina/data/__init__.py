"""Datasets: sources (COCO JSON, TFDS, synthetic shapes) and the tf.data pipeline.

Every source yields raw examples ``{"image": uint8 (H, W, 3), "boxes":
float32 (N, 4) xyxy pixels, "classes": int32 (N,), "is_crowd": bool (N,),
"image_id": int64}``; :func:`make_pipeline` turns them into batches for
``RetinaNet.fit`` / ``predict``.
"""

from keras_retina.data.coco_json import CocoFormatError, CocoJsonSource, coco_json_dataset
from keras_retina.data.orientation import decode_upright, exif_orientation, upright
from keras_retina.data.pipeline import (
    make_pipeline,
    output_image_size,
    summarize_box_counts,
    to_original_pixels,
    transform_example,
)
from keras_retina.data.shapes import SHAPE_CLASSES, make_shapes_dataset, make_shapes_splits
from keras_retina.data.tfds_source import tfds_class_names, tfds_dataset
