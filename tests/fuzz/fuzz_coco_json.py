"""Fuzzes the COCO instances JSON reader (``keras_retina.data.coco_annotations.CocoAnnotations``).

Seeds: the annotation files ``make_shapes_dataset`` writes (one with a crowd
box added). Mutations: bytes, one JSON node at a time (retyped, removed,
duplicated, huge or non-finite numbers) and deep nesting. Each case is read
with ``skip_invalid`` False and True. Documented outcomes: the records (every
box inside its image, positive size, classes in range), or ``CocoFormatError``
/ ``FileNotFoundError`` naming the annotation file.

    python -m tests.fuzz.fuzz_coco_json --cases 10000 --seed 0
"""

from __future__ import annotations

import json
import os
import random
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzing

from keras_retina.data import make_shapes_dataset
from keras_retina.data.coco_annotations import CocoAnnotations, CocoFormatError


def make_check(workdir: str):
    """``(check, seeds, mutators)`` over a 3-image shapes dataset written under ``workdir``."""
    files = make_shapes_dataset(os.path.join(workdir, "shapes"), num_images=3, seed=1, image_size=(64, 96),
                                verbose=False)
    with open(files.annotation_file, "rb") as f:
        plain = f.read()
    coco = json.loads(plain)
    coco["annotations"].append(dict(coco["annotations"][0], id=999, iscrowd=1))
    seeds = [plain, json.dumps(coco).encode()]
    path = os.path.join(workdir, "case.json")

    def mutate_json(data: bytes, rng: random.Random) -> bytes:
        value = json.loads(data)
        for _ in range(rng.randint(1, 3)):
            value = fuzzing.mutate_tree(value, rng)
        return json.dumps(value).encode()

    def read(skip_invalid: bool):
        try:
            annotations = CocoAnnotations(path, files.image_dir, skip_invalid=skip_invalid)
        except (CocoFormatError, FileNotFoundError, Exception) as error:  # noqa: BLE001 (expect_error judges it)
            return fuzzing.expect_error(error, (CocoFormatError, FileNotFoundError), path)
        for image_id in annotations.image_ids:
            record = annotations.image_record(image_id)
            boxes = record.boxes
            inside = (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= record.width).all() and (
                boxes[:, 3] <= record.height).all()
            if boxes.dtype != np.float32 or not np.isfinite(boxes).all() or not inside:
                raise fuzzing.Finding(f"image {image_id}: boxes {boxes} outside {record.width}x{record.height}")
            if not ((record.classes >= 0) & (record.classes < annotations.num_classes)).all():
                raise fuzzing.Finding(f"image {image_id}: classes {record.classes} out of range")
        return "ok"

    def check(data: bytes) -> str:
        with open(path, "wb") as f:
            f.write(data)
        strict, lenient = read(False), read(True)
        if strict == "ok" and lenient != "ok":
            raise fuzzing.Finding(f"skip_invalid=True raised {lenient} on a file that reads without it")
        return strict if strict == lenient else f"{strict} (skip_invalid: {lenient})"

    return check, seeds, (fuzzing.mutate_bytes, mutate_json, mutate_json, mutate_json, fuzzing.nest_deeply)


if __name__ == "__main__":
    sys.exit(fuzzing.main("fuzz_coco_json", make_check))
