"""Tests for keras_retina.training.backbone_pretraining: the crops, their labels, bad input, and the saved weights."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import keras_retina as kr
from keras_retina.data import shapes as shapes_data
from keras_retina.recipes import shapes, shapes_pretrain
from keras_retina.training import backbone_pretraining


def _write(tmp_path, size, boxes):
    """One black ``size`` image with a white rectangle per box; a COCO JSON naming it."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    for x, y, w, h in boxes:
        pixels[y : y + h, x : x + w] = 255
    os.makedirs(tmp_path / "images", exist_ok=True)
    Image.fromarray(pixels).save(tmp_path / "images" / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": width, "height": height}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": 7, "bbox": list(box), "area": box[2] * box[3], "iscrowd": 0}
            for i, box in enumerate(boxes)
        ],
        "categories": [{"id": 7, "name": "square"}],
    }
    with open(tmp_path / "a.json", "w") as f:
        json.dump(coco, f)
    return str(tmp_path / "a.json"), str(tmp_path / "images")


def test_an_object_crop_holds_the_whole_object_and_background_crops_none(tmp_path):
    annotations, images = _write(tmp_path, (160, 128), [(90, 20, 20, 24)])
    found = backbone_pretraining.crops(annotations, images, background_per_image=3, seed=5)
    assert found["class_names"] == ("square", "background")
    assert found["labels"].tolist() == [0, 1, 1, 1] and found["background_skipped"] == 0
    assert found["images"].shape == (4, 64, 64, 3) and found["images"].dtype == np.uint8
    assert (found["images"][0] == 255).all(axis=-1).sum() == 20 * 24  # every object pixel is in its window
    assert (found["images"][1:] == 0).all()  # background windows touch no object


def test_a_large_object_is_cropped_with_context_and_resized(tmp_path):
    annotations, images = _write(tmp_path, (200, 200), [(10, 30, 100, 80)])
    found = backbone_pretraining.crops(annotations, images, background_per_image=0)
    window = found["images"][0]
    assert window.shape == (64, 64, 3)
    white = (window > 127).all(axis=-1).mean()  # the box's share of a 125-px window: 100 x 80 / 125^2
    assert white == pytest.approx(100 * 80 / 125**2, abs=0.03)


def test_a_background_window_that_finds_no_room_is_counted(tmp_path):
    annotations, images = _write(tmp_path, (96, 96), [(0, 0, 96, 96)])
    found = backbone_pretraining.crops(annotations, images, background_per_image=2)
    assert found["labels"].tolist() == [0] and found["background_skipped"] == 2


def test_an_image_smaller_than_the_crop_is_named(tmp_path):
    annotations, images = _write(tmp_path, (48, 80), [(2, 2, 10, 10)])
    with pytest.raises(ValueError, match=r"a\.json.*'a\.png' is 48x80, smaller than the 64-px crop"):
        backbone_pretraining.crops(annotations, images)


def test_default_experiment_loads_the_shipped_backbone_and_freezes_its_stem():
    config = shapes.config()
    assert config.model.backbone_weights == shapes_pretrain.WEIGHTS_PATH and os.path.exists(shapes_pretrain.WEIGHTS_PATH)
    with open(shapes_pretrain.WEIGHTS_PATH + ".json") as f:
        record = json.load(f)
    assert record["classes"] == list(shapes_data.SHAPE_CLASSES) + ["background"] and record["val_accuracy"] > 0.8
    shipped = kr.build_backbone("tiny", weights=config.model.backbone_weights)
    fresh = kr.build_backbone("tiny")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    assert not np.allclose(shipped(x)[-1], fresh(x)[-1])
    model = kr.RetinaNet(num_classes=5, backbone="tiny", backbone_weights=config.model.backbone_weights)
    frozen = {layer.name for layer in model.backbone.layers if layer.weights and not layer.trainable}
    assert frozen == {"stage1_down", "stage1_gn1", "stage1_conv", "stage1_gn2", "stage2_down", "stage2_gn1", "stage2_conv", "stage2_gn2"}
