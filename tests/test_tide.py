"""TIDE error breakdown: perfect detections cost nothing, each planted error is its own largest cost."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO

from keras_retina import evaluation
from keras_retina.evaluation import tide

# Three classes on four 400 x 400 images; boxes 60 px wide or more, 40 px apart or more, none in the
# bottom-right 100 x 100 corner (where background detections go).
GT_BOXES = {
    1: [(1, [10, 10, 80, 60]), (2, [150, 20, 70, 90]), (3, [20, 200, 90, 80])],
    2: [(2, [40, 40, 100, 100]), (2, [200, 60, 60, 120]), (1, [50, 220, 120, 70])],
    3: [(3, [10, 10, 60, 60]), (1, [120, 10, 80, 80]), (3, [230, 150, 60, 70]), (2, [30, 200, 90, 90])],
    4: [(1, [60, 60, 150, 100]), (3, [40, 210, 70, 80])],
}
OTHER_CLASS = {1: 2, 2: 3, 3: 1}
LOCALIZATION_SHIFT = 0.7 / 1.3  # of the width: IoU (w - d) / (w + d) = 0.3


def _coco_gt(crowd=()):
    annotations = []
    for image_id, boxes in GT_BOXES.items():
        for category_id, (x, y, w, h) in boxes:
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )
    for image_id, category_id, (x, y, w, h) in crowd:
        annotations.append(
            {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
             "bbox": [x, y, w, h], "area": w * h, "iscrowd": 1}
        )
    coco = COCO()
    coco.dataset = {
        "images": [{"id": i, "width": 400, "height": 400} for i in GT_BOXES],
        "categories": [{"id": c, "name": f"class{c}"} for c in (1, 2, 3)],
        "annotations": annotations,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _perfect_detections():
    """One exact detection per GT, scores 0.99, 0.97, ... so every error lands between true positives."""
    results = []
    for image_id, boxes in GT_BOXES.items():
        for category_id, box in boxes:
            results.append({"image_id": image_id, "category_id": category_id, "bbox": list(map(float, box)),
                            "score": round(0.99 - 0.02 * len(results), 4)})
    return results


def _planted(kind):
    """Perfect detections with ``kind`` planted on every third GT; returns (results, number planted)."""
    results, planted = [], 0
    for index, det in enumerate(_perfect_detections()):
        x, y, w, h = det["bbox"]
        if index % 3 != 1:
            results.append(det)
            continue
        planted += 1
        if kind == "classification":
            results.append(dict(det, category_id=OTHER_CLASS[det["category_id"]]))
        elif kind == "localization":
            results.append(dict(det, bbox=[x + LOCALIZATION_SHIFT * w, y, w, h]))
        elif kind == "both":  # an extra detection: a "both" error does not cover its GT, which would be missed
            results.append(det)
            results.append(dict(det, category_id=OTHER_CLASS[det["category_id"]],
                                bbox=[x + LOCALIZATION_SHIFT * w, y, w, h], score=det["score"] + 0.005))
        elif kind == "duplicate":
            results.append(det)
            results.append(dict(det, bbox=[x + 0.1 * w, y, w, h], score=det["score"] - 0.01))
        elif kind == "background":
            results.append(det)
            results.append(dict(det, bbox=[310.0, 310.0, 80.0, 80.0], score=det["score"] + 0.005))
        elif kind == "missed":
            pass  # the detection is left out
    return results, planted


def test_perfect_detections_cost_nothing():
    report = tide.analyze_errors(_coco_gt(), _perfect_detections())
    assert report["ap"] == pytest.approx(1.0)
    assert report["errors"] == {name: 0.0 for name in tide.ERROR_TYPES}
    assert report["special"] == {"false_positive": 0.0, "false_negative": 0.0}
    assert report["counts"] == dict({name: 0 for name in tide.ERROR_TYPES}, true_positive=12, ground_truth=12)
    assert report["iou_thresholds"] == {"foreground": 0.5, "background": 0.1}


@pytest.mark.parametrize("kind", tide.ERROR_TYPES)
def test_planted_error_is_the_largest_cost(kind):
    results, planted = _planted(kind)
    report = tide.analyze_errors(_coco_gt(), results)
    errors = report["errors"]
    assert report["ap"] < 1.0
    assert errors[kind] > 0.0
    assert max(errors, key=errors.get) == kind, errors
    others = {name: value for name, value in errors.items() if name != kind}
    assert others == {name: 0.0 for name in others}, errors
    assert report["counts"][kind] == planted == 4
    assert sum(report["counts"][name] for name in tide.ERROR_TYPES) == planted


@pytest.mark.parametrize("kind", ["classification", "localization", "both", "duplicate", "background", "missed"])
def test_fixing_the_planted_error_restores_ap_one(kind):
    # Each oracle fix turns these detections back into the perfect ones, drops the extra ones, or
    # (missed) drops the GTs without a detection.
    results, _ = _planted(kind)
    report = tide.analyze_errors(_coco_gt(), results)
    assert report["ap"] + report["errors"][kind] == pytest.approx(1.0)


def test_hand_computed_costs_use_101_point_interpolation():
    # One class, two GTs; a background box (0.95) above the one true positive (0.9), the other GT missed.
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 0, 30, 30], "area": 900, "iscrowd": 0},
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 30], "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [0, 60, 30, 30], "score": 0.95},
    ]
    report = tide.analyze_errors(coco, results)
    # Precision 1/2 up to recall 1/2: 51 of 101 recall points.
    assert report["ap"] == pytest.approx(51 * 0.5 / 101)
    assert report["errors"]["background"] == pytest.approx(51 * 1.0 / 101 - 51 * 0.5 / 101)
    assert report["errors"]["missed"] == pytest.approx(0.5 - 51 * 0.5 / 101)  # one GT: recall 1 at precision 1/2
    assert report["counts"]["background"] == 1 and report["counts"]["missed"] == 1


def _mixed_results():
    rng = np.random.default_rng(0)
    results = []
    for det in _perfect_detections():
        x, y, w, h = det["bbox"]
        for _ in range(3):
            shift = rng.normal(0.0, 0.3, 2) * (w, h)
            category_id = det["category_id"] if rng.random() < 0.7 else int(rng.integers(1, 4))
            results.append({"image_id": det["image_id"], "category_id": category_id,
                            "bbox": [x + shift[0], y + shift[1], w, h], "score": float(rng.random())})
    results.append({"image_id": 1, "category_id": 1, "bbox": [320.0, 320.0, 50.0, 50.0], "score": 0.5})
    return results


def test_ap_equals_pycocotools_ap50():
    coco, results = _coco_gt(), _mixed_results()
    report = tide.analyze_errors(coco, results)
    ap50 = evaluation.coco_evaluate(coco, results, verbose=False)["AP50"]
    assert 0.0 < report["ap"] < 1.0
    assert report["ap"] == pytest.approx(ap50, abs=1e-12)
    counts = report["counts"]
    assert sum(counts[name] for name in tide.ERROR_TYPES[:-1]) + counts["true_positive"] == len(results)
    assert report["special"]["false_positive"] >= max(report["errors"][k] for k in ("both", "duplicate", "background"))
    assert evaluation.analyze_errors is tide.analyze_errors


def test_detections_on_a_crowd_region_are_ignored_not_background():
    crowd_box = [300, 300, 90, 90]
    results = _perfect_detections() + [{"image_id": 1, "category_id": 2, "bbox": [305.0, 305.0, 60.0, 60.0], "score": 0.995}]
    report = tide.analyze_errors(_coco_gt(crowd=[(1, 2, crowd_box)]), results)
    assert report["ap"] == pytest.approx(1.0)
    assert report["counts"]["background"] == 0
    without_crowd = tide.analyze_errors(_coco_gt(), results)
    assert without_crowd["counts"]["background"] == 1


def test_no_detections_everything_missed():
    report = tide.analyze_errors(_coco_gt(), [])
    assert report["ap"] == 0.0
    assert report["counts"]["missed"] == 12


def test_unknown_category_is_an_error_naming_it():
    results = _perfect_detections()
    results[3]["category_id"] = 99
    with pytest.raises(ValueError, match=r"results\[3\] has category_id=99"):
        tide.analyze_errors(_coco_gt(), results)


def _one_image_gt(boxes):
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "width": 400, "height": 400}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (c, b) in enumerate(boxes)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def test_localization_is_tested_before_classification():
    # IoU 0.25 with the (unmatched) GT of its class and 1.0 with a GT of another class: TIDE's
    # reference code calls it a localization error.
    coco = _one_image_gt([(1, [0, 0, 100, 100]), (2, [60, 0, 100, 100])])
    results = [{"image_id": 1, "category_id": 1, "bbox": [60.0, 0.0, 100.0, 100.0], "score": 0.9}]
    counts = tide.analyze_errors(coco, results)["counts"]
    assert counts["localization"] == 1 and counts["classification"] == 0


def test_a_higher_scoring_fix_takes_the_gt_over_from_its_true_positive():
    # GT 1 has a true positive at 0.5 and a localization error at 0.9; fixed, the 0.9 one is the true
    # positive and the 0.5 one, now the lower-scoring duplicate, is suppressed (TIDE section 2.3).
    coco = _one_image_gt([(1, [0, 0, 100, 100]), (1, [200, 0, 100, 100])])
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [54.0, 0.0, 100.0, 100.0], "score": 0.9},  # IoU 0.3 with GT 1
        {"image_id": 1, "category_id": 1, "bbox": [200.0, 0.0, 100.0, 100.0], "score": 0.7},
        {"image_id": 1, "category_id": 1, "bbox": [0.0, 300.0, 50.0, 50.0], "score": 0.6},  # background
        {"image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 100.0, 100.0], "score": 0.5},
    ]
    report = tide.analyze_errors(coco, results)
    assert report["ap"] == pytest.approx(0.5)  # precision 1/2 at recall 1/2 and at recall 1
    assert report["errors"]["localization"] == pytest.approx(0.5)  # 0.9 TP, 0.7 TP: AP 1
