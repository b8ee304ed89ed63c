"""The evaluation report: why the AP is what it is, in PNGs, a ``report.md`` and TensorBoard.

:func:`write_report` = :func:`collect` (detections on an evaluation pipeline,
then :func:`evaluate_results`: COCOeval, the TIDE breakdown and the confusion
matrix) followed by :func:`write`, which fills ``output_dir``
(``<model_dir>/report/`` for ``--mode=evaluate`` and ``python main.py``)::

    report.md              the key numbers in tables, linking the pictures below
    error_breakdown.png    AP50 gained by fixing each TIDE error type (error_analysis.analyze_errors)
    pr_overall.png         precision-recall over all classes at IoU 0.5, 0.75 and averaged over 0.5:0.95
    pr_per_class.png       the same curves for each class
    ap_by_size.png         AP of small / medium / large objects (COCO's area ranges)
    confusion_matrix.png   GT class x predicted class at IoU 0.5, detections scoring >= 0.3
    gallery.png            the images with the most missed, misclassified and false detections

and, given ``tensorboard_dir``, the same pictures as ``tf.summary.image``.

Curves and charts are drawn with matplotlib (the maintained plotting library;
Pillow has no axes, ticks or legends), through ``matplotlib.figure.Figure``
rather than ``pyplot``: no global state and no GUI backend, the PNGs are
rendered by Agg. The gallery reuses :mod:`keras_retina.visualize`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keras_retina import evaluation, visualize
from keras_retina.evaluation.tide import ERROR_TYPES, SPECIAL_ERROR_TYPES, analyze_errors

#: Where runs write the report, under the run directory.
REPORT_DIR = "report"
#: The report's Markdown file, in ``output_dir``.
REPORT_FILE = "report.md"
#: Detections counted in the confusion matrix and drawn in the gallery score at least this much.
SCORE_THRESHOLD = evaluation.DRAW_SCORE_THRESHOLD
#: IoU at which the confusion matrix matches a detection to a GT.
MATCH_IOU = 0.5
#: The confusion matrix's extra row (detections matching no GT) and extra column (GTs no detection matched).
BACKGROUND, MISSED = "background", "missed"
#: COCO's area ranges in the order of ``COCOeval.params.areaRng``: all, then the three sizes.
AREA_NAMES = ("all", "small", "medium", "large")
#: The report's pictures: key → PNG file name, in the order report.md shows them.
PICTURES = {
    "error_breakdown": "error_breakdown.png",
    "pr_overall": "pr_overall.png",
    "pr_per_class": "pr_per_class.png",
    "ap_by_size": "ap_by_size.png",
    "confusion_matrix": "confusion_matrix.png",
    "gallery": "gallery.png",
}
# Gallery cells larger than this (pixels, longer side) are shrunk, so a 1024-px run's gallery stays small.
_GALLERY_CELL_SIZE = 320
# The confusion matrix prints its counts in the cells up to this many classes (and as a table in report.md).
_ANNOTATED_CLASSES = 20


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What the report is made of (from :func:`collect` or :func:`evaluate_results`).

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
        metrics: :func:`keras_retina.evaluation.coco_evaluate`'s dict (the
            12 summary metrics and ``"per_class_AP"``).
        precision: float ``(T, R, C, A)``: ``COCOeval.eval["precision"]`` at
            100 detections per image; -1 where a class has no GT in the range.
        iou_thresholds: float ``(T,)``, 0.5 to 0.95.
        recall_thresholds: float ``(R,)``, 0 to 1.
        num_gt: int ``(C, A)`` non-crowd GTs of each class in each area range.
        errors: :func:`keras_retina.evaluation.analyze_errors`'s dict.
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


# ------------------------------------------------------------------ entry points
def write_report(
    model,
    dataset: tf.data.Dataset,
    coco_gt: COCO | str,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    output_dir: str,
    *,
    score_threshold: float = SCORE_THRESHOLD,
    gallery_size: int = 8,
    tensorboard_dir: str | None = None,
    step: int | None = None,
    verbose: bool = False,
    detections: tuple[list, list] | None = None,
) -> Evaluation:
    """Evaluates ``model`` on ``dataset`` and writes the report (``report.md`` and PNGs) to ``output_dir``.

    Args:
        model: a :class:`keras_retina.RetinaNet`.
        dataset: an evaluation pipeline (:func:`keras_retina.data.make_pipeline`
            with ``training=False``, or :meth:`keras_retina.data.run_data.RunData.pipeline`
            ``("val")``); read twice: once for the detections, once (up to
            the last gallery image) for the gallery's pictures.
        coco_gt: its ground truth, a ``COCO`` or the path of an instances JSON.
        class_names: name of each contiguous class.
        category_ids: the dataset's category id of each contiguous class.
        output_dir: the report's folder (created).
        score_threshold: detections counted in the confusion matrix and drawn
            in the gallery score at least this much, in [0, 1].
        gallery_size: images in the gallery.
        tensorboard_dir: also write the pictures there as ``tf.summary.image``; None: don't.
        step: the TensorBoard step; None: the model's optimizer step (0 without one).
        verbose: progress bar.
        detections: ``(results, image_ids)`` of ``model`` on ``dataset``
            already made (:func:`keras_retina.evaluation.predict_to_coco`, or
            a training run's ``val_detections.json``): the report uses them
            instead of detecting again.

    Returns:
        the :class:`Evaluation`; its ``metrics`` are
        :func:`keras_retina.evaluation.evaluate_model`'s.

    Example:
        >>> import tempfile
        >>> from keras_retina.data import make_shapes_splits, CocoJsonSource, make_pipeline
        >>> files = make_shapes_splits(tempfile.mkdtemp(), 1, 2, image_size=(64, 64), verbose=False)["val"]
        >>> source = CocoJsonSource(files.annotation_file, files.image_dir)
        >>> dataset = make_pipeline(source.dataset(), image_size=64, batch_size=2, training=False)
        >>> model = kr.RetinaNet(num_classes=5, backbone="tiny", fpn_channels=16, head_channels=16, num_head_convs=1)
        >>> output_dir = tempfile.mkdtemp()
        >>> result = write_report(model, dataset, files.annotation_file, source.class_names,
        ...                       source.category_ids, output_dir)
        >>> result.metrics["AP"] <= 1.0, os.path.exists(os.path.join(output_dir, "report.md"))
        (True, True)
    """
    start = time.perf_counter()
    if detections is None:
        collected = collect(
            model, dataset, coco_gt, class_names, category_ids, score_threshold=score_threshold, verbose=verbose
        )
    else:
        results, image_ids = detections
        collected = evaluate_results(
            coco_gt, results, class_names, category_ids, image_ids=image_ids, score_threshold=score_threshold
        )
    if step is None:
        optimizer = getattr(model, "optimizer", None)
        step = int(optimizer.iterations.numpy()) if optimizer is not None else 0
    path = write(collected, output_dir, dataset, gallery_size=gallery_size, tensorboard_dir=tensorboard_dir, step=step)
    logging.info("Wrote %s in %.1f s.", path, time.perf_counter() - start)
    return collected


def collect(
    model,
    dataset: tf.data.Dataset,
    coco_gt: COCO | str,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    *,
    score_threshold: float = SCORE_THRESHOLD,
    verbose: bool = False,
) -> Evaluation:
    """Detections of ``model`` on every image of ``dataset``, evaluated (:func:`evaluate_results`).

    Arguments as for :func:`write_report`.
    """
    results, image_ids = evaluation.predict_to_coco(model, dataset, category_ids, verbose=verbose)
    return evaluate_results(
        coco_gt, results, class_names, category_ids, image_ids=image_ids, score_threshold=score_threshold
    )


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
        results: COCO results entries (:func:`keras_retina.evaluation.detections_to_coco`).
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
    if isinstance(coco_gt, (str, os.PathLike)):
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(str(coco_gt))
    unknown = [c for c in category_ids if c not in coco_gt.cats]
    if unknown:
        raise ValueError(f"category_ids {unknown} are not categories of the ground truth ({sorted(coco_gt.cats)}).")
    image_ids = tuple(sorted(coco_gt.getImgIds() if image_ids is None else set(int(i) for i in image_ids)))
    results = [dict(entry) for entry in results]  # pycocotools' loadRes adds keys to the entries it loads

    evaluator = _run_cocoeval(coco_gt, results, image_ids)
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
        metrics=_metrics(coco_gt, evaluator, bool(results)),
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


# ------------------------------------------------------------ confusion matrix
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


# ------------------------------------------------------------------- writing
def write(
    collected: Evaluation,
    output_dir: str,
    dataset: tf.data.Dataset | None = None,
    *,
    gallery_size: int = 8,
    tensorboard_dir: str | None = None,
    step: int = 0,
) -> str:
    """Writes the report of ``collected``: ``report.md`` and the PNGs of :data:`PICTURES`.

    Args:
        collected: from :func:`collect` or :func:`evaluate_results`.
        output_dir: the report's folder (created; earlier report files in it are replaced).
        dataset: the evaluation pipeline the results come from, for the
            gallery's pictures; None: no gallery.
        gallery_size: images in the gallery (those with the most missed,
            misclassified and false detections; none without errors).
        tensorboard_dir: also write the pictures there as ``tf.summary.image``; None: don't.
        step: the TensorBoard step.

    Returns:
        the path of ``report.md``.
    """
    os.makedirs(output_dir, exist_ok=True)
    for name in PICTURES.values():  # a picture this report has not (a gallery) must not linger from an earlier one
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(output_dir, name))
    pictures = {
        "error_breakdown": _plot_error_breakdown(collected),
        "pr_overall": _plot_pr_overall(collected),
        "pr_per_class": _plot_pr_per_class(collected),
        "ap_by_size": _plot_ap_by_size(collected),
        "confusion_matrix": _plot_confusion(collected),
    }
    gallery_ids = worst_images(collected.confusion, gallery_size) if dataset is not None else []
    if gallery_ids:
        pictures["gallery"] = _draw_gallery(collected, dataset, gallery_ids)
    paths = {}
    for key, picture in pictures.items():
        paths[key] = os.path.join(output_dir, PICTURES[key])
        if isinstance(picture, Figure):
            picture.savefig(paths[key], format="png")
        else:
            Image.fromarray(picture).save(paths[key], format="PNG")
    report_path = os.path.join(output_dir, REPORT_FILE)
    with open(report_path, "w") as f:
        f.write(_markdown(collected, gallery_ids))
    if tensorboard_dir:
        writer = tf.summary.create_file_writer(tensorboard_dir)
        with writer.as_default():
            for key, path in paths.items():
                image = np.asarray(Image.open(path).convert("RGB"))
                tf.summary.image(f"report/{key}", image[None], step=int(step))
        writer.close()
    return report_path


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


# ------------------------------------------------------------------- numbers
def _run_cocoeval(coco_gt: COCO, results: list[dict], image_ids: Sequence[int]) -> COCOeval:
    """pycocotools' bbox COCOeval, evaluated, accumulated and summarized (quietly)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:  # loadRes cannot load an empty list; COCOeval scores none as 0 AP
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []
            }
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


def _metrics(coco_gt: COCO, evaluator: COCOeval, has_results: bool) -> dict:
    """:func:`keras_retina.evaluation.coco_evaluate`'s dict, from an evaluated ``COCOeval``."""
    if not has_results:  # as coco_evaluate: no detections, every metric 0
        metrics = {name: 0.0 for name in evaluation.METRIC_NAMES}
        metrics["per_class_AP"] = {cat["name"]: 0.0 for cat in coco_gt.loadCats(coco_gt.getCatIds())}
        return metrics
    metrics = {name: float(value) for name, value in zip(evaluation.METRIC_NAMES, evaluator.stats)}
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K): area "all", 100 detections
    per_class = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        values = values[values > -1]
        per_class[coco_gt.cats[int(category_id)]["name"]] = float(values.mean()) if values.size else -1.0
    metrics["per_class_AP"] = per_class
    return metrics


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


def _mean_valid(values: np.ndarray) -> float:
    """Mean of the entries > -1 (COCO's "no GT" marker); -1 when there are none."""
    values = values[values > -1]
    return float(values.mean()) if values.size else -1.0


def _iou_index(collected: Evaluation, iou: float) -> int:
    return int(np.argmin(np.abs(collected.iou_thresholds - iou)))


def _overall_curve(precision_rc: np.ndarray) -> np.ndarray:
    """``(R,)`` precision averaged over the classes with GT of ``(R, C)`` (its mean over R is the AP)."""
    has_gt = precision_rc[0] > -1
    return precision_rc[:, has_gt].mean(axis=1) if has_gt.any() else np.zeros(precision_rc.shape[0])


def _class_table(collected: Evaluation) -> list[dict]:
    """Per class: name, GTs, AP, AP50, AP75, APs, APm, APl (-1 where the class has no GT in the range)."""
    p, t50, t75 = collected.precision, _iou_index(collected, 0.5), _iou_index(collected, 0.75)
    rows = []
    for k, name in enumerate(collected.class_names):
        rows.append(
            {
                "class": name,
                "gt": int(collected.num_gt[k, 0]),
                "AP": _mean_valid(p[:, :, k, 0]),
                "AP50": _mean_valid(p[t50, :, k, 0]),
                "AP75": _mean_valid(p[t75, :, k, 0]),
                "APs": _mean_valid(p[:, :, k, 1]),
                "APm": _mean_valid(p[:, :, k, 2]),
                "APl": _mean_valid(p[:, :, k, 3]),
            }
        )
    return rows


# ------------------------------------------------------------------ pictures
def _figure(width: float, height: float) -> Figure:
    """A matplotlib figure of ``width`` x ``height`` inches at 100 dpi, laid out to fit."""
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _pr_lines(axes, collected: Evaluation, precision_trc_or_tr: np.ndarray, overall: bool) -> None:
    """Draws the IoU 0.5, 0.75 and 0.5:0.95 curves of ``(T, R, C)`` (overall) or ``(T, R)`` (one class)."""
    recall = collected.recall_thresholds
    curves = [_overall_curve(per_iou) if overall else per_iou for per_iou in precision_trc_or_tr]  # T x (R,)
    for label, curve in (
        ("IoU 0.50", curves[_iou_index(collected, 0.5)]),
        ("IoU 0.75", curves[_iou_index(collected, 0.75)]),
        ("IoU 0.50:0.95", np.mean(curves, axis=0)),
    ):
        axes.plot(recall, curve, label=f"{label} (AP {curve.mean():.3f})")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)


def _plot_pr_overall(collected: Evaluation) -> Figure:
    figure = _figure(5.5, 4.2)
    axes = figure.add_subplot()
    _pr_lines(axes, collected, collected.precision[:, :, :, 0], overall=True)
    axes.set(xlabel="recall", ylabel="precision", title="Precision-recall, all classes (100 detections per image)")
    axes.legend(loc="best")
    return figure


def _plot_pr_per_class(collected: Evaluation) -> Figure:
    num_classes = len(collected.class_names)
    columns = min(4, num_classes)
    rows = -(-num_classes // columns)
    figure = _figure(3.0 * columns, 2.5 * rows)
    for k, row in enumerate(_class_table(collected)):
        axes = figure.add_subplot(rows, columns, k + 1)
        if collected.num_gt[k, 0] == 0:
            axes.text(0.5, 0.5, "no ground truth", ha="center", va="center")
        else:
            _pr_lines(axes, collected, collected.precision[:, :, k, 0], overall=False)
            axes.legend(loc="best", fontsize=6)
        axes.set_title(f"{row['class']}  AP {row['AP']:.3f}", fontsize=9)
        axes.tick_params(labelsize=7)
    figure.supxlabel("recall")
    figure.supylabel("precision")
    return figure


def _plot_ap_by_size(collected: Evaluation) -> Figure:
    figure = _figure(5.0, 3.6)
    axes = figure.add_subplot()
    values = [collected.metrics[name] for name in ("APs", "APm", "APl")]
    objects = collected.num_gt[:, 1:].sum(axis=0)
    labels = [f"{size}\n({n} objects)" for size, n in zip(AREA_NAMES[1:], objects)]
    bars = axes.bar(labels, [max(v, 0.0) for v in values], color=["#4c72b0", "#55a868", "#c44e52"])
    for bar, value in zip(bars, values):
        text = "no objects" if value < 0 else f"{value:.3f}"
        axes.annotate(text, (bar.get_x() + bar.get_width() / 2, max(value, 0.0)),
                      ha="center", va="bottom", xytext=(0, 2), textcoords="offset points")
    axes.set_ylim(0, 1.05)
    axes.set(ylabel="AP (IoU 0.50:0.95)", title="AP by object size (area < 32², < 96², larger)")
    return figure


def _plot_confusion(collected: Evaluation) -> Figure:
    matrix = collected.confusion["matrix"]
    labels = list(collected.class_names)
    size = max(4.5, 0.45 * len(matrix) + 2.5)
    figure = _figure(size, size * 0.9)
    axes = figure.add_subplot()
    rows = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)  # each row's share
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(matrix) <= _ANNOTATED_CLASSES + 1:
        for i, j in zip(*np.nonzero(matrix)):
            axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                      color="white" if shares[i, j] > 0.5 else "black")
    axes.set_xticks(range(len(matrix)), labels + [MISSED], rotation=45, ha="right", fontsize=8)
    axes.set_yticks(range(len(matrix)), labels + [BACKGROUND], fontsize=8)
    axes.set(xlabel="detected as", ylabel="ground truth")
    axes.set_title(f"Confusion at IoU {MATCH_IOU}, detections scoring >= {collected.score_threshold}", fontsize=9)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the row")
    return figure


def _plot_error_breakdown(collected: Evaluation) -> Figure:
    errors = collected.errors
    names = list(ERROR_TYPES) + list(SPECIAL_ERROR_TYPES)
    values = [errors["errors"][n] for n in ERROR_TYPES] + [errors["special"][n] for n in SPECIAL_ERROR_TYPES]
    figure = _figure(6.0, 3.8)
    axes = figure.add_subplot()
    colors = ["#c44e52"] * len(ERROR_TYPES) + ["#8c8c8c"] * len(SPECIAL_ERROR_TYPES)
    positions = np.arange(len(names))[::-1]
    axes.barh(positions, values, color=colors)
    axes.set_yticks(positions, [n.replace("_", " ") for n in names])
    for y, value in zip(positions, values):
        axes.annotate(f"{value:.3f}", (value, y), va="center", xytext=(3, 0), textcoords="offset points", fontsize=8)
    axes.set_xlim(0, max(max(values) * 1.25, 0.05))
    axes.set(xlabel="AP50 gained by fixing it (dAP)",
             title=f"What costs AP (TIDE): AP50 = {errors['ap']:.3f}; grey: all FPs / all FNs")
    return figure


def _draw_gallery(collected: Evaluation, dataset: tf.data.Dataset, image_ids: Sequence[int]) -> np.ndarray:
    """Each image of ``image_ids`` as GT | detections (score >= threshold) with its error counts, tiled."""
    index_of = {category_id: i for i, category_id in enumerate(collected.category_ids)}
    detections_of = defaultdict(list)
    for entry in collected.results:
        if entry["score"] >= collected.score_threshold:
            detections_of[entry["image_id"]].append(entry)
    wanted, cells = set(int(i) for i in image_ids), {}
    for images, y in dataset:
        for b, image_id in enumerate(y["image_id"].numpy()):
            image_id = int(image_id)
            if image_id not in wanted:
                continue
            scale_y, scale_x = (float(s) for s in y["scale"][b].numpy())
            annotations = collected.coco_gt.loadAnns(collected.coco_gt.getAnnIds(imgIds=[image_id]))
            cells[image_id] = _gallery_cell(
                images[b].numpy(),
                (scale_x, scale_y),
                [a["bbox"] for a in annotations],
                [index_of.get(a["category_id"], -1) for a in annotations],
                [d["bbox"] for d in detections_of[image_id]],
                [index_of[d["category_id"]] for d in detections_of[image_id]],
                [d["score"] for d in detections_of[image_id]],
                collected.class_names,
                _caption(image_id, collected.confusion["per_image"][image_id]),
            )
        if len(cells) == len(wanted):
            break  # the rest of the pipeline is not read
    return visualize.tile_images([cells[i] for i in image_ids if i in cells], columns=2)


def _caption(image_id: int, counts: dict) -> str:
    return f"image {image_id}: " + ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items())


def _gallery_cell(
    image, scale_xy, gt_xywh, gt_classes, det_xywh, det_classes, det_scores, class_names, caption
) -> np.ndarray:
    """uint8 ``(14 + S, 2 S + 4, 3)``: a caption over the image with its GT (left) and its detections (right).

    ``image`` is the pipeline's ``(S, S, 3)`` (resized by ``scale_xy``, padded); boxes are xywh original pixels.
    """
    height, width = image.shape[:2]
    shrink = min(1.0, _GALLERY_CELL_SIZE / max(height, width))
    if shrink < 1.0:
        height, width = int(round(height * shrink)), int(round(width * shrink))
        image = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))
        image = np.asarray(image.resize((width, height), Image.BILINEAR))
    factor = np.array([scale_xy[0], scale_xy[1], scale_xy[0], scale_xy[1]]) * shrink

    def xyxy(boxes):  # xywh original pixels -> (N, 4) xyxy pixels of the drawn image
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1) * factor

    ground_truth = visualize.draw_boxes(image, xyxy(gt_xywh), gt_classes, class_names)
    detected = visualize.draw_boxes(image, xyxy(det_xywh), det_classes, class_names, det_scores)
    caption_height, gap = 14, 4
    cell = Image.new("RGB", (2 * width + gap, caption_height + height), (255, 255, 255))
    ImageDraw.Draw(cell).text((2, 1), f"{caption}  (left: ground truth, right: detections)", fill=(0, 0, 0),
                              font=ImageFont.load_default())
    cell.paste(Image.fromarray(ground_truth), (0, caption_height))
    cell.paste(Image.fromarray(detected), (width + gap, caption_height))
    return np.asarray(cell)


# ------------------------------------------------------------------- markdown
def _number(value: float) -> str:
    """``0.123``; ``n/a`` for COCO's -1 (no ground truth in the range)."""
    return "n/a" if value < 0 else f"{value:.3f}"


def _markdown(collected: Evaluation, gallery_ids: Sequence[int]) -> str:
    metrics, errors, matrix = collected.metrics, collected.errors, collected.confusion["matrix"]
    counts = errors["counts"]
    lines = [
        "# Evaluation report",
        "",
        f"{len(collected.image_ids)} images, {int(collected.num_gt[:, 0].sum())} objects, "
        f"{len(collected.results)} detections, {len(collected.class_names)} classes. "
        "AP is COCO's bbox AP (pycocotools), in [0, 1].",
        "",
        "## Key numbers",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    descriptions = {
        "AP": "AP, IoU 0.50:0.95", "AP50": "AP50, IoU 0.50", "AP75": "AP75, IoU 0.75", "APs": "APs, small objects",
        "APm": "APm, medium objects", "APl": "APl, large objects", "AR100": "AR100, recall at 100 detections",
    }
    lines += [f"| {descriptions[name]} | {_number(metrics[name])} |" for name in descriptions]
    lines += [
        "",
        "## What costs AP",
        "",
        "The AP50 gained by fixing each error type alone (TIDE, Bolya et al. 2020; "
        "`keras_retina.evaluation.analyze_errors`). The gains overlap: they need not add up to 1 - AP50.",
        "",
        f"![What costs AP]({PICTURES['error_breakdown']})",
        "",
        f"AP50: {errors['ap']:.3f}",
        "",
        "| error | dAP50 | count | meaning |",
        "| --- | --- | --- | --- |",
    ]
    meanings = {
        "classification": "right place (IoU >= 0.5), wrong class",
        "localization": "right class, box off (IoU 0.1-0.5)",
        "both": "wrong class and box off",
        "duplicate": "a second detection of an already detected object",
        "background": "a detection on no object (IoU < 0.1)",
        "missed": "an object no detection found",
    }
    lines += [f"| {n} | {errors['errors'][n]:.3f} | {counts[n]} | {meanings[n]} |" for n in ERROR_TYPES]
    lines += [
        f"| false positives (all) | {errors['special']['false_positive']:.3f} | | every false positive dropped |",
        f"| false negatives (all) | {errors['special']['false_negative']:.3f} | | every missed object dropped |",
        "",
        "## Precision-recall",
        "",
        f"![Precision-recall, all classes]({PICTURES['pr_overall']})",
        "",
        f"![Precision-recall per class]({PICTURES['pr_per_class']})",
        "",
        "| class | objects | AP | AP50 | AP75 | APs | APm | APl |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in _class_table(collected):
        lines.append(
            f"| {row['class']} | {row['gt']} | "
            + " | ".join(_number(row[key]) for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
            + " |"
        )
    objects = collected.num_gt.sum(axis=0)
    lines += [
        "",
        "## AP by object size",
        "",
        f"![AP by object size]({PICTURES['ap_by_size']})",
        "",
        "| size | area (px²) | objects | AP |",
        "| --- | --- | --- | --- |",
        f"| small | < 32² | {objects[1]} | {_number(metrics['APs'])} |",
        f"| medium | 32² - 96² | {objects[2]} | {_number(metrics['APm'])} |",
        f"| large | > 96² | {objects[3]} | {_number(metrics['APl'])} |",
        "",
        f"## Confusion matrix (IoU {MATCH_IOU}, detections scoring >= {collected.score_threshold})",
        "",
        "Rows: the ground-truth class, and `background` for detections that matched no object. Columns: the class "
        "an object was detected as, and `missed` for objects no detection matched.",
        "",
        f"![Confusion matrix]({PICTURES['confusion_matrix']})",
        "",
    ]
    labels = list(collected.class_names)
    if len(matrix) <= _ANNOTATED_CLASSES + 1:
        lines += ["| ground truth \\ detected | " + " | ".join(labels + [MISSED]) + " |"]
        lines += ["| --- " * (len(matrix) + 1) + "|"]
        for i, label in enumerate(labels + [BACKGROUND]):
            lines.append(f"| {label} | " + " | ".join(str(v) for v in matrix[i]) + " |")
        lines.append("")
    confusions = sorted(
        (
            (int(matrix[i, j]), labels[i], labels[j])
            for i in range(len(labels))
            for j in range(len(labels))
            if i != j and matrix[i, j]
        ),
        reverse=True,
    )[:5]
    if confusions:
        lines += ["Most confused: " + "; ".join(f"{gt} detected as {det}: {n}" for n, gt, det in confusions), ""]
    lines += ["## Images with the most errors", ""]
    if gallery_ids:
        lines += [
            f"Missed, misclassified and false detections at IoU {MATCH_IOU}, score >= {collected.score_threshold}; "
            "each image with its ground truth (left) and detections (right).",
            "",
            f"![Images with the most errors]({PICTURES['gallery']})",
            "",
            "| image | file | missed | wrong class | false |",
            "| --- | --- | --- | --- | --- |",
        ]
        for image_id in gallery_ids:
            c = collected.confusion["per_image"][image_id]
            file_name = collected.coco_gt.imgs[image_id].get("file_name", "")
            lines.append(f"| {image_id} | {file_name} | {c['missed']} | {c['wrong_class']} | {c['false']} |")
    else:
        lines.append(f"No image has a missed, misclassified or false detection at score >= {collected.score_threshold}.")
    return "\n".join(lines) + "\n"
