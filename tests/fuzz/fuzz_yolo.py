"""Fuzzes the YOLO-format reader (``keras_retina.data.yolo.YoloSource``): data.yaml, label files, image headers.

Seeds: a 3-image shapes dataset written by ``write_yolo_dataset``. A case is
one file replaced by mutated bytes: its first byte picks which (``Y`` the
data.yaml, ``I`` the first image, else the first label file), the rest is
the content. Mutations: bytes, YAML nodes (retyped, removed, huge numbers,
nesting), label fields (tokens ``float()`` reads oddly: ``nan``, ``1e999``,
``1_0``, Unicode digits). Each case is read with ``skip_invalid`` False and
True. Documented outcomes: the records (boxes inside the image, classes in
range), or ``YoloFormatError`` / ``FileNotFoundError`` naming the file.

    python -m tests.fuzz.fuzz_yolo --cases 10000 --seed 0
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzing

from keras_retina.data import make_shapes_dataset
from keras_retina.data.yolo import YoloFormatError, YoloSource, label_path, write_yolo_dataset

_ODD_TOKENS = ("nan", "-nan", "inf", "1e999", "-0", "0x10", "1_0", "\u0663", "\uff11", "1.5", "2", "-1", "80",
               "0.5", "0.0", "1e-320", "+1", ".5", "5.", "", "1,5", "\x00", "9" * 400)


def make_check(workdir: str):
    """``(check, seeds, mutators)`` over a YOLO dataset written under ``workdir``."""
    files = make_shapes_dataset(os.path.join(workdir, "shapes"), num_images=3, seed=2, image_size=(64, 96),
                                verbose=False)
    data_yaml = write_yolo_dataset(os.path.join(workdir, "yolo"), {"train": files, "val": files})
    images = os.path.join(os.path.dirname(data_yaml), "images", "train")
    image = os.path.join(images, min(os.listdir(images)))
    originals = {}
    for key, path in (("Y", data_yaml), ("I", image), ("L", label_path(image))):
        with open(path, "rb") as f:
            originals[key] = (path, f.read())
    seeds = [key.encode() + content for key, (_, content) in originals.items()]

    def target(data: bytes) -> tuple[str, bytes]:
        key = data[:1].decode("latin-1")
        return (key if key in ("Y", "I") else "L"), data[1:]

    def mutate_yaml(data: bytes, rng: random.Random) -> bytes:
        key, content = target(data)
        if key != "Y":
            return fuzzing.mutate_bytes(data, rng)
        value = yaml.safe_load(content)
        for _ in range(rng.randint(1, 3)):
            value = fuzzing.mutate_tree(value, rng)
        text = yaml.safe_dump(value, allow_unicode=rng.random() < 0.5) if rng.random() < 0.7 else repr(value)
        return b"Y" + text.encode("utf-8", "surrogatepass")

    def mutate_label(data: bytes, rng: random.Random) -> bytes:
        key, content = target(data)
        if key == "I":
            return fuzzing.mutate_bytes(data, rng)
        lines = content.decode("utf-8", "replace").splitlines() or ["0 0.5 0.5 0.1 0.1"]
        index = rng.randrange(len(lines))
        fields = lines[index].split()
        if fields and rng.random() < 0.8:
            fields[rng.randrange(len(fields))] = rng.choice(_ODD_TOKENS)
        else:
            fields = fields[: rng.randrange(len(fields) + 1)] + [rng.choice(_ODD_TOKENS)] * rng.randint(0, 3)
        lines[index] = rng.choice((" ", "\t", "  ")).join(fields)
        return b"L" + rng.choice(("\n", "\r\n", "\r")).join(lines).encode("utf-8", "surrogatepass")

    def read(skip_invalid: bool, needle: str) -> str:
        try:
            source = YoloSource(data_yaml, "train", skip_invalid=skip_invalid)
        except Exception as error:  # noqa: BLE001 (expect_error judges it)
            return fuzzing.expect_error(error, (YoloFormatError, FileNotFoundError), needle)
        for image_id in source.image_ids:
            record = source.image_record(image_id)
            boxes = record.boxes
            inside = (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= record.width).all() and (
                boxes[:, 3] <= record.height).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
            if boxes.dtype != np.float32 or not np.isfinite(boxes).all() or not inside:
                raise fuzzing.Finding(f"image {image_id}: boxes {boxes} outside {record.width}x{record.height}")
            if not ((record.classes >= 0) & (record.classes < source.num_classes)).all():
                raise fuzzing.Finding(f"image {image_id}: classes {record.classes} out of range")
        return "ok"

    def check(data: bytes) -> str:
        for path, content in originals.values():
            with open(path, "wb") as f:
                f.write(content)
        key, content = target(data)
        path = originals[key][0]
        with open(path, "wb") as f:
            f.write(content)
        # A data.yaml error names the yaml; a label or image error names the image (the label file's own name
        # where the label file is at fault).
        needle = data_yaml if key == "Y" else image
        strict, lenient = read(False, needle), read(True, needle)
        if strict == "ok" and lenient != "ok":
            raise fuzzing.Finding(f"skip_invalid=True raised {lenient} on files that read without it")
        return f"{key}: " + (strict if strict == lenient else f"{strict} (skip_invalid: {lenient})")

    mutators = (fuzzing.mutate_bytes, mutate_yaml, mutate_label, mutate_label, fuzzing.nest_deeply)
    return check, seeds, mutators


if __name__ == "__main__":
    sys.exit(fuzzing.main("fuzz_yolo", make_check))
