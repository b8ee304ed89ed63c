"""SavedModel export for TF Serving: encoded images in, final detections in original pixels out.

:func:`export_saved_model` writes the SavedModel; :class:`InferenceModule`
is its serving graph. What a request goes through before the model (the
limits, the header checks, decoding, resize and pad) is in
:mod:`keras_retina.deploy.requests`; the class-name asset's format in
:mod:`keras_retina.deploy.class_names`.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Sequence

import numpy as np
import tensorflow as tf

from keras_retina import compat
from keras_retina.data.pipeline import check_resize_rule, shorter_side_size, to_original_pixels
from keras_retina.deploy.class_names import CLASS_NAMES_FILE, resolve_classes, write_class_names
from keras_retina.deploy.requests import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_LIMIT,
    check_encoded_images,
    check_limit,
    check_pixel_images,
    decode_image,
    prepare_image,
)
from keras_retina.model.backbones import zero_pixel


class InferenceModule(tf.Module):
    """The serving graph: decoding, resize and pad, the model, NMS, and the mapping back.

    What the SavedModel's signatures run; ``main.py --mode=predict`` calls
    the same methods in-process, so both give the same detections.

    Args:
        model: a built :class:`keras_retina.RetinaNet`.
        image_size: the square input size in pixels.
        class_names, category_ids: per contiguous class.
        asset_path: a file listing ``category_id<TAB>name`` per class.
        max_pixels: the most pixels (width x height) of a request image; a
            larger one is refused before it is decoded (see
            :func:`~keras_retina.deploy.requests.check_encoded_images`).
        max_batch: the most images in one request.
        min_size, max_size: the shorter-side resize rule of published COCO
            weights (torchvision: 800, 1333), or None to fit ``image_size``.
            With a rule, each request's batch runs on its own canvas, as
            torchvision batches: the largest resized height and width, each
            rounded up to a multiple of :data:`SIZE_DIVISIBLE`, padded with
            the pixel the backbone normalises to 0 (torchvision pads with 0
            after normalising); ``image_size`` only bounds it.

    Example:
        >>> import os, tempfile
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16,
        ...                      head_channels=16, num_head_convs=1)
        >>> asset = write_class_names(os.path.join(tempfile.mkdtemp(), CLASS_NAMES_FILE),
        ...                           ["cat", "dog"], [17, 18])
        >>> module = InferenceModule(model, 128, ["cat", "dog"], [17, 18], asset)
        >>> jpeg = tf.io.encode_jpeg(np.zeros((60, 80, 3), np.uint8))
        >>> out = module.serve_encoded(tf.stack([jpeg]))
        >>> {name: tuple(value.shape) for name, value in out.items()}   # boxes in the 80 x 60 image
        {'detection_boxes': (1, 100, 4), 'detection_scores': (1, 100),
         'detection_classes': (1, 100), 'num_detections': (1,)}
    """

    def __init__(
        self,
        model,
        image_size: int,
        class_names: Sequence[str],
        category_ids: Sequence[int],
        asset_path: str,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_batch: int = DEFAULT_MAX_BATCH,
        min_size: int | None = None,
        max_size: int | None = None,
    ):
        super().__init__()
        check_resize_rule(min_size, max_size, image_size)
        self.min_size, self.max_size = min_size, max_size
        self.pad_pixel = tf.constant(zero_pixel(model.backbone_name), tf.float32)
        self.max_pixels = check_limit("max_pixels", max_pixels, MAX_PIXELS_LIMIT)
        self.max_batch = check_limit("max_batch", max_batch, 2**31 - 1)
        self.model = model
        self.class_names_file = tf.saved_model.Asset(asset_path)
        self.image_size = int(image_size)
        self.category_ids = tf.constant(np.asarray(category_ids, np.int64))
        self.class_names = tf.constant(list(class_names))

    def _detect(self, images, scales, image_shapes, valid_shapes=None):
        """``valid_shapes``: ``(B, 2)`` each image's extent on the canvas (the shorter-side rule), or None."""
        self._capture_model_variables()
        # An empty request skips the model (some CPU kernels reject a batch of 0).
        detections = tf.cond(
            tf.shape(images)[0] > 0,
            lambda: self.model.detect(images, valid_shapes),
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
        images, scales, image_shapes = tf.map_fn(images_uint8_list_fn, tf.range(count), fn_output_signature=spec)
        if self.min_size is None:
            return images, scales, image_shapes, None
        canvas, valid_shapes = self._batch_canvas(images, image_shapes)
        return canvas, scales, image_shapes, valid_shapes

    def _batch_canvas(self, images, image_shapes):
        """The batch cut to its own canvas and padded with the backbone's zero pixel (the shorter-side rule).

        Returns:
            ``(canvas, valid_shapes)``: float32 ``(B, canvas_h, canvas_w, 3)``
            and each image's resized ``(height, width)`` on it, ``(B, 2)``.
        """
        resized_h, resized_w = shorter_side_size(
            image_shapes[:, 0], image_shapes[:, 1], self.min_size, self.max_size
        )  # (B,) each
        resized_h, resized_w = tf.cast(resized_h, tf.int32), tf.cast(resized_w, tf.int32)
        canvas_h = _round_up(tf.reduce_max(resized_h), SIZE_DIVISIBLE)
        canvas_w = _round_up(tf.reduce_max(resized_w), SIZE_DIVISIBLE)
        images = images[:, :canvas_h, :canvas_w, :]  # (B, canvas_h, canvas_w, 3)
        rows = tf.range(canvas_h)[None, :, None] < resized_h[:, None, None]  # (B, canvas_h, 1)
        cols = tf.range(canvas_w)[None, None, :] < resized_w[:, None, None]  # (B, 1, canvas_w)
        inside = tf.logical_and(rows, cols)[..., None]  # (B, canvas_h, canvas_w, 1)
        return tf.where(inside, images, self.pad_pixel), tf.stack([resized_h, resized_w], axis=-1)

    def serve_encoded(self, images):
        """``images``: tf.string ``(B,)`` encoded images → detections in original pixels.

        Refuses a request over ``max_batch`` images, or with an image over
        ``max_pixels`` or a malformed header, before decoding anything.
        """
        images = check_encoded_images(images, self.max_pixels, self.max_batch)
        count = tf.shape(images)[0]
        prepared = self._prepare_batch(
            lambda i: prepare_image(decode_image(images[i], i), self.image_size, self.min_size, self.max_size), count
        )
        return self._detect(*prepared)

    def serve_images(self, images):
        """``images``: uint8 ``(B, H, W, 3)`` → detections in original pixels (same limits)."""
        images = check_pixel_images(images, self.max_pixels, self.max_batch)
        count = tf.shape(images)[0]
        prepared = self._prepare_batch(
            lambda i: prepare_image(images[i], self.image_size, self.min_size, self.max_size), count
        )
        return self._detect(*prepared)

    def metadata(self):
        """Class names, category ids, the class-names asset's path and the request limits (int64)."""
        # Returning the asset's path makes the SavedModel carry the file.
        return {
            "class_names": self.class_names,
            "category_ids": self.category_ids,
            "class_names_file": self.class_names_file.asset_path,
            "max_pixels": tf.constant(self.max_pixels, tf.int64),
            "max_batch": tf.constant(self.max_batch, tf.int64),
            # The resize rule: shorter side min_size, longer at most max_size (0, 0: fit image_size).
            "image_size": tf.constant(self.image_size, tf.int64),
            "min_size": tf.constant(self.min_size or 0, tf.int64),
            "max_size": tf.constant(self.max_size or 0, tf.int64),
            # The NMS options frozen into the graph.
            "class_agnostic_nms": tf.constant(self.model.class_agnostic_nms),
            "soft_nms_sigma": tf.constant(self.model.soft_nms_sigma, tf.float32),
            "nms_iou_threshold": tf.constant(self.model.nms_iou_threshold, tf.float32),
            "score_threshold": tf.constant(self.model.score_threshold, tf.float32),
        }


#: torchvision pads a batch to a multiple of this (``GeneralizedRCNNTransform``'s ``size_divisible``).
SIZE_DIVISIBLE = 32


def _round_up(value, multiple: int):
    return (value + multiple - 1) // multiple * multiple


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
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_batch: int = DEFAULT_MAX_BATCH,
    min_size: int | None = None,
    max_size: int | None = None,
) -> str:
    """Writes ``export_dir/<version>/``, a SavedModel for TF Serving.

    Signatures:

    * ``serving_default``: ``images`` tf.string ``[None]`` of encoded
      JPEG/PNG/GIF/BMP/WebP bytes (any sizes up to ``max_pixels``);
    * ``serving_images``: ``images`` uint8 ``[None, None, None, 3]``;
    * ``metadata``: no input; ``class_names``, ``category_ids``,
      ``class_names_file`` (the asset's path once loaded), and the limits
      ``max_pixels`` and ``max_batch`` (int64 scalars).

    Both detection signatures decode, resize and pad as the evaluation
    pipeline does, run the model, decode and NMS, and map boxes back to each
    original image. Outputs: ``detection_boxes`` float32 ``[B, D, 4]`` xyxy
    original pixels, ``detection_scores`` float32 ``[B, D]``,
    ``detection_classes`` int64 ``[B, D]`` (dataset category ids, -1 past
    ``num_detections``), ``num_detections`` int32 ``[B]``.

    The class names also travel as ``assets/class_names.tsv``, and
    ``assets.extra/tf_serving_warmup_requests`` holds a warm-up request.

    Limits. A compressed image can decode to far more memory than it takes
    on the wire: an 18000 x 18000 one-bit PNG is 39 KB and 972 MB once
    decoded to RGB (one such request took a serving process from 0.6 to
    1.7 GB; twenty at once, a 24 GB TF Serving host), and TensorFlow's
    PNG decoder refuses only 2**29 pixels or more. So ``serving_default`` first
    refuses a request of more than ``max_batch`` images, then reads every
    image's width and height from its header
    (:func:`~keras_retina.data.image_headers.read_image_size`) and
    refuses the request if one is over ``max_pixels`` (a GIF: also if its
    frames together are over ``3 * max_pixels``) or has a malformed
    header, all before any image is decoded. ``serving_images`` applies
    both limits to its pixel batch. A refused request fails with
    InvalidArgument (TF Serving answers 400 / INVALID_ARGUMENT) whose
    message names the limit and the request image (its index, format and
    width x height); the model keeps serving. Images that pass are decoded
    a few at a time (``tf.map_fn``, at most 10 in flight), each resized
    to the model's input in its own iteration: plan for about 10
    ``max_pixels`` images in memory a request.

    Args:
        model: a :class:`keras_retina.RetinaNet`.
        export_dir: the directory TF Serving watches.
        version: integer version; default one more than the largest present.
        class_names: name per contiguous class (default ``"class_<i>"``).
        category_ids: dataset id per class (default ``0..C-1``).
        image_size: square input size (default: the size the model was
            built with, else 512).
        warmup_images: encoded images for the warm-up request (default one
            generated 64x64 JPEG); they must be within the limits, or TF
            Serving's warm-up would fail to load the model.
        max_pixels: the most pixels (width x height) of one request image,
            from 1 to :data:`~keras_retina.deploy.requests.MAX_PIXELS_LIMIT`;
            default 40,000,000 (40 megapixels: more than phone photos and
            most camera photos).
        max_batch: the most images in one request; default 64.
        min_size, max_size: resize by the shorter side (published COCO
            weights: 800, 1333) on a per-request canvas, as torchvision
            does (see :class:`InferenceModule`); None fits ``image_size``.
            ``metadata`` returns them (0 when None) and ``image_size``.

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
        >>> from keras_retina.deploy.class_names import read_class_names
        >>> read_class_names(path)
        (['cat', 'dog'], [0, 1])
        >>> loaded = tf.saved_model.load(path)
        >>> limits = loaded.signatures["metadata"]()
        >>> int(limits["max_pixels"]), int(limits["max_batch"])
        (40000000, 64)
        >>> bomb = tf.io.encode_png(np.zeros((9000, 5000, 1), np.uint8))   # 45 MP in 45 KB
        >>> import re
        >>> try:
        ...     loaded.signatures["serving_default"](images=tf.stack([bomb]))
        ... except tf.errors.InvalidArgumentError as error:   # TF Serving: 400 INVALID_ARGUMENT
        ...     print(re.search(r"request.*before decoding", error.message)[0])
        request image 0 (PNG, 5000 x 9000 pixels) is over the limit of max_pixels=40000000 pixels
        (width x height); refused before decoding

        TF Serving then serves ``export_dir``, e.g.
        ``docker run -p 8501:8501 -v <export_dir>:/models/retinanet -e
        MODEL_NAME=retinanet tensorflow/serving``.
    """
    class_names, category_ids = resolve_classes("export_saved_model", model.num_classes, class_names, category_ids)
    image_size = int(image_size or compat.built_image_size(model) or 512)
    max_pixels = check_limit("max_pixels", max_pixels, MAX_PIXELS_LIMIT)
    max_batch = check_limit("max_batch", max_batch, 2**31 - 1)
    warmup_images = list(warmup_images or [_sample_jpeg()])
    _check_warmup_images(warmup_images, max_pixels, max_batch)
    version = next_version(export_dir) if version is None else int(version)
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise FileExistsError(f"export_saved_model: {path} already exists; pick another version.")

    # tf.saved_model.save on a tf.Module rather than keras.export.ExportArchive:
    # the archive keeps only variables and lookup tables, not the asset file.
    with tempfile.TemporaryDirectory() as scratch:
        asset_path = write_class_names(os.path.join(scratch, CLASS_NAMES_FILE), class_names, category_ids)
        detector = InferenceModule(
            model, image_size, class_names, category_ids, asset_path, max_pixels=max_pixels, max_batch=max_batch,
            min_size=min_size, max_size=max_size,
        )
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
    write_warmup_requests(path, warmup_images)
    return path


def _check_warmup_images(images: Sequence[bytes], max_pixels: int, max_batch: int) -> None:
    """A ValueError unless the warm-up request passes the serving graph's limits."""
    try:
        check_encoded_images(tf.constant(images, tf.string), max_pixels, max_batch)
    except tf.errors.InvalidArgumentError as error:
        found = re.search(r"request.*before decoding", error.message)
        reason = found[0] if found else error.message.strip()
        raise ValueError(
            f"export_saved_model: warmup_images would be refused by the exported model: {reason}."
        ) from None


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


def _sample_jpeg() -> bytes:
    image = np.full((64, 64, 3), 127, np.uint8)
    return tf.io.encode_jpeg(image).numpy()
