"""One detector interface for every exported file, one implementation per runtime, and their COCO evaluation.

:class:`Detector` is the interface; :func:`open_detector` picks the
implementation from the path:

========================================  ====================================================
path                                      detector
========================================  ====================================================
directory holding ``saved_model.pb``      :class:`SavedModelDetector` (TensorFlow)
``*.tflite``                              :class:`keras_retina.deploy.litert.LiteRTDetector`
``*.onnx``                                :class:`keras_retina.deploy.onnx.OnnxDetector`
``*.xml``                                 ``keras_retina.deploy.openvino.OpenVINODetector``
========================================  ====================================================

:func:`evaluate_detector` scores any of them on an evaluation pipeline with
the COCO metric, as ``main.py --mode=evaluate --model=FILE`` does (it and
:func:`check_image`, the input check every detector runs, live in
:mod:`keras_retina.deploy.litert`, the first file runtime, and are
exported here).

Example:
    >>> detector = open_detector("runs/shapes/export/model.onnx")   # doctest: +SKIP
    >>> out = detector(image)   # uint8 (S, S, 3), S = detector.image_size  # doctest: +SKIP
    >>> out["detection_boxes"].shape, out["num_detections"]          # doctest: +SKIP
    ((1, 100, 4), array([2], dtype=int32))
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

from keras_retina.deploy.litert import LiteRTDetector, check_image, evaluate_detector
from keras_retina.deploy.onnx import OnnxDetector

#: What :func:`open_detector` accepts, for its error message.
ACCEPTED_KINDS = (
    "a SavedModel directory (saved_model.pb inside)",
    "a .tflite file",
    "a .onnx file",
    "an OpenVINO .xml file",
)


@runtime_checkable
class Detector(Protocol):
    """An exported detector: one image in, the exported model's detections out.

    Attributes:
        path: the file (or SavedModel directory) it runs.
        image_size: ``S``, the square input size in pixels.
        class_names, category_ids: per contiguous class (lists).
        min_size, max_size: the shorter-side resize rule callers apply before
            the ``S x S`` input (:func:`keras_retina.deploy.requests.prepare_image`),
            or None (fit ``S``).

    Call args:
        image: uint8 ``(S, S, 3)`` or ``(1, S, S, 3)``; anything else is a ValueError.

    Returns:
        dict of NumPy arrays: ``detection_boxes`` float32 ``(1, D, 4)`` xyxy
        input pixels, ``detection_scores`` float32 ``(1, D)``,
        ``detection_classes`` int64 ``(1, D)`` dataset category ids (-1 past
        the detections), ``num_detections`` int32 ``(1,)``.

    Example:
        >>> isinstance(open_detector("model.onnx"), Detector)   # doctest: +SKIP
        True
    """

    path: str
    image_size: int
    class_names: list
    category_ids: list
    min_size: int | None
    max_size: int | None

    def __call__(self, image) -> dict: ...


def open_detector(path: str, num_threads: int = 2) -> Detector:
    """The detector for an exported file, chosen by its kind.

    Args:
        path: a SavedModel version directory, a ``.tflite``, a ``.onnx`` or an
            OpenVINO ``.xml`` file.
        num_threads: CPU threads of the runtime (LiteRT, ONNX Runtime,
            OpenVINO; a SavedModel uses TensorFlow's own pools).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is none of the accepted kinds (named in the message).

    Example:
        >>> open_detector("model.pt")
        Traceback (most recent call last):
        ...
        ValueError: open_detector: model.pt is not a model this project exports; accepted: a SavedModel directory (saved_model.pb inside), a .tflite file, a .onnx file, an OpenVINO .xml file.
    """
    path = os.fspath(path)
    kind = _kind(path)
    if kind is None:
        raise ValueError(
            f"open_detector: {path} is not a model this project exports; accepted: {', '.join(ACCEPTED_KINDS)}."
        )
    if not os.path.exists(path):
        raise FileNotFoundError(f"open_detector: no such file or directory: {path}")
    if kind == "saved_model":
        return SavedModelDetector(path)
    if kind == "tflite":
        return LiteRTDetector(path, num_threads=num_threads)
    if kind == "onnx":
        return OnnxDetector(path, num_threads=num_threads)
    from keras_retina.deploy.openvino import OpenVINODetector  # noqa: PLC0415

    return OpenVINODetector(path, num_threads=num_threads)


def _kind(path: str) -> str | None:
    if os.path.isdir(path):
        return "saved_model" if os.path.exists(os.path.join(path, "saved_model.pb")) else None
    return {".tflite": "tflite", ".onnx": "onnx", ".xml": "openvino"}.get(os.path.splitext(path)[1].lower())


class SavedModelDetector:
    """Runs a SavedModel from :func:`keras_retina.deploy.saved_model.export_saved_model` with TensorFlow.

    It calls the SavedModel's ``serving_images`` signature (uint8 pixels;
    ``serving_default`` takes encoded bytes, :meth:`detect_encoded`). That
    graph resizes every image itself: an ``S x S`` image is kept as it is,
    so the boxes are in the input's pixels as for the other detectors. A
    SavedModel exported with a shorter-side rule (``min_size``, e.g.
    converted torchvision weights) would resize a prepared canvas once
    more, so it takes each image at its own size instead, uint8 ``(H, W,
    3)`` or ``(1, H, W, 3)``, and answers in that image's pixels:
    ``resizes_itself`` is then True (``--mode=evaluate`` feeds it the
    validation images unresized).

    Args:
        path: the SavedModel's version directory (``saved_model.pb`` inside).

    Attributes:
        path, image_size, class_names, category_ids, min_size, max_size:
        from its ``metadata`` signature.

    Example:
        >>> detector = SavedModelDetector("runs/shapes/export/1")   # doctest: +SKIP
        >>> detector(np.zeros((detector.image_size,) * 2 + (3,), np.uint8))["num_detections"]   # doctest: +SKIP
        array([0], dtype=int32)
    """

    def __init__(self, path: str):
        import tensorflow as tf  # noqa: PLC0415

        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise FileNotFoundError(f"SavedModelDetector: {path} holds no saved_model.pb.")
        self.path = path
        self._tf = tf
        self.loaded = tf.saved_model.load(path)
        missing = [name for name in ("serving_default", "serving_images", "metadata") if name not in self.loaded.signatures]
        if missing:
            raise ValueError(
                f"SavedModelDetector: {path} has no signature(s) {missing} (a SavedModel written by export_saved_model)."
            )
        meta = {key: value.numpy() for key, value in self.loaded.signatures["metadata"]().items()}
        self.class_names = [name.decode("utf-8") for name in meta["class_names"]]
        self.category_ids = [int(c) for c in meta["category_ids"]]
        self.image_size = int(meta["image_size"])
        self.min_size = int(meta["min_size"]) or None
        self.max_size = int(meta["max_size"]) or None
        self.input_shape = (1, self.image_size, self.image_size, 3)
        # The NMS settings its graph was built with, as the other runtimes' files record them.
        self.inference_settings = {
            key: meta[key].item() for key in ("score_threshold", "nms_iou_threshold", "class_agnostic_nms",
                                               "soft_nms_sigma") if key in meta
        }

    @property
    def resizes_itself(self) -> bool:
        """True when the SavedModel resizes by a shorter-side rule: it then takes images at their own size."""
        return self.min_size is not None

    def __call__(self, image) -> dict:
        if not self.resizes_itself:
            return self.detect_original(check_image(image, self.input_shape, self.path, "SavedModelDetector"))
        image = np.asarray(image)
        batched = image[None] if image.ndim == 3 else image
        if image.dtype != np.uint8 or batched.ndim != 4 or batched.shape[0] != 1 or batched.shape[-1] != 3:
            raise ValueError(
                f"SavedModelDetector: {self.path} (resize rule {self.min_size}, {self.max_size}) takes one uint8 "
                f"image (H, W, 3) or (1, H, W, 3) at its own size, got {image.dtype} {image.shape}."
            )
        return self.detect_original(batched)

    def detect_original(self, images) -> dict:
        """uint8 ``(B, H, W, 3)`` images of any size → detections in their pixels (``serving_images``)."""
        out = self.loaded.signatures["serving_images"](images=self._tf.constant(np.asarray(images, np.uint8)))
        return {key: value.numpy() for key, value in out.items()}

    def detect_encoded(self, encoded) -> dict:
        """``(B,)`` encoded JPEG/PNG/... bytes → detections in the original pixels (``serving_default``)."""
        out = self.loaded.signatures["serving_default"](images=self._tf.constant(encoded, self._tf.string))
        return {key: value.numpy() for key, value in out.items()}


__all__ = [
    "ACCEPTED_KINDS",
    "Detector",
    "LiteRTDetector",
    "OnnxDetector",
    "SavedModelDetector",
    "check_image",
    "evaluate_detector",
    "open_detector",
]
