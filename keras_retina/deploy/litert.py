"""LiteRT (TensorFlow Lite) export with NMS on the device: float32, float16 and int8.

:func:`export_litert` writes one ``.tflite`` file with one signature,
``serving_default``: uint8 images ``(1, S, S, 3)`` at the model's input size
in, and the SavedModel's outputs out (``detection_boxes`` float32 ``(1, D,
4)`` xyxy in input pixels, ``detection_scores`` float32 ``(1, D)``,
``detection_classes`` int64 ``(1, D)`` dataset category ids, -1 past the
detections, ``num_detections`` int32 ``(1,)``). It uses only built-in ops of
LiteRT: no Flex (Select TF) ops, which the LiteRT runtime on the package
registry cannot run, and no custom op. The class names travel inside the
file (:func:`keras_retina.deploy.class_names.read_class_names` reads them);
:class:`LiteRTDetector` runs it (one of :mod:`keras_retina.deploy.runners`' detectors) and
:func:`evaluate_litert` scores it.
"""

from __future__ import annotations

import os
import tempfile
from typing import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_retina import compat
from keras_retina.data.pipeline import check_resize_rule
from keras_retina.deploy.class_names import (
    class_names_zip, read_class_names, read_inference_settings, read_resize_rule, resolve_classes,
)
from keras_retina.model import postprocess

#: Quantization modes of :func:`export_litert`.
QUANTIZATIONS = (None, "float16", "int8")
#: Name scope of the post-processing ops (decoding, NMS): int8 quantization leaves them in float32.
POSTPROCESS_SCOPE = "keras_retina_postprocess"


def export_litert(
    model,
    path: str,
    quantization: str | None = None,
    representative_data: Iterable | None = None,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    image_size: int | None = None,
    num_calibration_images: int = 100,
    min_size: int | None = None,
    max_size: int | None = None,
) -> str:
    """Writes ``model`` as a LiteRT flatbuffer with decoding and NMS inside.

    The graph: uint8 images → the model (its normalisation inside) → per
    pyramid level the ``pre_nms_topk`` best (anchor, class) pairs, decoded
    and clipped (:func:`keras_retina.model.postprocess.decode_levels`, the
    function :meth:`keras_retina.RetinaNet.predict` runs) → class-wise NMS →
    category ids. The detections equal ``predict``'s (float32 within rounding).

    NMS is LiteRT's built-in ``NON_MAX_SUPPRESSION_V5``, made class-wise by
    moving each class's boxes to a region of their own (torchvision's
    ``batched_nms`` trick). Two alternatives were measured and rejected:
    ``combined_non_max_suppression`` needs the Flex delegate, absent from the
    LiteRT runtime on the package registry, and the
    ``TFLite_Detection_PostProcess`` custom op (TF Model Garden's route) drops
    whole classes from its class-wise ("regular") NMS when the interpreter
    runs with more than one thread (ai-edge-litert 2.3.0; on the shapes data,
    2 threads lost every detection of one class, 4 threads of another).

    Quantization:

    * ``None``: float32 throughout.
    * ``"float16"``: weights stored as float16 (half the file), computed in
      float32.
    * ``"int8"``: full-integer quantization of the network, calibrated on
      ``representative_data``: every convolution, ReLU, addition and
      resize and GroupNorm's mean and normalisation run in int8 (GroupNorm's
      squares fall back to float32, as LiteRT has no int8 kernel for them);
      the input cast and the post-processing (decoding, NMS, clipping,
      category ids) stay in float32 — decoding and NMS in int8 cost 0.05 of
      0.12 COCO AP on the shapes data (box corners on a 256-step grid), the
      network in int8 less than 0.002.

    Args:
        model: a built :class:`keras_retina.RetinaNet`.
        path: the ``.tflite`` file to write.
        quantization: one of :data:`QUANTIZATIONS`.
        representative_data: for ``"int8"``, images the model will see
            (uint8 ``(H, W, 3)`` at ``image_size``, or batches
            ``(B, H, W, 3)``); the first ``num_calibration_images`` are used.
        class_names, category_ids: per contiguous class (default
            ``"class_<i>"`` and ``0..C-1``).
        image_size: ``S`` (default: the size the model was built at).
        num_calibration_images: images drawn from ``representative_data``.
        min_size, max_size: the resize rule callers apply before the file's
            square input (shorter side ``min_size``, longer at most
            ``max_size``, on the ``S x S`` canvas), recorded in the file
            (:func:`keras_retina.deploy.class_names.read_resize_rule`); None
            fits ``S``.

    Returns:
        ``path``.

    Example:
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=32, head_channels=32,
        ...                      num_head_convs=1)
        >>> model.build((None, 64, 64, 3))
        >>> path = export_litert(model, os.path.join(tempfile.mkdtemp(), "model.tflite"),
        ...                      class_names=["cat", "dog"])
        >>> read_class_names(path)
        (['cat', 'dog'], [0, 1])
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"export_litert: `quantization` must be one of {QUANTIZATIONS}, got {quantization!r}.")
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "export_litert: int8 quantization needs `representative_data` (images the model will see) "
            "to calibrate its ranges."
        )
    image_size = image_size or compat.built_image_size(model)
    if not image_size:
        raise ValueError(
            "export_litert: `image_size` is needed (the model was not built at a square size), got None."
        )
    check_resize_rule(min_size, max_size, int(image_size))
    class_names, category_ids = resolve_classes("export_litert", model.num_classes, class_names, category_ids)
    module = _LiteRTModule(model, int(image_size), category_ids)
    with tempfile.TemporaryDirectory() as scratch:
        # Through Keras' ExportArchive, as keras.Model.export(format="litert"):
        # the converter then freezes the Keras variables into constants (saved
        # with tf.saved_model.save or from a concrete function they stay
        # resource variables, which int8 calibration refuses).
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", module.serve_fn, input_signature=[module.input_spec])
        archive.write_out(scratch, verbose=False)
        flatbuffer = _convert(scratch, quantization, representative_data, int(image_size), num_calibration_images)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(flatbuffer)
        f.write(class_names_zip(
            class_names, category_ids, {"min_size": min_size, "max_size": max_size},
            inference=model.inference_settings.as_dict(),  # what the file's NMS was built with, for a reader
        ))
    return path


def _convert(saved_model_dir: str, quantization, representative_data, image_size: int, num_images: int) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no Flex ops
    if quantization is None:
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
        return converter.convert()
    # int8: the network in int8, the post-processing left in float32 by
    # TensorFlow's selective quantization (QuantizationDebugger's deny-list):
    # decoding and NMS in int8 cost 0.05 of 0.12 AP on the shapes data, the
    # network in int8 nothing measurable.
    images = _calibration_images(representative_data, image_size, num_images)

    def dataset():
        for image in images:
            yield [image[None]]

    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    calibrated = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=dataset).calibrated_model
    return compat.quantize_except(calibrated, POSTPROCESS_SCOPE)


class _LiteRTModule:
    """The converted function: uint8 ``(1, S, S, 3)`` → detections, post-processing included.

    The ONNX export (:mod:`keras_retina.deploy.onnx`) converts this same
    function; ``nms`` lets it swap in an NMS its runtime can run (the
    signature and returns of :func:`keras_retina.model.postprocess.single_image_nms`).
    """

    def __init__(self, model, image_size: int, category_ids: Sequence[int], nms=postprocess.single_image_nms):
        self.model = model
        self.nms = nms
        self.image_size = image_size
        self.category_ids = np.asarray(category_ids, np.int64)
        self.anchors = model.anchors((image_size, image_size))  # (A, 4) xyxy pixels
        self.anchors_per_level = model.anchor_generator.anchors_per_level((image_size, image_size))
        self.input_spec = tf.TensorSpec((1, image_size, image_size, 3), tf.uint8, name="images")

    def serve_fn(self, images):
        model, size = self.model, self.image_size
        outputs = model(tf.cast(images, tf.float32), training=False)
        cls_logits = tf.cast(outputs["cls_logits"], tf.float32)  # (1, A, C)
        box_deltas = tf.cast(outputs["box_deltas"], tf.float32)  # (1, A, 4)
        with tf.name_scope(POSTPROCESS_SCOPE):  # kept in float32 by int8 quantization
            # Per level: the top pre_nms_topk (anchor, class) pairs, decoded and
            # clipped, as RetinaNet.predict does (the same function).
            boxes, scores, classes = postprocess.decode_levels(
                cls_logits,
                box_deltas,
                self.anchors,
                self.anchors_per_level,
                (size, size),
                pre_nms_topk=model.pre_nms_topk,
                box_coder=model.box_coder,
            )
            boxes, scores, classes = boxes[0], scores[0], classes[0]  # (K, 4) xyxy pixels, (K,), (K,) contiguous
            # The NMS RetinaNet.predict runs with these settings' options (one NonMaxSuppressionV5).
            max_detections = model.max_detections
            settings = model.inference_settings
            selected, selected_scores, valid = self.nms(
                boxes,
                scores,
                classes,
                score_threshold=settings.score_threshold,
                nms_iou_threshold=settings.nms_iou_threshold,
                max_detections=max_detections,
                class_agnostic_nms=settings.class_agnostic_nms,
                soft_nms_sigma=settings.soft_nms_sigma,
            )  # (D,) indices, (D,) scores, () count
            keep = tf.range(max_detections) < valid  # (D,)
            category = tf.gather(tf.constant(self.category_ids), tf.gather(classes, selected))
            return {
                "detection_boxes": tf.where(keep[:, None], tf.gather(boxes, selected), 0.0)[None],  # (1, D, 4)
                "detection_scores": tf.where(keep, selected_scores, 0.0)[None],  # (1, D)
                "detection_classes": tf.where(keep, category, tf.constant(-1, tf.int64))[None],  # (1, D)
                "num_detections": tf.reshape(valid, (1,)),  # (1,)
            }


def _calibration_images(representative_data, image_size: int, count: int) -> list[np.ndarray]:
    """Up to ``count`` uint8 ``(S, S, 3)`` images from ``representative_data`` (images or batches)."""
    images = []
    for item in representative_data:
        item = np.asarray(item)
        for image in item[None] if item.ndim == 3 else item:
            if image.shape != (image_size, image_size, 3):
                raise ValueError(
                    f"export_litert: `representative_data` images must be ({image_size}, {image_size}, 3), "
                    f"got {image.shape}."
                )
            images.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
            if len(images) >= count:
                return images
    if not images:
        raise ValueError("export_litert: `representative_data` yielded no image.")
    return images


class LiteRTDetector:
    """Runs a ``.tflite`` file from :func:`export_litert` with LiteRT's interpreter (``ai_edge_litert``).

    A :class:`keras_retina.deploy.runners.Detector`: ``path``, ``image_size``,
    ``class_names``, ``category_ids``, ``min_size``, ``max_size``.

    Not thread-safe: the interpreter holds one set of input and output
    tensors and LiteRT's ``Interpreter`` must not run in two threads at
    once (wrong outputs or a crash). Give each serving thread its own detector
    (``threading.local()``; each holds its own copy of the file's weights)
    or hold a lock around each call (one request at a time).
    ``benchmarks/load_test.py`` serves with one a thread: answers bit for bit
    those of one request at a time, and resident memory flat over thousands
    of requests (docs/RELIABILITY.md, "Serving under load").

    Args:
        path: the ``.tflite`` file.
        num_threads: CPU threads (XNNPACK).

    Call args:
        image: uint8 ``(S, S, 3)`` or ``(1, S, S, 3)`` at the file's input size (else a ValueError).

    Returns:
        dict of NumPy arrays as the ``serving_default`` signature's outputs.
    """

    def __init__(self, path: str, num_threads: int = 2):
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
        except ImportError as error:
            raise ImportError(
                "Running a .tflite file needs LiteRT: pip install 'keras_retina[litert]' (ai-edge-litert)."
            ) from error
        self.path = path
        self.interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        (self.input_shape,) = [tuple(d["shape"]) for d in self.interpreter.get_input_details()]
        self.image_size = int(self.input_shape[1])
        self.class_names, self.category_ids = read_class_names(path)
        # How a caller resizes an image onto the file's square input (prepare_image's min_size, max_size).
        self.min_size, self.max_size = read_resize_rule(path)
        # The settings the file's NMS was built with (a dict of InferenceSettings' fields).
        self.inference_settings = read_inference_settings(path)

    def __call__(self, image) -> dict:
        return self.runner(images=check_image(image, self.input_shape, self.path, "LiteRTDetector"))

    def op_names(self) -> list[str]:
        """The names of the file's ops (``CONV_2D``, ..., ``NON_MAX_SUPPRESSION_V5``)."""
        return [op["op_name"] for op in self.interpreter._get_ops_details()]  # noqa: SLF001 (no public listing)


def check_image(image, input_shape: tuple, path: str, who: str) -> np.ndarray:
    """``image`` as uint8 ``(1, S, S, 3)``, the input every exported file's detector takes; a ValueError otherwise.

    Args:
        image: uint8 ``(S, S, 3)`` or ``(1, S, S, 3)`` (a NumPy array or anything ``np.asarray`` takes).
        input_shape: ``(1, S, S, 3)``.
        path, who: the model file and the detector's class, named in the error.

    Example:
        >>> check_image(np.zeros((4, 4, 3), np.uint8), (1, 4, 4, 3), "m.tflite", "LiteRTDetector").shape
        (1, 4, 4, 3)
        >>> check_image(np.zeros((4, 4, 3), np.float32), (1, 4, 4, 3), "m.tflite", "LiteRTDetector")
        Traceback (most recent call last):
        ...
        ValueError: LiteRTDetector: m.tflite takes uint8 images (1, 4, 4, 3) or (4, 4, 3), got float32 (4, 4, 3).
    """
    try:
        image = np.asarray(image)
    except ValueError as error:  # a ragged nested list
        raise ValueError(f"{who}: {path} takes uint8 images {tuple(input_shape)}; got no array ({error}).") from None
    batched = image[None] if image.ndim == 3 else image
    if image.dtype != np.uint8 or batched.shape != tuple(input_shape):
        raise ValueError(
            f"{who}: {path} takes uint8 images {tuple(input_shape)} or {tuple(input_shape[1:])}, "
            f"got {image.dtype} {image.shape}."
        )
    return batched


def evaluate_detector(detector, dataset, coco_gt, verbose: bool = False) -> dict:
    """COCO metrics of an exported file's detector on an evaluation pipeline, one image at a time.

    Any :class:`keras_retina.deploy.runners.Detector` (a ``.tflite``, ``.onnx``,
    OpenVINO or SavedModel detector); :mod:`keras_retina.deploy.runners`
    exports it under this name, :func:`evaluate_litert` is its first name.

    Args:
        detector: a detector: ``category_ids`` and a call on uint8 ``(S, S, 3)``.
        dataset: a :func:`keras_retina.data.make_pipeline` evaluation pipeline
            (``training=False``) at the detector's ``image_size`` and resize rule.
        coco_gt: the split's ground truth (``pycocotools.coco.COCO``).
        verbose: COCOeval's printed summary.

    Returns:
        the metrics of :func:`keras_retina.evaluation.coco_evaluate` (``AP``, ``AP50``, ...).

    Example:
        >>> evaluate_detector(LiteRTDetector("model.tflite"), data.pipeline("val"), data.coco_gt)  # doctest: +SKIP
    """
    from keras_retina import evaluation  # noqa: PLC0415
    from keras_retina.data import to_original_pixels  # noqa: PLC0415

    contiguous = {cid: i for i, cid in enumerate(detector.category_ids)}
    results, image_ids = [], []
    for images, y in dataset:
        images = np.clip(np.round(np.asarray(images)), 0, 255).astype(np.uint8)  # (B, S, S, 3)
        outputs = [detector(image) for image in images]
        boxes = np.concatenate([o["detection_boxes"] for o in outputs])  # (B, D, 4) input pixels
        scores = np.concatenate([o["detection_scores"] for o in outputs])
        counts = np.concatenate([o["num_detections"] for o in outputs])
        classes = np.vectorize(lambda cid: contiguous.get(int(cid), 0))(
            np.concatenate([o["detection_classes"] for o in outputs])
        )
        boxes = to_original_pixels(boxes, y["scale"], y["image_shape"]).numpy()
        ids = y["image_id"].numpy()
        image_ids.extend(int(i) for i in ids)
        results.extend(evaluation.detections_to_coco(boxes, scores, classes, counts, ids, detector.category_ids))
    return evaluation.coco_evaluate(coco_gt, results, image_ids=image_ids, verbose=verbose)


def evaluate_litert(detector, dataset, coco_gt, verbose: bool = False) -> dict:
    """COCO metrics of a ``.tflite`` file (or any detector): :func:`evaluate_detector`, kept by this name.

    Example:
        >>> evaluate_litert(LiteRTDetector("model.tflite"), data.pipeline("val"), data.coco_gt)  # doctest: +SKIP
    """
    return evaluate_detector(detector, dataset, coco_gt, verbose=verbose)
