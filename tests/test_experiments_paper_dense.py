"""Tests for the paper study's data settings (``experiments.paper_dense``: small objects in clutter, and the wide objects).

The settings are the shapes generator's (``keras_retina.data``); the study relies on them being
deterministic, COCO-like in their imbalance, and leaving the default shapes data alone.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image

from keras_retina.data import shapes


def _files(directory):
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), directory)] = f.read()
    return found


def test_clutter_setting_is_deterministic_and_leaves_the_default_alone(tmp_path):
    setting = shapes.SMALL_OBJECTS_IN_CLUTTER
    a = shapes.make_shapes_dataset(tmp_path / "a", 6, seed=5, verbose=False, **setting)
    b = shapes.make_shapes_dataset(tmp_path / "b", 6, seed=5, verbose=False, **setting)
    assert _files(os.path.dirname(a.annotation_file)) == _files(os.path.dirname(b.annotation_file))
    # The new options at their default values draw and write exactly what the plain call does.
    plain = shapes.make_shapes_dataset(tmp_path / "plain", 6, seed=5, verbose=False)
    explicit = shapes.make_shapes_dataset(
        tmp_path / "explicit", 6, seed=5, verbose=False, min_objects=1,
        size_probabilities=shapes.SIZE_BUCKET_PROBABILITIES, max_clutter=0,
    )
    assert _files(os.path.dirname(plain.annotation_file)) == _files(os.path.dirname(explicit.annotation_file))
    with open(plain.annotation_file) as f:
        assert "setting" not in json.load(f)["info"]["keras_retina_shapes"]
    with open(a.annotation_file) as f:
        assert json.load(f)["info"]["keras_retina_shapes"]["setting"]["max_clutter"] == 16


def _strong_pixels_outside_boxes(files, coco, images=10):
    """Per image: the share of pixels outside every box more than 60 RGB units from the median colour."""
    shares = []
    for image in coco["images"][:images]:
        pixels = np.asarray(Image.open(os.path.join(files.image_dir, image["file_name"])), np.float32)
        outside = np.ones(pixels.shape[:2], bool)
        for a in coco["annotations"]:
            if a["image_id"] == image["id"]:
                x, y, w, h = (int(round(v)) for v in a["bbox"])
                outside[y : y + h, x : x + w] = False
        distance = np.linalg.norm(pixels - np.median(pixels[outside], axis=0), axis=-1)
        shares.append(float((distance[outside] > 60).mean()))
    return shares


def test_clutter_setting_has_few_small_objects_and_unannotated_clutter(tmp_path):
    files = shapes.make_shapes_dataset(tmp_path, 30, seed=1, verbose=False, **shapes.SMALL_OBJECTS_IN_CLUTTER)
    with open(files.annotation_file) as f:
        coco = json.load(f)
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=31)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 2
    assert max(a["bbox"][2] * a["bbox"][3] for a in coco["annotations"]) < 32**2  # all COCO "small"
    # Clutter: pixels outside every box that differ strongly from their image's median colour;
    # without the clutter, (almost) none.
    strong = _strong_pixels_outside_boxes(files, coco)
    assert np.median(strong) > 0.03, strong
    plain = shapes.make_shapes_dataset(tmp_path / "plain", 10, seed=1, verbose=False,
                                       **{**shapes.SMALL_OBJECTS_IN_CLUTTER, "max_clutter": 0})
    with open(plain.annotation_file) as f:
        plain_strong = _strong_pixels_outside_boxes(plain, json.load(f))
    assert np.median(plain_strong) < np.median(strong) / 3, (plain_strong, strong)


@pytest.mark.parametrize(
    "kwargs, message",
    (
        (dict(min_objects=3, max_objects=2), "min_objects"),
        (dict(size_probabilities=(0.5, 0.2, 0.2)), "size_probabilities"),
        (dict(size_probabilities=(1.0, 0.0)), "size_probabilities"),
        (dict(max_clutter=-1), "max_clutter"),
    ),
)
def test_bad_setting_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        shapes.make_shapes_dataset(tmp_path, 2, verbose=False, **kwargs)


def test_write_data_draws_the_named_setting_and_refuses_an_unknown_one(tmp_path):
    from experiments import paper_dense

    splits = paper_dense.write_data(str(tmp_path / "wide"), num_train=2, num_val=1, verbose=False, data="wide")
    with open(splits["train"].annotation_file) as f:
        setting = json.load(f)["info"]["keras_retina_shapes"]["setting"]
    assert setting["size_probabilities"] == [0.5, 0.5, 0.0] and setting["aspect_range"] == [1 / 3, 3.0]
    assert paper_dense.DATASETS["wide"][0] == os.path.join("data", "paper_dense_wide")
    with pytest.raises(ValueError, match=r"Unknown paper_dense data setting 'coco'; known: \['dense', 'wide'\]"):
        paper_dense.write_data(str(tmp_path / "x"), data="coco")
