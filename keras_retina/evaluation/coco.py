"""COCO's bbox metric with pycocotools: results in COCO's format, scored; the metrics printed and written.

:func:`run_cocoeval` is the one place pycocotools' COCOeval runs: the metric
(:func:`coco_evaluate`), the evaluation report and the TIDE breakdown all
score detections through it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Iterable, Sequence

import numpy as np
from absl import logging
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

#: Summary metrics in the order pycocotools' COCOeval.stats holds them.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def detections_to_coco(
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    num_detections: np.ndarray,
    image_ids: Sequence[int],
    category_ids: Sequence[int],
) -> list[dict]:
    """Converts a batch of detections to COCO results entries.

    Args:
        boxes_xyxy: ``(B, D, 4)`` xyxy boxes in original image pixels (see
            :func:`keras_retina.data.to_original_pixels`).
        scores: ``(B, D)``.
        classes: ``(B, D)`` contiguous class ids.
        num_detections: ``(B,)`` valid rows per image.
        image_ids: ``B`` COCO image ids.
        category_ids: the dataset's category id of each contiguous class.

    Returns:
        list of ``{"image_id", "category_id", "bbox": [x, y, w, h] original
        pixels, "score"}``; boxes of zero width or height (detections in the
        padding, clipped to the original image) are left out.

    Example:
        >>> detections_to_coco(np.array([[[10., 10., 30., 50.]]]), np.array([[0.9]]),
        ...                    np.array([[0]]), np.array([1]), [42], [7])
        [{'image_id': 42, 'category_id': 7, 'bbox': [10.0, 10.0, 20.0, 40.0], 'score': 0.9}]
    """
    results = []
    for b, image_id in enumerate(image_ids):
        n = int(num_detections[b])
        boxes = np.asarray(boxes_xyxy[b, :n], np.float64)
        for box, score, cls in zip(boxes, scores[b, :n], classes[b, :n]):
            x1, y1, x2, y2 = (float(v) for v in box)
            if x2 <= x1 or y2 <= y1:
                continue  # a detection in the padding, empty once clipped to the image
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[int(cls)]),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(score), 5),
                }
            )
    return results


def load_ground_truth(coco_gt: COCO | str | os.PathLike) -> COCO:
    """``coco_gt`` itself, or the instances JSON at that path loaded (quietly)."""
    if isinstance(coco_gt, (str, os.PathLike)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(str(coco_gt))
    return coco_gt


def run_cocoeval(
    coco_gt: COCO,
    results: list[dict],
    image_ids: Iterable[int] | None = None,
    *,
    iou_thresholds: Sequence[float] | None = None,
    area_ranges: Sequence[str] | None = None,
    max_detections: Sequence[int] | None = None,
    accumulate: bool = True,
) -> COCOeval:
    """pycocotools' bbox COCOeval of ``results``, evaluated, without printing.

    Every COCO evaluation of the package goes through here, so that the
    metric, the report and the TIDE breakdown score detections alike.

    Args:
        coco_gt: the ground truth. Annotations without ``"area"`` get their
            box's (``w * h``) and those without ``"iscrowd"`` 0, in place:
            the COCO format lets a file leave them out (keras_retina's reader
            does not need them) but COCOeval reads both.
        results: COCO results entries ``{"image_id", "category_id", "bbox":
            [x, y, w, h] pixels, "score"}`` (see :func:`detections_to_coco`);
            pycocotools' ``loadRes`` adds ``"area"``, ``"id"`` (1, 2, ... in
            order), ``"iscrowd"`` and ``"segmentation"`` to them. An empty list
            is evaluated as no detections.
        image_ids: evaluate only these images (default: all in ``coco_gt``).
        iou_thresholds: ``params.iouThrs``; None: COCO's 0.50:0.05:0.95.
        area_ranges: names of the area ranges to keep, of ``"all"``,
            ``"small"``, ``"medium"``, ``"large"``; None: all four.
        max_detections: ``params.maxDets``; None: COCO's ``(1, 10, 100)``.
        accumulate: also accumulate (``eval["precision"]``, ``eval["recall"]``)
            and, with COCO's default parameters, summarize (``stats``, the 12
            metrics of :data:`METRIC_NAMES`). False: ``evaluate`` only
            (``evalImgs``, the per-image matching).

    Returns:
        the ``pycocotools.cocoeval.COCOeval``.

    Raises:
        ValueError: an area range name pycocotools does not know.

    Example:
        >>> gt = COCO()
        >>> gt.dataset = {"images": [{"id": 1, "width": 100, "height": 100}],
        ...               "categories": [{"id": 7, "name": "circle"}],
        ...               "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40],
        ...                                "area": 1600, "iscrowd": 0}]}
        >>> with contextlib.redirect_stdout(io.StringIO()): gt.createIndex()
        >>> half = {"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 20], "score": 0.9}   # IoU 0.5
        >>> evaluator = run_cocoeval(gt, [half])
        >>> round(float(evaluator.stats[1]), 3), round(float(evaluator.stats[0]), 3)   # AP50; AP: 1 of 10 IoUs
        (1.0, 0.1)
    """
    _fill_optional_fields(coco_gt)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results) if results else _no_detections(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        params = evaluator.params
        params.imgIds = sorted(coco_gt.getImgIds() if image_ids is None else set(int(i) for i in image_ids))
        if iou_thresholds is not None:
            params.iouThrs = np.asarray(iou_thresholds, np.float64)
        if area_ranges is not None:
            unknown = [name for name in area_ranges if name not in params.areaRngLbl]
            if unknown:
                raise ValueError(f"area_ranges {unknown} are not COCO's; expected names of {params.areaRngLbl}.")
            params.areaRng = [params.areaRng[params.areaRngLbl.index(name)] for name in area_ranges]
            params.areaRngLbl = list(area_ranges)
        if max_detections is not None:
            params.maxDets = [int(m) for m in max_detections]
        evaluator.evaluate()
        if accumulate:
            evaluator.accumulate()
            if iou_thresholds is None and area_ranges is None and max_detections is None:
                evaluator.summarize()  # fills stats; it supports only the default parameters
    return evaluator


def _fill_optional_fields(coco_gt: COCO) -> None:
    """Gives ground-truth annotations without ``area`` their box's and those without ``iscrowd`` 0."""
    # The index (anns, imgToAnns) holds these same dicts, so it sees the fields too.
    for annotation in coco_gt.dataset.get("annotations", []):
        if "area" not in annotation:
            _, _, width, height = annotation["bbox"]
            annotation["area"] = float(width) * float(height)
        annotation.setdefault("iscrowd", 0)


def _no_detections(coco_gt: COCO) -> COCO:
    """Empty detections on ``coco_gt``'s images: pycocotools' ``loadRes`` cannot load an empty list."""
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []
    }
    coco_dt.createIndex()
    return coco_dt


def average_precision(precision: np.ndarray) -> float:
    """COCO's AP of a slice of ``COCOeval.eval["precision"]``: the mean of its entries other than -1.

    -1 marks a class without ground truth in the area range; an AP over
    none is -1 too, as in pycocotools' summary.

    Example:
        >>> average_precision(np.array([[1.0, 0.5], [-1.0, -1.0]])), average_precision(np.full(3, -1.0))
        (0.75, -1.0)
    """
    values = precision[precision > -1]
    return float(values.mean()) if values.size else -1.0


def summary_metrics(evaluator: COCOeval) -> dict:
    """:func:`coco_evaluate`'s dict from an accumulated, summarized :func:`run_cocoeval`.

    An evaluation of no detections gives 0 for every metric and class (not
    pycocotools' -1 for an empty size bucket or a class without ground truth).
    """
    coco_gt = evaluator.cocoGt
    if not evaluator.cocoDt.anns:
        metrics = {name: 0.0 for name in METRIC_NAMES}
        metrics["per_class_AP"] = {cat["name"]: 0.0 for cat in coco_gt.loadCats(coco_gt.getCatIds())}
        return metrics
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats)}
    # precision: (iou thresholds, recall points, classes, area ranges, max dets); area "all", 100 detections.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    metrics["per_class_AP"] = {
        coco_gt.cats[int(category_id)]["name"]: average_precision(precision[:, :, k])
        for k, category_id in enumerate(evaluator.params.catIds)
    }
    return metrics


def coco_evaluate(
    coco_gt: COCO | str,
    results: list[dict],
    image_ids: Iterable[int] | None = None,
    verbose: bool = True,
) -> dict:
    """Runs pycocotools' bbox COCOeval.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` or the path of an instances JSON.
        results: COCO results entries (see :func:`detections_to_coco`).
        image_ids: evaluate only these images (default: all in ``coco_gt``).
        verbose: print pycocotools' summary table.

    Returns:
        dict with the 12 summary metrics (:data:`METRIC_NAMES`, in [0, 1];
        -1 where a size bucket is empty) and ``"per_class_AP"``: category name
        → AP at IoU 0.50:0.95 (-1 where the class has no ground truth). No
        detections: every value 0.

    Example:
        >>> import json, tempfile
        >>> gt = {"images": [{"id": 1, "width": 100, "height": 100}],
        ...       "categories": [{"id": 7, "name": "circle"}],
        ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40],
        ...                        "area": 1600, "iscrowd": 0}]}
        >>> path = tempfile.mktemp(suffix=".json"); json.dump(gt, open(path, "w"))
        >>> results = [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 40, 40], "score": 0.9}]
        >>> metrics = coco_evaluate(path, results, verbose=False)
        >>> round(metrics["AP"], 3), round(metrics["per_class_AP"]["circle"], 3)
        (1.0, 1.0)
    """
    evaluator = run_cocoeval(load_ground_truth(coco_gt), results, image_ids)
    if verbose and results:
        evaluator.summarize()  # prints the table; run_cocoeval ran it quietly
    return summary_metrics(evaluator)


def format_metrics(metrics: dict) -> str:
    """A plain-text table of the summary and per-class APs."""
    lines = ["metric  value"]
    lines += [f"{name:<7} {metrics[name]:.4f}" for name in METRIC_NAMES[:6]]
    per_class = metrics.get("per_class_AP", {})
    if per_class:
        width = max(len(name) for name in per_class)
        lines.append("")
        lines.append(f"{'class':<{width}}  AP")
        lines += [f"{name:<{width}}  {ap:.4f}" for name, ap in per_class.items()]
    return "\n".join(lines)


def write_metrics(metrics: dict, path: str) -> None:
    """Writes ``metrics`` as JSON (creating the directory)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    logging.info("Wrote %s", path)
