"""keras_retina.evaluation.preflight: each finding on data that has the problem, none on clean data."""

import dataclasses
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from keras_retina.config import DataConfig
from keras_retina.data import RunData, make_shapes_splits
from keras_retina.evaluation import preflight
from keras_retina.model.anchors import AnchorGenerator

CLASSES = ("cat", "dog", "bird")


def _write_coco(directory, boxes_per_image, size=(480, 640), categories=CLASSES):
    """A COCO file whose images are empty files (the reader checks they exist; the check decodes nothing).

    ``boxes_per_image``: per image, a list of ``(bbox as written, category index)``.
    """
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    images, annotations = [], []
    for i, boxes in enumerate(boxes_per_image, start=1):
        name = f"{i:04d}.jpg"
        open(os.path.join(directory, "images", name), "wb").close()
        images.append({"id": i, "file_name": name, "height": size[0], "width": size[1]})
        for bbox, category in boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": category + 1,
                                "bbox": list(bbox), "area": 1.0, "iscrowd": 0})
    path = os.path.join(directory, "annotations.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations,
                   "categories": [{"id": c + 1, "name": n} for c, n in enumerate(categories)]}, f)
    return path, os.path.join(directory, "images")


def _pixel_boxes(num_images, seed=0, size=(480, 640), per_image=3, categories=3, box_range=(60, 200)):
    """Plausible pixel boxes ``[x, y, w, h]`` inside the image, every class used."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_images):
        rows = []
        for j in range(per_image):
            w, h = rng.uniform(*box_range, 2)
            x, y = rng.uniform(0, size[1] - w), rng.uniform(0, size[0] - h)
            rows.append(((round(x, 1), round(y, 1), round(w, 1), round(h, 1)), (i * per_image + j) % categories))
        out.append(rows)
    return out


def _data(tmp_path, train_boxes, val_boxes, size=(480, 640), image_size=512, **config):
    train = _write_coco(str(tmp_path / "train"), train_boxes, size)
    val = _write_coco(str(tmp_path / "val"), val_boxes, size)
    return RunData(DataConfig(dataset="coco_json", train_annotations=train[0], train_images=train[1],
                              val_annotations=val[0], val_images=val[1], image_size=image_size, **config))


def _codes(report, severity=None):
    return {f.code for f in report.findings if severity is None or f.severity == severity}


def _finding(report, code, split=None):
    found = [f for f in report.findings if f.code == code and split in (None, f.split)]
    assert len(found) == 1, (code, report.format())
    return found[0]


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shapes")
    make_shapes_splits(directory, num_train=60, num_val=20, seed=0, image_size=(128, 128), verbose=False)
    return RunData(DataConfig(shapes_dir=str(directory), shapes_num_train=60, shapes_num_val=20,
                              shapes_image_size=128, image_size=128))


def test_shapes_data_is_clean(shapes_data):
    report = preflight.check_data(shapes_data, verbose=False)
    assert report.ok and not report.errors, report.format()
    false_alarms = {"normalised_coordinates", "xyxy_as_xywh", "xywh_as_xyxy", "degenerate_boxes",
                    "boxes_outside_image", "small_boxes_after_resize", "large_images", "too_many_boxes",
                    "class_missing_from_train", "unreadable", "malformed_annotations"}
    assert not _codes(report) & false_alarms, report.format()
    train = report.splits["train"]
    assert train["images"] == train["images_read"] == 60
    assert train["boxes"] == sum(train["boxes_per_class"].values()) > 60
    assert report.anchor_coverage["num_boxes"] == train["boxes"]
    assert report.seconds < 5
    json.dumps(report.to_json())  # serialisable
    assert "0 errors" in report.format().splitlines()[0]


def test_clean_pixel_data_has_no_findings(tmp_path):
    report = preflight.check_data(_data(tmp_path, _pixel_boxes(40), _pixel_boxes(10, seed=1)), verbose=False)
    assert report.findings == [], report.format()
    assert report.format().endswith("No problems found.")


def test_normalised_coordinates_are_an_error_with_the_fix(tmp_path):
    normalised = [[((x / 640, y / 480, w / 640, h / 480), c) for (x, y, w, h), c in rows] for rows in _pixel_boxes(30)]
    report = preflight.check_data(_data(tmp_path, normalised, _pixel_boxes(5)), verbose=False)
    finding = _finding(report, "normalised_coordinates")
    assert finding.severity == "error" and finding.split == "train" and finding.count == 90
    assert "multiply x and width by the image's width" in finding.fix and "--dataset=yolo" in finding.fix
    assert "0001.jpg (image_id 1)" in finding.examples[0]
    assert not report.ok and "normalised_coordinates" not in {f.code for f in report.findings if f.split == "val"}
    # Sizes and anchors of misread boxes are not judged: their advice would mislead.
    assert not _codes(report) & {"small_boxes_after_resize", "anchor_coverage"} and report.anchor_coverage is None
    assert any("normalised_coordinates is fixed" in note for note in report.notes)


def test_corners_in_the_bbox_field_are_named(tmp_path):
    # [x1, y1, x2, y2] written where COCO wants [x, y, width, height]: many boxes leave the image as written.
    corners = [[((x, y, x + w, y + h), c) for (x, y, w, h), c in rows] for rows in _pixel_boxes(30, box_range=(100, 300))]
    report = preflight.check_data(_data(tmp_path, corners, _pixel_boxes(5)), verbose=False)
    assert _finding(report, "unreadable").severity == "error"  # the reader refuses the file
    finding = _finding(report, "xyxy_as_xywh")
    assert finding.severity == "error" and "[x1, y1, x2 - x1, y2 - y1]" in finding.fix
    outside = _finding(report, "boxes_outside_image")
    assert outside.severity == "error" and outside.count == finding.count and "--skip_invalid" in outside.fix
    assert report.splits["train"]["boxes"] == 90  # the lenient read saw every box


def test_degenerate_and_outside_boxes_counted_with_examples(tmp_path):
    train = _pixel_boxes(20)
    train[3].append(((10, 10, 0, 40), 0))  # zero width
    train[4].append(((600, 10, 100, 40), 1))  # leaves the 640-px image by 60 px
    report = preflight.check_data(_data(tmp_path, train, _pixel_boxes(5)), verbose=False)
    degenerate, outside = _finding(report, "degenerate_boxes"), _finding(report, "boxes_outside_image")
    assert (degenerate.count, outside.count) == (1, 1)
    assert degenerate.severity == outside.severity == "error"
    assert degenerate.examples[0].startswith("0004.jpg (image_id 4)") and "[10, 10, 0, 40]" in degenerate.examples[0]
    assert outside.examples[0].startswith("0005.jpg (image_id 5)")
    assert "xyxy_as_xywh" not in _codes(report) and "normalised_coordinates" not in _codes(report)
    # With skip_invalid the reader leaves those images out and counts them: a warning, training can start.
    skipped = preflight.check_data(_data(tmp_path / "skip", train, _pixel_boxes(5), skip_invalid=True), verbose=False)
    assert skipped.ok and _finding(skipped, "skipped_invalid").count == 2


def test_class_count_against_a_trained_model_and_a_fine_tuning_source(tmp_path):
    data = _data(tmp_path, _pixel_boxes(30), _pixel_boxes(10))
    other = preflight.check_data(data, model_class_names=("cat", "dog"), verbose=False)
    mismatch = _finding(other, "class_mismatch")
    assert mismatch.severity == "warning" and "the data has 3 classes, the model 2" in mismatch.message
    assert "--init_weights" in mismatch.fix
    same = preflight.check_data(data, model_class_names=CLASSES, verbose=False)
    assert "class_mismatch" not in _codes(same)
    reordered = preflight.check_data(data, num_model_classes=3, model_class_names=("dog", "cat", "bird"), verbose=False)
    assert "other names or another order" in _finding(reordered, "class_mismatch").message
    fine_tune = preflight.check_data(data, model_class_names=("person", "Cat", "DOG", "car"), fine_tuning=True,
                                     model_description="torchvision_v2_coco", verbose=False)
    info = _finding(fine_tune, "fine_tuning_classes")
    assert info.severity == "info" and info.count == 2 and "mapped by name" in info.message
    disjoint = preflight.check_data(data, model_class_names=("person", "car"), fine_tuning=True, verbose=False)
    assert _finding(disjoint, "fine_tuning_classes").severity == "warning"


def test_rare_and_missing_classes(tmp_path):
    train = _pixel_boxes(20, categories=2)  # cat and dog only
    train[0].append(((5, 5, 80, 80), 2))  # and 1 bird
    val = [[((5, 5, 80, 80), 0)]] * 4  # only cats
    report = preflight.check_data(_data(tmp_path, train, val), verbose=False)
    rare = _finding(report, "rare_classes")
    assert rare.severity == "warning" and rare.count == 1 and "bird (1)" in rare.message
    missing = _finding(report, "class_missing_from_val")
    assert missing.count == 2 and "dog" in missing.message and "bird" in missing.message
    assert "class_missing_from_train" not in _codes(report) and report.ok
    no_bird = preflight.check_data(_data(tmp_path / "b", _pixel_boxes(20, categories=2), val), verbose=False)
    assert "bird" in _finding(no_bird, "class_missing_from_train").message


def test_large_images_with_small_objects_suggest_an_image_size(tmp_path):
    size = (3000, 4000)
    boxes = _pixel_boxes(20, size=size, box_range=(10, 20))
    report = preflight.check_data(_data(tmp_path, boxes, boxes[:5], size=size, image_size=512), verbose=False)
    finding = _finding(report, "small_boxes_after_resize")
    assert finding.severity == "warning" and finding.count == 60
    assert "--slice_size=512 --slice_overlap=0.2" in finding.fix and "--image_size=1536" in finding.fix
    assert report.splits["train"]["median_long_side"] == 4000
    # Moderately large images: a plain --image_size is enough.
    size = (1200, 1600)
    boxes = _pixel_boxes(20, size=size, box_range=(40, 80))
    report = preflight.check_data(_data(tmp_path / "m", boxes, boxes[:5], size=size, image_size=256), verbose=False)
    finding = _finding(report, "small_boxes_after_resize")
    suggested = int(re.search(r"--image_size=(\d+)", finding.fix).group(1))
    assert 256 < suggested <= 1600 and suggested % 128 == 0 and finding.fix.startswith("Train and evaluate at")
    # Large images with large objects: only a note.
    boxes = _pixel_boxes(20, size=size, box_range=(400, 900))
    report = preflight.check_data(_data(tmp_path / "l", boxes, boxes[:5], size=size, image_size=256), verbose=False)
    assert "small_boxes_after_resize" not in _codes(report) and _finding(report, "large_images").severity == "info"


def test_a_training_split_without_boxes_refuses_training(tmp_path):
    from keras_retina import training
    from keras_retina.cli.flags import config_from_flags

    train = _write_coco(str(tmp_path / "train"), [[] for _ in range(8)])
    val = _write_coco(str(tmp_path / "val"), _pixel_boxes(4))
    report = preflight.check_data(_data(tmp_path / "d", [[]] * 8, _pixel_boxes(4)), verbose=False)
    assert _finding(report, "no_train_boxes").severity == "error" and not report.ok
    config = config_from_flags({
        "dataset": "coco_json", "train_annotations": train[0], "train_images": train[1],
        "val_annotations": val[0], "val_images": val[1], "model_dir": str(tmp_path / "run"),
        "backbone": "tiny", "backbone_weights": "none", "init_weights": "none", "image_size": 128, "batch_size": 2,
        "epochs": 1,
        "override": ["tensorboard=false"],
    })
    with pytest.raises(preflight.PreflightError, match="has no boxes") as raised:
        training.train(config)
    assert "fix: Point --train_annotations at the annotated file" in str(raised.value)
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "latest.keras")


def test_empty_validation_split_is_an_error(tmp_path):
    report = preflight.check_data(_data(tmp_path, _pixel_boxes(10), []), verbose=False)
    assert _finding(report, "empty_val").severity == "error"
    report = preflight.check_data(_data(tmp_path / "b", _pixel_boxes(10), [[]] * 3), verbose=False)
    assert _finding(report, "no_val_boxes").severity == "error"


def test_images_over_max_boxes(tmp_path):
    report = preflight.check_data(_data(tmp_path, _pixel_boxes(5, per_image=12), _pixel_boxes(3), max_boxes=10),
                                  verbose=False)
    finding = _finding(report, "too_many_boxes")
    assert finding.count == 5 and "--override data.max_boxes=16" in finding.fix and report.ok


def test_poor_anchor_coverage_names_override_flags(tmp_path):
    thin = [[((x, 100, 8, 120), 0), ((x + 200, 200, 120, 8), 1), ((x + 300, 20, 8, 8), 2)]
            for x in range(10, 210, 10)]
    report = preflight.check_data(_data(tmp_path, thin, thin[:4]), AnchorGenerator(), verbose=False)
    finding = _finding(report, "anchor_coverage")
    assert finding.severity == "warning" and "--override" in finding.fix and "model.anchors." in finding.fix
    assert report.anchor_coverage["all"]["iou_0.5"] < 0.5


class _ExampleSplit:
    """A split known only through its decoded raw examples, as a TFDS split is."""

    def __init__(self, examples):
        self.examples, self.where, self.class_names, self.num_images = examples, "tfds:fake[train]", CLASSES, None


class _ExampleData:
    def __init__(self, examples):
        self.config = DataConfig(dataset="tfds:fake", image_size=256)
        self._split = _ExampleSplit(examples)

    def split(self, name):
        return self._split

    def raw(self, name, shuffle=False):
        examples = self._split.examples
        return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature={
            "image": tf.TensorSpec((None, None, 3), tf.uint8), "boxes": tf.TensorSpec((None, 4), tf.float32),
            "classes": tf.TensorSpec((None,), tf.int32), "image_id": tf.TensorSpec((), tf.int64)})


def test_sources_without_annotations_are_read_in_part_by_decoding():
    rng = np.random.default_rng(0)
    examples = []
    for i in range(12):
        x, y = rng.uniform(60, 150, 2)
        boxes = np.array([[x, y, 40, 50], [x - 30, y - 40, 30, 30]], "float32")  # [x, y, w, h] given as corners
        examples.append({"image": np.zeros((200, 240, 3), "uint8"), "boxes": boxes,
                         "classes": np.array([0, i % 3], "int32"), "image_id": np.int64(i)})
    report = preflight.check_data(_ExampleData(examples), max_images=10, verbose=False)
    assert report.splits["train"]["images_read"] == 10 and report.splits["train"]["images"] is None
    assert any("the first 10 images only" in note for note in report.notes)
    finding = _finding(report, "xywh_as_xyxy", "train")  # the fake's val split is the same examples
    assert finding.severity == "error" and finding.count == 20 and "(image_id 0): box [x1, y1, x2, y2]" in finding.examples[0]


def test_report_and_error_text():
    report = preflight.PreflightReport(image_size=512, findings=[
        preflight.Finding("a", "warning", "Warned.", "Do this."),
        preflight.Finding("b", "error", "Broken.", "Do that.", split="train", examples=("x.jpg",)),
    ])
    assert [f.code for f in report.errors] == ["b"] and not report.ok
    text = report.format()
    assert "ERROR   [train] Broken.\n        fix: Do that.\n        e.g. x.jpg" in text
    assert text.endswith("Training cannot work until the errors above are fixed.")
    message = str(preflight.PreflightError(report))
    assert "Broken." in message and "Warned." not in message and isinstance(preflight.PreflightError(report), ValueError)
    with pytest.raises(ValueError, match="severity must be one of"):
        preflight.Finding("c", "fatal", "?")


def test_analyze_mode_writes_preflight_json(tmp_path, capsys):
    from keras_retina.cli import modes
    from keras_retina.cli.flags import config_from_flags

    make_shapes_splits(tmp_path / "shapes", num_train=8, num_val=4, seed=0, image_size=(64, 64), verbose=False)
    config = config_from_flags({"mode": "analyze", "model_dir": str(tmp_path / "run"), "image_size": 64,
                                "override": [f"data.shapes_dir={tmp_path / 'shapes'}", "shapes_num_train=8",
                                             "shapes_num_val=4", "shapes_image_size=64"]})
    result = modes.analyze(config, {"split": "val"})
    written = json.loads((tmp_path / "run" / preflight.REPORT_FILE).read_text())
    assert written == json.loads(json.dumps(result["preflight"]))
    assert written["ok"] and written["splits"]["train"]["images"] == 8
    assert (tmp_path / "run" / "anchor_coverage.json").exists() and "search" in result  # the anchor analysis still runs
    out = capsys.readouterr().out
    assert "Pre-flight check of the data at image_size 64" in out and "Anchor coverage over" in out
    # A model trained in --model_dir on other classes is named.
    with open(tmp_path / "run" / "classes.json", "w") as f:
        json.dump({"class_names": ["a", "b"], "category_ids": [1, 2]}, f)
    result = modes.analyze(config, {"split": "val"})
    assert "class_mismatch" in {f["code"] for f in result["preflight"]["findings"]}


def test_analyze_mode_on_unreadable_data_reports_and_skips_anchors(tmp_path, capsys):
    from keras_retina.cli import modes
    from keras_retina.cli.flags import config_from_flags

    normalised = [[((x / 640, y / 480, w / 640, h / 480), c) for (x, y, w, h), c in rows] for rows in _pixel_boxes(5)]
    normalised[0].append(((0.5, 0.5, -0.1, 0.2), 0))  # and one invalid box: the reader refuses the file
    data = _data(tmp_path, normalised, _pixel_boxes(3))
    flags = {"mode": "analyze", "model_dir": str(tmp_path / "run"), **{
        key: getattr(data.config, key) for key in ("dataset", "train_annotations", "train_images",
                                                    "val_annotations", "val_images")}}
    result = modes.analyze(config_from_flags(flags), {})
    assert set(result) == {"preflight"} and not result["preflight"]["ok"]
    codes = {f["code"] for f in result["preflight"]["findings"]}
    assert {"unreadable", "normalised_coordinates", "degenerate_boxes"} <= codes
    assert "Anchor coverage skipped" in capsys.readouterr().out
    assert (tmp_path / "run" / preflight.REPORT_FILE).exists() and not (tmp_path / "run" / "anchor_coverage.json").exists()


def test_the_resized_boxes_match_the_pipeline():
    """The check's resize (from annotated sizes) equals anchor_fit.collect_boxes' (decoded images)."""
    from keras_retina.evaluation import anchor_fit

    rng = np.random.default_rng(3)
    examples, boxes, heights, widths = [], [], [], []
    for height, width in ((300, 500), (413, 97), (64, 64)):
        xy = rng.uniform(0, [width / 2, height / 2], (3, 2))
        rows = np.concatenate([xy, xy + rng.uniform(5, [width / 2, height / 2], (3, 2))], 1).astype("float32")
        examples.append({"image": np.zeros((height, width, 3), "uint8"), "boxes": rows})
        boxes.append(rows), heights.append(height), widths.append(width)
    split = preflight._SplitBoxes(
        name="train", where="-", box_format="xyxy", num_images=3, image_ids=np.arange(3), file_names=None,
        heights=np.array(heights, float), widths=np.array(widths, float), box_image=np.repeat(np.arange(3), 3),
        boxes=np.concatenate(boxes).astype(float), classes=np.zeros(9, int), is_crowd=np.zeros(9, bool),
        class_names=("a",), validated=True)
    ours = preflight._resized_boxes(split, 256)
    theirs = anchor_fit.collect_boxes(examples, 256, verbose=False)
    np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=1e-3)
    np.testing.assert_allclose(ours["areas"], theirs["areas"], rtol=1e-5)


def test_finding_is_frozen():
    finding = preflight.Finding("a", "info", "m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        finding.severity = "error"
