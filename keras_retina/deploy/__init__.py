"""Deployment: a trained model as a file another runtime serves, and prediction on image files.

* :mod:`~keras_retina.deploy.saved_model`: the SavedModel for TF Serving (:func:`export_saved_model`);
* :mod:`~keras_retina.deploy.litert`: LiteRT ``.tflite`` with NMS on the device (:func:`export_litert`,
  :class:`LiteRTDetector`);
* :mod:`~keras_retina.deploy.predict`: detections on image files, drawn (:func:`predict_files`).

A new export format is a module here beside them. ``import keras_retina``
does not load this package: ``kr.export_saved_model`` and
``kr.export_litert`` import it when first used.

Example:
    >>> from keras_retina import deploy
    >>> deploy.litert.QUANTIZATIONS
    (None, 'float16', 'int8')
"""

from keras_retina.deploy import litert, predict, saved_model
from keras_retina.deploy.litert import LiteRTDetector, export_litert
from keras_retina.deploy.predict import predict_files
from keras_retina.deploy.saved_model import export_saved_model

__all__ = ["LiteRTDetector", "export_litert", "export_saved_model", "litert", "predict", "predict_files", "saved_model"]
