"""The evaluation report: why the AP is what it is, in PNGs, a ``report.md`` and TensorBoard.

:func:`write_report` = :func:`collect` (detections on an evaluation pipeline,
then :func:`evaluate_results`: COCOeval, the TIDE breakdown and the confusion
matrix) followed by :func:`write`, which fills ``output_dir``
(``<model_dir>/report/`` for ``--mode=evaluate`` and ``python main.py``)::

    report.md              the key numbers in tables, linking the pictures below
    error_breakdown.png    AP50 gained by fixing each TIDE error type (tide.analyze_errors)
    pr_overall.png         precision-recall over all classes at IoU 0.5, 0.75 and averaged over 0.5:0.95
    pr_per_class.png       the same curves for each class
    ap_by_size.png         AP of small / medium / large objects (COCO's area ranges)
    confusion_matrix.png   GT class x predicted class at IoU 0.5, detections scoring >= 0.3
    gallery.png            the images with the most missed, misclassified and false detections

and, given ``tensorboard_dir``, the same pictures as ``tf.summary.image``.

The work is split by job: :mod:`~keras_retina.evaluation.report_metrics` the
numbers (:class:`Evaluation`, :func:`evaluate_results`,
:func:`confusion_matrix`), :mod:`~keras_retina.evaluation.report_plots` the
pictures (matplotlib), :mod:`~keras_retina.evaluation.report_markdown` the
Markdown. The package's ``__init__`` does not import this module, so
matplotlib loads only for the modes that write a report.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image
from pycocotools.coco import COCO

from keras_retina.evaluation.detections import predict_to_coco
from keras_retina.evaluation.report_markdown import markdown
from keras_retina.evaluation.report_metrics import (
    AREA_NAMES,
    BACKGROUND,
    MATCH_IOU,
    MISSED,
    SCORE_THRESHOLD,
    Evaluation,
    confusion_matrix,
    evaluate_results,
    worst_images,
)
from keras_retina.evaluation.report_plots import figures, gallery

__all__ = [
    "AREA_NAMES",
    "BACKGROUND",
    "MATCH_IOU",
    "MISSED",
    "PICTURES",
    "REPORT_DIR",
    "REPORT_FILE",
    "SCORE_THRESHOLD",
    "Evaluation",
    "collect",
    "confusion_matrix",
    "evaluate_results",
    "worst_images",
    "write",
    "write_report",
]

#: Where runs write the report, under the run directory.
REPORT_DIR = "report"
#: The report's Markdown file, in ``output_dir``.
REPORT_FILE = "report.md"
#: The report's pictures: key → PNG file name, in the order report.md shows them.
PICTURES = {
    "error_breakdown": "error_breakdown.png",
    "pr_overall": "pr_overall.png",
    "pr_per_class": "pr_per_class.png",
    "ap_by_size": "ap_by_size.png",
    "confusion_matrix": "confusion_matrix.png",
    "gallery": "gallery.png",
}


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
            already made (:func:`keras_retina.evaluation.detections.predict_to_coco`, or
            a training run's ``val_detections.json``): the report uses them
            instead of detecting again.

    Returns:
        the :class:`Evaluation`; its ``metrics`` are
        :func:`keras_retina.evaluation.detections.evaluate_model`'s.

    Example: a COCO-format validation split and a trained model::

        source = CocoJsonSource("shapes/val/annotations.json", "shapes/val/images")
        dataset = make_pipeline(source.dataset(), image_size=256, batch_size=8, training=False)
        result = write_report(model, dataset, "shapes/val/annotations.json", source.class_names,
                              source.category_ids, "run/report")
        result.metrics["AP"]

    writes ``run/report/report.md`` and the PNGs of :data:`PICTURES`
    (listed in the module docstring; no ``gallery.png`` when no image has
    an error).
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
    results, image_ids = predict_to_coco(model, dataset, category_ids, verbose=verbose)
    return evaluate_results(
        coco_gt, results, class_names, category_ids, image_ids=image_ids, score_threshold=score_threshold
    )


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
    pictures = figures(collected)
    gallery_ids = worst_images(collected.confusion, gallery_size) if dataset is not None else []
    if gallery_ids:
        pictures["gallery"] = gallery(collected, dataset, gallery_ids)
    paths = {}
    for key, picture in pictures.items():
        paths[key] = os.path.join(output_dir, PICTURES[key])
        if isinstance(picture, np.ndarray):  # the gallery, drawn with Pillow
            Image.fromarray(picture).save(paths[key], format="PNG")
        else:  # a matplotlib Figure
            picture.savefig(paths[key], format="png")
    report_path = os.path.join(output_dir, REPORT_FILE)
    with open(report_path, "w") as f:
        f.write(markdown(collected, gallery_ids, PICTURES))
    if tensorboard_dir:
        writer = tf.summary.create_file_writer(tensorboard_dir)
        with writer.as_default():
            for key, path in paths.items():
                image = np.asarray(Image.open(path).convert("RGB"))
                tf.summary.image(f"report/{key}", image[None], step=int(step))
        writer.close()
    return report_path
