"""COCO evaluation: perfect detections, agreement with pycocotools, conversions."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keras_retina import evaluation


def _write_gt(path):
    gt = {
        "images": [{"id": 1, "width": 200, "height": 100, "file_name": "1.jpg"}, {"id": 2, "width": 64, "height": 64, "file_name": "2.jpg"}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [100, 20, 80, 70], "area": 5600, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
        ],
    }
    path.write_text(json.dumps(gt))
    return gt


def test_perfect_detections_give_ap_one(tmp_path):
    gt = _write_gt(tmp_path / "gt.json")
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
        for a in gt["annotations"]
    ]
    metrics = evaluation.coco_evaluate(str(tmp_path / "gt.json"), results, verbose=False)
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["per_class_AP"] == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}


def test_hand_made_detections_match_pycocotools(tmp_path):
    _write_gt(tmp_path / "gt.json")
    results = [
        {"image_id": 1, "category_id": 3, "bbox": [12, 8, 50, 45], "score": 0.8},  # IoU ~0.8
        {"image_id": 1, "category_id": 3, "bbox": [120, 30, 40, 40], "score": 0.9},  # false positive
        {"image_id": 1, "category_id": 7, "bbox": [100, 20, 40, 70], "score": 0.7},  # IoU 0.5
        {"image_id": 2, "category_id": 7, "bbox": [5, 5, 20, 20], "score": 0.6},
    ]
    metrics = evaluation.coco_evaluate(str(tmp_path / "gt.json"), results, verbose=False)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        reference = COCOeval(coco, coco.loadRes(results), "bbox")
        reference.evaluate()
        reference.accumulate()
        reference.summarize()
    for name, value in zip(evaluation.METRIC_NAMES, reference.stats):
        assert metrics[name] == value, name
    assert 0 < metrics["AP"] < 1
    precision = reference.eval["precision"][:, :, 0, 0, -1]
    assert metrics["per_class_AP"]["cat"] == pytest.approx(precision[precision > -1].mean())


def test_no_detections_give_zero(tmp_path):
    _write_gt(tmp_path / "gt.json")
    metrics = evaluation.coco_evaluate(str(tmp_path / "gt.json"), [], verbose=False)
    assert metrics["AP"] == 0.0 and metrics["per_class_AP"] == {"cat": 0.0, "dog": 0.0}


def test_detections_to_coco_maps_classes_and_formats_boxes():
    boxes = np.array([[[10.0, 20.0, 30.0, 60.0], [0, 0, 5, 5]], [[1, 2, 3, 4], [64, 10, 64, 30]]])
    scores = np.array([[0.9, 0.2], [0.5, 0.4]])
    classes = np.array([[1, 0], [0, 1]])
    # The last detection has zero width (it lay in the padding): left out.
    results = evaluation.detections_to_coco(boxes, scores, classes, np.array([2, 2]), [11, 12], [3, 7])
    assert results == [
        {"image_id": 11, "category_id": 7, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.9},
        {"image_id": 11, "category_id": 3, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.2},
        {"image_id": 12, "category_id": 3, "bbox": [1.0, 2.0, 2.0, 2.0], "score": 0.5},
    ]


def test_write_and_format_metrics(tmp_path):
    metrics = {name: 0.5 for name in evaluation.METRIC_NAMES} | {"per_class_AP": {"cat": 0.25}}
    evaluation.write_metrics(metrics, str(tmp_path / "out" / "metrics.json"))
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["per_class_AP"] == {"cat": 0.25}
    table = evaluation.format_metrics(metrics)
    assert "AP      0.5000" in table and "cat  0.2500" in table


def test_coco_from_raw_dataset_maps_classes_to_category_ids():
    import tensorflow as tf

    examples = [
        {"image": np.zeros((40, 60, 3), np.uint8), "boxes": np.array([[5, 5, 25, 35]], np.float32),
         "classes": np.array([1], np.int32), "is_crowd": np.array([False]), "image_id": np.int64(7)},
        {"image": np.zeros((30, 30, 3), np.uint8), "boxes": np.zeros((0, 4), np.float32),
         "classes": np.zeros((0,), np.int32), "is_crowd": np.zeros((0,), bool), "image_id": np.int64(9)},
    ]
    raw = tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={
            "image": tf.TensorSpec((None, None, 3), tf.uint8),
            "boxes": tf.TensorSpec((None, 4), tf.float32),
            "classes": tf.TensorSpec((None,), tf.int32),
            "is_crowd": tf.TensorSpec((None,), tf.bool),
            "image_id": tf.TensorSpec((), tf.int64),
        },
    )
    coco = evaluation.coco_from_raw_dataset(raw, ["person", "bicycle"], category_ids=[1, 2])
    assert sorted(coco.getImgIds()) == [7, 9]
    assert coco.imgs[7]["width"] == 60 and coco.imgs[7]["height"] == 40
    (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=[7]))
    assert annotation["category_id"] == 2 and annotation["bbox"] == [5.0, 5.0, 20.0, 30.0] and annotation["area"] == 600
    results = [{"image_id": 7, "category_id": 2, "bbox": [5, 5, 20, 30], "score": 0.9}]
    assert evaluation.coco_evaluate(coco, results, verbose=False)["AP"] == pytest.approx(1.0)
