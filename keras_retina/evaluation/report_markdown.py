"""The evaluation report's ``report.md``: the numbers of an evaluation in tables, linking its pictures."""

from __future__ import annotations

from typing import Mapping, Sequence

from keras_retina.evaluation.report_metrics import (
    ANNOTATED_CLASSES,
    BACKGROUND,
    MATCH_IOU,
    MISSED,
    Evaluation,
    class_table,
)
from keras_retina.evaluation.tide import ERROR_TYPES


def markdown(collected: Evaluation, gallery_ids: Sequence[int], pictures: Mapping[str, str]) -> str:
    """``report.md``: the key numbers of ``collected`` in tables, linking the pictures.

    Args:
        collected: the evaluation.
        gallery_ids: the gallery's images, in its order; empty: there is no gallery.
        pictures: picture key → its PNG file name, beside report.md
            (``keras_retina.evaluation.report.PICTURES``).
    """
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
        f"![What costs AP]({pictures['error_breakdown']})",
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
        f"![Precision-recall, all classes]({pictures['pr_overall']})",
        "",
        f"![Precision-recall per class]({pictures['pr_per_class']})",
        "",
        "| class | objects | AP | AP50 | AP75 | APs | APm | APl |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in class_table(collected):
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
        f"![AP by object size]({pictures['ap_by_size']})",
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
        f"![Confusion matrix]({pictures['confusion_matrix']})",
        "",
    ]
    labels = list(collected.class_names)
    if len(matrix) <= ANNOTATED_CLASSES + 1:
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
            f"![Images with the most errors]({pictures['gallery']})",
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


def _number(value: float) -> str:
    """``0.123``; ``n/a`` for COCO's -1 (no ground truth in the range)."""
    return "n/a" if value < 0 else f"{value:.3f}"
