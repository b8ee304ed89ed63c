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
#: Font size (pixels) of :func:`detection_grid`'s title.
HEADER_FONT_SIZE = 14
#: White pixels between the pairs of :func:`detection_grid` (its two halves are 4 apart).
PAIR_GAP = 16


def detection_grid_header(
    score_threshold: float, num_images: int, model_name: str | None = None, ground_truth: bool = True
) -> str:
    """The title line of :func:`detection_grid`'s picture: what is drawn, the threshold, the model.

    Args:
        score_threshold: the lowest score drawn.
        num_images: images in the picture.
        model_name: e.g. the run directory; None leaves it out.
        ground_truth: the picture pairs ground truth (left) with detections (right).

    Returns:
        one line of text.

    Example:
        >>> detection_grid_header(0.3, 8, "runs/shapes")
        'detections with score >= 0.30 (right) vs ground truth (left); 8 images; model: runs/shapes'
        >>> detection_grid_header(0.5, 1, ground_truth=False)
        'detections with score >= 0.50; 1 image'
    """
    header = f"detections with score >= {score_threshold:.2f}"
    if ground_truth:
        header += " (right) vs ground truth (left)"
    header += f"; {num_images} image{'' if num_images == 1 else 's'}"
    if model_name:
        header += f"; model: {model_name}"
    return header


def detection_grid(
    model,
    dataset: tf.data.Dataset,
    class_names,
    max_images: int = 8,
    *,
    score_threshold: float = DRAW_SCORE_THRESHOLD,
    ground_truth: bool = True,
    model_name: str | None = None,
    columns: int | None = None,
) -> np.ndarray:
    """The first batch of ``dataset``: each image's ground truth beside its detections, under a title line.

    Each cell is one image drawn twice
    (:func:`keras_retina.visualize.draw_ground_truth_and_detections`): its
    ground truth boxes with class names on the left, the detections scoring
    at least ``score_threshold`` with class and score on the right, each
    class in one colour in both, the counts above (``"image 7 ground
    truth: 3"``, ``"detections: 4"``); pairs stand :data:`PAIR_GAP` pixels
    apart. The title (:func:`detection_grid_header`) states the
    threshold. The pipeline's ``y["boxes"]`` and the detections are both in
    pixels of the pipeline's (resized, padded) images, so both are drawn on
    those images as they are.

    Args:
        model: a :class:`keras_retina.RetinaNet`. Its own inference
            ``score_threshold`` applies first: when it is higher than
            ``score_threshold``, the title gives it instead.
        dataset: a :func:`keras_retina.data.make_pipeline` pipeline; ``y``
            has ``"boxes"`` ``(B, N, 4)`` and ``"classes"`` ``(B, N)``
            (-1 padding), and ``"image_id"`` in evaluation.
        class_names: names indexed by class id; None labels with the id.
        max_images: draw at most this many images of the batch.
        score_threshold: lowest score drawn.
        ground_truth: draw the ground truth beside the detections; False (or
            a ``y`` without ``"boxes"`` and ``"classes"``): detections only,
            one image per cell.
        model_name: named in the title (e.g. the run directory).
        columns: cells per grid row; None: 2 pairs, or 4 images without
            ground truth.

    Returns:
        uint8 ``(H', W', 3)``: the title band over the grid.

    Example:
        Two 160 × 160 images with one box each; an untrained model:

        >>> raw = tf.data.Dataset.from_tensor_slices({
        ...     "image": np.zeros((2, 160, 160, 3), "uint8"),
        ...     "boxes": np.array([[[8., 8., 40., 40.]]] * 2, "float32"),
        ...     "classes": np.array([[0], [1]], "int32"),
        ...     "image_id": np.array([1, 2], "int64")})
        >>> dataset = kr.data.make_pipeline(raw, image_size=160, batch_size=2, training=False)
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16, head_channels=16,
        ...                      num_head_convs=1)
        >>> grid = detection_grid(model, dataset, ["a", "b"], score_threshold=0.5)
        >>> grid.shape   # 22-pixel title, 20-pixel captions; two pairs of 160 + 4 + 160, 16 pixels apart
        (234, 696, 3)
    """
    images, y = next(iter(dataset))
    images = images.numpy()
    count = min(int(max_images), images.shape[0])
    detections = {key: value.numpy() for key, value in model.detect_function()(images).items()}
    threshold = max(float(score_threshold), float(getattr(model, "score_threshold", None) or 0.0))
    keep = (detections["scores"] >= threshold) & (detections["classes"] >= 0)
    shown = {
        "boxes": detections["boxes"],
        "classes": np.where(keep, detections["classes"], -1),
        "scores": detections["scores"],
    }
    ground_truth = ground_truth and "boxes" in y and "classes" in y
    header = detection_grid_header(threshold, count, model_name, ground_truth=ground_truth)
    if not ground_truth:
        grid = visualize.draw_batch(images, shown, class_names=class_names, max_images=count, columns=columns or 4)
        return visualize.add_header(grid, header, font_size=HEADER_FONT_SIZE)
    gt_boxes, gt_classes = y["boxes"].numpy(), y["classes"].numpy()
    image_ids = y["image_id"].numpy() if "image_id" in y else None
    cells = []
    for b in range(count):
        num_gt, num_det = int((gt_classes[b] >= 0).sum()), int(keep[b].sum())
        name = "" if image_ids is None else f"image {int(image_ids[b])} "
        cells.append(
            visualize.draw_ground_truth_and_detections(
                images[b],
                {"boxes": gt_boxes[b], "classes": gt_classes[b]},
                {"boxes": shown["boxes"][b], "classes": shown["classes"][b], "scores": shown["scores"][b]},
                class_names,
                captions=(f"{name}ground truth: {num_gt}", f"detections: {num_det}"),
            )
        )
    grid = visualize.tile_images(cells, columns=columns or 2, gap=PAIR_GAP)
    return visualize.add_header(grid, header, font_size=HEADER_FONT_SIZE)
