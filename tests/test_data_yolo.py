"""YOLO-format datasets (keras_retina/data/yolo.py): data.yaml, label files, the same examples as COCO JSON.

Small generated data only: a shapes dataset converted with
``write_yolo_dataset``, and hand-written datasets of a few PNGs.
"""

import hashlib
import io
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import encode_png
from PIL import Image

import keras_retina as kr
from keras_retina import config as config_lib
from keras_retina.data import run_data, yolo
from keras_retina.data.yolo import YoloFormatError, YoloSource, write_yolo_dataset, yolo_dataset
from keras_retina.evaluation import evaluate_model


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A shapes dataset as COCO JSON, and the same written as YOLO: ``(splits, data_yaml)``."""
    directory = tmp_path_factory.mktemp("shapes")
    splits = kr.data.make_shapes_splits(directory / "coco", num_train=4, num_val=8, seed=3, image_size=(64, 64),
                                        verbose=False)
    return splits, write_yolo_dataset(directory / "yolo", splits)


def _dataset(root, labels, images=None, yaml_text=None, split="val"):
    """A hand-made YOLO dataset under ``root``: 40 x 80 PNGs named by ``labels``' keys; returns the data.yaml."""
    os.makedirs(root / "images" / split, exist_ok=True)
    os.makedirs(root / "labels" / split, exist_ok=True)
    for name in labels if images is None else images:
        contents = (images or {}).get(name) or encode_png(np.full((40, 80, 3), 90, np.uint8))
        (root / "images" / split / name).write_bytes(contents)
    for name, text in labels.items():
        if text is not None:
            (root / "labels" / split / (os.path.splitext(name)[0] + ".txt")).write_text(text)
    path = root / "data.yaml"
    path.write_text(yaml_text or f"path: .\ntrain: images/{split}\nval: images/{split}\nnames: [cat, dog]\n")
    return str(path)


# ------------------------------------------------------- same as COCO JSON


def test_element_spec_equals_coco_jsons(shapes):
    splits, data_yaml = shapes
    for skip_invalid in (False, True):
        coco = kr.data.coco_json_dataset(splits["val"].annotation_file, splits["val"].image_dir, skip_invalid=skip_invalid)
        assert yolo_dataset(data_yaml, "val", skip_invalid=skip_invalid).element_spec == coco.element_spec


def test_shapes_round_trip_gives_the_coco_boxes_classes_and_pixels(shapes):
    splits, data_yaml = shapes
    for split in ("train", "val"):
        coco = kr.data.CocoJsonSource(splits[split].annotation_file, splits[split].image_dir)
        source = YoloSource(data_yaml, split)
        assert source.class_names == coco.class_names and source.category_ids == (0, 1, 2, 3, 4)
        by_name = {coco.image_record(i).file_name: i for i in coco.image_ids}
        coco_examples = {int(e["image_id"]): e for e in coco.dataset().as_numpy_iterator()}
        examples = list(source.dataset().as_numpy_iterator())
        assert len(examples) == coco.num_images and sum(len(e["classes"]) for e in examples) > 0
        for example in examples:
            name = os.path.basename(source.image_record(int(example["image_id"])).file_name)
            want = coco_examples[by_name[name]]
            # 6 decimals of a 64-pixel side: within 64 * 5e-7 pixels, float32 rounding aside
            np.testing.assert_allclose(example["boxes"], want["boxes"], atol=1e-4)
            np.testing.assert_array_equal(example["classes"], want["classes"])
            np.testing.assert_array_equal(example["image"], want["image"])
            assert not example["is_crowd"].any()


class _LookupDetector:
    """A "model" whose detections are looked up by the image's pixels: the same image, the same detections.

    ``detect_function`` is all that :func:`keras_retina.evaluation.evaluate_model` calls.
    """

    def __init__(self, table):
        self.table = table

    def detect_function(self):
        def detect(images):
            rows = [self.table[_key(image)] for image in images.numpy()]
            return {key: tf.constant(np.stack([row[key] for row in rows])) for key in rows[0]}

        return detect


def _key(image):
    return hashlib.sha1(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()


def _noisy_detections(pipeline, num_classes, seed=0, rows=12):
    """Per image: its ground truth jittered, some with the wrong class, and false positives, with random scores."""
    rng, table = np.random.default_rng(seed), {}
    for images, y in pipeline:
        for image, boxes, classes in zip(images.numpy(), y["boxes"].numpy(), y["classes"].numpy()):
            boxes, classes = boxes[classes >= 0], classes[classes >= 0]
            sizes = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
            boxes = boxes + rng.uniform(-0.12, 0.12, boxes.shape) * sizes  # IoU from about 0.6 to 1
            classes = np.where(rng.random(len(classes)) < 0.2, (classes + 1) % num_classes, classes)
            extra = rows - len(boxes)
            corners = rng.uniform(0, 40, (extra, 2))
            boxes = np.concatenate([boxes, np.concatenate([corners, corners + rng.uniform(8, 24, (extra, 2))], 1)])
            classes = np.concatenate([classes, rng.integers(0, num_classes, extra)])
            scores = np.concatenate([rng.uniform(0.3, 1.0, rows - extra), rng.uniform(0.0, 0.7, extra)])
            table[_key(image)] = {"boxes": boxes.astype(np.float32), "scores": scores.astype(np.float32),
                                  "classes": classes.astype(np.int32), "num_detections": np.int32(rows)}
    return table


def test_same_images_as_coco_json_and_as_yolo_give_the_same_ap(shapes):
    splits, data_yaml = shapes
    common = {"image_size": 64, "batch_size": 2, "skip_invalid": False}
    as_coco = run_data.RunData(config_lib.DataConfig(
        dataset="coco_json", train_annotations=splits["train"].annotation_file, train_images=splits["train"].image_dir,
        val_annotations=splits["val"].annotation_file, val_images=splits["val"].image_dir, **common))
    as_yolo = run_data.RunData(config_lib.DataConfig(dataset="yolo", data_yaml=data_yaml, **common))
    assert as_yolo.class_names == as_coco.class_names and as_yolo.category_ids == (0, 1, 2, 3, 4)
    assert as_yolo.num_train_images == as_coco.num_train_images == 4
    model = _LookupDetector(_noisy_detections(as_coco.pipeline("val"), num_classes=5))
    coco_metrics = evaluate_model(model, as_coco.pipeline("val"), as_coco.coco_gt, as_coco.category_ids, verbose=False)
    yolo_metrics = evaluate_model(model, as_yolo.pipeline("val"), as_yolo.coco_gt, as_yolo.category_ids, verbose=False)
    assert 0.1 < coco_metrics["AP"] < 0.9, coco_metrics  # neither all nor nothing found: the boxes are compared
    # APs/APm/APl may differ: COCO's area is the mask's, YOLO's the box's.
    for name in ("AP", "AP50", "AP75", "AR1", "AR10", "AR100"):
        assert abs(yolo_metrics[name] - coco_metrics[name]) < 1e-6, (name, coco_metrics, yolo_metrics)
    np.testing.assert_allclose(list(yolo_metrics["per_class_AP"].values()), list(coco_metrics["per_class_AP"].values()),
                               atol=1e-6)


# ------------------------------------------------------------- the format


def test_names_as_list_and_as_dict_and_path_relative_to_the_yaml(tmp_path):
    labels = {"a.png": "1 0.5 0.5 0.25 0.5\n"}
    data_yaml = _dataset(tmp_path / "ds", labels)
    as_dict = tmp_path / "config" / "dict.yaml"
    os.makedirs(as_dict.parent)
    as_dict.write_text("path: ../ds\ntrain: images/val\nval: images/val\nnames:\n  0: cat\n  1: dog\nnc: 2\n")
    for path in (data_yaml, str(as_dict)):
        source = YoloSource(path, "val")
        assert source.class_names == ("cat", "dog") and source.root == str(tmp_path / "ds")
        np.testing.assert_array_equal(source.image_record(1).boxes, [[30, 10, 50, 30]])
        assert source.image_record(1).file_name == os.path.join("images", "val", "a.png")


def test_image_lists_lists_of_entries_and_grayscale_images(tmp_path):
    gray = encode_png(np.full((40, 80, 1), 50, np.uint8))
    data_yaml = _dataset(tmp_path, {"a.png": "0 0.5 0.5 0.5 0.5\n", "b.png": None}, images={"a.png": None, "b.png": gray})
    (tmp_path / "val.txt").write_text(f"./images/val/b.png\n\n{tmp_path}/images/val/a.png\n")
    (tmp_path / "data.yaml").write_text("train: [images/val, val.txt]\nval: val.txt\nnames: [cat]\n")
    source = YoloSource(data_yaml, "val")
    assert [source.image_record(i).file_name for i in source.image_ids] == ["images/val/b.png", "images/val/a.png"]
    examples = list(source.dataset().as_numpy_iterator())
    assert [e["image"].shape for e in examples] == [(40, 80, 3)] * 2 and [len(e["classes"]) for e in examples] == [0, 1]
    assert YoloSource(data_yaml, "train").num_images == 4  # the folder, then the list


def test_missing_empty_and_blank_label_files_are_images_without_objects(tmp_path):
    data_yaml = _dataset(tmp_path, {"a.png": None, "b.png": "", "c.png": "\n  \n0 0.5 0.5 0.5 0.5\n\n"})
    examples = list(yolo_dataset(data_yaml, "val").as_numpy_iterator())
    assert [len(e["classes"]) for e in examples] == [0, 0, 1]


def test_box_within_a_pixel_of_the_image_is_clipped(tmp_path):
    data_yaml = _dataset(tmp_path, {"a.png": "0 0.5 0.5 1.0000005 1.01\n"})  # 40 x 1.01: 0.2 px over each side
    np.testing.assert_allclose(YoloSource(data_yaml, "val").image_record(1).boxes, [[0, 0, 80, 40]])


def _rotated_jpeg(orientation=6):
    """A 64 x 96 (displayed) JPEG with a red rectangle at xyxy (52, 8, 88, 28), stored sideways with EXIF 6."""
    displayed = np.full((64, 96, 3), 120, np.uint8)
    displayed[8:28, 52:88] = (220, 40, 40)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def test_exif_rotated_image_gets_boxes_in_the_displayed_images_pixels(tmp_path):
    label = f"0 {70 / 96} {18 / 64} {36 / 96} {20 / 64}\n"  # normalised by the displayed 96 x 64
    data_yaml = _dataset(tmp_path, {"a.jpg": label}, images={"a.jpg": _rotated_jpeg()})
    assert Image.open(tmp_path / "images" / "val" / "a.jpg").size == (64, 96)  # stored: 64 wide, 96 high
    source = YoloSource(data_yaml, "val")
    record = source.image_record(1)
    assert (record.width, record.height) == (96, 64)
    np.testing.assert_allclose(record.boxes, [[52, 8, 88, 28]], atol=1e-4)
    example = next(source.dataset().as_numpy_iterator())
    assert example["image"].shape == (64, 96, 3)
    np.testing.assert_allclose(example["image"][11:25, 55:85].reshape(-1, 3).mean(0), (220, 40, 40), atol=8)


# ------------------------------------------------------------- bad input

BAD_LINES = [
    ("0 0.5 0.5 0.2", "4 fields"),
    ("0 0.5 0.5 0.2 0.2 0.1", "6 fields"),
    ("0 0.1 0.1 0.3 0.1 0.3 0.3", "polygon"),
    ("0 0.5 abc 0.2 0.2", "field 'y_center' = 'abc'"),
    ("0 nan 0.5 0.2 0.2", "field 'x_center' = 'nan'"),
    ("2 0.5 0.5 0.2 0.2", "field 'class' = '2'"),
    ("-1 0.5 0.5 0.2 0.2", "field 'class' = '-1'"),
    ("0.5 0.5 0.5 0.2 0.2", "field 'class' = '0.5'"),
    ("0 0.5 0.5 0 0.2", "field 'width' = '0'"),
    ("0 0.5 0.5 0.2 -0.1", "'height' = '-0.1'"),
    ("0 0.95 0.5 0.2 0.2", "leaves the normalised [0, 1] image"),
    ("0 40 20 10 10", "pixels?"),
]


@pytest.mark.parametrize("line, message", BAD_LINES, ids=[m for _, m in BAD_LINES])
def test_invalid_label_line_names_file_line_and_field(tmp_path, line, message):
    data_yaml = _dataset(tmp_path, {"a.png": "0 0.5 0.5 0.1 0.1\n", "b.png": f"1 0.5 0.5 0.2 0.2\n{line}\n"})
    with pytest.raises(YoloFormatError) as error:
        YoloSource(data_yaml, "val")
    text = str(error.value)
    assert f"{tmp_path}/labels/val/b.txt line 2" in text and message in text and "skip_invalid" in text, text
    assert isinstance(error.value, kr.data.CocoFormatError)


@pytest.mark.parametrize("line, message", BAD_LINES[:3], ids=[m for _, m in BAD_LINES[:3]])
def test_invalid_label_line_skips_its_image_and_is_counted(tmp_path, line, message):
    data_yaml = _dataset(tmp_path, {"a.png": "0 0.5 0.5 0.1 0.1\n", "b.png": f"{line}\n1 0.5 0.5 0.2 0.2\n{line}\n"})
    source = YoloSource(data_yaml, "val", skip_invalid=True)
    assert source.image_ids == (1,)
    assert (source.stats.invalid_annotations, source.stats.images_skipped_at_load) == (2, 1)
    assert "b.txt line 1" in source.stats.reasons[0] and "b.txt line 3" in source.stats.reasons[1]
    assert [int(e["image_id"]) for e in source.dataset()] == [1]


def test_missing_listed_image_and_label_file_without_image_are_named_or_counted(tmp_path):
    data_yaml = _dataset(tmp_path, {"a.png": "0 0.5 0.5 0.1 0.1\n"})
    (tmp_path / "labels" / "val" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.2 0.2\n")
    (tmp_path / "labels" / "val" / "classes.txt").write_text("cat\ndog\n")  # LabelImg's class list: not a label
    with pytest.raises(FileNotFoundError, match=r"label file .*/labels/val/ghost.txt has no image: no .*/images/val/ghost"):
        YoloSource(data_yaml, "val")
    source = YoloSource(data_yaml, "val", skip_invalid=True)
    assert source.image_ids == (1,) and source.stats.invalid_annotations == 2 and len(source.stats.reasons) == 1

    (tmp_path / "labels" / "val" / "ghost.txt").unlink()
    (tmp_path / "val.txt").write_text("images/val/a.png\nimages/val/missing.png\n")
    (tmp_path / "data.yaml").write_text("train: val.txt\nval: val.txt\nnames: [cat, dog]\n")
    with pytest.raises(FileNotFoundError, match=r"images/val/missing.png \(listed at .*/val.txt line 2\) does not exist"):
        YoloSource(data_yaml, "val")
    source = YoloSource(data_yaml, "val", skip_invalid=True)
    assert source.image_ids == (1,) and source.stats.images_skipped_at_load == 1


def test_text_files_beside_images_without_a_labels_folder_are_labels_or_left_alone(tmp_path):
    os.makedirs(tmp_path / "val")
    (tmp_path / "val" / "a.png").write_bytes(encode_png(np.full((40, 80, 3), 90, np.uint8)))
    (tmp_path / "val" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "val" / "notes.txt").write_text("exported by hand\n")  # not in a labels folder: not an orphan label
    (tmp_path / "data.yaml").write_text("train: val\nval: val\nnames: [cat]\n")
    source = YoloSource(tmp_path / "data.yaml", "val")
    np.testing.assert_array_equal(source.image_record(1).boxes, [[20, 10, 60, 30]])


def test_unreadable_and_undecodable_images_are_named_or_counted(tmp_path):
    data_yaml = _dataset(tmp_path, {"a.png": None, "b.jpg": None, "c.tif": None},
                         images={"a.png": None, "b.jpg": b"not an image", "c.tif": b"II*\x00"})
    with pytest.raises(YoloFormatError, match=r"image file .*/images/val/b.jpg \(image_id 2\) is invalid: not an image"):
        YoloSource(data_yaml, "val")
    source = YoloSource(data_yaml, "val", skip_invalid=True)
    assert source.image_ids == (1,) and source.stats.images_skipped_at_load == 2
    assert "c.tif: TensorFlow decodes only" in source.stats.reasons[1]


def test_oversized_label_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(yolo, "MAX_LABEL_BYTES", 100)
    data_yaml = _dataset(tmp_path, {"a.png": "0 0.5 0.5 0.1 0.1\n" * 10})
    with pytest.raises(YoloFormatError, match=r"labels/val/a.txt is over 100 bytes"):
        YoloSource(data_yaml, "val")


@pytest.mark.parametrize(
    "yaml_text, error, message",
    [
        ("train: [images/val\nval: x\n", YoloFormatError, r"data.yaml line 2: not YAML \(expected .,. or .\]., but got .:.\)"),
        ("- a\n- b\n", YoloFormatError, r"holds a YAML list; expected a mapping"),
        ("train: images/val\nval: images/val\n", YoloFormatError, r"no field 'names'"),
        ("train: images/val\nnames: [a]\n", YoloFormatError, r"no field 'val'"),
        ("val: images/val\nnames: [a]\n", YoloFormatError, r"no field 'train'"),
        ("train: images/val\nval: images/val\nnames: [a, b]\nnc: 3\n", YoloFormatError,
         r"data.yaml line 4 field 'nc': nc = 3 but 'names' has 2"),
        ("train: images/val\nval: images/val\nnames: {}\n", YoloFormatError, r"line 3 field 'names': \[\]; expected"),
        ("train: images/val\nval: images/val\nnames: {1: a, 2: b}\n", YoloFormatError,
         r"line 3 field 'names': the keys \[1, 2\] are not the class ids 0 .. 1"),
        ("train: images/val\nval: images/nope\nnames: [a]\n", FileNotFoundError,
         r"data.yaml line 2 field 'val': 'images/nope' .* is neither a folder"),
        ("path: nowhere\ntrain: images/val\nval: images/val\nnames: [a]\n", FileNotFoundError,
         r"line 1 field 'path': the dataset root .*nowhere is not a directory"),
    ],
)
def test_bad_data_yaml_is_named_with_line_and_field(tmp_path, yaml_text, error, message):
    data_yaml = _dataset(tmp_path, {"a.png": None}, yaml_text=yaml_text)
    with pytest.raises(error, match=message):
        YoloSource(data_yaml, "val")


def test_missing_data_yaml_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_yaml=.*nope.yaml' does not exist"):
        yolo_dataset(tmp_path / "nope.yaml")


# ------------------------------------------------------------- the wiring


def test_config_and_flags_take_a_data_yaml(tmp_path):
    from keras_retina.cli import flags

    with pytest.raises(ValueError, match="--data_yaml"):
        config_lib.validate(config_lib.ExperimentConfig(data=config_lib.DataConfig(dataset="yolo")))
    config = flags.config_from_flags({"dataset": "yolo", "data_yaml": "d/data.yaml", "experiment": "cpu_small"})
    assert (config.data.dataset, config.data.data_yaml) == ("yolo", "d/data.yaml")
    assert flags.config_from_flags({"dataset": "yolo", "data_yaml": "d/data.yaml"}).name == "finetune_coco"


def test_run_data_counts_skipped_yolo_images_and_reports_them(tmp_path, caplog):
    data_yaml = _dataset(tmp_path, {"a.png": "0 0.5 0.5 0.1 0.1\n", "b.png": "0 0.5 0.5\n"})
    data = run_data.RunData(config_lib.DataConfig(dataset="yolo", data_yaml=data_yaml, skip_invalid=True,
                                                  image_size=64, batch_size=1))
    assert data.coco_gt.getImgIds() == [1] and data.split("val").stats.invalid_annotations == 1
    with caplog.at_level(logging.WARNING):
        data.report_skipped()
    assert "val split: 1 images skipped" in caplog.text and "b.txt line 1" in caplog.text
