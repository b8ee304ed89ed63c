"""Tests for keras_retina.training.backbone_pretraining: the crops, their labels, bad input, and the saved weights."""

import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

import keras_retina as kr
from keras_retina.data import shapes as shapes_data
from keras_retina.data.coco_annotations import CocoFormatError
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


def _crops_read_by_hand(annotation_file, image_dir, crop=64, background_per_image=2, context=1.25, seed=0):
    """The crops computed from the raw JSON (``bbox`` as written, images decoded as stored): the reference."""
    with open(annotation_file) as f:
        coco = json.load(f)
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for image in coco["images"]:
        pixels = tf.io.decode_image(tf.io.read_file(os.path.join(image_dir, image["file_name"])), channels=3).numpy()
        height, width = pixels.shape[:2]
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        boxes = [a["bbox"] for a in annotations]
        for annotation in annotations:
            x, y, w, h = annotation["bbox"]
            side = int(min(max(crop, np.ceil(context * max(w, h))), height, width))
            x_low, x_high = max(0, int(np.ceil(x + w)) - side), min(int(x), width - side)
            y_low, y_high = max(0, int(np.ceil(y + h)) - side), min(int(y), height - side)
            x0 = rng.integers(min(x_low, x_high), max(x_low, x_high) + 1)
            y0 = rng.integers(min(y_low, y_high), max(y_low, y_high) + 1)
            window = pixels[y0 : y0 + side, x0 : x0 + side]
            if side != crop:
                window = tf.cast(tf.image.resize(window, (crop, crop), antialias=True) + 0.5, tf.uint8).numpy()
            images.append(window)
            labels.append(label_of[annotation["category_id"]])
        for _ in range(background_per_image):
            for _try in range(50):
                x0, y0 = rng.integers(0, width - crop + 1), rng.integers(0, height - crop + 1)
                if all(x0 >= x + w or x0 + crop <= x or y0 >= y + h or y0 + crop <= y for x, y, w, h in boxes):
                    images.append(pixels[y0 : y0 + crop, x0 : x0 + crop])
                    labels.append(len(categories))
                    break
    return np.stack(images), np.asarray(labels, np.int32)


@pytest.mark.parametrize(
    "seed, setting",
    [(0, {"image_size": (128, 160)}), (3, shapes_data.SMALL_OBJECTS_IN_CLUTTER)],
    ids=["default", "small_objects_in_clutter"],
)
def test_crops_equal_those_read_from_the_raw_json_on_shapes_data(tmp_path, seed, setting):
    files = kr.data.make_shapes_dataset(tmp_path, num_images=6, seed=seed, verbose=False, **setting)
    found = backbone_pretraining.crops(files.annotation_file, files.image_dir, seed=seed)
    images, labels = _crops_read_by_hand(files.annotation_file, files.image_dir, seed=seed)
    assert len(labels) > 6 and 5 in labels and labels.min() < 5  # objects and background windows
    np.testing.assert_array_equal(found["labels"], labels)
    np.testing.assert_array_equal(found["images"], images)
    assert found["images"].shape == (len(labels), 64, 64, 3)
    assert found["class_names"] == (*shapes_data.SHAPE_CLASSES, "background")


def test_crops_equal_those_read_from_the_raw_json_with_fractional_boxes_and_unsorted_categories(tmp_path):
    annotations, images = _write(tmp_path, (170, 150), [(10, 3, 40, 20), (100, 80, 60, 69)])
    with open(annotations) as f:
        coco = json.load(f)
    coco["categories"] = [{"id": 9, "name": "b"}, {"id": 2, "name": "a"}]
    coco["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 9, "bbox": [10.25, 3.5, 40.75, 20.5]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100.1, 80.3, 60.7, 69.6], "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 9, "bbox": [0.3, 90.6, 12.2, 9.9]},
    ]
    with open(annotations, "w") as f:
        json.dump(coco, f)
    found = backbone_pretraining.crops(annotations, images, background_per_image=3, seed=1)
    expected_images, expected_labels = _crops_read_by_hand(annotations, images, background_per_image=3, seed=1)
    assert found["labels"].tolist() == expected_labels.tolist() == [1, 0, 1, 2, 2, 2]
    np.testing.assert_array_equal(found["images"], expected_images)
    assert found["class_names"] == ("a", "b", "background")


def _rewrite(annotations, change):
    with open(annotations) as f:
        coco = json.load(f)
    coco = change(coco)
    with open(annotations, "w") as f:
        json.dump(coco, f)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda coco: coco["images"], r"annotation_file='.*a\.json' holds a JSON list"),
        (lambda coco: {k: v for k, v in coco.items() if k != "categories"}, r"annotation_file='.*a\.json' has no field 'categories'"),
        (lambda coco: {**coco, "images": [{"id": 1, "file_name": "a.png"}]}, r"a\.json: images\[0\] \(id 1\) has no field 'height'"),
        (
            lambda coco: {**coco, "annotations": [{**coco["annotations"][0], "bbox": [2, 2, 0, 10]}]},
            r"a\.json: annotation id 1 \(image_id 1, file .*a\.png\): field 'bbox' = \[2, 2, 0, 10\] has width 0\.0",
        ),
        (
            lambda coco: {**coco, "annotations": [{**coco["annotations"][0], "category_id": 8}]},
            r"a\.json: annotation id 1 \(image_id 1, file .*a\.png\): field 'category_id' = 8 is not an id in 'categories' \[7\]",
        ),
    ],
    ids=["results_list", "no_categories", "image_without_size", "zero_width_box", "unknown_category"],
)
def test_a_malformed_annotation_file_is_a_named_coco_format_error(tmp_path, change, message):
    annotations, images = _write(tmp_path, (96, 96), [(2, 2, 10, 10)])
    _rewrite(annotations, change)
    with pytest.raises(CocoFormatError, match=message):
        backbone_pretraining.crops(annotations, images)


def test_a_missing_image_file_is_named(tmp_path):
    annotations, images = _write(tmp_path, (96, 96), [(2, 2, 10, 10)])
    os.remove(os.path.join(images, "a.png"))
    with pytest.raises(FileNotFoundError, match=r"a\.json: image file .*a\.png \(image_id 1, field 'file_name' = 'a\.png'\) does not exist"):
        backbone_pretraining.crops(annotations, images)


def test_an_image_of_another_size_than_the_json_says_is_named(tmp_path):
    annotations, images = _write(tmp_path, (96, 96), [(2, 2, 10, 10)])
    _rewrite(annotations, lambda coco: {**coco, "images": [{**coco["images"][0], "width": 128}]})
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a\.png \(image_id 1, .*the JSON says 96x128 but the image decodes to 96x96"):
        backbone_pretraining.crops(annotations, images)


def test_a_photo_stored_sideways_is_cropped_upright_as_its_boxes_are_given(tmp_path):
    """EXIF orientation 6: the file holds the picture turned a quarter to the left; the JSON describes it upright."""
    annotations, images = _write(tmp_path, (160, 96), [(100, 30, 24, 40)])
    upright = np.asarray(Image.open(os.path.join(images, "a.png")))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=95, exif=exif)
    assert np.abs(np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(buffer.getvalue())))).astype(int) - upright).max() < 64
    with open(os.path.join(images, "a.jpg"), "wb") as f:
        f.write(buffer.getvalue())
    _rewrite(annotations, lambda coco: {**coco, "images": [{**coco["images"][0], "file_name": "a.jpg"}]})
    found = backbone_pretraining.crops(annotations, images, background_per_image=1)
    assert found["labels"].tolist() == [0, 1]
    assert (found["images"][0] > 127).all(axis=-1).sum() == pytest.approx(24 * 40, rel=0.05)  # the whole object
    assert (found["images"][1] > 127).all(axis=-1).sum() == 0  # and the background window none of it


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


def test_pretrain_saves_the_backbones_weights_and_its_record(tmp_path):
    splits = kr.data.make_shapes_splits(tmp_path / "shapes", num_train=2, num_val=1, verbose=False)
    pair = lambda split: (splits[split].annotation_file, splits[split].image_dir)  # noqa: E731
    weights = str(tmp_path / "weights" / "w.weights.h5")  # its folder does not exist yet
    result = backbone_pretraining.pretrain(pair("train"), pair("val"), weights, steps=2, batch_size=4, verbose=0)
    assert result["classes"] == [*shapes_data.SHAPE_CLASSES, "background"]
    assert result["steps"] == 2 and result["weights"] == weights and os.path.exists(weights)
    assert result["train_crops"] == len(backbone_pretraining.crops(*pair("train"))["labels"])
    assert 0 <= result["train_accuracy"] <= 1 and 0 <= result["val_accuracy"] <= 1
    with open(weights + ".json") as f:
        assert json.load(f) == {**result, "weights": "w.weights.h5"}
    loaded = kr.build_backbone("tiny", weights=weights)
    fresh = kr.build_backbone("tiny")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    assert not np.allclose(loaded(x)[-1], fresh(x)[-1])


def test_shapes_pretrain_main_draws_its_images_then_pretrains(tmp_path):
    """The recipe's script, at 2 steps on 2 + 1 images, in a folder of its own."""
    weights = str(tmp_path / "w.weights.h5")
    record = shapes_pretrain.main(weights, steps=2, directory=str(tmp_path / "data"), num_train=2, num_val=1, verbose=0)
    assert record["classes"][0] == "circle" and record["classes"] == [*shapes_data.SHAPE_CLASSES, "background"]
    assert record["steps"] == 2 and os.path.exists(weights) and os.path.exists(weights + ".json")
    for split, count in (("train", 2), ("val", 1)):
        with open(tmp_path / "data" / split / "annotations.json") as f:
            images = json.load(f)["images"]
        assert len(images) == count
        assert {(image["width"], image["height"]) for image in images} == {(shapes_pretrain.IMAGE_SIZE,) * 2}
