"""What the study measures beside AP: foreground anchors, anchor fit, predict time, the loss at step 0.

Every measurement goes through the library: the COCO JSON is read by
:class:`keras_retina.data.CocoJsonSource`, boxes are resized by the
pipeline's own :func:`keras_retina.data.transform_example`, anchors are
matched by :func:`keras_retina.assign_targets` and fitted by
:func:`keras_retina.evaluation.best_anchor_iou`. Nothing here imports the
rest of the study, so the experiment itself (``paper_dense``) can use it.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

import keras_retina as kr
from keras_retina import evaluation, training

#: The pipeline's evaluation transform as one graph: 15 times faster than eager over a split's images.
_transform_example = tf.function(kr.data.transform_example, reduce_retracing=True)


def resized_boxes(annotation_file: str, image_dir: str, image_size: int, max_images: int | None = None) -> tuple:
    """A COCO JSON's boxes as the model sees them at a square ``image_size`` input.

    Each image's record (:meth:`keras_retina.data.CocoJsonSource.image_record`:
    xyxy pixels clipped to the image, contiguous classes, crowd flags) goes
    through the evaluation transform, so boxes are resized exactly as the
    pipeline resizes them (longer side to ``image_size``). The transform
    resizes the image with its boxes; only the image's size matters, so a
    blank image of that size stands in for the file.

    Args:
        annotation_file: a COCO instances JSON.
        image_dir: the folder its ``file_name`` entries are relative to.
        image_size: the square input size in pixels.
        max_images: only the first images (all by default).

    Returns:
        ``(boxes, classes, is_crowd)``: float32 ``(B, N, 4)`` xyxy input
        pixels, int32 ``(B, N)`` (-1 for padding) and bool ``(B, N)``.
    """
    source = kr.data.CocoJsonSource(annotation_file, image_dir)
    records = [source.image_record(image_id) for image_id in source.image_ids[:max_images]]
    most = max([len(record.boxes) for record in records] + [1])
    boxes = np.zeros((len(records), most, 4), np.float32)  # (B, N, 4) xyxy
    classes = np.full((len(records), most), -1, np.int32)  # (B, N), -1 = padding
    is_crowd = np.zeros((len(records), most), bool)  # (B, N)
    for row, record in enumerate(records):
        example = {
            "image": np.zeros((record.height, record.width, 3), np.uint8),
            "boxes": record.boxes,
            "classes": record.classes,
            "is_crowd": record.is_crowd,
        }
        _, y = _transform_example(example, image_size=image_size, max_boxes=most)
        boxes[row], classes[row], is_crowd[row] = y["boxes"].numpy(), y["classes"].numpy(), y["is_crowd"].numpy()
    return boxes, classes, is_crowd


def foreground_anchor_ratio(
    annotation_file: str,
    image_dir: str,
    anchor_generator,
    image_size: int,
    max_images: int | None = None,
    foreground_iou: float = 0.5,
    background_iou: float = 0.4,
    allow_low_quality_matches: bool = True,
) -> dict:
    """Foreground anchors per image and their share of all anchors, by the library's own matching.

    Boxes as the model sees them (:func:`resized_boxes`) are matched with
    :func:`keras_retina.assign_targets` against ``anchor_generator``'s
    anchors, with the run's matching settings (the model's defaults: IoU >=
    0.5 foreground, < 0.4 background, low-quality matches on).

    Args:
        annotation_file: a COCO instances JSON.
        image_dir: the folder of its images.
        anchor_generator: a :class:`keras_retina.AnchorGenerator`.
        image_size: the square input size in pixels.
        max_images: measure only the first images (all by default).
        foreground_iou, background_iou, allow_low_quality_matches: the
            matching's settings, as :class:`keras_retina.config.ModelConfig`'s.

    Returns:
        ``{"anchors": A, "images": n, "objects_per_image", "foreground_per_image",
        "ignored_per_image", "ratio", "allow_low_quality_matches"}`` (``ratio`` =
        foreground / all anchors; objects are the boxes that are not crowd).

    Example:
        >>> import tempfile
        >>> from experiments import paper_dense
        >>> files = paper_dense.write_data(tempfile.mkdtemp(), num_train=4, num_val=1, verbose=False)
        >>> found = foreground_anchor_ratio(files["train"].annotation_file, files["train"].image_dir, kr.AnchorGenerator(), 192)
        >>> found["anchors"], found["images"], 1 <= found["objects_per_image"] <= 2
        (6921, 4, True)
    """
    boxes, classes, is_crowd = resized_boxes(annotation_file, image_dir, image_size, max_images)
    anchors = anchor_generator((image_size, image_size))
    foreground, ignored = 0, 0
    for start in range(0, len(boxes), 64):  # in chunks: (64, A, N) IoU at a time
        chunk = slice(start, start + 64)
        targets = kr.assign_targets(
            anchors,
            boxes[chunk],
            classes[chunk],
            is_crowd[chunk],
            foreground_iou=foreground_iou,
            background_iou=background_iou,
            allow_low_quality_matches=allow_low_quality_matches,
        )
        foreground += int(np.asarray(targets["foreground"]).sum())
        ignored += int((np.asarray(targets["cls_targets"]) == kr.IGNORE).sum())
    n = len(boxes)
    return {
        "anchors": int(len(anchors)),
        "images": n,
        "objects_per_image": float(((classes >= 0) & ~is_crowd).sum() / n),
        "foreground_per_image": foreground / n,
        "ignored_per_image": ignored / n,
        "ratio": foreground / (n * len(anchors)),
        "allow_low_quality_matches": bool(allow_low_quality_matches),
    }


def anchor_coverage(annotation_file: str, image_dir: str, anchor_generator, image_size: int, max_images: int | None = None) -> dict:
    """How well the anchors fit the objects: each object's best IoU with any anchor.

    Table 1c's question is whether more scales and aspect ratios cover the
    objects better; that depends on the spread of the objects' sizes and
    shapes, so this also reports those. An object whose best IoU is below
    the foreground threshold (0.5) still gets its best anchor through the
    low-quality match, but a poorly fitting one. The IoU is
    :func:`keras_retina.evaluation.best_anchor_iou`, on the boxes the model
    sees (:func:`resized_boxes`; crowd boxes left out).

    Args:
        annotation_file: a COCO instances JSON.
        image_dir: the folder of its images.
        anchor_generator: a :class:`keras_retina.AnchorGenerator`.
        image_size: the square input size in pixels.
        max_images: measure only the first images (all by default).

    Returns:
        A dict: ``objects`` (their number), ``median_best_iou``, ``covered``
        (the share of objects with best IoU >= 0.5), ``side_px`` (the 5, 50
        and 95 % quantiles of sqrt(w h), pixels) and ``aspect`` (the same
        quantiles of w / h).

    Example:
        A 32-pixel square on a default anchor (P3, stride 8, centre 28) fits
        it exactly; a 16-pixel square on the same centre has IoU 0.25:

        >>> import json, os, tempfile
        >>> folder = tempfile.mkdtemp()
        >>> open(os.path.join(folder, "a.png"), "wb").close()  # only its name is read
        >>> coco = {"images": [{"id": 1, "width": 192, "height": 192, "file_name": "a.png"}],
        ...         "categories": [{"id": 1, "name": "shape"}],
        ...         "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [12, 12, 32, 32]},
        ...                         {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 16, 16]}]}
        >>> json.dump(coco, open(os.path.join(folder, "annotations.json"), "w"))
        >>> found = anchor_coverage(os.path.join(folder, "annotations.json"), folder, kr.AnchorGenerator(), 192)
        >>> found["objects"], round(found["median_best_iou"], 3), found["covered"], found["side_px"][1]
        (2, 0.625, 0.5, 24.0)
    """
    boxes, classes, is_crowd = resized_boxes(annotation_file, image_dir, image_size, max_images)
    objects = boxes[(classes >= 0) & ~is_crowd]  # (n, 4)
    if not len(objects):
        raise ValueError(f"{annotation_file}: `annotations` holds no (non-crowd) box of the images read; nothing to fit.")
    best = evaluation.best_anchor_iou(objects, anchor_generator, image_size)  # (n,)
    width, height = objects[:, 2] - objects[:, 0], objects[:, 3] - objects[:, 1]
    quantiles = lambda v: [float(q) for q in np.quantile(v, (0.05, 0.5, 0.95))]  # noqa: E731
    return {
        "objects": int(len(objects)),
        "median_best_iou": float(np.median(best)),
        "covered": float(np.mean(best >= 0.5)),
        "side_px": quantiles(np.sqrt(width * height)),
        "aspect": quantiles(width / np.maximum(height, 1e-6)),
    }


def print_foreground_ratio(config, annotation_file: str | None = None, image_dir: str | None = None, max_images: int | None = 400) -> dict:
    """Measures and prints :func:`foreground_anchor_ratio` for a run's config (its anchors, input size and matching).

    ``annotation_file`` and ``image_dir`` default to the config's training split.
    """
    annotation_file = annotation_file or config.data.train_annotations
    image_dir = image_dir or config.data.train_images
    found = foreground_anchor_ratio(
        annotation_file,
        image_dir,
        training.build_anchor_generator(config.model),
        config.data.image_size,
        max_images,
        foreground_iou=config.model.foreground_iou,
        background_iou=config.model.background_iou,
        allow_low_quality_matches=config.model.allow_low_quality_matches,
    )
    print(
        f"Foreground anchors ({annotation_file}, {found['images']} images at {config.data.image_size} px): "
        f"{found['foreground_per_image']:.2f} of {found['anchors']} anchors per image = 1 in "
        f"{1 / max(found['ratio'], 1e-12):.0f} ({found['objects_per_image']:.2f} objects, "
        f"{found['ignored_per_image']:.1f} ignored anchors per image)",
        flush=True,
    )
    return found


def time_predict(model, image_size: int, repeats: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of ``model.detect_function()`` on one ``image_size`` image (CPU, this process).

    Example:
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=8, head_channels=8)
        >>> time_predict(model, 64, repeats=2, warmup=1) > 0
        True
    """
    image = np.zeros((1, image_size, image_size, 3), np.uint8)
    found = time_side_by_side({image_size: model.detect_function()}, {image_size: image}, 1, repeats, warmup)
    return found[image_size]["median_ms"]


def time_side_by_side(functions: dict, inputs: dict, rounds: int = 5, repeats: int = 10, warmup: int = 3) -> dict:
    """Milliseconds per call of several functions, measured in turns so that each sees the same machine.

    Each round calls every function ``repeats`` times, one function after the
    other, so that a slow spell of a shared machine (another process, the
    clock) falls on all of them alike; the figures to compare are the ratios.
    One measurement per setting taken hours apart, as ``time_predict`` after
    each 1e run, compares different moments of the machine as well.

    Args:
        functions: ``{key: callable}``, each taking its input and returning
            a dict with ``num_detections`` (``RetinaNet.detect_function()``).
        inputs: ``{key: images (1, H, W, 3) uint8}``, the same keys.
        rounds, repeats, warmup: calls per function: ``warmup`` untimed,
            then ``rounds * repeats`` timed.

    Returns:
        ``{key: {"median_ms", "p10_ms", "p90_ms", "calls"}}``.

    Example:
        >>> models = {s: kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=8, head_channels=8) for s in (64, 96)}
        >>> images = {s: np.zeros((1, s, s, 3), "uint8") for s in models}
        >>> found = time_side_by_side({s: m.detect_function() for s, m in models.items()}, images, rounds=2, repeats=2, warmup=1)
        >>> sorted(found), found[64]["calls"], found[96]["median_ms"] > 0
        ([64, 96], 4, True)
    """
    if set(functions) != set(inputs):
        raise ValueError(f"time_side_by_side: functions {sorted(functions)} and inputs {sorted(inputs)} differ")
    for key, function in functions.items():
        for _ in range(warmup):
            function(inputs[key])["num_detections"].numpy()
    times = {key: [] for key in functions}
    for _ in range(rounds):
        for key, function in functions.items():
            for _ in range(repeats):
                start = time.perf_counter()
                function(inputs[key])["num_detections"].numpy()
                times[key].append(1000.0 * (time.perf_counter() - start))
    return {
        key: {
            "median_ms": float(np.median(t)),
            "p10_ms": float(np.percentile(t, 10)),
            "p90_ms": float(np.percentile(t, 90)),
            "calls": len(t),
        }
        for key, t in times.items()
    }


def load_model(run_dir: str):
    """The run's ``checkpoints/latest.keras``."""
    return training.rundir.load_trained_model(run_dir)


def read_config(run_dir: str):
    """The run's ``config.json`` as an :class:`keras_retina.config.ExperimentConfig`; an error naming it if absent."""
    config = training.rundir.read_config(run_dir)
    if config is None:
        raise FileNotFoundError(f"{run_dir}: no config.json; is it a run directory?")
    return config


def initial_loss(config, num_batches: int = 2) -> dict:
    """The loss of the untrained model (step 0) on the first training batches: the prior's effect."""
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(config.train.seed)
    data = kr.data.RunData(config.data, seed=config.train.seed)
    model = training.build_compiled_model(config, len(data.class_names), total_steps=1)
    cls, box = [], []
    for images, y in data.pipeline("train").take(num_batches):
        targets = model.label_anchors(tuple(images.shape[1:3]), y)
        cls_loss, box_loss, _ = model.loss_terms(targets, model(images, training=False))
        cls.append(float(cls_loss))
        box.append(float(box_loss))
    return {"cls_loss": float(np.mean(cls)), "box_loss": float(np.mean(box))}
