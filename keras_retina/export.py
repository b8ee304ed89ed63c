"""SavedModel export for TF Serving: encoded images in, final detections in original pixels out."""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

import numpy as np
import tensorflow as tf

from keras_retina import compat
from keras_retina.data.coco_json import IMAGE_FORMAT_NAMES, IMAGE_MAGIC_BYTES
from keras_retina.data.pipeline import to_original_pixels, transform_example

#: File (in the SavedModel's ``assets/``) listing ``category_id<TAB>name`` per class.
CLASS_NAMES_ASSET = "class_names.tsv"


def prepare_image(image_uint8, image_size: int):
    """Resizes and pads one image exactly as the evaluation pipeline does.

    Args:
        image_uint8: ``(H, W, 3)`` uint8 image.
        image_size: the model's square input size in pixels.

    Returns:
        ``(image (S, S, 3) float32, scale (2,) (sy, sx), image_shape (2,) int32)``.
    """
    example = {
        "image": image_uint8,
        "boxes": tf.zeros((0, 4), tf.float32),
        "classes": tf.zeros((0,), tf.int32),
    }
    image, y = transform_example(example, image_size=image_size, max_boxes=1)
    return image, y["scale"], y["image_shape"]


def decode_image(contents, index=None):
    """Decodes JPEG/PNG/GIF/BMP/WebP bytes to RGB uint8 ``(H, W, 3)``; a clear InvalidArgument otherwise.

    Bytes that start with none of the signatures in
    :data:`keras_retina.data.coco_json.IMAGE_MAGIC_BYTES` fail before the
    decoder runs, with a message naming the request image ``index``.
    Grayscale and RGBA become RGB; of an animated GIF the first frame is used.

    Example:
        >>> tuple(decode_image(tf.io.encode_png(np.zeros((4, 6, 1), np.uint8))).shape)
        (4, 6, 3)
    """
    known = tf.reduce_any(
        [tf.equal(tf.strings.substr(contents, 0, len(magic)), magic) for magic, _ in IMAGE_MAGIC_BYTES]
    )
    where = "" if index is None else tf.strings.format(" (request image {})", index)
    with tf.control_dependencies(
        [
            tf.debugging.Assert(
                known,
                [tf.strings.join([f"input bytes are not a {IMAGE_FORMAT_NAMES} image", where])],
            )
        ]
    ):
        image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    return tf.ensure_shape(image, (None, None, 3))


class InferenceModule(tf.Module):
    """The serving graph: decoding, resize and pad, the model, NMS, and the mapping back.

    What the SavedModel's signatures run; ``main.py --mode=predict`` calls
    the same methods in-process, so both give the same detections.

    Args:
        model: a built :class:`keras_retina.RetinaNet`.
        image_size: the square input size in pixels.
        class_names, category_ids: per contiguous class.
        asset_path: a file listing ``category_id<TAB>name`` per class.

    Example:
        >>> import os, tempfile
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16,
        ...                      head_channels=16, num_head_convs=1)
        >>> asset = write_class_names(os.path.join(tempfile.mkdtemp(), CLASS_NAMES_ASSET),
        ...                           ["cat", "dog"], [17, 18])
        >>> module = InferenceModule(model, 128, ["cat", "dog"], [17, 18], asset)
        >>> jpeg = tf.io.encode_jpeg(np.zeros((60, 80, 3), np.uint8))
        >>> out = module.serve_encoded(tf.stack([jpeg]))
        >>> {name: tuple(value.shape) for name, value in out.items()}   # boxes in the 80 x 60 image
        {'detection_boxes': (1, 100, 4), 'detection_scores': (1, 100),
         'detection_classes': (1, 100), 'num_detections': (1,)}
    """

    def __init__(self, model, image_size: int, class_names: Sequence[str], category_ids: Sequence[int], asset_path: str):
        super().__init__()
        self.model = model
        self.class_names_file = tf.saved_model.Asset(asset_path)
        self.image_size = int(image_size)
        self.category_ids = tf.constant(np.asarray(category_ids, np.int64))
        self.class_names = tf.constant(list(class_names))

    def _detect(self, images, scales, image_shapes):
        self._capture_model_variables()
        # An empty request skips the model (some CPU kernels reject a batch of 0).
        detections = tf.cond(
            tf.shape(images)[0] > 0,
            lambda: self.model.detect(images),
            lambda: self._no_detections(),
        )
        boxes = to_original_pixels(detections["boxes"], scales, image_shapes)
        classes = detections["classes"]
        valid = classes >= 0
        category = tf.gather(self.category_ids, tf.maximum(classes, 0))
        return {
            "detection_boxes": boxes,
            "detection_scores": detections["scores"],
            "detection_classes": tf.where(valid, category, tf.constant(-1, tf.int64)),
            "num_detections": tf.cast(detections["num_detections"], tf.int32),
        }

    def _capture_model_variables(self):
        """In a serving function, captures every model variable as an input named ``model_variable_<i>``.

        Captured first inside the ``tf.cond`` below, the variables would become
        inputs ``cond/input_1`` … ``cond/input_<n>`` of the serving function;
        ``tf.saved_model.save`` renames those to ``cond_input_*`` and logs every
        name, a ~3,000-character INFO line per signature. Captured here, at the
        function's top level under names that need no renaming, the cond reuses
        these inputs and nothing is renamed. Eagerly this does nothing.
        """
        if not tf.inside_function():
            return
        graph = tf.compat.v1.get_default_graph()  # the serving tf.function's FuncGraph
        for i, variable in enumerate(self.model.variables):
            graph.capture(variable.handle, name=f"model_variable_{i}")

    def _no_detections(self):
        max_detections = self.model.max_detections
        return {
            "boxes": tf.zeros((0, max_detections, 4), tf.float32),
            "scores": tf.zeros((0, max_detections), tf.float32),
            "classes": tf.zeros((0, max_detections), tf.int32),
            "num_detections": tf.zeros((0,), tf.int32),
        }

    def _prepare_batch(self, images_uint8_list_fn, count):
        spec = (
            tf.TensorSpec((self.image_size, self.image_size, 3), tf.float32),
            tf.TensorSpec((2,), tf.float32),
            tf.TensorSpec((2,), tf.int32),
        )
        return tf.map_fn(images_uint8_list_fn, tf.range(count), fn_output_signature=spec)

    def serve_encoded(self, images):
        """``images``: tf.string ``(B,)`` encoded images → detections in original pixels."""
        count = tf.shape(images)[0]
        prepared = self._prepare_batch(
            lambda i: prepare_image(decode_image(images[i], i), self.image_size), count
        )
        return self._detect(*prepared)

    def serve_images(self, images):
        """``images``: uint8 ``(B, H, W, 3)`` → detections in original pixels."""
        count = tf.shape(images)[0]
        prepared = self._prepare_batch(lambda i: prepare_image(images[i], self.image_size), count)
        return self._detect(*prepared)

    def metadata(self):
        """Class names, category ids and the class-names asset's path."""
        # Returning the asset's path makes the SavedModel carry the file.
        return {
            "class_names": self.class_names,
            "category_ids": self.category_ids,
            "class_names_file": self.class_names_file.asset_path,
        }


def next_version(export_dir: str) -> int:
    """1 + the largest integer sub-directory of ``export_dir`` (1 if none)."""
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()] if os.path.isdir(export_dir) else []
    return max(versions, default=0) + 1


def export_saved_model(
    model,
    export_dir: str,
    version: int | None = None,
    *,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    image_size: int | None = None,
    warmup_images: Sequence[bytes] | None = None,
) -> str:
    """Writes ``export_dir/<version>/``, a SavedModel for TF Serving.

    Signatures:

    * ``serving_default``: ``images`` tf.string ``[None]`` of encoded
      JPEG/PNG/GIF/BMP/WebP bytes (any sizes);
    * ``serving_images``: ``images`` uint8 ``[None, None, None, 3]``;
    * ``metadata``: no input; ``class_names``, ``category_ids`` and
      ``class_names_file`` (the asset's path once loaded).

    Both detection signatures decode, resize and pad as the evaluation
    pipeline does, run the model, decode and NMS, and map boxes back to each
    original image. Outputs: ``detection_boxes`` float32 ``[B, D, 4]`` xyxy
    original pixels, ``detection_scores`` float32 ``[B, D]``,
    ``detection_classes`` int64 ``[B, D]`` (dataset category ids, -1 past
    ``num_detections``), ``num_detections`` int32 ``[B]``.

    The class names also travel as ``assets/class_names.tsv``, and
    ``assets.extra/tf_serving_warmup_requests`` holds a warm-up request.

    Args:
        model: a :class:`keras_retina.RetinaNet`.
        export_dir: the directory TF Serving watches.
        version: integer version; default one more than the largest present.
        class_names: name per contiguous class (default ``"class_<i>"``).
        category_ids: dataset id per class (default ``0..C-1``).
        image_size: square input size (default: the size the model was
            built with, else 512).
        warmup_images: encoded images for the warm-up request (default one
            generated 64x64 JPEG).

    Returns:
        The path of the version directory.

    Example:
        >>> import os, tempfile
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16,
        ...                      head_channels=16, num_head_convs=1)
        >>> _ = model(np.zeros((1, 128, 128, 3), "float32"))   # build it at its input size
        >>> export_dir = tempfile.mkdtemp()
        >>> path = export_saved_model(model, export_dir, class_names=["cat", "dog"])
        >>> os.path.relpath(path, export_dir), sorted(os.listdir(path))
        ('1', ['assets', 'assets.extra', 'fingerprint.pb', 'saved_model.pb', 'variables'])
        >>> read_class_names(path)
        (['cat', 'dog'], [0, 1])

        TF Serving then serves ``export_dir``, e.g.
        ``docker run -p 8501:8501 -v <export_dir>:/models/retinanet -e
        MODEL_NAME=retinanet tensorflow/serving``.
    """
    num_classes = model.num_classes
    class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    category_ids = list(category_ids) if category_ids is not None else list(range(num_classes))
    if len(class_names) != num_classes or len(category_ids) != num_classes:
        raise ValueError(
            f"export_saved_model: the model has {num_classes} classes but got {len(class_names)} "
            f"class_names and {len(category_ids)} category_ids."
        )
    image_size = int(image_size or _built_image_size(model) or 512)
    version = next_version(export_dir) if version is None else int(version)
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise FileExistsError(f"export_saved_model: {path} already exists; pick another version.")

    # tf.saved_model.save on a tf.Module rather than keras.export.ExportArchive:
    # the archive keeps only variables and lookup tables, not the asset file.
    with tempfile.TemporaryDirectory() as scratch:
        asset_path = write_class_names(os.path.join(scratch, CLASS_NAMES_ASSET), class_names, category_ids)
        detector = InferenceModule(model, image_size, class_names, category_ids, asset_path)
        signatures = {
            "serving_default": tf.function(
                detector.serve_encoded, input_signature=[tf.TensorSpec([None], tf.string, name="images")]
            ),
            "serving_images": tf.function(
                detector.serve_images,
                input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
            ),
            "metadata": tf.function(detector.metadata, input_signature=[]),
        }
        tf.saved_model.save(detector, path, signatures=signatures)
    write_warmup_requests(path, warmup_images or [_sample_jpeg()])
    return path


def write_warmup_requests(saved_model_path: str, encoded_images: Sequence[bytes], model_name: str = "retinanet") -> str:
    """Writes ``assets.extra/tf_serving_warmup_requests`` (PredictionLog records).

    TF Serving replays these at load, so the first real request does not pay
    for graph initialisation.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # noqa: PLC0415

    extra = os.path.join(saved_model_path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    filename = os.path.join(extra, "tf_serving_warmup_requests")
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default")
    )
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(list(encoded_images), dtype=tf.string))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(filename) as writer:
        writer.write(log.SerializeToString())
    return filename


def write_class_names(path: str, class_names: Sequence[str], category_ids: Sequence[int]) -> str:
    """Writes ``category_id<TAB>name`` per class to ``path`` (the SavedModel asset's format); returns ``path``."""
    with open(path, "w") as f:
        f.writelines(f"{cid}\t{name}\n" for cid, name in zip(category_ids, class_names))
    return path


def read_class_names(saved_model_path: str) -> tuple[list[str], list[int]]:
    """Reads the class names and category ids from an exported SavedModel's asset file."""
    with open(os.path.join(saved_model_path, "assets", CLASS_NAMES_ASSET)) as f:
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    return [name for _, name in rows], [int(cid) for cid, _ in rows]


def _built_image_size(model) -> int | None:
    input_shape = compat.built_input_shape(model)
    if input_shape and input_shape[1] and input_shape[1] == input_shape[2]:
        return int(input_shape[1])
    return None


def _sample_jpeg() -> bytes:
    image = np.full((64, 64, 3), 127, np.uint8)
    return tf.io.encode_jpeg(image).numpy()
