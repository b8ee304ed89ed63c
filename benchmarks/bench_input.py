"""Input-pipeline throughput: training batches of `make_pipeline` in images/s.

Measures the training pipeline (shuffle, JPEG decode, scale jitter, crop, flip,
resize, pad, batch) at ``--image_size`` on the CPU, with no model attached.

Sources (``--source``):

* ``synthetic`` (default): ``--num_distinct`` JPEG images of
  ``--raw_size`` made in memory (textured background, filled rectangles and
  ellipses, so that their JPEG entropy is like a photo's, not like noise),
  decoded inside the tf.data graph by ``tf.io.decode_jpeg`` as the file
  sources do.
* ``shapes``: the synthetic shapes dataset (``make_shapes_dataset``) of
  ``--num_images`` images of ``--raw_height`` x ``--raw_width``, written to
  ``--shapes_dir`` (reused when already there), read from disk through
  ``coco_json_dataset``.
* ``coco``: any COCO-format dataset on disk through
  ``keras_retina.data.coco_json_dataset(--annotation_file, --image_dir)``.

With ``--stages`` it also times decoding alone and the pipeline on
pre-decoded images, to show which stage limits the total.

Example:
    python benchmarks/bench_input.py --batches 60 --stages
"""

from __future__ import annotations

import argparse
import io
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from keras_retina.data.pipeline import make_pipeline  # noqa: E402


def make_synthetic_jpegs(
    num_images: int, size: tuple[int, int] = (480, 640), max_objects: int = 8, seed: int = 0
) -> tuple[list[bytes], list[np.ndarray], list[np.ndarray]]:
    """JPEG bytes, xyxy boxes and classes of random shape images.

    Args:
        num_images: number of distinct images.
        size: ``(height, width)`` in pixels.
        max_objects: most shapes per image (0 to ``max_objects``).
        seed: NumPy seed.

    Returns:
        ``(jpegs, boxes, classes)``: lists of bytes, float32 ``(N, 4)`` and
        int32 ``(N,)``.

    Example:
        >>> jpegs, boxes, classes = make_synthetic_jpegs(4)
    """
    rng = np.random.default_rng(seed)
    height, width = size
    jpegs, all_boxes, all_classes = [], [], []
    for _ in range(num_images):
        # Low-frequency colour gradient plus mild noise as texture.
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        base = rng.uniform(0, 255, 3)
        direction = rng.uniform(-0.2, 0.2, (2, 3))
        background = base + yy[..., None] * direction[0] + xx[..., None] * direction[1]
        background += rng.normal(0, 8, (height, width, 3))
        image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        n = int(rng.integers(0, max_objects + 1))
        boxes = np.zeros((n, 4), np.float32)
        classes = rng.integers(0, 3, n).astype(np.int32)
        for i in range(n):
            w, h = rng.uniform(16, width / 2), rng.uniform(16, height / 2)
            x0, y0 = rng.uniform(0, width - w), rng.uniform(0, height - h)
            boxes[i] = (x0, y0, x0 + w, y0 + h)
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = draw.ellipse if classes[i] == 1 else draw.rectangle
            shape([x0, y0, x0 + w, y0 + h], fill=colour)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
        all_boxes.append(boxes)
        all_classes.append(classes)
    return jpegs, all_boxes, all_classes


def synthetic_raw(
    jpegs: list[bytes], boxes: list[np.ndarray], classes: list[np.ndarray], decode: bool = True
) -> tf.data.Dataset:
    """Infinite raw dataset over in-memory JPEGs, decoded in the graph.

    Args:
        jpegs: encoded images.
        boxes: float32 ``(N, 4)`` xyxy per image.
        classes: int32 ``(N,)`` per image.
        decode: decode in the graph (True) or decode once and cache (False).

    Returns:
        Infinite ``tf.data.Dataset`` of raw examples.

    Example:
        >>> raw = synthetic_raw(*make_synthetic_jpegs(4))
    """
    boxes_ragged = tf.ragged.constant(
        [b.tolist() for b in boxes], ragged_rank=1, dtype=tf.float32, inner_shape=(4,)
    )
    classes_ragged = tf.ragged.constant([c.tolist() for c in classes], dtype=tf.int32)
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "jpeg": tf.constant(jpegs),
            "boxes": boxes_ragged,
            "classes": classes_ragged,
            "image_id": tf.range(len(jpegs), dtype=tf.int64),
        }
    )

    def to_raw(e):
        boxes = tf.reshape(e["boxes"], (-1, 4))
        return {
            "image": tf.ensure_shape(tf.io.decode_jpeg(e["jpeg"], channels=3), (None, None, 3)),
            "boxes": boxes,
            "classes": e["classes"],
            "is_crowd": tf.zeros(tf.shape(e["classes"]), tf.bool),
            "image_id": e["image_id"],
        }

    ds = ds.map(to_raw, num_parallel_calls=tf.data.AUTOTUNE)
    if not decode:
        ds = ds.cache()
    return ds.repeat()


def time_dataset(
    dataset: tf.data.Dataset, batches: int, warmup: int, batch_size: int, repeats: int = 1
) -> float:
    """Median images/s of ``repeats`` runs of ``batches`` batches after ``warmup``.

    Args:
        dataset: batched dataset to iterate.
        batches: batches timed per run.
        warmup: batches consumed before timing (fills prefetch buffers,
            lets AUTOTUNE settle).
        batch_size: images per batch.
        repeats: timed runs on the same iterator; the median is returned.

    Returns:
        Images per second.

    Example:
        >>> time_dataset(make_pipeline(raw), batches=50, warmup=10, batch_size=8)
    """
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        rates.append(batches * batch_size / (time.perf_counter() - start))
    del iterator  # Stops its background threads before the next measurement.
    return float(np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", choices=("synthetic", "shapes", "coco"), default="synthetic")
    parser.add_argument(
        "--shapes_dir", default="/tmp/keras_retina_bench_shapes", help="--source=shapes"
    )
    parser.add_argument(
        "--num_images", type=int, default=256, help="images written for --source=shapes"
    )
    parser.add_argument("--annotation_file", help="COCO instances JSON (--source=coco)")
    parser.add_argument("--image_dir", help="image folder (--source=coco)")
    parser.add_argument("--image_size", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is printed")
    parser.add_argument("--num_distinct", type=int, default=64)
    parser.add_argument("--raw_height", type=int, default=480)
    parser.add_argument("--raw_width", type=int, default=640)
    parser.add_argument(
        "--stages", action="store_true", help="also time decode alone and pipeline without decode"
    )
    args = parser.parse_args()

    def pipeline(raw):
        return make_pipeline(
            raw, image_size=args.image_size, batch_size=args.batch_size, training=True, seed=None
        )

    print(
        f"tf {tf.__version__}, {os.cpu_count()} CPU cores, image_size {args.image_size}, batch {args.batch_size}"
    )
    if args.source in ("shapes", "coco"):
        from keras_retina.data.coco_json import coco_json_dataset  # Imported only when used.

        if args.source == "shapes":
            from keras_retina.data.shapes import make_shapes_dataset

            files = make_shapes_dataset(
                args.shapes_dir,
                num_images=args.num_images,
                seed=0,
                image_size=(args.raw_height, args.raw_width),
                verbose=False,
            )
            annotation_file, image_dir = files.annotation_file, files.image_dir
        elif not (args.annotation_file and args.image_dir):
            parser.error("--source=coco needs --annotation_file and --image_dir")
        else:
            annotation_file, image_dir = args.annotation_file, args.image_dir
        raw = coco_json_dataset(annotation_file, image_dir).repeat()
        print(f"source: COCO JSON {annotation_file} (images read from disk and decoded in tf.data)")
        rate = time_dataset(pipeline(raw), args.batches, args.warmup, args.batch_size, args.repeats)
        print(
            f"training pipeline (read + decode + augment + resize + pad + batch): {rate:.1f} images/s"
        )
        return

    jpegs, boxes, classes = make_synthetic_jpegs(
        args.num_distinct, (args.raw_height, args.raw_width)
    )
    print(
        f"source: {len(jpegs)} synthetic {args.raw_width}x{args.raw_height} JPEGs, "
        f"mean {np.mean([len(j) for j in jpegs]) / 1024:.0f} KiB"
    )
    rate = time_dataset(
        pipeline(synthetic_raw(jpegs, boxes, classes)),
        args.batches,
        args.warmup,
        args.batch_size,
        args.repeats,
    )
    print(f"training pipeline (decode + augment + resize + pad + batch): {rate:.1f} images/s")
    if args.stages:
        decode_only = (
            synthetic_raw(jpegs, boxes, classes).map(lambda e: e["image"]).batch(args.batch_size)
        )
        rate = time_dataset(
            decode_only.prefetch(tf.data.AUTOTUNE),
            args.batches,
            args.warmup,
            args.batch_size,
            args.repeats,
        )
        print(f"  JPEG decode alone: {rate:.1f} images/s")
        cached = pipeline(synthetic_raw(jpegs, boxes, classes, decode=False))
        rate = time_dataset(cached, args.batches, args.warmup, args.batch_size, args.repeats)
        print(
            f"  pipeline on pre-decoded images (augment + resize + pad + batch): {rate:.1f} images/s"
        )


if __name__ == "__main__":
    main()
