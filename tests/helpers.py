"""Small shared fixtures for model tests: a CPU-sized RetinaNet and toy data."""

import numpy as np

import keras_retina as kr

SMALL_MODEL_KWARGS = dict(num_classes=3, backbone="tiny", fpn_channels=32, head_channels=32, num_head_convs=2)


def small_model(**overrides):
    """A RetinaNet small enough to train in seconds on a CPU."""
    return kr.RetinaNet(**{**SMALL_MODEL_KWARGS, **overrides})


def toy_batch(size=128, seed=0):
    """Two images with coloured rectangles and their boxes (second image has one padding row).

    Returns:
        images float32 (2, size, size, 3) in [0, 255]; y = {"boxes": (2, 2, 4), "classes": (2, 2)}.
    """
    rng = np.random.RandomState(seed)
    images = (rng.rand(2, size, size, 3) * 60).astype("float32")
    boxes = np.array([[[20, 30, 70, 90], [80, 10, 120, 50]], [[40, 40, 100, 80], [0, 0, 0, 0]]], "float32")
    classes = np.array([[0, 2], [1, -1]], "int32")
    for b in range(2):
        for (x1, y1, x2, y2), c in zip(boxes[b], classes[b]):
            if c >= 0:
                images[b, int(y1) : int(y2), int(x1) : int(x2), c] = 255
    return images, {"boxes": boxes, "classes": classes}
