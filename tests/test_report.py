"""keras_retina.evaluation.report: the confusion matrix by hand, numbers equal to COCOeval's and TIDE's, files, modes.evaluate."""

import contextlib
import dataclasses
import glob
import io
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from helpers import small_model
from PIL import Image
from pycocotools.coco import COCO

from keras_retina import evaluation, recipes
from keras_retina.cli import modes
from keras_retina.config import override
from keras_retina.data import CocoJsonSource, make_pipeline, make_shapes_splits
from keras_retina.evaluation import report, report_metrics
from keras_retina.training import rundir


def _coco(annotations, images=({"id": 1, "width": 200, "height": 100},), categories=("cat", "dog", "emu")):
    gt = COCO()
    gt.dataset = {
        "images": [dict(image) for image in images],
        "categories": [{"id": 10 + i, "name": name} for i, name in enumerate(categories)],
        "annotations": [
            {"id": i + 1, "image_id": image_id, "category_id": category_id, "bbox": list(bbox),
             "area": bbox[2] * bbox[3], "iscrowd": int(crowd)}
            for i, (image_id, category_id, bbox, crowd) in enumerate(annotations)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _det(category_id, bbox, score, image_id=1):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


def test_confusion_matrix_counts_a_hand_made_case():
    # Two GTs: the cat is detected as a dog, the dog is missed; one detection on background.
    gt = _coco([(1, 10, (0, 0, 40, 40), False), (1, 11, (60, 0, 40, 40), False)])
    results = [_det(11, (0, 0, 40, 40), 0.9), _det(12, (150, 50, 40, 40), 0.8)]
    confusion = report.confusion_matrix(gt, results, [10, 11, 12])
    expected = np.zeros((4, 4), np.int64)
    expected[0, 1] = 1  # cat detected as dog
    expected[1, 3] = 1  # dog missed
    expected[3, 2] = 1  # an emu on background
    np.testing.assert_array_equal(confusion["matrix"], expected)
    assert confusion["per_image"] == {1: {"missed": 1, "wrong_class": 1, "false": 1}}


def test_confusion_prefers_the_own_class_and_counts_duplicates_and_low_scores_right():
    # A cat and a dog overlapping; the dog detection overlaps the cat more, yet takes the dog.
    gt = _coco([(1, 10, (0, 0, 50, 50), False), (1, 11, (10, 0, 50, 50), False), (1, 12, (120, 0, 60, 60), True)])
    results = [
        _det(11, (5, 0, 50, 50), 0.9),  # IoU 0.82 with the cat and with the dog: the dog
        _det(11, (10, 0, 50, 50), 0.8),  # the dog again (IoU 0.67 with the cat): a duplicate, a false detection
        _det(10, (0, 0, 50, 50), 0.7),  # the cat, though the duplicate scores higher and overlaps it
        _det(12, (125, 5, 50, 50), 0.6),  # on the crowd region: ignored
        _det(10, (150, 50, 40, 40), 0.2),  # below the score threshold: left out
    ]
    confusion = report.confusion_matrix(gt, results, [10, 11, 12], score_threshold=0.3)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0] = expected[1, 1] = 1
    expected[3, 1] = 1
    np.testing.assert_array_equal(confusion["matrix"], expected)
    assert confusion["per_image"][1] == {"missed": 0, "wrong_class": 0, "false": 1}
    low = report.confusion_matrix(gt, results, [10, 11, 12], score_threshold=0.1)
    assert low["matrix"][3, 0] == 1  # the low-scoring cat on background now counts


def test_confusion_matrix_names_an_unknown_category():
    gt = _coco([(1, 10, (0, 0, 40, 40), False)])
    with pytest.raises(ValueError, match=r"results\[0\] has category_id=99"):
        report.confusion_matrix(gt, [_det(99, (0, 0, 40, 40), 0.9)], [10, 11, 12])


def _two_image_case():
    images = ({"id": 1, "width": 200, "height": 100}, {"id": 2, "width": 120, "height": 120})
    gt = _coco(
        [(1, 10, (10, 10, 50, 40), False), (1, 11, (100, 20, 80, 70), False), (2, 11, (5, 5, 20, 20), False),
         (2, 12, (40, 40, 70, 70), False)],
        images=images,
    )
    results = [
        _det(10, (12, 8, 50, 45), 0.8),  # the cat, IoU ~0.8
        _det(10, (120, 30, 40, 40), 0.9),  # a cat on the dog: a classification error
        _det(11, (100, 20, 40, 70), 0.7),  # the dog, IoU 0.5
        _det(11, (5, 5, 20, 20), 0.6, image_id=2),
        _det(12, (80, 0, 30, 20), 0.5, image_id=2),  # background; the emu is missed
    ]
    return gt, results


def test_numbers_are_cocoevals_and_analyze_errors():
    gt, results = _two_image_case()
    collected = report.evaluate_results(gt, results, ["cat", "dog", "emu"], [10, 11, 12])
    reference = evaluation.coco_evaluate(gt, [dict(r) for r in results], verbose=False)
    assert collected.metrics == reference
    assert collected.errors == evaluation.analyze_errors(gt, [dict(r) for r in results])
    assert collected.precision.shape == (10, 101, 3, 4)
    # The overall curves average to the summary APs.
    assert report_metrics.overall_curve(collected.precision[0, :, :, 0]).mean() == pytest.approx(reference["AP50"])
    per_class = {row["class"]: row["AP"] for row in report_metrics.class_table(collected)}
    assert per_class == pytest.approx(reference["per_class_AP"])
    np.testing.assert_array_equal(collected.num_gt[:, 0], [1, 2, 1])


def test_no_detections_give_zero_metrics():
    gt, _ = _two_image_case()
    collected = report.evaluate_results(gt, [], ["cat", "dog", "emu"], [10, 11, 12])
    assert collected.metrics == evaluation.coco_evaluate(gt, [], verbose=False)
    assert collected.confusion["matrix"][:3, 3].tolist() == [1, 2, 1]  # every object missed


def _linked_pngs(markdown):
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def _table_value(markdown, label):
    match = re.search(rf"^\| {re.escape(label)} \| ([0-9.]+) \|", markdown, re.M)
    assert match, label
    return float(match.group(1))


def _assert_valid_pngs(directory, names):
    for name in names:
        path = os.path.join(directory, name)
        assert os.path.getsize(path) > 0, name
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 0 and image.height > 0, name


@pytest.fixture(scope="module")
def shapes_val(tmp_path_factory):
    files = make_shapes_splits(tmp_path_factory.mktemp("shapes"), 1, 4, image_size=(64, 64), verbose=False)["val"]
    source = CocoJsonSource(files.annotation_file, files.image_dir)
    return files, source


def test_write_links_valid_pngs_and_prints_cocoevals_and_tides_numbers(tmp_path, shapes_val):
    files, source = shapes_val
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(files.annotation_file)
    # The ground truth as detections, with planted errors: a box moved, a class changed, one object dropped.
    results = []
    for i, annotation in enumerate(gt.loadAnns(gt.getAnnIds())):
        x, y, w, h = annotation["bbox"]
        category_id = annotation["category_id"]
        if i == 0:
            x += w * 0.6
        if i == 1:
            category_id = source.category_ids[(source.category_ids.index(category_id) + 1) % len(source.category_ids)]
        if i != 2:
            results.append(_det(category_id, (x, y, w, h), 0.9 - 0.01 * i, image_id=annotation["image_id"]))
    collected = report.evaluate_results(gt, results, source.class_names, source.category_ids)
    dataset = make_pipeline(source.dataset(), image_size=64, batch_size=2, training=False)
    path = report.write(collected, str(tmp_path / "report"), dataset, tensorboard_dir=str(tmp_path / "logs"), step=7)

    markdown = open(path).read()
    linked = _linked_pngs(markdown)
    assert sorted(linked) == sorted(report.PICTURES.values())  # errors were planted: the gallery too
    _assert_valid_pngs(str(tmp_path / "report"), linked)
    metrics = evaluation.coco_evaluate(gt, [dict(r) for r in results], verbose=False)
    for label, name in (("AP, IoU 0.50:0.95", "AP"), ("AP50, IoU 0.50", "AP50"), ("AP75, IoU 0.75", "AP75")):
        assert _table_value(markdown, label) == pytest.approx(metrics[name], abs=5e-4), label
    assert 0 < metrics["AP"] < 1
    errors = evaluation.analyze_errors(gt, [dict(r) for r in results])
    for name in ("classification", "localization", "both", "duplicate", "background", "missed"):
        assert _table_value(markdown, name) == pytest.approx(errors["errors"][name], abs=5e-4), name
    assert errors["errors"]["classification"] > 0 and errors["errors"]["missed"] > 0
    # The same pictures in TensorBoard, at the given step.
    tags = {}
    for event_file in glob.glob(str(tmp_path / "logs" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(event_file):
            for value in event.summary.value:
                tags[value.tag] = event.step
    assert tags == {f"report/{key}": 7 for key in report.PICTURES}


def test_a_report_without_errors_has_no_gallery(tmp_path):
    gt = _coco([(1, 10, (0, 0, 40, 40), False)])
    collected = report.evaluate_results(gt, [_det(10, (0, 0, 40, 40), 0.9)], ["cat", "dog", "emu"], [10, 11, 12])
    (tmp_path / report.PICTURES["gallery"]).write_bytes(b"an earlier report's")
    path = report.write(collected, str(tmp_path), dataset=None)
    markdown = open(path).read()
    assert report.PICTURES["gallery"] not in _linked_pngs(markdown)
    assert not (tmp_path / report.PICTURES["gallery"]).exists()
    _assert_valid_pngs(str(tmp_path), _linked_pngs(markdown))
    assert _table_value(markdown, "AP, IoU 0.50:0.95") == 1.0


def test_runs_evaluate_writes_the_report(tmp_path):
    config = override(
        recipes.load("shapes"),
        [f"data.shapes_dir={tmp_path / 'shapes'}", "shapes_num_train=1", "shapes_num_val=4", "shapes_image_size=64",
         "image_size=64", "batch_size=2"],
    )
    config = dataclasses.replace(config, model_dir=str(tmp_path / "run"))
    os.makedirs(tmp_path / "run" / "checkpoints")
    model = small_model(num_classes=5)
    model.build((None, 64, 64, 3))
    model.save(str(tmp_path / "run" / rundir.LATEST_CHECKPOINT))
    rundir.write_config(str(tmp_path / "run"), config)
    metrics = modes.evaluate(config)
    report_dir = tmp_path / "run" / report.REPORT_DIR
    markdown = (report_dir / report.REPORT_FILE).read_text()
    _assert_valid_pngs(str(report_dir), _linked_pngs(markdown))
    assert json.loads((tmp_path / "run" / rundir.METRICS_FILE).read_text())["AP"] == metrics["AP"]
    assert glob.glob(str(tmp_path / "run" / "logs" / "report" / "events.*"))  # TensorBoard is on by default


def test_write_report_uses_detections_it_is_given_and_detects_otherwise(tmp_path, shapes_val, monkeypatch):
    """``detections=``: the report scores those and does not call the model; without them it detects."""
    import keras_retina as kr

    files, source = shapes_val
    dataset = make_pipeline(source.dataset(), image_size=64, batch_size=2, training=False)
    model = kr.RetinaNet(num_classes=5, backbone="tiny", fpn_channels=16, head_channels=16, num_head_convs=1)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(files.annotation_file)
    # The ground truth as detections: AP 1, which the untrained model cannot reach.
    results = [_det(a["category_id"], a["bbox"], 0.9, image_id=a["image_id"]) for a in gt.loadAnns(gt.getAnnIds())]
    calls = []
    original = report.predict_to_coco  # the function the report detects with
    assert original is evaluation.predict_to_coco
    monkeypatch.setattr(report, "predict_to_coco", lambda *a, **k: calls.append(1) or original(*a, **k))
    given = report.write_report(model, dataset, files.annotation_file, source.class_names, source.category_ids,
                                str(tmp_path / "given"), detections=(results, gt.getImgIds()))
    assert calls == [] and given.metrics["AP"] == pytest.approx(1.0)
    detected = report.write_report(model, dataset, files.annotation_file, source.class_names, source.category_ids,
                                   str(tmp_path / "detected"))
    assert calls == [1] and detected.metrics["AP"] < 0.5
    assert (tmp_path / "given" / report.REPORT_FILE).exists()
    linked = _linked_pngs((tmp_path / "detected" / report.REPORT_FILE).read_text())
    assert sorted(linked) == sorted(report.PICTURES.values())  # the untrained model errs: a gallery too
    _assert_valid_pngs(str(tmp_path / "detected"), linked)
