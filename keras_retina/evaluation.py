"""COCO evaluation (bbox AP) with pycocotools: detections over a pipeline, scored.

The callback that runs it during training is
:class:`keras_retina.callbacks.CocoEvaluationCallback`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from keras_retina import visualize
from keras_retina.data.pipeline import to_original_pixels
from keras_retina.error_analysis import ERROR_TYPES, analyze_errors  # noqa: F401  (kr.evaluation.analyze_errors)

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


def coco_from_raw_dataset(
    raw: "tf.data.Dataset", class_names: Sequence[str], category_ids: Sequence[int] | None = None
) -> COCO:
    """Builds in-memory COCO ground truth from raw examples (used for TFDS splits).

    Category ids are ``category_ids[class]`` (default: the class ids); each annotation's ``area``
    is its box area (TFDS carries no mask areas), which can move a few
    objects between the small / medium / large buckets compared with the
    official annotation file.

    Args:
        raw: dataset of raw examples with ``image``, ``boxes`` (xyxy pixels),
            ``classes``, ``image_id`` and optionally ``is_crowd``.
        class_names: name of each contiguous class.
        category_ids: the id to record for each contiguous class.

    Returns:
        ``pycocotools.coco.COCO`` with ``images``, ``annotations`` and ``categories``.
    """
    category_ids = list(range(len(class_names))) if category_ids is None else [int(c) for c in category_ids]
    images, annotations = [], []
    for example in raw.as_numpy_iterator():
        image_id = int(example["image_id"])
        height, width = example["image"].shape[:2]
        images.append({"id": image_id, "height": int(height), "width": int(width)})
        crowd = example.get("is_crowd", np.zeros(len(example["classes"]), bool))
        for box, cls, is_crowd in zip(example["boxes"], example["classes"], crowd):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_ids[int(cls)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(bool(is_crowd)),
                }
            )
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for cid, name in zip(category_ids, class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


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


def evaluate_model(model, dataset, coco_gt: COCO, category_ids, verbose: bool = True) -> dict:
    """Predicts on an evaluation pipeline and scores the detections with COCOeval.

    Args:
        model: a :class:`keras_retina.RetinaNet`.
        dataset: a :func:`keras_retina.data.make_pipeline` evaluation
            pipeline (``training=False``: its ``y`` carries ``image_id``,
            ``scale`` and ``image_shape``), or that pipeline distributed by
            the model's strategy (evaluated on every replica, see
            :func:`predict_to_coco`).
        coco_gt: the split's ground truth.
        category_ids: the dataset's category id of each contiguous class.
        verbose: progress bar and COCOeval's printed summary.

    Returns:
        the metrics of :func:`coco_evaluate`.
    """
    results, image_ids = predict_to_coco(model, dataset, category_ids, verbose=verbose)
    return coco_evaluate(coco_gt, results, image_ids=image_ids, verbose=verbose)


def predict_to_coco(model, dataset, category_ids, verbose: bool = True) -> tuple[list, list]:
    """COCO results (original pixels, dataset category ids) for every image of ``dataset``.

    ``dataset`` is an evaluation pipeline, or that pipeline distributed by
    the model's strategy (:meth:`keras_retina.datasets.RunData.distributed_pipeline`,
    ``strategy.distribute_datasets_from_function``). A plain dataset runs
    on this worker only (``model.detect_function()``), not through
    ``predict_on_batch``: under MultiWorkerMirroredStrategy that is a
    collective call whose result concatenates every worker's batch. A
    distributed one runs on every replica (:func:`predict_distributed`):
    each worker detects on its share and all of them receive every
    worker's results.

    Returns:
        ``(results, image_ids)``: :func:`detections_to_coco` entries and the
        ids of every image seen (images without detections included).

    Example:
        >>> import tempfile
        >>> from keras_retina.config import DataConfig
        >>> from keras_retina.data import make_shapes_splits
        >>> from keras_retina.datasets import RunData
        >>> config = DataConfig(shapes_dir=tempfile.mkdtemp(), shapes_num_train=2, shapes_num_val=3,
        ...                     shapes_image_size=64, image_size=64, batch_size=2)
        >>> _ = make_shapes_splits(config.shapes_dir, 2, 3, image_size=(64, 64), verbose=False)
        >>> data = RunData(config)
        >>> model = kr.RetinaNet(num_classes=5, backbone="tiny", score_threshold=0.0, max_detections=3)
        >>> results, ids = predict_to_coco(model, data.pipeline("val"), data.category_ids, verbose=False)
        >>> sorted(ids), len(results)   # 3 detections on each of the 3 images
        ([1, 2, 3], 9)
    """
    if isinstance(dataset, tf.distribute.DistributedDataset):
        return predict_distributed(model, dataset, category_ids)
    results, image_ids = [], []
    cardinality = int(dataset.cardinality())
    progress = keras.utils.Progbar(cardinality if cardinality > 0 else None, unit_name="batch", verbose=1 if verbose else 0)
    detect = model.detect_function()
    for images, y in dataset:
        detections = {key: value.numpy() for key, value in detect(images).items()}
        ids = y["image_id"].numpy()
        image_ids.extend(int(i) for i in ids)
        boxes = to_original_pixels(detections["boxes"], y["scale"], y["image_shape"]).numpy()
        results.extend(
            detections_to_coco(
                boxes, detections["scores"], detections["classes"], detections["num_detections"], ids, category_ids
            )
        )
        progress.add(1)
    return results, image_ids


def predict_distributed(model, dataset: "tf.distribute.DistributedDataset", category_ids) -> tuple[list, list]:
    """:func:`predict_to_coco` on every replica of ``model``'s strategy, the detections all-gathered.

    Each step runs ``model.detect`` under ``strategy.run`` on each replica's
    batch and gathers the fixed-size detection tensors of all replicas: of
    all workers under MultiWorkerMirroredStrategy with ``strategy.gather``,
    a collective all-gather (no files), of this worker's replicas otherwise. A replica left without images at the end (the
    distributed iterator hands it an empty batch, and all workers step
    until every one has run out) detects on one padding image of id -1,
    which is dropped. The detections of each image equal those of one
    device.

    Args:
        model: a :class:`keras_retina.RetinaNet` built in the strategy's scope.
        dataset: an evaluation pipeline distributed by that strategy
            (``image_id``, ``scale``, ``image_shape`` in ``y``).
        category_ids: the dataset's category id of each contiguous class.

    Returns:
        ``(results, image_ids)`` as :func:`predict_to_coco`, for the images
        of every worker.

    Example:
        >>> import tempfile
        >>> from keras_retina.config import DataConfig
        >>> from keras_retina.data import make_shapes_splits
        >>> from keras_retina.datasets import RunData
        >>> config = DataConfig(shapes_dir=tempfile.mkdtemp(), shapes_num_train=2, shapes_num_val=3,
        ...                     shapes_image_size=64, image_size=64, batch_size=2)
        >>> _ = make_shapes_splits(config.shapes_dir, 2, 3, image_size=(64, 64), verbose=False)
        >>> strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        >>> with strategy.scope():
        ...     model = kr.RetinaNet(num_classes=5, backbone="tiny", score_threshold=0.0, max_detections=3)
        >>> data = RunData(config)
        >>> results, ids = predict_distributed(model, data.distributed_pipeline("val", strategy), data.category_ids)
        >>> sorted(ids), len(results)
        ([1, 2, 3], 9)
    """
    strategy = model.distribute_strategy
    step = _distributed_detect_step(model, strategy)
    results, image_ids = [], []
    for images, y in dataset:
        if not model.built:  # variables cannot be made inside the replicated step
            with strategy.scope():
                model.build((None, *strategy.experimental_local_results(images)[0].shape[1:]))
        gathered = {key: value.numpy() for key, value in step(images, y).items()}
        keep = gathered["image_id"] >= 0
        kept = {key: value[keep] for key, value in gathered.items()}
        image_ids.extend(int(i) for i in kept["image_id"])
        results.extend(
            detections_to_coco(
                kept["boxes"], kept["scores"], kept["classes"], kept["num_detections"], kept["image_id"], category_ids
            )
        )
    return results, image_ids


def _distributed_detect_step(model, strategy: tf.distribute.Strategy):
    """A ``tf.function``: per-replica batches -> every replica's detections in original pixels, gathered."""

    def replica_fn(images, y):
        # An empty batch (a replica without images at the end) becomes one
        # padding image of id -1: detection needs at least one image.
        pad = tf.maximum(1 - tf.shape(images)[0], 0)
        images = tf.pad(images, [[0, pad], [0, 0], [0, 0], [0, 0]])
        image_ids = tf.pad(y["image_id"], [[0, pad]], constant_values=-1)
        scale = tf.pad(y["scale"], [[0, pad], [0, 0]], constant_values=1.0)
        image_shape = tf.pad(y["image_shape"], [[0, pad], [0, 0]], constant_values=1)
        detections = model.detect(images)
        return {
            "boxes": to_original_pixels(detections["boxes"], scale, image_shape),
            "scores": detections["scores"],
            "classes": detections["classes"],
            "num_detections": detections["num_detections"],
            "image_id": image_ids,
        }

    # Across workers an all-gather (a collective); one worker's replicas are
    # all here already, so their results are only concatenated.
    across_workers = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

    @tf.function(reduce_retracing=True)
    def step(images, y):
        per_replica = strategy.run(replica_fn, args=(images, y))
        if across_workers:
            return {key: strategy.gather(value, axis=0) for key, value in per_replica.items()}
        return {
            key: tf.concat(strategy.experimental_local_results(value), axis=0) for key, value in per_replica.items()
        }

    return step


#: Detections drawn in pictures of predictions score at least this much.
DRAW_SCORE_THRESHOLD = 0.3


def detection_grid(model, dataset: tf.data.Dataset, class_names, max_images: int = 8) -> np.ndarray:
    """Detections (score >= 0.3) on the first batch of ``dataset``, drawn in a uint8 ``(H, W, 3)`` grid."""
    images, _ = next(iter(dataset))
    detections = {key: value.numpy() for key, value in model.detect_function()(images).items()}
    keep = detections["scores"] >= DRAW_SCORE_THRESHOLD
    shown = {
        "boxes": detections["boxes"],
        "classes": np.where(keep, detections["classes"], -1),
        "scores": detections["scores"],
    }
    return visualize.draw_batch(images.numpy(), shown, class_names=class_names, max_images=max_images)
