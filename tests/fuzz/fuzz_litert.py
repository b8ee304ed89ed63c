"""Fuzzes the LiteRT input path (``keras_retina.deploy.litert.LiteRTDetector.__call__``): cheap checks only.

A case's bytes describe the argument: byte 0 its kind (an array of some
dtype, a nested list, a ragged list, a string, None, a dict), byte 1 its
shape (the file's ``(S, S, 3)`` or ``(1, S, S, 3)``, or one of several wrong
ones), the rest its values (NaN, infinities, negatives and values past 255
included). The file is a small untrained RetinaNet exported once (64 x 64).
Documented outcomes: the detections (finite boxes inside the image, scores
in [0, 1], ``num_detections`` at most the rows, classes the file's category
ids or -1), or ``ValueError`` naming the ``.tflite`` file. Only uint8 arrays
of the file's shape get past the check; no value is silently converted.

    python -m tests.fuzz.fuzz_litert --cases 10000 --seed 0
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzing

IMAGE = 64
_DTYPES = (np.uint8, np.int8, np.int16, np.int64, np.uint16, np.float16, np.float32, np.float64, np.bool_,
           np.complex64, object, np.str_)


def export_small_model(path: str) -> str:
    """A 64 x 64 tiny RetinaNet (untrained, seeded) as a float32 ``.tflite`` at ``path``."""
    import keras

    import keras_retina as kr
    from keras_retina.deploy.litert import export_litert

    keras.utils.set_random_seed(0)
    model = kr.RetinaNet(num_classes=3, backbone="tiny", fpn_channels=16, head_channels=16, num_head_convs=1)
    model.build((None, IMAGE, IMAGE, 3))
    model.score_threshold = 0.0  # an untrained model's scores are low: keep detections to check
    return export_litert(model, path, class_names=["a", "b", "c"], category_ids=[3, 7, 11])


def argument(data: bytes):
    """The call argument a case's bytes describe."""
    kind, shape_choice = (data[0] if data else 0), (data[1] if len(data) > 1 else 0)
    shapes = ((IMAGE, IMAGE, 3), (1, IMAGE, IMAGE, 3), (IMAGE, IMAGE), (2, IMAGE, IMAGE, 3), (IMAGE, IMAGE, 4),
              (IMAGE, IMAGE + 1, 3), (0,), (), (1, 1, IMAGE, IMAGE, 3), (0, IMAGE, IMAGE, 3), (IMAGE, IMAGE, 1))
    shape = shapes[shape_choice % len(shapes)]
    size = int(np.prod(shape))
    raw = np.frombuffer((data[2:] or b"\0") * (size // max(1, len(data[2:])) + 1), np.uint8)[:size]
    values = raw.astype(np.float64).reshape(shape)
    kind %= 16
    if kind < len(_DTYPES):
        dtype = _DTYPES[kind]
        if dtype in (np.float16, np.float32, np.float64):
            values = np.where(raw.reshape(shape) % 17 == 0, np.nan, values)
            values = np.where(raw.reshape(shape) % 19 == 0, np.inf, values) * np.where(raw.reshape(shape) % 2, -1, 1.3)
        with np.errstate(invalid="ignore", over="ignore"):
            return values.astype(dtype) if dtype is not object else values.astype(np.int64).astype(object)
    if kind == 12:
        return values.astype(np.uint8).tolist()  # a nested list: np.asarray makes int64
    if kind == 13:
        return [values.astype(np.uint8).tolist(), [1, 2]]  # ragged
    if kind == 14:
        return None if shape_choice % 2 else bytes(data[2:])
    return {"images": values.astype(np.uint8)}


def make_check(workdir: str, tflite: str | None = None):
    """``(check, seeds, mutators)``; exports the model under ``workdir`` unless ``tflite`` is given."""
    from keras_retina.deploy.litert import LiteRTDetector

    path = tflite or export_small_model(os.path.join(workdir, "small.tflite"))
    detector = LiteRTDetector(path, num_threads=1)
    rng = random.Random(0)
    seeds = [bytes([kind, shape]) + bytes(rng.randrange(256) for _ in range(64)) for kind in range(16)
             for shape in (0, 1, 2, 5)]

    def check(data: bytes) -> str:
        image = argument(data)
        try:
            out = detector(image)
        except Exception as error:  # noqa: BLE001 (expect_error judges it)
            return fuzzing.expect_error(error, (ValueError,), path)
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.shape not in ((IMAGE, IMAGE, 3), (1, IMAGE, IMAGE, 3)):
            raise fuzzing.Finding(f"accepted {array.dtype} {array.shape}: values converted silently")
        boxes, scores = out["detection_boxes"][0], out["detection_scores"][0]
        classes, count = out["detection_classes"][0], int(out["num_detections"][0])
        if not (np.isfinite(boxes).all() and (boxes >= 0).all() and (boxes <= IMAGE).all()):
            raise fuzzing.Finding(f"boxes outside the {IMAGE} x {IMAGE} input: {boxes[:count]}")
        if not (0 <= count <= len(scores) and ((scores >= 0) & (scores <= 1)).all()):
            raise fuzzing.Finding(f"num_detections {count}, scores {scores[:count]}")
        if not set(classes[:count].tolist()) <= {3, 7, 11} or not (classes[count:] == -1).all():
            raise fuzzing.Finding(f"classes {classes} are not the file's category ids")
        return "ok"

    return check, seeds, (fuzzing.mutate_bytes,)


if __name__ == "__main__":
    sys.exit(fuzzing.main("fuzz_litert", make_check))
