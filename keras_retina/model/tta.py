"""Test-time augmentation: detections of flipped and rescaled copies of the images, merged by NMS.

:func:`predict_tta` runs :meth:`keras_retina.RetinaNet.detect` on each
augmented copy (every scale, with and without a horizontal flip), maps each
copy's boxes back to the input's pixels, and merges all of them with the
model's own NMS (:func:`keras_retina.model.postprocess.select_detections`:
its settings, class-agnostic and soft-NMS included). :class:`TestTimeAugmentation`
wraps a model so that evaluation and prediction code that calls
``detect`` / ``detect_function`` runs the augmented inference unchanged.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from keras_retina.model import postprocess

#: Scales (factors on the input size) when none are given: of the sets measured on the default run's model
#: (docs/BENCHMARKS.md, "Inference options"), the one with the highest AP.
DEFAULT_SCALES = (1.0, 1.25, 1.5)
#: Each copy's sides are rounded to a multiple of this (the stride of P5).
SIZE_MULTIPLE = 32


def _check(scales: Sequence[float], flip: bool) -> tuple[tuple[float, ...], bool]:
    scales = tuple(float(s) for s in scales)
    if not scales or any(not 0.1 <= s <= 4.0 for s in scales):
        raise ValueError(f"`scales` must be factors in [0.1, 4], at least one, got {scales!r}.")
    if not isinstance(flip, bool):
        raise ValueError(f"`flip` must be True or False, got {flip!r}.")
    return scales, flip


def predict_tta(model, images, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True) -> dict:
    """Detections of ``model`` on ``images`` with test-time augmentation.

    Args:
        model: a :class:`keras_retina.RetinaNet`.
        images: ``(B, H, W, 3)`` pixels in [0, 255] (``H, W`` static).
        scales: factors on the input size; each copy is resized to
            ``H * s x W * s`` rounded to multiples of :data:`SIZE_MULTIPLE`
            (its boxes mapped back with the exact ratios).
        flip: also run each scale on the left-right mirrored images.

    Returns:
        the dict of :meth:`keras_retina.RetinaNet.detect`: ``"boxes"``
        float32 ``(B, D, 4)`` xyxy pixels of ``images``, ``"scores"``,
        ``"classes"`` (-1 past ``num_detections``), ``"num_detections"``;
        ``D = model.max_detections``.

    Example:
        >>> import numpy as np, keras_retina as kr
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16, head_channels=16,
        ...                      num_head_convs=1, max_detections=5)
        >>> predict_tta(model, np.zeros((1, 64, 64, 3), "float32"), scales=(1.0, 1.5))["boxes"].shape
        TensorShape([1, 5, 4])
    """
    scales, flip = _check(scales, flip)
    images = tf.cast(tf.convert_to_tensor(images), tf.float32)  # (B, H, W, 3)
    height, width = int(images.shape[1]), int(images.shape[2])
    all_boxes, all_scores, all_classes = [], [], []
    for scale in scales:
        # A multiple of 32, so that the pyramid's levels halve exactly and match their anchors.
        size = (max(round(height * scale / SIZE_MULTIPLE), 1) * SIZE_MULTIPLE,
                max(round(width * scale / SIZE_MULTIPLE), 1) * SIZE_MULTIPLE)
        resized = images if size == (height, width) else tf.image.resize(images, size)
        for mirrored in (False, True) if flip else (False,):
            copy = tf.reverse(resized, axis=[2]) if mirrored else resized
            found = model.detect(copy)
            x1, y1, x2, y2 = tf.unstack(found["boxes"], axis=-1)  # (B, D) each, pixels of the copy
            if mirrored:  # back to the unmirrored copy
                x1, x2 = size[1] - x2, size[1] - x1
            sx, sy = size[1] / width, size[0] / height
            all_boxes.append(tf.stack([x1 / sx, y1 / sy, x2 / sx, y2 / sy], axis=-1))  # (B, D, 4) input pixels
            all_scores.append(found["scores"])
            all_classes.append(found["classes"])
    return postprocess.select_detections(
        tf.concat(all_boxes, axis=1),  # (B, n * D, 4)
        tf.concat(all_scores, axis=1),
        tf.concat(all_classes, axis=1),  # -1 on each copy's padding rows
        model.num_classes,
        model.inference_settings,
    )


class TestTimeAugmentation:
    """A model whose ``detect`` and ``detect_function`` run :func:`predict_tta`; everything else is the model's.

    Lets the evaluation and prediction code (``--mode=evaluate --tta``,
    ``--mode=predict --tta``) use augmented inference without a change.

    Args:
        model: a :class:`keras_retina.RetinaNet`.
        scales, flip: as in :func:`predict_tta`.

    Example:
        >>> import numpy as np, keras_retina as kr
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16, head_channels=16, num_head_convs=1)
        >>> tta = TestTimeAugmentation(model, scales=(1.0,), flip=True)
        >>> tta.num_classes, tta.detect_function()(np.zeros((1, 64, 64, 3), "float32"))["scores"].shape
        (2, TensorShape([1, 100]))
    """

    __test__ = False  # not a pytest test class

    def __init__(self, model, scales: Sequence[float] = DEFAULT_SCALES, flip: bool = True):
        self.model = model
        self.scales, self.flip = _check(scales, flip)
        self._function = None

    def detect(self, images, valid_shapes=None) -> dict:
        if valid_shapes is not None:
            raise ValueError("TestTimeAugmentation: per-image valid shapes (the shorter-side resize rule) are not supported.")
        return predict_tta(self.model, images, self.scales, self.flip)

    def detect_function(self):
        if self._function is None:
            self._function = tf.function(self.detect, reduce_retracing=True)
        return self._function

    def __getattr__(self, name):
        return getattr(self.model, name)
