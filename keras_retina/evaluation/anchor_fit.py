"""Anchor coverage of a dataset: can the anchors match its boxes at all, and which anchors would?

The usual cause of "mAP is zero on my data" is objects that no anchor
overlaps with IoU >= 0.5 (too small, too thin, or resized away).
:func:`anchor_coverage` measures it with the run's anchors;
:func:`search_anchors` tries other sizes, scales and aspect ratios on the
training boxes and names the ``--override`` flags of the best.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import keras
import numpy as np

from keras_retina.data.pipeline import transform_example
from keras_retina.model.anchors import AnchorGenerator

#: COCO's size buckets (area in original pixels²).
SIZE_BUCKETS = (("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, float("inf")))


def collect_boxes(
    raw_examples: Iterable[dict], image_size: int, max_images: int | None = None, verbose: bool = True
) -> dict:
    """The boxes of raw examples as the model sees them, with their original areas.

    Each example is resized and padded as in evaluation
    (:func:`keras_retina.data.pipeline.transform_example`), so boxes are in
    the model's input pixels; crowd boxes and boxes the resize drops are
    left out.

    Args:
        raw_examples: raw examples (``image``, ``boxes`` xyxy pixels, optional ``is_crowd``).
        image_size: the model's square input size.
        max_images: stop after this many images.
        verbose: show a progress bar.

    Returns:
        dict: ``"boxes"`` float32 ``(N, 4)`` xyxy input pixels, ``"areas"``
        float32 ``(N,)`` in original pixels² (for COCO's size buckets),
        ``"num_images"``, ``"image_size"``.
    """
    resized_boxes, areas = [], []
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
        resized_boxes.append(resized)
        original = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])][: len(resized)]
        areas.append((original[:, 2] - original[:, 0]) * (original[:, 3] - original[:, 1]))
    return {
        "boxes": np.concatenate(resized_boxes) if resized_boxes else np.zeros((0, 4), np.float32),
        "areas": np.concatenate(areas) if areas else np.zeros(0, np.float32),
        "num_images": num_images,
        "image_size": int(image_size),
    }


def best_anchor_iou(boxes_xyxy, anchor_generator: AnchorGenerator, image_size: int) -> np.ndarray:
    """Each box's highest IoU with any anchor of ``anchor_generator`` on a square ``image_size`` input.

    Equals ``pairwise_iou(anchor_generator((image_size, image_size)), boxes).max(axis=0)``
    without the ``(A, N)`` matrix: all anchors of one (level, scale, ratio)
    are one shape shifted by whole strides, and the overlap of two
    axis-aligned boxes of fixed shapes only falls as their centres move apart
    in x or in y, so the best of them is the one whose centre is nearest the
    box's centre (row and column rounded, clipped to the feature map). That
    is ``N x levels x K`` IoUs instead of ``N x A`` (200 000 for 5000 boxes
    and 9 anchors per location against 250 million at 512 pixels): written by
    hand because the search scores dozens of anchor sets in seconds.

    Args:
        boxes_xyxy: ``(N, 4)`` boxes in input pixels.
        anchor_generator: the anchors.
        image_size: the model's square input size (the extent of each feature map).

    Returns:
        float64 ``(N,)`` IoU in [0, 1].

    Example:
        >>> best_anchor_iou([[4., 4., 36., 36.], [0., 0., 8., 8.]], AnchorGenerator(), 256).round(4)
        array([1.    , 0.0625])
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)  # (N, 4)
    best = np.zeros(len(boxes))
    if not len(boxes):
        return best
    # The anchors of cell (0, 0) on each level, read from the generator itself
    # (so offset, order and torchvision's rounding are its own): an input of
    # one P7 cell has few anchors, and the same per-cell shapes.
    probe = (2**anchor_generator.max_level,) * 2
    probe_anchors = anchor_generator(probe).astype(np.float64)  # (A_probe, 4)
    level_starts = np.cumsum([0] + anchor_generator.anchors_per_level(probe))[:-1]
    k = anchor_generator.num_anchors_per_location
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2  # (N,)
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    feature_sizes = anchor_generator.feature_sizes((image_size, image_size))
    strides = anchor_generator.strides((image_size, image_size))  # torchvision's differ from 2**level
    for (rows, cols), (stride_y, stride_x), start in zip(feature_sizes, strides, level_starts):
        cell = probe_anchors[start : start + k]  # (K, 4): the anchors of cell (0, 0)
        cell_cx = (cell[:, 0] + cell[:, 2]) / 2  # (K,)
        cell_cy = (cell[:, 1] + cell[:, 3]) / 2
        col = np.clip(np.rint((centre_x[:, None] - cell_cx) / stride_x), 0, cols - 1)  # (N, K)
        row = np.clip(np.rint((centre_y[:, None] - cell_cy) / stride_y), 0, rows - 1)  # (N, K)
        x1, x2 = cell[:, 0] + col * stride_x, cell[:, 2] + col * stride_x  # (N, K)
        y1, y2 = cell[:, 1] + row * stride_y, cell[:, 3] + row * stride_y
        inter_w = np.clip(np.minimum(boxes[:, 2:3], x2) - np.maximum(boxes[:, 0:1], x1), 0, None)
        inter_h = np.clip(np.minimum(boxes[:, 3:4], y2) - np.maximum(boxes[:, 1:2], y1), 0, None)
        inter = inter_w * inter_h  # (N, K)
        anchor_area = (cell[:, 2] - cell[:, 0]) * (cell[:, 3] - cell[:, 1])  # (K,)
        union = box_area[:, None] + anchor_area - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        best = np.maximum(best, iou.max(axis=1))
    return best


def _buckets(areas: np.ndarray):
    """``(name, mask)`` for ``"all"`` and COCO's size buckets."""
    yield "all", np.ones(len(areas), bool)
    for name, low, high in SIZE_BUCKETS:
        yield name, (areas >= low) & (areas < high)


def anchor_coverage(
    raw_examples: Iterable[dict],
    image_size: int,
    anchor_generator: AnchorGenerator | None = None,
    max_images: int | None = None,
    verbose: bool = True,
    collected: dict | None = None,
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
        collected: the result of :func:`collect_boxes` for these examples,
            if already at hand (then ``raw_examples`` is not read).

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
    if collected is None:
        collected = collect_boxes(raw_examples, image_size, max_images=max_images, verbose=verbose)
    best = best_anchor_iou(collected["boxes"], anchor_generator, image_size)
    report = {"num_images": collected["num_images"], "num_boxes": int(best.size), "image_size": int(image_size)}
    for name, chosen in _buckets(collected["areas"]):
        chosen = best[chosen]
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


#: Anchor base sizes (in strides) the search tries, besides the run's own.
SEARCH_SIZE_MULTIPLIERS = (1.0, 1.5, 2.0, 3.0, 4.0)
#: Wide aspect-ratio set the search tries (the rule of thumb for thin objects).
WIDE_ASPECT_RATIOS = (0.25, 0.5, 1.0, 2.0, 4.0)


def octave_scales(num_scales: int) -> tuple[float, ...]:
    """``num_scales`` scales spaced evenly over one octave, to 3 decimals.

    Example:
        >>> octave_scales(3), octave_scales(4)
        ((1.0, 1.26, 1.587), (1.0, 1.189, 1.414, 1.682))
    """
    return tuple(round(2.0 ** (i / num_scales), 3) for i in range(num_scales))


def aspect_ratio_clusters(boxes_xyxy, num_ratios: int) -> tuple[float, ...]:
    """Aspect ratios (height / width) that sum up the boxes': k-means on log ratio.

    One-dimensional Lloyd iterations started at the quantiles
    ``(i + 0.5) / num_ratios`` (deterministic, no seed); centres are rounded to
    two significant digits and merged when equal, and empty clusters dropped,
    so fewer than ``num_ratios`` may come back.

    Args:
        boxes_xyxy: ``(N, 4)`` boxes, N >= 1.
        num_ratios: clusters.

    Returns:
        Sorted ratios.

    Example:
        >>> boxes = [[0, 0, 6, 30]] * 10 + [[0, 0, 8, 8]] * 10 + [[0, 0, 30, 6]] * 5
        >>> aspect_ratio_clusters(boxes, 3)
        (0.2, 1.0, 5.0)
    """
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    log_ratio = np.log((boxes[:, 3] - boxes[:, 1]) / (boxes[:, 2] - boxes[:, 0]))  # (N,)
    centres = np.quantile(log_ratio, (np.arange(num_ratios) + 0.5) / num_ratios)
    for _ in range(100):
        nearest = np.abs(log_ratio[:, None] - centres).argmin(axis=1)
        # A cluster left empty (a quantile between two groups of ratios) is dropped.
        updated = np.array([log_ratio[nearest == i].mean() for i in range(len(centres)) if np.any(nearest == i)])
        if len(updated) == len(centres) and np.allclose(updated, centres):
            break
        centres = updated
    return tuple(sorted({float(f"{np.exp(c):.2g}") for c in centres}))


def _anchor_values(generator: AnchorGenerator) -> dict:
    return {
        "size_multiplier": generator.size_multiplier,
        "scales": list(generator.scales),
        "aspect_ratios": list(generator.aspect_ratios),
    }


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and np.allclose(a, b, rtol=0, atol=5e-4)


def _dedupe(sets: Iterable[tuple[float, ...]]) -> list[tuple[float, ...]]:
    kept = []
    for values in sets:
        if values and not any(_same(values, other) for other in kept):
            kept.append(values)
    return kept


def candidate_anchors(
    boxes_xyxy, current: AnchorGenerator, max_anchors_per_location: int = 20
) -> list[AnchorGenerator]:
    """The anchor sets :func:`search_anchors` scores; the first is ``current``.

    Every combination of a size multiplier (:data:`SEARCH_SIZE_MULTIPLIERS`
    and the current one), a scale set (the current one, 3 or 4 per octave)
    and an aspect-ratio set (the current one, :data:`WIDE_ASPECT_RATIOS`,
    3 or 5 k-means clusters of the boxes' log ratios) with at most
    ``max_anchors_per_location`` anchors per location. Levels, offset, order
    and rounding stay the current generator's. Sets within 0.0005 of the
    current one are the current one.
    """
    multipliers = _dedupe([(current.size_multiplier,)] + [(m,) for m in SEARCH_SIZE_MULTIPLIERS])
    scale_sets = _dedupe([current.scales, octave_scales(3), octave_scales(4)])
    ratio_sets = _dedupe(
        [current.aspect_ratios, WIDE_ASPECT_RATIOS]
        + ([aspect_ratio_clusters(boxes_xyxy, 3), aspect_ratio_clusters(boxes_xyxy, 5)] if len(boxes_xyxy) else [])
    )
    fixed = {k: v for k, v in current.get_config().items() if k not in ("size_multiplier", "scales", "aspect_ratios")}
    candidates = []
    for (multiplier,) in multipliers:
        for scales in scale_sets:
            for ratios in ratio_sets:
                if len(scales) * len(ratios) <= max_anchors_per_location:
                    candidates.append(
                        AnchorGenerator(size_multiplier=multiplier, scales=scales, aspect_ratios=ratios, **fixed)
                    )
    return candidates


def _recall(best_iou: np.ndarray, areas: np.ndarray, foreground_iou: float) -> dict:
    """Per bucket: boxes, recall at ``foreground_iou``, share with a low-quality match, median best IoU."""
    out = {}
    for name, mask in _buckets(areas):
        chosen = best_iou[mask]
        out[name] = {
            "boxes": int(chosen.size),
            "recall": float((chosen >= foreground_iou).mean()) if chosen.size else None,
            # allow_low_quality_matches: a box whose best IoU is > 0 claims that anchor (matching.py).
            "low_quality_matched": float((chosen > 0).mean()) if chosen.size else None,
            "median_best_iou": float(np.median(chosen)) if chosen.size else None,
        }
    return out


def override_flags(found: AnchorGenerator, current: AnchorGenerator) -> list[str]:
    """``--override`` values (``"model.anchors.scales=(1.0,1.26,1.587)"``) that turn ``current`` into ``found``.

    Only the fields that differ; :func:`keras_retina.config.override` parses
    them back to exactly ``found``'s values.

    Example:
        >>> override_flags(AnchorGenerator(size_multiplier=2, aspect_ratios=(0.25, 1.0, 4.0)), AnchorGenerator())
        ['model.anchors.size_multiplier=2', 'model.anchors.aspect_ratios=(0.25,1.0,4.0)']
    """
    flags = []
    if found.size_multiplier != current.size_multiplier:
        flags.append(f"model.anchors.size_multiplier={found.size_multiplier!r}".removesuffix(".0"))
    for name in ("scales", "aspect_ratios"):
        values = getattr(found, name)
        if values != getattr(current, name):
            flags.append(f"model.anchors.{name}=({','.join(repr(v) for v in values)})")
    return flags


def command_line(flags: Sequence[str]) -> str:
    """The ``--override`` flags as typed in a shell (quoted where they hold parentheses)."""
    return " ".join(f'--override "{flag}"' if "(" in flag else f"--override {flag}" for flag in flags)


def search_anchors(
    boxes_xyxy,
    areas,
    image_size: int,
    anchor_generator: AnchorGenerator | None = None,
    *,
    foreground_iou: float = 0.5,
    allow_low_quality_matches: bool = True,
    max_boxes: int = 5000,
    max_anchors_per_location: int = 20,
    min_gain: float = 0.01,
    seed: int = 0,
) -> dict:
    """Anchors that cover the boxes best: recall at IoU >= ``foreground_iou``, searched over :func:`candidate_anchors`.

    Recall is the share of boxes with an anchor at IoU >= ``foreground_iou``
    (the matching's foreground threshold, :func:`keras_retina.model.matching.assign_targets`),
    without low-quality matches: with ``allow_low_quality_matches`` every
    box with any overlap also claims its best anchor, so nearly all boxes
    "match", most of them weakly; that share is reported next to it. The
    best candidate has the highest recall over all boxes (fewer anchors per
    location first on ties); among those within ``min_gain`` of it the one
    with the fewest anchors per location wins (anchors cost compute in the
    heads and in matching), then the one that changes fewest of the three
    fields, and the current anchors stay when they are within ``min_gain``
    of the best.

    Args:
        boxes_xyxy: ``(N, 4)`` boxes in input pixels (:func:`collect_boxes`).
        areas: ``(N,)`` their areas in original pixels² (for the size buckets).
        image_size: the model's square input size.
        anchor_generator: the current anchors (default: the paper's).
        foreground_iou: the matching's foreground IoU threshold.
        allow_low_quality_matches: the matching's setting (reported, not searched).
        max_boxes: boxes scored at most, a seeded sample of them beyond.
        max_anchors_per_location: candidates with more are not tried.
        min_gain: recall (in [0, 1]) a change must gain to be proposed.
        seed: seed of the sample.

    Returns:
        dict: ``"num_boxes"``, ``"num_boxes_searched"``, the settings,
        ``"before"`` and ``"after"`` (``{"anchors", "anchors_per_location",
        "coverage"}``, coverage per bucket as in :func:`_recall`),
        ``"changed"``, ``"override"`` (values for ``--override``, empty when
        unchanged), ``"command_line"``, ``"candidates"`` (the 10 best:
        anchors, anchors per location, recall) and ``"generator"`` (the
        chosen :class:`AnchorGenerator`, not written to JSON).

    Example:
        Thin 6 x 30 boxes and 8 x 8 ones, which the paper's anchors (32 px
        and up, ratios 0.5 to 2) do not reach:

        >>> rng = np.random.default_rng(0)
        >>> corners = rng.uniform(0, 200, (400, 2))
        >>> sizes = np.where(np.arange(400)[:, None] % 2, [6.0, 30.0], [8.0, 8.0])
        >>> boxes = np.concatenate([corners, corners + sizes], axis=1)
        >>> result = search_anchors(boxes, sizes.prod(axis=1), 256)
        >>> result["before"]["coverage"]["all"]["recall"], result["after"]["coverage"]["all"]["recall"] > 0.4
        (0.0, True)
        >>> result["override"]
        ['model.anchors.size_multiplier=1', 'model.anchors.scales=(1.0,1.189,1.414,1.682)', 'model.anchors.aspect_ratios=(0.25,0.5,1.0,2.0,4.0)']
    """
    current = anchor_generator or AnchorGenerator()
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    areas = np.asarray(areas, np.float64).reshape(-1)
    if len(boxes) != len(areas):
        raise ValueError(f"search_anchors: `areas` must have one value per box ({len(boxes)}), got {len(areas)}.")
    num_boxes = len(boxes)
    if num_boxes > max_boxes:
        keep = np.sort(np.random.default_rng(seed).choice(num_boxes, max_boxes, replace=False))
        boxes, areas = boxes[keep], areas[keep]
    scored = []
    for index, generator in enumerate(candidate_anchors(boxes, current, max_anchors_per_location)):
        best_iou = best_anchor_iou(boxes, generator, image_size)
        recall = float((best_iou >= foreground_iou).mean()) if len(best_iou) else 0.0
        scored.append((recall, generator.num_anchors_per_location, index, generator, best_iou))
    current_recall = scored[0][0]
    best_recall = max(recall for recall, *_ in scored)
    if current_recall >= best_recall - min_gain:
        chosen = scored[0]
    else:
        near_best = [entry for entry in scored if entry[0] >= best_recall - min_gain]
        # Fewest anchors per location, then fewest fields changed, then recall.
        chosen = min(
            near_best, key=lambda entry: (entry[1], len(override_flags(entry[3], current)), -entry[0], entry[2])
        )
    ranked = sorted(scored, key=lambda entry: (-entry[0], entry[1], entry[2]))

    def summary(entry) -> dict:
        return {
            "anchors": _anchor_values(entry[3]),
            "anchors_per_location": entry[1],
            "coverage": _recall(entry[4], areas, foreground_iou),
        }

    flags = override_flags(chosen[3], current)
    return {
        "num_boxes": num_boxes,
        "num_boxes_searched": len(boxes),
        "seed": seed,
        "image_size": int(image_size),
        "foreground_iou": float(foreground_iou),
        "allow_low_quality_matches": bool(allow_low_quality_matches),
        "recall_is": (
            f"share of boxes with an anchor at IoU >= {foreground_iou:g} (the foreground threshold), "
            "without low-quality matches"
        ),
        "min_gain": float(min_gain),
        "max_anchors_per_location": int(max_anchors_per_location),
        "num_candidates": len(scored),
        "before": summary(scored[0]),
        "after": summary(chosen),
        "changed": chosen is not scored[0],
        "override": flags,
        "command_line": command_line(flags),
        "candidates": [
            {"anchors": _anchor_values(e[3]), "anchors_per_location": e[1], "recall": e[0]} for e in ranked[:10]
        ],
        "generator": chosen[3],
    }


def _describe(anchors: dict) -> str:
    numbers = lambda values: "(" + ", ".join(f"{v:.3g}" for v in values) + ")"  # noqa: E731
    return f"size {anchors['size_multiplier']:g} x {numbers(anchors['scales'])}, ratios {numbers(anchors['aspect_ratios'])}"


def format_search(result: dict, held_out: dict | None = None) -> str:
    """The search's candidates, the coverage before and after by size bucket, and the flags to apply."""
    share = lambda v: "     -" if v is None else f"{v:6.1%}"  # noqa: E731
    sample = (
        f"{result['num_boxes_searched']} of {result['num_boxes']} (seeded sample)"
        if result["num_boxes_searched"] < result["num_boxes"]
        else f"{result['num_boxes']}"
    )
    low_quality = (
        "with allow_low_quality_matches (on in this run) a box below it still claims its best anchor, weakly."
        if result["allow_low_quality_matches"]
        else "allow_low_quality_matches is off in this run: a box below it gets no positive anchor."
    )
    lines = [
        "",
        f"Anchor search on {sample} training boxes, image_size {result['image_size']}, "
        f"{result['num_candidates']} anchor sets.",
        f"Recall: {result['recall_is']};",
        f"{low_quality}",
        f"  {'anchors':<64} {'per loc':>7} {'recall':>7}",
    ]
    for candidate in result["candidates"][:5]:
        lines.append(
            f"  {_describe(candidate['anchors']):<64} {candidate['anchors_per_location']:>7} {share(candidate['recall']):>7}"
        )
    before, after = result["before"], result["after"]
    lines += [
        "",
        f"before: {_describe(before['anchors'])} ({before['anchors_per_location']} per location)",
        f"after:  {_describe(after['anchors'])} ({after['anchors_per_location']} per location)",
        f"{'bucket':<8} {'boxes':>6} {'before':>7} {'after':>7}   low-quality matched before/after",
    ]
    for name in ("all", "small", "medium", "large"):
        b, a = before["coverage"][name], after["coverage"][name]
        lines.append(
            f"{name:<8} {b['boxes']:>6} {share(b['recall']):>7} {share(a['recall']):>7}   "
            f"{share(b['low_quality_matched'])} / {share(a['low_quality_matched'])}"
        )
    if held_out is not None:
        b, a = held_out["before"]["all"], held_out["after"]["all"]
        lines.append(
            f"{held_out['split']} split (held out): {b['boxes']} boxes, "
            f"{share(b['recall']).strip()} before, {share(a['recall']).strip()} after"
        )
    if result["changed"]:
        lines += ["", "Apply with (train and analyze alike):", f"  {result['command_line']}"]
    else:
        best = result["candidates"][0]
        lines += [
            "",
            f"Keep the run's anchors: the best set found ({share(best['recall']).strip()}, "
            f"{best['anchors_per_location']} per location) is within {result['min_gain']:.0%} of them.",
        ]
    return "\n".join(lines)


def analyze_split(
    data,
    split: str,
    model_dir: str,
    anchor_generator: AnchorGenerator | None = None,
    max_images: int | None = 2000,
    *,
    search: bool = True,
    foreground_iou: float = 0.5,
    allow_low_quality_matches: bool = True,
) -> dict:
    """``main.py --mode=analyze``: anchor coverage of one split of a run's data, and a search for better anchors.

    Args:
        data: a :class:`keras_retina.data.run_data.RunData`.
        split: ``"train"`` or ``"val"``: the split whose coverage is shown.
        model_dir: where ``anchor_coverage.json`` is written.
        anchor_generator: the run's anchors (default: the paper's).
        max_images: images read at most, per split.
        search: also run :func:`search_anchors` on the training split's boxes
            (and show the chosen anchors' coverage of ``split`` when it is ``"val"``).
        foreground_iou: the run's matching threshold (``model.foreground_iou``).
        allow_low_quality_matches: the run's matching setting.

    Prints the table, the suggestions and the search; returns what
    ``anchor_coverage.json`` holds: the report of :func:`anchor_coverage`
    with ``"suggestions"`` and ``"search"`` (:func:`search_anchors`' result,
    plus ``"held_out"`` for a val split).
    """
    if split not in ("train", "val"):
        raise ValueError(f"--split must be 'train' or 'val', got {split!r}.")
    anchor_generator = anchor_generator or AnchorGenerator()
    image_size = data.config.image_size
    collected = collect_boxes(data.raw(split).as_numpy_iterator(), image_size, max_images=max_images)
    report = anchor_coverage((), image_size, anchor_generator, collected=collected)
    tips = suggestions(report, anchor_generator)
    if search:
        # The search's measured flags replace the rules of thumb, which can disagree with them.
        healthy = tips == ["Anchor coverage looks healthy."]
        tips = tips if healthy else [tips[0] if tips[0].startswith("Only") else "Some boxes are poorly covered.",
                                     "The search below measures anchors that cover them; use its flags."]
    print(format_report(report, tips))
    output = {**report, "suggestions": tips}
    if search:
        train = collected if split == "train" else collect_boxes(
            data.raw("train").as_numpy_iterator(), image_size, max_images=max_images
        )
        result = search_anchors(
            train["boxes"],
            train["areas"],
            image_size,
            anchor_generator,
            foreground_iou=foreground_iou,
            allow_low_quality_matches=allow_low_quality_matches,
        )
        generator = result.pop("generator")
        held_out = None
        if split != "train":
            held_out = {
                "split": split,
                "before": _recall(best_anchor_iou(collected["boxes"], anchor_generator, image_size),
                                  collected["areas"], foreground_iou),
                "after": _recall(best_anchor_iou(collected["boxes"], generator, image_size),
                                 collected["areas"], foreground_iou),
            }
            result["held_out"] = held_out
        print(format_search(result, held_out))
        output["search"] = result
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "anchor_coverage.json"), "w") as f:
        json.dump(output, f, indent=2)
    return output
