"""The inputs the fuzz campaigns found, reduced by hand: each is now a clear error naming the file and the field."""

import collections
import json
import os
import pickle
import struct
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzing  # noqa: F401  (puts tests/ on the path)
import pth_files

from keras_retina.data import make_shapes_dataset
from keras_retina.data.coco_annotations import CocoAnnotations, CocoFormatError
from keras_retina.data.yolo import YoloFormatError, YoloSource, write_yolo_dataset
from keras_retina.pretrained.pth import CheckpointError, read_pth, write_pth


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(str(tmp_path_factory.mktemp("shapes")), num_images=2, seed=1, image_size=(64, 96),
                               verbose=False)


def _coco(shapes):
    with open(shapes.annotation_file) as f:
        return json.load(f)


def _write(tmp_path, text):
    path = str(tmp_path / "instances.json")
    with open(path, "w") as f:
        f.write(text if isinstance(text, str) else json.dumps(text))
    return path


# ------------------------------------------------------------------ COCO JSON

def test_coco_json_nested_past_the_json_readers_recursion_limit(shapes, tmp_path):
    """Was RecursionError out of json.loads."""
    path = _write(tmp_path, '{"images": ' + "[" * 100_000 + "]" * 100_000 + ', "annotations": [], "categories": []}')
    with pytest.raises(CocoFormatError, match=r"instances\.json.*nests lists or objects deeper"):
        CocoAnnotations(path, shapes.image_dir)


@pytest.mark.parametrize("image_id", [[1], {"a": 1}])
def test_annotation_with_an_unhashable_image_id(shapes, tmp_path, image_id):
    """Was TypeError (unhashable type: 'list') when counting the skipped image."""
    coco = _coco(shapes)
    coco["annotations"][0]["image_id"] = image_id
    path = _write(tmp_path, coco)
    with pytest.raises(CocoFormatError, match=r"instances\.json.*field 'image_id'"):
        CocoAnnotations(path, shapes.image_dir)
    annotations = CocoAnnotations(path, shapes.image_dir, skip_invalid=True)
    assert annotations.stats.invalid_annotations == 1


@pytest.mark.parametrize("annotation_id", ["x", None, 1.5, float("nan"), float("inf"), 2**70, [1], True])
def test_annotation_whose_id_is_not_a_64_bit_integer(shapes, tmp_path, annotation_id):
    """Was ValueError / TypeError / OverflowError out of np.asarray(annotation ids, int64)."""
    coco = _coco(shapes)
    coco["annotations"][0]["id"] = annotation_id
    path = _write(tmp_path, coco)
    with pytest.raises(CocoFormatError, match=r"instances\.json: annotation id .*field 'id' = .*expected an integer \(64-bit\)"):
        CocoAnnotations(path, shapes.image_dir)
    assert CocoAnnotations(path, shapes.image_dir, skip_invalid=True).stats.invalid_annotations == 1


@pytest.mark.parametrize("field", ["height", "width", "id"])
def test_image_size_or_id_past_int64(shapes, tmp_path, field):
    """Was OverflowError out of math.isfinite on an int of 400 digits."""
    coco = _coco(shapes)
    coco["images"][0][field] = 10**400
    path = _write(tmp_path, coco)
    with pytest.raises(CocoFormatError, match=rf"instances\.json: .*field '{field}' is 1000.*expected an integer"):
        CocoAnnotations(path, shapes.image_dir)


def test_bbox_of_huge_integers(shapes, tmp_path):
    """Was OverflowError out of math.isfinite(sum of the bbox)."""
    coco = _coco(shapes)
    coco["annotations"][0]["bbox"] = [10**400, 0, 10, 10]
    path = _write(tmp_path, coco)
    with pytest.raises(CocoFormatError, match=r"instances\.json: annotation id .*field 'bbox'.*4 finite numbers"):
        CocoAnnotations(path, shapes.image_dir)


# ------------------------------------------------------------------ YOLO

def test_data_yaml_nested_past_the_yaml_readers_recursion_limit(shapes, tmp_path):
    """Was RecursionError out of yaml.compose."""
    data_yaml = write_yolo_dataset(str(tmp_path / "yolo"), {"train": shapes, "val": shapes})
    with open(data_yaml) as f:
        text = f.read()
    with open(data_yaml, "w") as f:
        f.write(text.replace("names:", "names: " + "[" * 20_000 + "]" * 20_000 + "\nignored:"))
    with pytest.raises(YoloFormatError, match=r"data\.yaml: nests lists or mappings deeper"):
        YoloSource(data_yaml, "train")


# ------------------------------------------------------------------ .pth

def test_pickle_declaring_gigabytes_allocates_only_what_the_file_holds(tmp_path):
    """A 2 GiB BINBYTES length in a 100-byte legacy file: the C unpickler allocated it before reading."""
    path = str(tmp_path / "bomb.pth")
    with open(path, "wb") as f:
        for value in (pth_files.MAGIC_NUMBER, pth_files.PROTOCOL_VERSION, {}):
            pickle.dump(value, f, protocol=2)
        f.write(b"\x80\x02B" + struct.pack("<I", 2**31 - 1) + b"only a few bytes")  # BINBYTES, 2 GiB declared
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"bomb\.pth: .*main pickle is malformed.*truncated"):
            read_pth(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_encrypted_zip_entry(tmp_path):
    """Was RuntimeError ('password required for extraction') out of zipfile."""
    path = str(tmp_path / "model.pth")
    write_pth(path, {"w": np.ones((2, 2), np.float32)})
    with open(path, "rb") as f:
        data = bytearray(f.read())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local and central headers
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + flag_offset] |= 0x1
            start += 4
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(CheckpointError, match=r"model\.pth: entry .* is encrypted"):
        read_pth(path)


def test_zip_of_an_unknown_version(tmp_path):
    """Was NotImplementedError ('zip file version 17.8') out of zipfile."""
    path = str(tmp_path / "model.pth")
    pth_files.write_zip(path, collections.OrderedDict(w=pth_files.tensor(np.zeros(3, np.float32))))
    with open(path, "rb") as f:
        data = bytearray(f.read())
    central = data.find(b"PK\x01\x02")
    data[central + 6] = 178  # version needed to extract: 17.8
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(CheckpointError, match=r"model\.pth: a broken zip archive.*zip file version"):
        read_pth(path)
    assert zipfile.is_zipfile(path)


@pytest.mark.parametrize("field", ["path", "train"])
def test_data_yaml_path_with_a_lone_surrogate(shapes, tmp_path, field):
    """Was UnicodeEncodeError out of tf.io.gfile.isdir: YAML's "\\ud800" escape makes a string no path can hold."""
    data_yaml = write_yolo_dataset(str(tmp_path / "yolo"), {"train": shapes, "val": shapes})
    with open(data_yaml) as f:
        text = f.read()
    with open(data_yaml, "w") as f:
        f.write(text.replace(f"{field}: ", f'{field}: "x\\ud800"\nold_{field}: ', 1))
    with pytest.raises(YoloFormatError, match=rf"data\.yaml line \d+ field '{field}': 'x\\ud800' is not a path"):
        YoloSource(data_yaml, "train")


def test_data_yaml_path_with_a_nul_character(shapes, tmp_path):
    """Was RecursionError out of tf.io.gfile.walk (campaign seed 2027, case 3538): TensorFlow cut the path at
    the NUL, so the root was the yaml's folder and each subfolder listed it again."""
    data_yaml = write_yolo_dataset(str(tmp_path / "yolo"), {"train": shapes, "val": shapes})
    with open(data_yaml) as f:
        text = f.read()
    with open(data_yaml, "w") as f:
        f.write(text.replace("path: .", 'path: "\\0"'))
    with pytest.raises(YoloFormatError, match=r"data\.yaml line \d+ field 'path': '\\x00' is not a path .*NUL"):
        YoloSource(data_yaml, "train")


def test_image_list_line_with_a_nul_character(shapes, tmp_path):
    """A list line 'a.jpg<NUL>x' would have read a.jpg, which the line does not name."""
    data_yaml = write_yolo_dataset(str(tmp_path / "yolo"), {"train": shapes, "val": shapes})
    root = os.path.dirname(data_yaml)
    image = min(os.listdir(os.path.join(root, "images", "train")))
    with open(os.path.join(root, "train.txt"), "w") as f:
        f.write(f"images/train/{image}\nimages/train/{image}\0.png\n")
    with open(data_yaml) as f:
        text = f.read()
    with open(data_yaml, "w") as f:
        f.write(text.replace("train: images/train", "train: train.txt"))
    with pytest.raises(YoloFormatError, match=r"train\.txt line 2: .* is not a path .*NUL"):
        YoloSource(data_yaml, "train")
