"""An exported file as a model: sliced inference and flip test-time augmentation on any runtime.

:class:`ExportedModel` gives a :class:`keras_retina.deploy.runners.Detector`
(a SavedModel, ``.tflite``, ``.onnx`` or OpenVINO file) the few things
:class:`keras_retina.model.slicing.SlicedInference` and
:class:`keras_retina.model.tta.TestTimeAugmentation` call on a Keras model:
``detect_function`` on a batch of ``S x S`` images (one runtime call per
image, uint8 as the file takes it), ``num_classes`` and
``inference_settings`` (the file's own, which the merge of tiles or copies
uses). So ``--mode=evaluate --model=model.tflite --slice_size=512`` runs
the tiles through LiteRT. The file's input size is fixed: tiles are resized
onto it, and test-time augmentation can only flip (scale 1.0).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_retina.model.postprocess import InferenceSettings


class ExportedModel:
    """A :class:`~keras_retina.deploy.runners.Detector` with the model interface of sliced inference and TTA.

    Args:
        detector: an opened exported file (:func:`keras_retina.deploy.runners.open_detector`).

    Attributes:
        num_classes: ``len(detector.category_ids)``.
        inference_settings: the file's recorded :class:`~keras_retina.model.postprocess.InferenceSettings`
            (``detector.inference_settings``, a dict, where the runtime reads it), else the paper's defaults.
        image_size: the file's input side ``S``.
        min_size, max_size: the file's resize rule (or None).

    Example:
        >>> from keras_retina.deploy import runners   # doctest: +SKIP
        >>> from keras_retina.model.slicing import SlicedInference   # doctest: +SKIP
        >>> exported = ExportedModel(runners.open_detector("runs/shapes/export/model.onnx"))   # doctest: +SKIP
        >>> sliced = SlicedInference(exported, slice_size=512, image_size=exported.image_size)   # doctest: +SKIP
    """

    def __init__(self, detector):
        self.detector = detector
        self.image_size = int(detector.image_size)
        self.min_size, self.max_size = detector.min_size, detector.max_size  # the file's resize rule
        self.category_ids = [int(c) for c in detector.category_ids]
        self.num_classes = len(self.category_ids)
        recorded = getattr(detector, "inference_settings", None) or {}
        known = {field: recorded[field] for field in InferenceSettings().as_dict() if field in recorded}
        try:
            self.inference_settings = InferenceSettings(**known)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{detector.path}: its recorded inference settings are invalid ({error}).") from None
        self._contiguous = {cid: i for i, cid in enumerate(self.category_ids)}

    def detect(self, images, valid_shapes=None) -> dict:
        """The file's detections on ``images`` ``(B, S, S, 3)`` pixels in [0, 255], as :meth:`RetinaNet.detect` returns them.

        Classes are contiguous (the file's category ids mapped back); tensors.
        """
        if valid_shapes is not None:
            raise ValueError("ExportedModel: per-image valid shapes are not supported; the file resizes by its own rule.")
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"{self.detector.path} takes images of {self.image_size} x {self.image_size} pixels (its input size); "
                f"got a batch of shape {images.shape}. Test-time augmentation of an exported file can only flip "
                "(--tta_scales=1.0)."
            )
        outputs = [self.detector(np.clip(np.round(image), 0, 255).astype(np.uint8)) for image in images]
        classes = np.stack([
            [self._contiguous.get(int(cid), -1) for cid in out["detection_classes"][0]] for out in outputs
        ]).astype(np.int32)
        counts = np.concatenate([np.asarray(out["num_detections"]).reshape(-1) for out in outputs]).astype(np.int32)
        valid = np.arange(classes.shape[1])[None] < counts[:, None]
        return {
            "boxes": tf.constant(np.concatenate([out["detection_boxes"] for out in outputs]).astype(np.float32)),
            "scores": tf.constant(np.concatenate([out["detection_scores"] for out in outputs]).astype(np.float32)),
            "classes": tf.constant(np.where(valid, classes, -1).astype(np.int32)),
            "num_detections": tf.constant(counts),
        }

    def detect_function(self):
        # The runtime is called eagerly, one image at a time.
        return self.detect
