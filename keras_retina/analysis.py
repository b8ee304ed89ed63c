"""Anchor coverage of a dataset: can the anchors match its boxes at all?

The usual cause of "mAP is zero on my data" is objects that no anchor
overlaps with IoU >= 0.5 (too small, too thin, or resized away).
"""

from __future__ import annotations

import json
import os
from typing import Iterable

import keras
import numpy as np

from keras_retina import boxes as box_ops
from keras_retina.anchors import AnchorGenerator
from keras_retina.data.pipeline import transform_example

#: COCO's size buckets (area in original pixels²).
SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


def anchor_coverage(
    raw_examples: Iterable[dict],
    image_size: int,
    anchor_generator: AnchorGenerator | None = None,
    max_images: int | None = None,
    verbose: bool = True,
) -> dict:
    """Share of ground-truth boxes whose best anchor IoU reaches 0.5 (and 0.4), by size.

    Each example is resized and padded as in evaluation (so anchors and boxes
    are compared in the model's input pixels); buckets use the box's area in
    original pixels, as COCO does. Crowd boxes are left out.

    Args:
        raw_examples: raw examples (``image``, ``boxes`` xyxy pixels, ``classes``).
        image_size: the model's square input size.
        anchor_generator: default: the paper's anchors.
        max_images: stop after this many images.
        verbose: show a progress bar.

    Returns:
        dict: ``"num_images"``, ``"num_boxes"``, and per bucket plus
        ``"all"``: ``{"boxes", "iou_0.5", "iou_0.4", "median_best_iou"}`` (shares in [0, 1]).

    Example:
        >>> example = {"image": np.zeros((256, 256, 3), "uint8"),
        ...            "boxes": np.array([[0., 0., 64., 64.], [10., 10., 14., 200.]], "float32")}
        >>> report = anchor_coverage([example], image_size=256, verbose=False)
        >>> report["all"]["boxes"], report["all"]["iou_0.5"]   # the 4 x 190 sliver fits no anchor
        (2, 0.5)
    """
    anchor_generator = anchor_generator or AnchorGenerator()
    anchors = anchor_generator((image_size, image_size))
    best_ious, areas = [], []
    num_images = 0
    progress = keras.utils.Progbar(max_images, unit_name="image", verbose=1 if verbose else 0)
    for example in raw_examples:
        if max_images is not None and num_images >= max_images:
            break
        num_images += 1
        progress.add(1)
        boxes = np.asarray(example["boxes"], np.float32).reshape(-1, 4)
        crowd = np.asarray(example.get("is_crowd", np.zeros(len(boxes), bool)), bool).reshape(-1)
        boxes = boxes[~crowd]
        if not len(boxes):
            continue
        transformed = {"image": example["image"], "boxes": boxes, "classes": np.zeros(len(boxes), np.int32)}
        _, y = transform_example(transformed, image_size=image_size, max_boxes=len(boxes))
        resized = y["boxes"].numpy()[: len(boxes) - int(y["num_dropped_boxes"])]
        iou = np.asarray(box_ops.pairwise_iou(anchors, resized))  # (A, N)
        best_ious.append(iou.max(axis=0))
        original = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])][: len(resized)]
        areas.append((original[:, 2] - original[:, 0]) * (original[:, 3] - original[:, 1]))
    best = np.concatenate(best_ious) if best_ious else np.zeros(0)
    area = np.concatenate(areas) if areas else np.zeros(0)
    report = {"num_images": num_images, "num_boxes": int(best.size), "image_size": int(image_size)}
    for name, low, high in (("all", 0.0, float("inf")),) + SIZE_BUCKETS:
        chosen = best[(area >= low) & (area < high)]
        report[name] = {
            "boxes": int(chosen.size),
            "iou_0.5": float((chosen >= 0.5).mean()) if chosen.size else None,
            "iou_0.4": float((chosen >= 0.4).mean()) if chosen.size else None,
            "median_best_iou": float(np.median(chosen)) if chosen.size else None,
        }
    return report


def suggestions(report: dict, anchor_generator: AnchorGenerator | None = None) -> list[str]:
    """Plain-language advice when coverage is low (below 90 % at IoU 0.5)."""
    anchor_generator = anchor_generator or AnchorGenerator()
    tips = []
    smallest = anchor_generator.size_multiplier * 2**anchor_generator.min_level
    overall = report["all"]["iou_0.5"]
    if overall is not None and overall < 0.9:
        tips.append(
            f"Only {overall:.0%} of boxes overlap an anchor with IoU >= 0.5; with low-quality "
            "matching they still train, but weakly."
        )
    small = report["small"]
    if small["iou_0.5"] is not None and small["iou_0.5"] < 0.5:
        tips.append(
            f"Small objects are poorly covered ({small['iou_0.5']:.0%}): the smallest anchor is "
            f"{smallest:.0f} px at image_size {report['image_size']}. Increase --image_size, or "
            f"use smaller anchors (--override model.anchors.size_multiplier={anchor_generator.size_multiplier / 2:g}, "
            "or more scales)."
        )
    for name in ("medium", "large"):
        bucket = report[name]
        if bucket["iou_0.5"] is not None and bucket["iou_0.5"] < 0.8:
            tips.append(
                f"{name.capitalize()} objects: {bucket['iou_0.5']:.0%} covered. Unusual aspect "
                "ratios? Add some: --override \"model.anchors.aspect_ratios=(0.25,0.5,1.0,2.0,4.0)\"."
            )
    if not tips:
        tips.append("Anchor coverage looks healthy.")
    return tips


def format_report(report: dict, tips: list[str]) -> str:
    """A table of the coverage by size bucket, followed by the suggestions."""
    lines = [
        f"Anchor coverage over {report['num_boxes']} boxes in {report['num_images']} images "
        f"(image_size {report['image_size']}):",
        f"{'bucket':<8} {'boxes':>6} {'IoU>=0.5':>9} {'IoU>=0.4':>9} {'median':>7}",
    ]
    for name in ("all", "small", "medium", "large"):
        row = report[name]
        fmt = lambda v: "   -   " if v is None else f"{v:7.1%}"  # noqa: E731
        median = "   -" if row["median_best_iou"] is None else f"{row['median_best_iou']:7.2f}"
        lines.append(f"{name:<8} {row['boxes']:>6} {fmt(row['iou_0.5']):>9} {fmt(row['iou_0.4']):>9} {median:>7}")
    lines += [""] + [f"- {tip}" for tip in tips]
    return "\n".join(lines)


def analyze_split(
    data, split: str, model_dir: str, anchor_generator: AnchorGenerator | None = None, max_images: int | None = 2000
) -> dict:
    """``main.py --mode=analyze``: anchor coverage of one split of a run's data.

    Args:
        data: a :class:`keras_retina.datasets.RunData`.
        split: ``"train"`` or ``"val"``.
        model_dir: where ``anchor_coverage.json`` is written.
        anchor_generator: the run's anchors (default: the paper's).
        max_images: images read at most.

    Prints the table and the suggestions; returns the report of :func:`anchor_coverage`.
    """
    if split not in ("train", "val"):
        raise ValueError(f"--split must be 'train' or 'val', got {split!r}.")
    report = anchor_coverage(
        data.raw(split).as_numpy_iterator(), data.config.image_size, anchor_generator, max_images=max_images
    )
    tips = suggestions(report, anchor_generator)
    print(format_report(report, tips))
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "anchor_coverage.json"), "w") as f:
        json.dump({**report, "suggestions": tips}, f, indent=2)
    return report
