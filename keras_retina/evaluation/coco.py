"""COCO's bbox metric with pycocotools: results in COCO's format, scored; the metrics printed and written."""

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
        → AP at IoU 0.50:0.95 (-1 where the class has no ground truth).

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
    if isinstance(coco_gt, (str, os.PathLike)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(str(coco_gt))
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else set(int(i) for i in image_ids))
    if not results:
        # pycocotools cannot load an empty result list; no detections = zero AP.
        metrics = {name: 0.0 for name in METRIC_NAMES}
        metrics["per_class_AP"] = {cat["name"]: 0.0 for cat in coco_gt.loadCats(coco_gt.getCatIds())}
        return metrics
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
    evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
    evaluator.params.imgIds = image_ids
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(summary.getvalue(), end="")
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats)}
    # precision: (iou thresholds, recall points, classes, area ranges, max dets).
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        per_class[coco_gt.cats[int(cat_id)]["name"]] = float(values.mean()) if values.size else -1.0
    metrics["per_class_AP"] = per_class
    return metrics


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
