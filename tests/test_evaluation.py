"""COCO evaluation: perfect detections, agreement with pycocotools (the metric and run_cocoeval), conversions."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keras_retina import evaluation
from keras_retina.evaluation import coco


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


def _load(path):
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


# Three classes; the emu has no ground truth (its AP is -1), and the objects are small, medium and large.
_HELPER_GT = {
    "images": [{"id": 1, "width": 300, "height": 200}, {"id": 2, "width": 300, "height": 200}],
    "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "emu"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 50, 40], "area": 2000, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 7, "bbox": [100, 20, 80, 70], "area": 5600, "iscrowd": 0},
        {"id": 3, "image_id": 2, "category_id": 7, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 3, "bbox": [150, 50, 120, 100], "area": 12000, "iscrowd": 0},
    ],
}
_HELPER_RESULTS = [
    {"image_id": 1, "category_id": 3, "bbox": [12, 8, 50, 45], "score": 0.8},
    {"image_id": 1, "category_id": 3, "bbox": [120, 30, 40, 40], "score": 0.9},  # a cat on the dog
    {"image_id": 1, "category_id": 7, "bbox": [100, 20, 40, 70], "score": 0.7},  # IoU 0.5
    {"image_id": 2, "category_id": 7, "bbox": [6, 4, 20, 22], "score": 0.6},
    {"image_id": 2, "category_id": 3, "bbox": [160, 60, 110, 90], "score": 0.5},
    {"image_id": 2, "category_id": 9, "bbox": [200, 10, 30, 30], "score": 0.4},  # an emu: no emu in the GT
]


def _direct_cocoeval(gt, results, image_ids=None, configure=lambda params: None, accumulate=True):
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        if image_ids is not None:
            reference.params.imgIds = list(image_ids)
        configure(reference.params)
        reference.evaluate()
        if accumulate:
            reference.accumulate()
            reference.summarize()
    return reference


@pytest.mark.parametrize("image_ids", [None, [2]])
def test_run_cocoeval_gives_a_direct_cocoevals_stats_and_per_class_ap(tmp_path, image_ids):
    (tmp_path / "gt.json").write_text(json.dumps(_HELPER_GT))
    gt = _load(tmp_path / "gt.json")
    reference = _direct_cocoeval(gt, _HELPER_RESULTS, image_ids)
    evaluator = coco.run_cocoeval(gt, [dict(r) for r in _HELPER_RESULTS], image_ids)
    np.testing.assert_array_equal(evaluator.stats, reference.stats)
    assert len(evaluator.stats) == len(evaluation.METRIC_NAMES) == 12
    assert 0 < reference.stats[0] < 1  # neither every detection right nor every one wrong
    np.testing.assert_array_equal(evaluator.eval["precision"], reference.eval["precision"])
    metrics = coco.summary_metrics(evaluator)
    assert metrics == evaluation.coco_evaluate(str(tmp_path / "gt.json"), _HELPER_RESULTS, image_ids, verbose=False)
    assert [metrics[name] for name in evaluation.METRIC_NAMES] == [float(v) for v in reference.stats]
    # Per class: pycocotools' precision at area "all" and 100 detections, averaged where it is not -1.
    expected = {}
    for k, category_id in enumerate(reference.params.catIds):
        precision = reference.eval["precision"][:, :, k, 0, -1]
        valid = precision[precision > -1]
        expected[gt.cats[category_id]["name"]] = float(valid.mean()) if valid.size else -1.0
    assert metrics["per_class_AP"] == expected
    assert expected["emu"] == -1.0 and 0 < expected["cat"] < 1


def test_run_cocoeval_with_its_own_parameters_matches_like_a_direct_cocoeval():
    gt = COCO()
    gt.dataset = json.loads(json.dumps(_HELPER_GT))
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()

    def configure(params):
        params.iouThrs = np.array([0.6])
        params.areaRngLbl = ["all"]
        params.areaRng = [params.areaRng[0]]
        params.maxDets = [1]

    reference = _direct_cocoeval(gt, _HELPER_RESULTS, configure=configure, accumulate=False)
    evaluator = coco.run_cocoeval(gt, [dict(r) for r in _HELPER_RESULTS], iou_thresholds=(0.6,), area_ranges=("all",),
                                  max_detections=(1,), accumulate=False)
    assert evaluator.eval == {} and len(evaluator.stats) == 0  # evaluated only
    assert len(evaluator.evalImgs) == len(reference.evalImgs) == 3 * 2  # classes x images, one area range
    for got, want in zip(evaluator.evalImgs, reference.evalImgs):
        if want is None:
            assert got is None
            continue
        assert (got["image_id"], got["category_id"], got["dtIds"], got["gtIds"]) == (
            want["image_id"], want["category_id"], want["dtIds"], want["gtIds"])
        np.testing.assert_array_equal(got["dtMatches"], want["dtMatches"])
    with pytest.raises(ValueError, match=r"area_ranges \['tiny'\]"):
        coco.run_cocoeval(gt, _HELPER_RESULTS, area_ranges=("all", "tiny"))


def test_run_cocoeval_scores_no_detections_as_zero():
    gt = COCO()
    gt.dataset = json.loads(json.dumps(_HELPER_GT))
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    evaluator = coco.run_cocoeval(gt, [])
    precision = evaluator.eval["precision"]
    assert precision.max() == 0.0 and precision[:, :, 2].max() == -1.0  # the emu has no ground truth
    metrics = coco.summary_metrics(evaluator)
    assert metrics == {name: 0.0 for name in evaluation.METRIC_NAMES} | {
        "per_class_AP": {"cat": 0.0, "dog": 0.0, "emu": 0.0}}


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
    from keras_retina.data import coco_from_raw_dataset

    coco = coco_from_raw_dataset(raw, ["person", "bicycle"], category_ids=[1, 2])
    assert sorted(coco.getImgIds()) == [7, 9]
    assert coco.imgs[7]["width"] == 60 and coco.imgs[7]["height"] == 40
    (annotation,) = coco.loadAnns(coco.getAnnIds(imgIds=[7]))
    assert annotation["category_id"] == 2 and annotation["bbox"] == [5.0, 5.0, 20.0, 30.0] and annotation["area"] == 600
    results = [{"image_id": 7, "category_id": 2, "bbox": [5, 5, 20, 30], "score": 0.9}]
    assert evaluation.coco_evaluate(coco, results, verbose=False)["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize("with_detections", [True, False])
def test_ground_truth_without_area_or_iscrowd_is_scored_as_its_boxes(tmp_path, with_detections):
    """The COCO format lets a file leave out ``area`` and ``iscrowd``; COCOeval reads both."""
    gt = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"}],
          "categories": [{"id": 7, "name": "circle"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40]},
                          {"id": 2, "image_id": 1, "category_id": 7, "bbox": [60, 60, 8, 8]}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    results = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "score": 0.9},
               {"image_id": 1, "category_id": 7, "bbox": [60, 60, 8, 8], "score": 0.8}] if with_detections else []
    metrics = evaluation.coco_evaluate(str(path), results, verbose=False)
    expected = 1.0 if with_detections else 0.0
    assert metrics["AP"] == pytest.approx(expected)
    # The 40 x 40 box is medium (area 1600), the 8 x 8 one small (64): sized by their boxes.
    assert metrics["APm"] == pytest.approx(expected) and metrics["APs"] == pytest.approx(expected)
    assert metrics["APl"] == pytest.approx(-1.0 if with_detections else 0.0)
