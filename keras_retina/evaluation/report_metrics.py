"""The numbers of the evaluation report: COCOeval's precision, the TIDE breakdown and a confusion matrix.

:func:`evaluate_results` scores COCO results into an :class:`Evaluation`,
which :mod:`keras_retina.evaluation.report_plots` draws and
:mod:`keras_retina.evaluation.report_markdown` writes up; nothing here
imports matplotlib.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from keras_retina.evaluation.coco import average_precision, load_ground_truth, run_cocoeval, summary_metrics
from keras_retina.evaluation.detections import DRAW_SCORE_THRESHOLD
from keras_retina.evaluation.tide import analyze_errors

#: Detections counted in the confusion matrix and drawn in the gallery score at least this much.
SCORE_THRESHOLD = DRAW_SCORE_THRESHOLD
#: IoU at which the confusion matrix matches a detection to a GT.
MATCH_IOU = 0.5
#: The confusion matrix's extra row (detections matching no GT) and extra column (GTs no detection matched).
BACKGROUND, MISSED = "background", "missed"
#: COCO's area ranges in the order of ``COCOeval.params.areaRng``: all, then the three sizes.
AREA_NAMES = ("all", "small", "medium", "large")
#: The confusion matrix shows its counts (in the picture's cells, and as a table in report.md) up to this many classes.
ANNOTATED_CLASSES = 20


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What the report is made of (from :func:`evaluate_results`, or :func:`keras_retina.evaluation.report.collect`).

    ``C`` classes in ``category_ids`` order; ``T`` = 10 IoU thresholds,
    ``R`` = 101 recall points and ``A`` = 4 area ranges (:data:`AREA_NAMES`)
    as in pycocotools' ``COCOeval``.

    Attributes:
        coco_gt: the ground truth.
        results: COCO results entries ``{"image_id", "category_id", "bbox":
            [x, y, w, h] original pixels, "score"}``.
        image_ids: the evaluated images, sorted.
        class_names: ``C`` names.
        category_ids: ``C`` dataset category ids.
        metrics: :func:`keras_retina.evaluation.coco.coco_evaluate`'s dict (the
            12 summary metrics and ``"per_class_AP"``).
        precision: float ``(T, R, C, A)``: ``COCOeval.eval["precision"]`` at
            100 detections per image; -1 where a class has no GT in the range.
        iou_thresholds: float ``(T,)``, 0.5 to 0.95.
        recall_thresholds: float ``(R,)``, 0 to 1.
        num_gt: int ``(C, A)`` non-crowd GTs of each class in each area range.
        errors: :func:`keras_retina.evaluation.tide.analyze_errors`'s dict.
        confusion: :func:`confusion_matrix`'s dict.
        score_threshold: the confusion matrix's and the gallery's score threshold.
    """

    coco_gt: COCO
    results: list
    image_ids: tuple
    class_names: tuple
    category_ids: tuple
    metrics: dict
    precision: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    num_gt: np.ndarray
    errors: dict
    confusion: dict
    score_threshold: float


def evaluate_results(
    coco_gt: COCO | str,
    results: list[dict],
    class_names: Sequence[str],
    category_ids: Sequence[int],
    *,
    image_ids: Iterable[int] | None = None,
    score_threshold: float = SCORE_THRESHOLD,
) -> Evaluation:
    """COCOeval, the TIDE breakdown and the confusion matrix of COCO results.

    Args:
        coco_gt: a ``COCO`` or the path of an instances JSON.
        results: COCO results entries (:func:`keras_retina.evaluation.coco.detections_to_coco`).
        class_names: ``C`` names of the contiguous classes.
        category_ids: ``C`` dataset category ids, each one of ``coco_gt``'s.
        image_ids: evaluate only these images (default: all in ``coco_gt``).
        score_threshold: of the confusion matrix, in [0, 1].

    Returns:
        an :class:`Evaluation`.

    Raises:
        ValueError: ``class_names`` and ``category_ids`` of different lengths,
            a category id ``coco_gt`` lacks, ``score_threshold`` outside [0, 1].

    Example:
        >>> import contextlib, io
        >>> gt = COCO()
        >>> gt.dataset = {"images": [{"id": 1, "width": 100, "height": 100}],
        ...               "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        ...               "annotations": [
        ...     {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
        ...     {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0}]}
        >>> with contextlib.redirect_stdout(io.StringIO()): gt.createIndex()
        >>> results = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "score": 0.9},
        ...            {"image_id": 1, "category_id": 1, "bbox": [50, 50, 40, 40], "score": 0.8}]
        >>> report = evaluate_results(gt, results, ["cat", "dog"], [1, 2])
        >>> report.metrics["AP50"], report.errors["errors"]["classification"]
        (0.5, 0.5)
        >>> report.confusion["matrix"]   # rows: cat, dog, background; columns: cat, dog, missed
        array([[1, 0, 0],
               [1, 0, 0],
               [0, 0, 0]])
    """
    class_names, category_ids = tuple(str(n) for n in class_names), tuple(int(c) for c in category_ids)
    if len(class_names) != len(category_ids):
        raise ValueError(
            f"class_names and category_ids must have one entry per class, got {len(class_names)} names and "
            f"{len(category_ids)} category ids."
        )
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold!r}.")
    coco_gt = load_ground_truth(coco_gt)
    unknown = [c for c in category_ids if c not in coco_gt.cats]
    if unknown:
        raise ValueError(f"category_ids {unknown} are not categories of the ground truth ({sorted(coco_gt.cats)}).")
    image_ids = tuple(sorted(coco_gt.getImgIds() if image_ids is None else set(int(i) for i in image_ids)))
    results = [dict(entry) for entry in results]  # pycocotools' loadRes adds keys to the entries it loads

    evaluator = run_cocoeval(coco_gt, results, image_ids)
    columns = [list(evaluator.params.catIds).index(c) for c in category_ids]
    # (T, R, K, A, M) -> (T, R, C, A): 100 detections, classes in category_ids order (two steps: one
    # fancy index with a list and an integer would move the class axis first).
    precision = evaluator.eval["precision"][..., -1][:, :, columns, :]
    return Evaluation(
        coco_gt=coco_gt,
        results=results,
        image_ids=image_ids,
        class_names=class_names,
        category_ids=category_ids,
        metrics=summary_metrics(evaluator),
        precision=precision,
        iou_thresholds=np.asarray(evaluator.params.iouThrs),
        recall_thresholds=np.asarray(evaluator.params.recThrs),
        num_gt=_count_gt(coco_gt, image_ids, category_ids, evaluator.params.areaRng),
        errors=analyze_errors(coco_gt, results, image_ids=image_ids),
        confusion=confusion_matrix(
            coco_gt, results, category_ids, image_ids=image_ids, score_threshold=score_threshold
        ),
        score_threshold=float(score_threshold),
    )


def confusion_matrix(
    coco_gt: COCO,
    results: list[dict],
    category_ids: Sequence[int],
    *,
    image_ids: Iterable[int] | None = None,
    score_threshold: float = SCORE_THRESHOLD,
    iou_threshold: float = MATCH_IOU,
) -> dict:
    """Which class each GT was detected as, at one IoU, greedily by score.

    Per image, the detections scoring ``>= score_threshold`` are matched in
    two greedy passes by decreasing score: first each takes the not yet
    taken non-crowd GT of its own class with the largest IoU
    ``>= iou_threshold`` (COCO's matching, so the diagonal holds COCO's true
    positives at that IoU); then each detection left takes the not yet taken
    GT of another class with the largest such IoU (a misclassification). A
    detection left after both is ignored if it lies on a crowd region
    (COCO's crowd IoU ``>= iou_threshold``), and is a false detection
    otherwise (background, or a duplicate of a GT already taken). GTs that
    no detection took are missed. Written here because pycocotools matches
    within a class only.

    Args:
        coco_gt: the ground truth.
        results: COCO results entries (original pixels).
        category_ids: ``C`` dataset category ids: the matrix's class order.
        image_ids: only these images (default: all in ``coco_gt``).
        score_threshold: detections below it are left out, in [0, 1].
        iou_threshold: IoU of a match, in (0, 1].

    Returns:
        dict with

        - ``"matrix"``: int64 ``(C + 1, C + 1)``; ``[i, j]`` GTs of class
          ``i`` taken by a detection of class ``j``, ``[i, C]`` GTs of class
          ``i`` missed, ``[C, j]`` false detections of class ``j``, ``[C, C]`` 0;
        - ``"per_image"``: image id → ``{"missed", "wrong_class", "false"}`` counts.

    Raises:
        ValueError: a result or GT whose category is not in ``category_ids``.

    Example:
        Two GTs: one detected with the wrong class, one missed; one detection on background.

        >>> import contextlib, io
        >>> gt = COCO()
        >>> gt.dataset = {"images": [{"id": 1, "width": 200, "height": 100}],
        ...               "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        ...               "annotations": [
        ...     {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
        ...     {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 40, 40], "area": 1600, "iscrowd": 0}]}
        >>> with contextlib.redirect_stdout(io.StringIO()): gt.createIndex()
        >>> results = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 40, 40], "score": 0.9},
        ...            {"image_id": 1, "category_id": 1, "bbox": [150, 0, 40, 40], "score": 0.8}]
        >>> confusion = confusion_matrix(gt, results, [1, 2])
        >>> confusion["matrix"]   # rows: cat, dog, background; columns: cat, dog, missed
        array([[0, 1, 0],
               [0, 0, 1],
               [1, 0, 0]])
        >>> confusion["per_image"][1]
        {'missed': 1, 'wrong_class': 1, 'false': 1}
    """
    category_ids = tuple(int(c) for c in category_ids)
    index_of = {category_id: i for i, category_id in enumerate(category_ids)}
    num_classes = len(category_ids)
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else set(int(i) for i in image_ids))
    wanted = set(image_ids)
    detections_of = defaultdict(list)
    for index, entry in enumerate(results):
        if entry["category_id"] not in index_of:
            raise ValueError(
                f"results[{index}] has category_id={entry['category_id']}; expected one of category_ids {category_ids}."
            )
        if entry["score"] >= score_threshold and entry["image_id"] in wanted:
            detections_of[entry["image_id"]].append(entry)
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    per_image = {}
    for image_id in image_ids:
        annotations = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        for annotation in annotations:
            if annotation["category_id"] not in index_of:
                raise ValueError(
                    f"Annotation {annotation['id']} of image {image_id} has category_id={annotation['category_id']}; "
                    f"expected one of category_ids {category_ids}."
                )
        gt_class = np.asarray([index_of[a["category_id"]] for a in annotations], np.int64)
        crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in annotations], bool)
        detections = sorted(detections_of.get(image_id, []), key=lambda entry: -entry["score"])  # stable for ties
        if detections and annotations:
            iou = np.asarray(
                mask_utils.iou(
                    [[float(v) for v in d["bbox"]] for d in detections],
                    [[float(v) for v in a["bbox"]] for a in annotations],
                    [int(c) for c in crowd],
                )
            ).reshape(len(detections), len(annotations))  # (D, G)
        else:
            iou = np.zeros((len(detections), len(annotations)))
        det_class = np.asarray([index_of[d["category_id"]] for d in detections], np.int64)
        taken = np.zeros(len(annotations), bool)
        matched = np.zeros(len(detections), bool)
        counts = {"missed": 0, "wrong_class": 0, "false": 0}
        for same_class in (True, False):  # COCO's matching first, then misclassifications
            for row in np.flatnonzero(~matched):
                class_ok = (gt_class == det_class[row]) == same_class
                candidates = ~crowd & ~taken & (iou[row] >= iou_threshold) & class_ok
                if candidates.any():
                    gt = int(np.argmax(np.where(candidates, iou[row], -1.0)))
                    taken[gt] = matched[row] = True
                    matrix[gt_class[gt], det_class[row]] += 1
                    counts["wrong_class"] += int(not same_class)
        for row in np.flatnonzero(~matched):
            if not (crowd & (iou[row] >= iou_threshold)).any():  # on a crowd region: COCO ignores it
                matrix[num_classes, det_class[row]] += 1
                counts["false"] += 1
        for gt in np.flatnonzero(~crowd & ~taken):
            matrix[gt_class[gt], num_classes] += 1
            counts["missed"] += 1
        per_image[image_id] = counts
    return {"matrix": matrix, "per_image": per_image}


def worst_images(confusion: dict, count: int) -> list[int]:
    """The ``count`` image ids with the most errors (missed + wrong class + false), most first; ties by id.

    Images without errors are left out.

    Example:
        >>> worst_images({"per_image": {1: {"missed": 1, "wrong_class": 0, "false": 0},
        ...                             2: {"missed": 0, "wrong_class": 0, "false": 0},
        ...                             3: {"missed": 2, "wrong_class": 1, "false": 0}}}, 8)
        [3, 1]
    """
    totals = {image_id: sum(counts.values()) for image_id, counts in confusion["per_image"].items()}
    ranked = sorted((image_id for image_id, total in totals.items() if total > 0), key=lambda i: (-totals[i], i))
    return ranked[: max(int(count), 0)]


def _count_gt(coco_gt: COCO, image_ids, category_ids, area_ranges) -> np.ndarray:
    """int ``(C, A)``: non-crowd GTs per class and area range, as COCOeval counts them (ends included)."""
    index_of = {category_id: i for i, category_id in enumerate(category_ids)}
    counts = np.zeros((len(category_ids), len(area_ranges)), np.int64)
    for annotation in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=list(image_ids))):
        if annotation.get("iscrowd", 0) or annotation.get("ignore", 0) or annotation["category_id"] not in index_of:
            continue
        for a, (low, high) in enumerate(area_ranges):
            counts[index_of[annotation["category_id"]], a] += int(low <= annotation["area"] <= high)
    return counts


def iou_index(collected: Evaluation, iou: float) -> int:
    """The position of the IoU threshold nearest ``iou`` in ``collected.iou_thresholds``."""
    return int(np.argmin(np.abs(collected.iou_thresholds - iou)))


def overall_curve(precision_rc: np.ndarray) -> np.ndarray:
    """``(R,)`` precision averaged over the classes with GT of ``(R, C)`` (its mean over R is the AP)."""
    has_gt = precision_rc[0] > -1
    return precision_rc[:, has_gt].mean(axis=1) if has_gt.any() else np.zeros(precision_rc.shape[0])


def class_table(collected: Evaluation) -> list[dict]:
    """Per class: name, GTs, AP, AP50, AP75, APs, APm, APl (-1 where the class has no GT in the range)."""
    p, t50, t75 = collected.precision, iou_index(collected, 0.5), iou_index(collected, 0.75)
    rows = []
    for k, name in enumerate(collected.class_names):
        rows.append(
            {
                "class": name,
                "gt": int(collected.num_gt[k, 0]),
                "AP": average_precision(p[:, :, k, 0]),
                "AP50": average_precision(p[t50, :, k, 0]),
                "AP75": average_precision(p[t75, :, k, 0]),
                "APs": average_precision(p[:, :, k, 1]),
                "APm": average_precision(p[:, :, k, 2]),
                "APl": average_precision(p[:, :, k, 3]),
            }
        )
    return rows
