"""Deployment: a trained model as a file another runtime serves, and prediction on image files.

* :mod:`~keras_retina.deploy.saved_model`: the SavedModel for TF Serving (:func:`export_saved_model`);
* :mod:`~keras_retina.deploy.litert`: LiteRT ``.tflite`` with NMS on the device (:func:`export_litert`,
  :class:`LiteRTDetector`);
* :mod:`~keras_retina.deploy.openvino`: an OpenVINO IR, float32 or int8, with NMS inside
  (:func:`export_openvino`, :class:`OpenVINODetector`, which runs without TensorFlow);
* :mod:`~keras_retina.deploy.onnx`: ONNX with NMS inside (:func:`export_onnx`), run by
  :class:`OnnxDetector` with ONNX Runtime alone (no TensorFlow);
* :mod:`~keras_retina.deploy.runners`: one detector interface (:class:`Detector`) for every exported
  file, :func:`open_detector` (picks the runtime from the path), :class:`SavedModelDetector`,
  :func:`evaluate_detector` (COCO metrics of any of them);
* :mod:`~keras_retina.deploy.predict`: detections on image files, drawn (:func:`predict_files`);
* :mod:`~keras_retina.deploy.requests`: what every runtime does to a request's images before the
  model: the limits (decompression bombs refused before decoding), decoding, resize and pad;
* :mod:`~keras_retina.deploy.class_names`: the class-name table every export carries
  (:func:`read_class_names` reads a SavedModel's or a ``.tflite`` file's).

A new export format is a module here beside them. ``import keras_retina``
does not load this package: ``kr.export_saved_model`` and
``kr.export_litert`` import it when first used.

Example:
    >>> from keras_retina import deploy
    >>> deploy.litert.QUANTIZATIONS
    (None, 'float16', 'int8')
"""

from keras_retina.deploy import class_names, litert, onnx, openvino, predict, requests, runners, saved_model
from keras_retina.deploy.class_names import read_class_names
from keras_retina.deploy.litert import LiteRTDetector, export_litert
from keras_retina.deploy.openvino import OpenVINODetector, export_openvino
from keras_retina.deploy.onnx import OnnxDetector, export_onnx
from keras_retina.deploy.predict import predict_files
from keras_retina.deploy.runners import Detector, SavedModelDetector, evaluate_detector, open_detector
from keras_retina.deploy.saved_model import export_saved_model

__all__ = [
    "Detector",
    "LiteRTDetector",
    "OnnxDetector",
    "SavedModelDetector",
    "OpenVINODetector",
    "class_names",
    "evaluate_detector",
    "export_litert",
    "export_onnx",
    "export_openvino",
    "export_saved_model",
    "litert",
    "onnx",
    "open_detector",
    "openvino",
    "predict",
    "predict_files",
    "read_class_names",
    "requests",
    "runners",
    "saved_model",
]
