"""ONNX export with decoding and NMS inside, and :class:`OnnxDetector`, which runs it with ONNX Runtime alone.

:func:`export_onnx` writes one ``.onnx`` file (opset :data:`OPSET`): uint8
images ``images`` ``(1, S, S, 3)`` in, the LiteRT file's outputs out
(``detection_boxes`` float32 ``(1, D, 4)`` xyxy in input pixels,
``detection_scores`` float32 ``(1, D)``, ``detection_classes`` int64 ``(1, D)``
dataset category ids, -1 past the detections, ``num_detections`` int32
``(1,)``), float32 or (``quantization="int8"``) with int8 convolutions. The
class names, the resize rule and the inference settings travel in the
model's ``metadata_props`` (:data:`METADATA_KEYS`).

This module imports only the standard library and NumPy at the top (and
``onnxruntime`` when a detector is made): :class:`OnnxDetector` runs where
TensorFlow is not installed, e.g. with this one file copied beside the model.

Example:
    >>> import keras_retina as kr, os, tempfile
    >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16, head_channels=16,
    ...                      num_head_convs=1, backbone_weights=None)
    >>> model.build((None, 64, 64, 3))
    >>> path = export_onnx(model, os.path.join(tempfile.mkdtemp(), "model.onnx"), class_names=["cat", "dog"])
    >>> detector = OnnxDetector(path)
    >>> detector.image_size, detector.class_names, detector.category_ids
    (64, ['cat', 'dog'], [0, 1])
    >>> out = detector(np.zeros((64, 64, 3), np.uint8))
    >>> {name: value.shape for name, value in out.items()}
    {'detection_boxes': (1, 100, 4), 'detection_scores': (1, 100), 'detection_classes': (1, 100), 'num_detections': (1,)}
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Sequence

import numpy as np

#: The ONNX opset of :func:`export_onnx` (ONNX Runtime 1.17 and later run it; OpenVINO reads it too).
OPSET = 17
#: The input's name; the outputs' names (the LiteRT file's and the SavedModel's).
INPUT_NAME = "images"
OUTPUT_NAMES = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
#: ``metadata_props`` keys: the class table (``category_id<TAB>name`` lines, the SavedModel asset's format),
#: the resize rule (JSON ``{"min_size", "max_size"}``), the inference settings (JSON), the input size.
METADATA_KEYS = ("class_names", "resize", "inference_settings", "image_size")
#: Quantization modes of :func:`export_onnx`.
QUANTIZATIONS = (None, "int8")


def export_onnx(
    model,
    path: str,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    image_size: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    quantization: str | None = None,
    representative_data=None,
    num_calibration_images: int = 100,
) -> str:
    """Writes ``model`` as an ONNX file with decoding and class-wise NMS inside.

    The graph is the LiteRT export's serving function
    (:class:`keras_retina.deploy.litert._LiteRTModule`: uint8 images → the
    model → per-level top-k, decoding and clipping → NMS → category ids)
    converted by tf2onnx, so its detections equal ``model.predict``'s (float32
    within rounding), with the model's NMS options: ``class_agnostic_nms``
    and ``soft_nms_sigma`` as set when exporting.

    Converter: tf2onnx from the serving ``tf.function``. Keras'
    ``model.export(format="onnx")`` (tf2onnx underneath on TensorFlow)
    exports only ``model.call``, the raw head outputs, without the
    post-processing. Hard NMS becomes ONNX ``NonMaxSuppression``; ONNX has no
    soft-NMS and tf2onnx 1.17 does not refuse one: its check
    ``int(soft_nms_sigma) == 0`` truncates any sigma below 1 to 0 and
    silently converts to hard NMS at the given IoU threshold (1.0 for
    soft-NMS: nothing suppressed). So with ``soft_nms_sigma > 0`` the graph
    runs :func:`soft_nms_loop` instead, the same Gaussian soft-NMS in plain
    ops (an ONNX ``Loop``).

    Args:
        model: a built :class:`keras_retina.RetinaNet`.
        path: the ``.onnx`` file to write.
        class_names, category_ids: per contiguous class (default
            ``"class_<i>"`` and ``0..C-1``).
        image_size: ``S`` (default: the size the model was built at).
        min_size, max_size: the resize rule callers apply before the file's
            square input (see :func:`keras_retina.deploy.litert.export_litert`);
            None fits ``S``.
        quantization: one of :data:`QUANTIZATIONS`. ``"int8"``: ONNX
            Runtime's static quantization (QDQ; int8 weights per channel,
            uint8 activations) of every convolution, calibrated on
            ``representative_data``; the post-processing (decoding, NMS) has
            no convolution and stays float32.
        representative_data: for ``"int8"``, images the model will see
            (uint8 ``(S, S, 3)``, or batches ``(B, S, S, 3)``); the first
            ``num_calibration_images`` are used.
        num_calibration_images: images drawn from ``representative_data``.

    Returns:
        ``path``.

    Raises:
        ImportError: tf2onnx or onnx is not installed (``pip install 'keras_retina[onnx]'``).
        ValueError: an unknown ``quantization``, or ``"int8"`` without ``representative_data``.
    """
    import tensorflow as tf  # noqa: PLC0415  (not needed to run a file: see the module's docstring)

    from keras_retina import compat  # noqa: PLC0415
    from keras_retina.data.pipeline import check_resize_rule  # noqa: PLC0415
    from keras_retina.deploy.class_names import format_class_names, resolve_classes  # noqa: PLC0415
    from keras_retina.deploy.litert import _LiteRTModule  # noqa: PLC0415
    from keras_retina.model import postprocess  # noqa: PLC0415

    if quantization not in QUANTIZATIONS:
        raise ValueError(f"export_onnx: `quantization` must be one of {QUANTIZATIONS}, got {quantization!r}.")
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "export_onnx: int8 quantization needs `representative_data` (images the model will see) to calibrate "
            "its ranges."
        )
    try:
        import onnx  # noqa: PLC0415
        import tf2onnx  # noqa: PLC0415
    except ImportError as error:
        raise ImportError(
            "export_onnx needs tf2onnx and onnx: pip install 'keras_retina[onnx]'."
        ) from error
    image_size = image_size or compat.built_image_size(model)
    if not image_size:
        raise ValueError("export_onnx: `image_size` is needed (the model was not built at a square size), got None.")
    check_resize_rule(min_size, max_size, int(image_size))
    class_names, category_ids = resolve_classes("export_onnx", model.num_classes, class_names, category_ids)
    soft = model.inference_settings.soft_nms_sigma > 0
    module = _LiteRTModule(
        model, int(image_size), category_ids, nms=soft_nms_loop if soft else postprocess.single_image_nms
    )
    serve = tf.function(module.serve_fn, input_signature=[module.input_spec])
    proto, _ = tf2onnx.convert.from_function(serve, input_signature=[module.input_spec], opset=OPSET)
    metadata = {
        "class_names": format_class_names(class_names, category_ids),
        "resize": json.dumps({"min_size": min_size, "max_size": max_size}),
        "inference_settings": json.dumps(model.inference_settings.as_dict()),
        "image_size": str(int(image_size)),
    }
    onnx.helper.set_model_props(proto, metadata)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if quantization is None:
        onnx.save(proto, path)
        return path
    from keras_retina.deploy.litert import _calibration_images  # noqa: PLC0415

    images = _calibration_images(representative_data, int(image_size), num_calibration_images)
    with tempfile.TemporaryDirectory() as scratch:
        float_path = os.path.join(scratch, "float.onnx")
        onnx.save(proto, float_path)
        _quantize_int8(float_path, path, images)
    return path


def _quantize_int8(float_path: str, path: str, images) -> None:
    """ONNX Runtime's static quantization of the convolutions, calibrated on uint8 ``(S, S, 3)`` ``images``."""
    from onnxruntime import quantization as ort_quantization  # noqa: PLC0415

    class Reader(ort_quantization.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{INPUT_NAME: image[None]} for image in images])

        def get_next(self):
            return next(self.feeds, None)

    ort_quantization.quantize_static(
        float_path,
        path,
        Reader(),
        quant_format=ort_quantization.QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],  # the network; decoding and NMS have none and stay float32
        per_channel=True,
        activation_type=ort_quantization.QuantType.QUInt8,
        weight_type=ort_quantization.QuantType.QInt8,
    )


def soft_nms_loop(
    boxes_xyxy,
    scores,
    classes,
    *,
    score_threshold: float,
    nms_iou_threshold: float,
    max_detections: int,
    class_agnostic_nms: bool,
    soft_nms_sigma: float,
):
    """Gaussian soft-NMS in plain TensorFlow ops, for converters without it (ONNX has only hard NMS).

    The contract of :func:`keras_retina.model.postprocess.single_image_nms`
    with ``soft_nms_sigma > 0`` (its ``nms_iou_threshold`` is unused there
    too): greedily the highest current score is selected, and every other
    candidate's score is multiplied by ``exp(-IoU**2 / sigma)``; candidates
    at or below ``score_threshold`` are never selected. This is what
    TensorFlow's ``NonMaxSuppressionV5`` computes (it decays lazily, with
    the same products). Hand-written because no converter maps soft-NMS:
    ``max_detections`` steps of ``O(K)`` each.

    Args:
        boxes_xyxy: ``(K, 4)`` float32 pixels (>= 0).
        scores: ``(K,)`` float32.
        classes: ``(K,)`` int class ids (boxes of different classes never
            interact unless ``class_agnostic_nms``).

    Returns:
        ``(selected (D,) int32, selected_scores (D,) float32, count () int32)``, padded with 0.

    Example:
        >>> boxes = np.array([[0., 0., 10., 10.], [1., 0., 11., 10.]], "float32")
        >>> _, kept, count = soft_nms_loop(boxes, np.array([0.9, 0.8], "float32"), np.array([0, 0]),
        ...     score_threshold=0.05, nms_iou_threshold=0.5, max_detections=3,
        ...     class_agnostic_nms=False, soft_nms_sigma=0.5)
        >>> int(count), [round(float(s), 3) for s in kept]   # 0.8 * exp(-0.818**2 / 0.5)
        (2, [0.9, 0.21, 0.0])
    """
    import tensorflow as tf  # noqa: PLC0415

    boxes = tf.convert_to_tensor(boxes_xyxy, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    if not class_agnostic_nms:
        span = tf.reduce_max(boxes) + 1.0 if boxes.shape[0] != 0 else 1.0
        boxes = boxes + (tf.cast(classes, tf.float32) * span)[:, None]  # a region per class, as single_image_nms
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (K,)
    threshold = tf.constant(score_threshold, tf.float32)
    live = tf.where(scores > threshold, scores, tf.zeros_like(scores))  # (K,) current scores, 0 = gone
    slots = tf.range(max_detections)

    def step(i, live, selected, selected_scores, count):
        best = tf.argmax(live, output_type=tf.int32)
        best_score = live[best]
        take = best_score > threshold
        box = boxes[best]
        width = tf.maximum(tf.minimum(box[2], boxes[:, 2]) - tf.maximum(box[0], boxes[:, 0]), 0.0)
        height = tf.maximum(tf.minimum(box[3], boxes[:, 3]) - tf.maximum(box[1], boxes[:, 1]), 0.0)
        inter = width * height
        iou = inter / tf.maximum(area[best] + area - inter, 1e-9)
        decayed = live * tf.exp(-tf.square(iou) / soft_nms_sigma)
        decayed = tf.where(tf.range(tf.shape(live)[0]) == best, 0.0, decayed)
        decayed = tf.where(decayed > threshold, decayed, 0.0)
        here = tf.logical_and(slots == i, take)
        return (
            i + 1,
            tf.where(take, decayed, live),
            tf.where(here, best, selected),
            tf.where(here, best_score, selected_scores),
            count + tf.cast(take, tf.int32),
        )

    _, _, selected, selected_scores, count = tf.while_loop(
        lambda i, *_: i < max_detections,
        step,
        (tf.constant(0), live, tf.zeros((max_detections,), tf.int32), tf.zeros((max_detections,), tf.float32),
         tf.constant(0)),
    )
    return selected, selected_scores, count


def _check_image(image, input_shape: tuple, path: str) -> np.ndarray:
    """``image`` as uint8 ``(1, S, S, 3)``, else a ValueError: :func:`keras_retina.deploy.litert.check_image`'s rule.

    Repeated here (ten lines) so that this file runs without the keras_retina package, whose
    ``__init__`` imports TensorFlow.
    """
    image = np.asarray(image)
    batched = image[None] if image.ndim == 3 else image
    if image.dtype != np.uint8 or batched.shape != tuple(input_shape):
        raise ValueError(
            f"OnnxDetector: {path} takes uint8 images {tuple(input_shape)} or {tuple(input_shape[1:])}, "
            f"got {image.dtype} {image.shape}."
        )
    return batched


class OnnxDetector:
    """Runs a ``.onnx`` file from :func:`export_onnx` with ONNX Runtime (no TensorFlow needed).

    Args:
        path: the ``.onnx`` file.
        num_threads: CPU threads of ONNX Runtime's intra-op pool.

    Attributes:
        path, image_size (``S``), class_names, category_ids, min_size,
        max_size (the resize rule, or None), inference_settings (dict): read
        from the file's metadata.

    Call args:
        image: uint8 ``(S, S, 3)`` or ``(1, S, S, 3)``.

    Returns:
        dict of NumPy arrays: ``detection_boxes`` float32 ``(1, D, 4)`` xyxy
        input pixels, ``detection_scores`` float32 ``(1, D)``,
        ``detection_classes`` int64 ``(1, D)``, ``num_detections`` int32 ``(1,)``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not an ONNX model with this module's
            metadata, or a call's image has the wrong dtype or shape.

    Example:
        >>> detector = OnnxDetector("runs/shapes/export/model.onnx")   # doctest: +SKIP
        >>> detector(image)["num_detections"]                           # doctest: +SKIP
        array([3], dtype=int32)
    """

    def __init__(self, path: str, num_threads: int = 2):
        try:
            import onnxruntime  # noqa: PLC0415
        except ImportError as error:
            raise ImportError("Running a .onnx file needs ONNX Runtime: pip install 'keras_retina[onnx]'.") from error
        if not os.path.isfile(path):
            raise FileNotFoundError(f"OnnxDetector: no such file: {path}")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 (onnxruntime's InvalidProtobuf, Fail, ... derive from Exception only)
            raise ValueError(f"OnnxDetector: {path} is not a readable ONNX model ({error}).") from None
        self.path = path
        (model_input,) = self.session.get_inputs()
        outputs = [o.name for o in self.session.get_outputs()]
        if model_input.name != INPUT_NAME or set(outputs) != set(OUTPUT_NAMES):
            raise ValueError(
                f"OnnxDetector: {path} has input {model_input.name!r} and outputs {outputs}; expected {INPUT_NAME!r} "
                f"and {list(OUTPUT_NAMES)} (a file written by export_onnx)."
            )
        self.input_shape = (1, *model_input.shape[1:])
        self.image_size = int(model_input.shape[1])
        meta = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in ("class_names", "resize") if key not in meta]
        if missing:
            raise ValueError(f"OnnxDetector: {path} has no metadata {missing} (a file written by export_onnx).")
        # The class table's TSV, parsed here as keras_retina.deploy.class_names does (that module's package
        # imports TensorFlow).
        rows = [line.split("\t", 1) for line in meta["class_names"].split("\n") if line.strip()]
        self.class_names = [name for _, name in rows]
        self.category_ids = [int(cid) for cid, _ in rows]
        resize = json.loads(meta["resize"])
        self.min_size, self.max_size = resize.get("min_size"), resize.get("max_size")
        self.inference_settings = json.loads(meta.get("inference_settings", "{}"))

    def __call__(self, image) -> dict:
        image = _check_image(image, self.input_shape, self.path)
        values = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: image})
        return dict(zip(OUTPUT_NAMES, values))
