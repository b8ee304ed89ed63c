"""What costs AP: the TIDE error breakdown (Bolya et al., ECCV 2020).

TIDE ("TIDE: A General Toolbox for Identifying Object Detection Errors",
section 2) gives every false positive one error type and every missed ground
truth the type "missed", then fixes one type at a time with an oracle and
reports the AP gained (dAP). The types, with the foreground IoU ``t_f`` (0.5)
and the background IoU ``t_b`` (0.1), are tested in the order of the authors'
reference implementation (``tidecv``), which the paper leaves open:

====================  ===========================================================  ==========================
type                  a false positive whose largest IoU ...                       oracle fix
====================  ===========================================================  ==========================
``localization``      with a GT of its class is in ``[t_b, t_f)``                  box := that GT's box
``classification``    with a GT of another class is ``>= t_f``                     class := that GT's class
``duplicate``         with a GT of its class is ``>= t_f`` (GT already matched     drop the detection
                      by a higher-scoring detection)
``background``        with every GT is ``< t_b``                                   drop the detection
``both``              any other false positive: wrong class and IoU in             drop the detection
                      ``[t_b, t_f)`` with a GT of another class
``missed``            (a GT) unmatched and no localization or classification       one GT fewer (``N_GT - 1``)
                      error points at it
====================  ===========================================================  ==========================

A fixed localization or classification error becomes a true positive of its
GT unless that would make a duplicate: of the GT's current true positive and
the fixed errors of that type pointing at it, the highest-scoring one is the
true positive and the others are dropped (section 2.3: "suppress the lower
scoring detection"). Detections COCO ignores (on crowd regions) are no false
positives and get no type.

tidecv 1.0.1 (August 2020, its last release) installs and runs with NumPy 2.4,
but it is not used here: it pulls in OpenCV, pandas, matplotlib and seaborn,
its COCO loader needs a ``segmentation`` in every annotation, and its AP is
not COCO's (100 detections per image across classes, classes without ground
truth averaged in as 0, crowd IoU ``>`` rather than ``>=``, recall points
``k / 100`` rather than ``np.linspace``). So the definition is written here on
top of pycocotools: COCOeval (:func:`keras_retina.evaluation.coco.run_cocoeval`)
does the matching, and the AP of the fixed detections is computed as
``COCOeval.accumulate`` computes it. On random detections the counts of every
type equal tidecv's; the dAPs of both, duplicate, background and missed agree
to 0.1 AP points (the recall-point difference). Classification and
localization come out higher than tidecv's, which drops a fixed error whose GT
is already matched even when the error scores higher, and lets errors of the
two types compete for one GT although only one type is being fixed.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from keras_retina.evaluation.coco import load_ground_truth, run_cocoeval

#: TIDE's foreground IoU ``t_f``: a detection matches a GT at IoU >= this.
FOREGROUND_IOU = 0.5
#: TIDE's background IoU ``t_b``: below this with every GT, a detection is background.
BACKGROUND_IOU = 0.1
#: The six main error types, in TIDE's order.
ERROR_TYPES = ("classification", "localization", "both", "duplicate", "background", "missed")
#: TIDE's two special errors: every false positive dropped; every false negative dropped.
SPECIAL_ERROR_TYPES = ("false_positive", "false_negative")

# The `kind` of a detection COCOeval matched (false positives get an error type).
_TRUE_POSITIVE = "true_positive"


def analyze_errors(
    coco_gt: COCO | str,
    results: list[dict],
    image_ids: Iterable[int] | None = None,
    foreground_iou: float = FOREGROUND_IOU,
    background_iou: float = BACKGROUND_IOU,
    max_detections: int = 100,
) -> dict:
    """How much AP each TIDE error type costs: the AP gained by fixing it alone.

    The AP is COCO's bbox AP at the single IoU threshold ``foreground_iou``
    (AP50 by default, TIDE's default too): pycocotools' matching, crowd
    regions ignored, area range "all", the top ``max_detections`` detections
    per image and class, 101-point interpolated precision averaged over the
    classes that have ground truth. With the defaults ``ap`` equals
    :func:`keras_retina.evaluation.coco_evaluate`'s ``"AP50"``. The error types
    and their fixes are in this module's docstring; each dAP is
    ``max(AP_fixed - AP, 0)`` as in TIDE, and the dAPs overlap, so they need
    not add up to ``1 - AP``.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` or the path of an instances JSON.
        results: COCO results entries ``{"image_id", "category_id", "bbox":
            [x, y, w, h] pixels, "score"}`` (see
            :func:`keras_retina.evaluation.detections_to_coco`).
        image_ids: analyse only these images (default: all in ``coco_gt``).
        foreground_iou: ``t_f``, the IoU at which a detection matches a GT.
        background_iou: ``t_b``, the IoU under which a detection is background.
        max_detections: detections kept per image and class, as COCOeval's ``maxDets``.

    Returns:
        dict with

        - ``"ap"``: the AP of ``results``, in [0, 1];
        - ``"errors"``: each of :data:`ERROR_TYPES` → dAP in [0, 1];
        - ``"special"``: ``"false_positive"`` (every false positive dropped)
          and ``"false_negative"`` (every unmatched GT dropped) → dAP;
        - ``"counts"``: each error type → its number of detections (of GTs for
          ``"missed"``), plus ``"true_positive"`` and ``"ground_truth"``;
        - ``"iou_thresholds"``: ``{"foreground": t_f, "background": t_b}``.

    Raises:
        ValueError: a result without one of the four fields, or with an image or
            category id that ``coco_gt`` lacks; thresholds out of order.

    Example:
        >>> gt = COCO()
        >>> gt.dataset = {"images": [{"id": 1, "width": 100, "height": 100}],
        ...               "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        ...               "annotations": [
        ...     {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
        ...     {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0}]}
        >>> gt.createIndex()
        creating index...
        index created!
        >>> results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.9},
        ...            {"image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "score": 0.8}]
        >>> from keras_retina import evaluation
        >>> report = evaluation.analyze_errors(gt, results)
        >>> report["ap"], report["errors"]["classification"], report["counts"]["classification"]
        (0.5, 0.5, 1)
    """
    if not 0.0 <= background_iou <= foreground_iou <= 1.0:
        raise ValueError(
            f"Expected 0 <= background_iou <= foreground_iou <= 1, got background_iou={background_iou}, "
            f"foreground_iou={foreground_iou}."
        )
    coco_gt = load_ground_truth(coco_gt)
    _check_results(coco_gt, results)
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else set(int(i) for i in image_ids))

    detections, ground_truth, recall_thresholds = _match(coco_gt, results, image_ids, foreground_iou, max_detections)
    _assign_error_types(detections, ground_truth, coco_gt, results, foreground_iou, background_iou)

    def ap_of(fixed_detections=detections, num_gt=ground_truth["num_per_class"]):
        return _mean_average_precision(fixed_detections, num_gt, recall_thresholds)

    base_ap = ap_of()
    fixed_ap = {
        "classification": ap_of(_fix_to_true_positive(detections, ground_truth, "classification")),
        "localization": ap_of(_fix_to_true_positive(detections, ground_truth, "localization")),
        "both": ap_of(_drop(detections, detections["kind"] == "both")),
        "duplicate": ap_of(_drop(detections, detections["kind"] == "duplicate")),
        "background": ap_of(_drop(detections, detections["kind"] == "background")),
        "missed": ap_of(num_gt=_count_per_class(ground_truth, ~ground_truth["missed"])),
    }
    special_ap = {
        "false_positive": ap_of(_drop(detections, detections["kind"] != _TRUE_POSITIVE)),
        "false_negative": ap_of(num_gt=_count_per_class(ground_truth, ground_truth["matched"])),
    }
    counts = {name: int(np.sum(detections["kind"] == name)) for name in ERROR_TYPES[:-1]}
    counts["missed"] = int(np.sum(ground_truth["missed"]))
    counts["true_positive"] = int(np.sum(detections["kind"] == _TRUE_POSITIVE))
    counts["ground_truth"] = int(len(ground_truth["category"]))
    return {
        "ap": base_ap,
        "errors": {name: max(fixed_ap[name] - base_ap, 0.0) for name in ERROR_TYPES},
        "special": {name: max(special_ap[name] - base_ap, 0.0) for name in SPECIAL_ERROR_TYPES},
        "counts": counts,
        "iou_thresholds": {"foreground": float(foreground_iou), "background": float(background_iou)},
    }


def _check_results(coco_gt: COCO, results: list[dict]) -> None:
    """Raises ValueError naming the first result entry COCOeval could not score."""
    for index, entry in enumerate(results):
        missing = [key for key in ("image_id", "category_id", "bbox", "score") if key not in entry]
        if missing:
            raise ValueError(f"results[{index}] lacks {missing}; expected image_id, category_id, bbox, score: {entry}.")
        if entry["image_id"] not in coco_gt.imgs:
            raise ValueError(f"results[{index}] has image_id={entry['image_id']}, which the ground truth has no image for.")
        if entry["category_id"] not in coco_gt.cats:
            raise ValueError(
                f"results[{index}] has category_id={entry['category_id']}; the ground truth's categories are "
                f"{sorted(coco_gt.cats)}."
            )
        if len(entry["bbox"]) != 4:
            raise ValueError(f"results[{index}] has bbox={entry['bbox']}; expected [x, y, width, height] pixels.")


def _match(coco_gt: COCO, results: list[dict], image_ids: list[int], foreground_iou: float, max_detections: int):
    """COCOeval's matching at ``foreground_iou``, flattened.

    Returns:
        ``(detections, ground_truth, recall_thresholds)``. ``detections`` holds
        arrays over the D scored detections (crowd-matched ones, which COCO
        ignores, are left out): ``result`` (index into ``results``),
        ``category``, ``score``, ``image`` (position in ``image_ids``), ``gt``
        (index of the matched GT, -1 for a false positive) and ``kind``
        (filled by :func:`_assign_error_types`). ``ground_truth`` holds arrays
        over the G non-crowd GTs: ``annotation`` (id), ``category``, ``image``,
        ``matched``, ``missed`` (filled by :func:`_assign_error_types`); and
        ``categories`` (every category id) and ``num_per_class`` (category id
        → number of its GTs).
    """
    # One IoU, one area range ("all"): one evalImgs entry per image and class. The AP is computed
    # later from these matches (see _mean_average_precision), so nothing is accumulated.
    evaluator = run_cocoeval(
        coco_gt, results, image_ids, iou_thresholds=(foreground_iou,), area_ranges=("all",),
        max_detections=(max_detections,), accumulate=False,
    )
    image_position = {image_id: i for i, image_id in enumerate(image_ids)}
    # loadRes numbers results 1, 2, ... in order.
    det_rows = {"result": [], "category": [], "score": [], "image": [], "gt_annotation": []}
    gt_rows = {"annotation": [], "category": [], "image": [], "matched": []}
    for entry in evaluator.evalImgs:
        if entry is None:
            continue
        for annotation_id, matched, ignored in zip(entry["gtIds"], entry["gtMatches"][0], entry["gtIgnore"]):
            if not ignored:
                gt_rows["annotation"].append(annotation_id)
                gt_rows["category"].append(entry["category_id"])
                gt_rows["image"].append(image_position[entry["image_id"]])
                gt_rows["matched"].append(matched > 0)
        for det_id, score, matched, ignored in zip(
            entry["dtIds"], entry["dtScores"], entry["dtMatches"][0], entry["dtIgnore"][0]
        ):
            if not ignored:
                det_rows["result"].append(det_id - 1)
                det_rows["category"].append(entry["category_id"])
                det_rows["score"].append(score)
                det_rows["image"].append(image_position[entry["image_id"]])
                det_rows["gt_annotation"].append(int(matched))
    ground_truth = {
        "annotation": np.asarray(gt_rows["annotation"], np.int64),
        "category": np.asarray(gt_rows["category"], np.int64),
        "image": np.asarray(gt_rows["image"], np.int64),
        "matched": np.asarray(gt_rows["matched"], bool),
    }
    gt_index = {int(a): i for i, a in enumerate(ground_truth["annotation"])}
    detections = {
        "result": np.asarray(det_rows["result"], np.int64),
        "category": np.asarray(det_rows["category"], np.int64),
        "score": np.asarray(det_rows["score"], np.float64),
        "image": np.asarray(det_rows["image"], np.int64),
        "gt": np.asarray([gt_index[a] if a > 0 else -1 for a in det_rows["gt_annotation"]], np.int64),
    }
    detections["kind"] = np.where(detections["gt"] >= 0, _TRUE_POSITIVE, "").astype(object)
    detections["target"] = np.full(len(detections["result"]), -1, np.int64)
    ground_truth["missed"] = np.zeros(len(ground_truth["category"]), bool)
    ground_truth["categories"] = tuple(int(c) for c in evaluator.params.catIds)
    ground_truth["num_per_class"] = _count_per_class(ground_truth, np.ones(len(ground_truth["category"]), bool))
    return detections, ground_truth, evaluator.params.recThrs


def _assign_error_types(detections, ground_truth, coco_gt, results, foreground_iou, background_iou) -> None:
    """Fills ``detections["kind"]``/``["target"]`` for false positives and ``ground_truth["missed"]``."""
    false_positive = np.flatnonzero(detections["gt"] < 0)
    covered = np.zeros(len(ground_truth["category"]), bool)  # targets of a classification or localization error
    for image in np.unique(detections["image"][false_positive]):
        dets = false_positive[detections["image"][false_positive] == image]
        gts = np.flatnonzero(ground_truth["image"] == image)
        if gts.size == 0:
            detections["kind"][dets] = "background"
            continue
        det_boxes = [list(map(float, results[r]["bbox"])) for r in detections["result"][dets]]
        gt_boxes = [coco_gt.anns[int(a)]["bbox"] for a in ground_truth["annotation"][gts]]
        iou = np.asarray(mask_utils.iou(det_boxes, gt_boxes, [0] * len(gt_boxes))).reshape(len(dets), len(gts))
        same_class = detections["category"][dets][:, None] == ground_truth["category"][gts][None, :]
        iou_same = np.where(same_class, iou, 0.0)  # (D_fp, G_image)
        iou_other = np.where(same_class, 0.0, iou)
        for row, det in enumerate(dets):
            best_same, best_other = iou_same[row].argmax(), iou_other[row].argmax()
            if background_iou <= iou_same[row, best_same] < foreground_iou:
                kind, target = "localization", gts[best_same]
            elif iou_other[row, best_other] >= foreground_iou:
                kind, target = "classification", gts[best_other]
            elif iou_same[row, best_same] >= foreground_iou:
                kind, target = "duplicate", -1  # its GT is matched, or it would be a true positive
            elif iou[row].max() < background_iou:
                kind, target = "background", -1
            else:
                kind, target = "both", -1
            detections["kind"][det], detections["target"][det] = kind, target
            if target >= 0:
                covered[target] = True
    ground_truth["missed"] = ~ground_truth["matched"] & ~covered


def _fix_to_true_positive(detections, ground_truth, kind: str) -> dict:
    """The oracle for localization and classification errors.

    Each error of ``kind`` takes its target GT's class (and box: its IoU no
    longer matters, only whether it is a true positive); per GT, the
    highest-scoring of the current true positive and these errors is the true
    positive (ties keep the current one) and the rest are dropped.
    """
    category, gt = detections["category"].copy(), detections["gt"].copy()
    keep = np.ones(len(gt), bool)
    true_positive_of = {int(g): d for d, g in enumerate(detections["gt"]) if g >= 0}
    errors = np.flatnonzero(detections["kind"] == kind)
    errors = errors[np.argsort(-detections["score"][errors], kind="stable")]
    for det in errors:
        target = int(detections["target"][det])
        winner = true_positive_of.get(target)
        if winner is None or detections["score"][det] > detections["score"][winner]:
            if winner is not None:
                keep[winner] = False
            true_positive_of[target] = det
            category[det], gt[det] = ground_truth["category"][target], target
        else:
            keep[det] = False
    fixed = dict(detections, category=category, gt=gt)
    return _drop(fixed, ~keep)


def _drop(detections, drop: np.ndarray) -> dict:
    """``detections`` without the rows where ``drop`` is true."""
    return {key: value[~drop] for key, value in detections.items()}


def _count_per_class(ground_truth, selected: np.ndarray) -> dict:
    """Category id → number of ``selected`` GTs, for every category of the ground truth."""
    counts = dict.fromkeys(ground_truth["categories"], 0)
    for category_id, n in zip(*np.unique(ground_truth["category"][selected], return_counts=True)):
        counts[int(category_id)] = int(n)
    return counts


def _mean_average_precision(detections, num_gt_per_class: dict, recall_thresholds: np.ndarray) -> float:
    """COCO's AP at one IoU: ``COCOeval.accumulate``'s interpolation, written out.

    Written here because COCOeval scores its own matching only, and the oracle
    fixes change matches without new boxes. Detections are ordered as COCOeval
    orders them (score descending, ties by image then by result index), so with
    unchanged detections this equals COCOeval's AP.

    Args:
        detections: arrays ``category``, ``score``, ``image``, ``result``, ``gt`` over D.
        num_gt_per_class: category id → number of non-crowd GTs.
        recall_thresholds: COCO's 101 recall points.

    Returns:
        the mean over classes with at least one GT of the 101-point
        interpolated precision; 0.0 when no class has a GT.
    """
    class_aps = []
    for category_id, num_gt in num_gt_per_class.items():
        if num_gt == 0:
            continue  # COCO leaves classes without ground truth out of the mean
        rows = np.flatnonzero(detections["category"] == category_id)
        order = np.lexsort((detections["result"][rows], detections["image"][rows], -detections["score"][rows]))
        is_tp = detections["gt"][rows][order] >= 0
        tp_sum, fp_sum = np.cumsum(is_tp), np.cumsum(~is_tp)
        recall = tp_sum / num_gt
        precision = tp_sum / (tp_sum + fp_sum + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # precision envelope
        # Precision at each recall threshold: at the first detection reaching it, 0 where none does.
        at = np.searchsorted(recall, recall_thresholds, side="left")
        reached = at < len(precision)
        interpolated = np.zeros(len(recall_thresholds))
        interpolated[reached] = precision[at[reached]]
        class_aps.append(float(np.mean(interpolated)))
    return float(np.mean(class_aps)) if class_aps else 0.0
