"""A model's detections over an evaluation pipeline, as COCO results (on one device or every replica), scored.

The callback that runs this during training is
:class:`keras_retina.training.callbacks.CocoEvaluationCallback`.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from pycocotools.coco import COCO

from keras_retina import visualize
from keras_retina.data.pipeline import to_original_pixels
from keras_retina.evaluation.coco import coco_evaluate, detections_to_coco


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
    the model's strategy (:meth:`keras_retina.data.run_data.RunData.distributed_pipeline`,
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
        Three 64 × 64 images, one box each, built in memory; an untrained
        model that keeps its 3 best candidates per image:

        >>> raw = tf.data.Dataset.from_tensor_slices({
        ...     "image": np.zeros((3, 64, 64, 3), "uint8"),
        ...     "boxes": np.array([[[8., 8., 40., 40.]]] * 3, "float32"),
        ...     "classes": np.array([[0], [1], [2]], "int32"),
        ...     "is_crowd": np.zeros((3, 1), bool),
        ...     "image_id": np.array([1, 2, 3], "int64")})
        >>> dataset = kr.data.make_pipeline(raw, image_size=64, batch_size=2, training=False)
        >>> model = kr.RetinaNet(num_classes=5, backbone="tiny", fpn_channels=16, head_channels=16,
        ...                      num_head_convs=1, score_threshold=0.0, max_detections=3)
        >>> results, ids = predict_to_coco(model, dataset, category_ids=(1, 2, 3, 4, 5), verbose=False)
        >>> sorted(ids), len(results)   # 3 detections on each of the 3 images
        ([1, 2, 3], 9)
        >>> sorted(results[0])   # bbox: [x, y, width, height] in the original image's pixels
        ['bbox', 'category_id', 'image_id', 'score']
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
    batch and gathers the fixed-size detection tensors of all replicas: of all
    workers under MultiWorkerMirroredStrategy with ``strategy.gather``, a
    collective all-gather (no files), of this worker's replicas otherwise. A
    replica left without images at the end (the distributed iterator hands it
    an empty batch, and all workers step until every one has run out) detects
    on one padding image of id -1, which is dropped. The detections of each
    image equal those of one device.

    Args:
        model: a :class:`keras_retina.RetinaNet` built in the strategy's scope.
        dataset: an evaluation pipeline distributed by that strategy
            (``image_id``, ``scale``, ``image_shape`` in ``y``).
        category_ids: the dataset's category id of each contiguous class.

    Returns:
        ``(results, image_ids)`` as :func:`predict_to_coco`, for the images
        of every worker.

    Example:
        The three in-memory images of :func:`predict_to_coco`'s example, at a
        global batch of 2 on two replicas (the second step leaves one replica
        without an image):

        >>> raw = tf.data.Dataset.from_tensor_slices({
        ...     "image": np.zeros((3, 64, 64, 3), "uint8"),
        ...     "boxes": np.array([[[8., 8., 40., 40.]]] * 3, "float32"),
        ...     "classes": np.array([[0], [1], [2]], "int32"),
        ...     "is_crowd": np.zeros((3, 1), bool),
        ...     "image_id": np.array([1, 2, 3], "int64")})
        >>> strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
        >>> dataset = strategy.experimental_distribute_dataset(
        ...     kr.data.make_pipeline(raw, image_size=64, batch_size=2, training=False))
        >>> with strategy.scope():
        ...     model = kr.RetinaNet(num_classes=5, backbone="tiny", fpn_channels=16, head_channels=16,
        ...                          num_head_convs=1, score_threshold=0.0, max_detections=3)
        >>> results, ids = predict_distributed(model, dataset, category_ids=(1, 2, 3, 4, 5))
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
