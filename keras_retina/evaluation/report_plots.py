"""The evaluation report's pictures: precision-recall curves, AP by size, the confusion matrix, TIDE, the gallery.

Curves and charts are drawn with matplotlib (the maintained plotting library;
Pillow has no axes, ticks or legends), through ``matplotlib.figure.Figure``
rather than ``pyplot``: no global state and no GUI backend, the PNGs are
rendered by Agg. The gallery reuses :mod:`keras_retina.visualize`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from keras_retina import visualize
from keras_retina.evaluation.report_metrics import (
    ANNOTATED_CLASSES,
    AREA_NAMES,
    BACKGROUND,
    MATCH_IOU,
    MISSED,
    Evaluation,
    class_table,
    iou_index,
    overall_curve,
)
from keras_retina.evaluation.tide import ERROR_TYPES, SPECIAL_ERROR_TYPES

# Gallery cells larger than this (pixels, longer side) are shrunk, so a 1024-px run's gallery stays small.
_GALLERY_CELL_SIZE = 320


def figures(collected: Evaluation) -> dict[str, Figure]:
    """The report's charts of ``collected``, keyed as ``keras_retina.evaluation.report.PICTURES``, in its order."""
    return {
        "error_breakdown": _plot_error_breakdown(collected),
        "pr_overall": _plot_pr_overall(collected),
        "pr_per_class": _plot_pr_per_class(collected),
        "ap_by_size": _plot_ap_by_size(collected),
        "confusion_matrix": _plot_confusion(collected),
    }


def gallery(collected: Evaluation, dataset: tf.data.Dataset, image_ids: Sequence[int]) -> np.ndarray:
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


def _figure(width: float, height: float) -> Figure:
    """A matplotlib figure of ``width`` x ``height`` inches at 100 dpi, laid out to fit."""
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _pr_lines(axes, collected: Evaluation, precision_trc_or_tr: np.ndarray, overall: bool) -> None:
    """Draws the IoU 0.5, 0.75 and 0.5:0.95 curves of ``(T, R, C)`` (overall) or ``(T, R)`` (one class)."""
    recall = collected.recall_thresholds
    curves = [overall_curve(per_iou) if overall else per_iou for per_iou in precision_trc_or_tr]  # T x (R,)
    for label, curve in (
        ("IoU 0.50", curves[iou_index(collected, 0.5)]),
        ("IoU 0.75", curves[iou_index(collected, 0.75)]),
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
    for k, row in enumerate(class_table(collected)):
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
    if len(matrix) <= ANNOTATED_CLASSES + 1:
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
