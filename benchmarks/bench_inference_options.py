"""AP and time of each NMS option on a trained run's validation split, side by side in one process.

Loads ``<model_dir>/checkpoints/latest.keras`` and the run's data (its
``config.json``), then evaluates the validation split once per setting:
the paper's class-wise hard NMS, class-agnostic NMS, Gaussian soft-NMS
(sigma 0.5, the paper's) and both; and test-time augmentation (flip, with
a few sets of scales, merged by the model's NMS or by weighted box fusion). Then sliced inference, on the run's
validation split and on a generated large-image dataset
(:data:`keras_retina.data.LARGE_IMAGES_SMALL_OBJECTS`: 1024 x 1536 images,
objects of 16-30 px): the whole image shrunk onto the input against tiles
merged by NMS or greedy merging, with and without the whole-image pass.
Prints markdown tables (COCO AP, AP50, AR100 and seconds per image of the
whole evaluation) with the machine, and writes them as JSON next to the run
(``inference_options.json``).

Example:
    python main.py --model_dir=runs/shapes          # the default run, once
    python benchmarks/bench_inference_options.py --model_dir=runs/shapes
"""

from __future__ import annotations

import argparse
import json
import os
import time

from pycocotools.coco import COCO

import keras_retina as kr  # sets TensorFlow's environment before it loads
from keras_retina.cli import modes
from keras_retina.data import (
    LARGE_IMAGES_SMALL_OBJECTS, RunData, coco_json_dataset, make_pipeline, make_shapes_dataset, original_size_pipeline,
)
from keras_retina.evaluation.detections import evaluate_model
from keras_retina.model.slicing import SlicedInference
from keras_retina.model.tta import TestTimeAugmentation
from keras_retina.training import rundir

#: (name, settings changed from the model's own, test-time augmentation scales or None).
SETTINGS = (
    ("class-wise hard NMS (the paper's, default)", {}, None),
    ("class-agnostic hard NMS", {"class_agnostic_nms": True}, None),
    ("class-wise soft-NMS, sigma 0.5", {"soft_nms_sigma": 0.5}, None),
    ("class-agnostic soft-NMS, sigma 0.5", {"class_agnostic_nms": True, "soft_nms_sigma": 0.5}, None),
    ("TTA (NMS): flip", {}, (1.0,)),
    ("TTA (NMS): flip, scales 0.8, 1.0, 1.2", {}, (0.8, 1.0, 1.2)),
    ("TTA (NMS): flip, scales 1.0, 1.25", {}, (1.0, 1.25)),
    ("TTA (NMS): flip, scales 1.0, 1.25, 1.5", {}, (1.0, 1.25, 1.5)),
)


def measure(model_dir: str, repeats: int = 2) -> dict:
    """Evaluates each of :data:`SETTINGS`; the time is the best of ``repeats`` evaluations (the first traces)."""
    config = rundir.read_config(model_dir)
    model = rundir.load_trained_model(model_dir)
    data = RunData(config.data)
    base = model.inference_settings
    rows = []
    for name, changes, tta_scales in SETTINGS:
        model.inference_settings = base.replace(**changes)
        detector = model if tta_scales is None else TestTimeAugmentation(model, scales=tta_scales, flip=True, merge="nms")
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            metrics = evaluate_model(detector, data.pipeline("val"), data.coco_gt, data.category_ids, verbose=False)
            seconds.append(time.perf_counter() - start)
        num_images = len(data.coco_gt.getImgIds())
        rows.append({
            "setting": name, **changes, "tta_scales": tta_scales, "AP": metrics["AP"], "AP50": metrics["AP50"], "AR100": metrics["AR100"],
            "seconds_per_image": min(seconds) / num_images, "num_images": num_images,
        })
        print(f"{name}: AP {metrics['AP']:.3f}", flush=True)
    return {"model_dir": model_dir, "machine": modes.machine(), "date": time.strftime("%Y-%m-%d"), "rows": rows}


def measure_wbf(model_dir: str) -> list[dict]:
    """The TTA sets of :data:`SETTINGS` merged by weighted box fusion (``merge="wbf"``) instead of NMS."""
    config = rundir.read_config(model_dir)
    model = rundir.load_trained_model(model_dir)
    data = RunData(config.data)
    rows = []
    for name, _, tta_scales in SETTINGS:
        if tta_scales is None:
            continue
        detector = TestTimeAugmentation(model, scales=tta_scales, flip=True, merge="wbf")
        start = time.perf_counter()
        metrics = evaluate_model(detector, data.pipeline("val"), data.coco_gt, data.category_ids, verbose=False)
        seconds = time.perf_counter() - start
        num_images = len(data.coco_gt.getImgIds())
        rows.append({
            "setting": name.replace("TTA (NMS):", "TTA (weighted box fusion):"), "tta_scales": tta_scales, "merge": "wbf",
            "AP": metrics["AP"], "AP50": metrics["AP50"], "AR100": metrics["AR100"],
            "seconds_per_image": seconds / num_images, "num_images": num_images,
        })
        print(f"{rows[-1]['setting']}: AP {metrics['AP']:.3f}", flush=True)
    return rows


#: (name, dataset ("val": the run's own; "large": generated), SlicedInference options or None for the whole image).
SLICED_SETTINGS = (
    ("whole image", "val", None),
    ("tiles of 256, NMS, + whole image", "val", {"slice_size": 256}),
    ("whole image shrunk onto the input", "large", None),
    ("tiles of 256, NMS, + whole image", "large", {"slice_size": 256}),
    ("tiles of 256, NMS, no whole image", "large", {"slice_size": 256, "whole_image": False}),
    ("tiles of 256, overlap 0.1, NMS, + whole image", "large", {"slice_size": 256, "slice_overlap": 0.1}),
    ("tiles of 256, greedy merging (IoS 0.5), + whole image", "large", {"slice_size": 256, "merge": "greedy_nmm"}),
    ("tiles of 384 resized to 256, NMS, + whole image", "large", {"slice_size": 384}),
    ("tiles of 512 resized to 256, NMS, + whole image", "large", {"slice_size": 512}),
)


def measure_sliced(model_dir: str, large_dir: str, num_large: int = 40) -> dict:
    """:data:`SLICED_SETTINGS` on the run's validation split and ``num_large`` generated large images."""
    config = rundir.read_config(model_dir)
    model = rundir.load_trained_model(model_dir)
    image_size = config.data.image_size
    files = make_shapes_dataset(large_dir, num_images=num_large, seed=(2026, 12, 6), verbose=False,
                                **LARGE_IMAGES_SMALL_OBJECTS)
    data = RunData(config.data)
    large_raw = coco_json_dataset(files.annotation_file, files.image_dir)
    large_gt = COCO(files.annotation_file)
    sources = {
        "val": (data.raw("val"), data.coco_gt, data.category_ids),
        "large": (large_raw, large_gt, tuple(sorted(large_gt.getCatIds()))),
    }
    rows = []
    for name, source, options in SLICED_SETTINGS:
        raw, gt, category_ids = sources[source]
        if options is None:
            detector, pipeline = model, make_pipeline(raw, image_size=image_size, batch_size=8, training=False)
        else:
            detector = SlicedInference(model, image_size=image_size, **options)
            pipeline = original_size_pipeline(raw)
        start = time.perf_counter()
        metrics = evaluate_model(detector, pipeline, gt, category_ids, verbose=False)
        seconds = time.perf_counter() - start
        num_images = len(gt.getImgIds())
        rows.append({"setting": name, "dataset": source, "options": options, "AP": metrics["AP"], "AP50": metrics["AP50"],
                     "APs": metrics["APs"], "AR100": metrics["AR100"], "seconds_per_image": seconds / num_images,
                     "num_images": num_images})
        print(f"{source}: {name}: AP {metrics['AP']:.3f}", flush=True)
    return {"large_images": {**LARGE_IMAGES_SMALL_OBJECTS, "num_images": num_large}, "image_size": image_size,
            "rows": rows}


def markdown_sliced(result: dict) -> str:
    lines = [
        "| images | inference | COCO AP | AP50 | AP small | AR@100 | s per image (evaluation) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    names = {"val": "the run's validation split (256 px)", "large": "generated, 1024 x 1536, objects 16-30 px"}
    for row in result["rows"]:
        small = "-" if row["APs"] < 0 else f"{row['APs']:.3f}"
        lines.append(
            f"| {names[row['dataset']]} | {row['setting']} | {row['AP']:.3f} | {row['AP50']:.3f} | {small} "
            f"| {row['AR100']:.3f} | {row['seconds_per_image']:.3f} |"
        )
    return "\n".join(lines)


def markdown(result: dict) -> str:
    lines = [
        "| NMS | COCO AP | AP50 | AR@100 | s per image (evaluation) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['setting']} | {row['AP']:.3f} | {row['AP50']:.3f} | {row['AR100']:.3f} "
            f"| {row['seconds_per_image']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", default="runs/shapes", help="a trained run directory")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=("nms", "wbf", "sliced"), action="append",
                        help="run only these groups (repeatable; default all)")
    parser.add_argument("--large_dir", default="data/large_shapes", help="where the large-image dataset is written")
    args = parser.parse_args()
    groups = set(args.only or ("nms", "wbf", "sliced"))
    result = measure(args.model_dir, args.repeats) if "nms" in groups else {
        "model_dir": args.model_dir, "machine": modes.machine(), "date": time.strftime("%Y-%m-%d"), "rows": []}
    if "wbf" in groups:
        result["rows"] += measure_wbf(args.model_dir)
    if "sliced" in groups:
        result["sliced"] = measure_sliced(args.model_dir, args.large_dir)
    with open(os.path.join(args.model_dir, "inference_options.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{result['machine']['summary']}, {result['date']}, {kr.__name__} {kr.__version__}\n")
    print(markdown(result))
    if "sliced" in result:
        print("\n" + markdown_sliced(result["sliced"]))


if __name__ == "__main__":
    main()
