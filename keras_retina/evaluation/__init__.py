"""Scoring detections: the COCO metric, TIDE error analysis, the evaluation report, anchor fit, the data check.

* :mod:`~keras_retina.evaluation.coco`: pycocotools' bbox COCOeval, the one place it runs; metrics printed and written;
* :mod:`~keras_retina.evaluation.detections`: a model's detections over a pipeline as COCO results (one device or every replica);
* :mod:`~keras_retina.evaluation.tide`: :func:`analyze_errors`, the AP each error type costs;
* :mod:`~keras_retina.evaluation.report`: ``report/`` of a run (curves, confusion, gallery, Markdown), made from
  :mod:`~keras_retina.evaluation.report_metrics`, :mod:`~keras_retina.evaluation.report_plots` and
  :mod:`~keras_retina.evaluation.report_markdown`; imported only where a report is written (matplotlib);
* :mod:`~keras_retina.evaluation.anchor_fit`: how well anchors cover a dataset's boxes, and a search for better ones;
* :mod:`~keras_retina.evaluation.preflight`: a run's data checked before training (box format, classes, sizes, anchors).

Example:
    >>> from keras_retina import evaluation
    >>> evaluation.METRIC_NAMES[:3]
    ('AP', 'AP50', 'AP75')
"""

from keras_retina.evaluation.coco import (
    METRIC_NAMES,
    coco_evaluate,
    detections_to_coco,
    format_metrics,
    write_metrics,
)
from keras_retina.evaluation.detections import (
    DRAW_SCORE_THRESHOLD,
    detection_grid,
    evaluate_model,
    predict_distributed,
    predict_to_coco,
)
from keras_retina.evaluation.tide import ERROR_TYPES, analyze_errors
from keras_retina.evaluation.anchor_fit import best_anchor_iou

__all__ = [
    "DRAW_SCORE_THRESHOLD",
    "ERROR_TYPES",
    "METRIC_NAMES",
    "analyze_errors",
    "best_anchor_iou",
    "coco_evaluate",
    "detection_grid",
    "detections_to_coco",
    "evaluate_model",
    "format_metrics",
    "predict_distributed",
    "predict_to_coco",
    "write_metrics",
]
