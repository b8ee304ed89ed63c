"""AP and time of each NMS option on a trained run's validation split, side by side in one process.

Loads ``<model_dir>/checkpoints/latest.keras`` and the run's data (its
``config.json``), then evaluates the validation split once per setting:
the paper's class-wise hard NMS, class-agnostic NMS, Gaussian soft-NMS
(sigma 0.5, the paper's) and both; and test-time augmentation (flip, with
a few sets of scales, merged by the default NMS). Prints a markdown table (COCO AP, AP50,
AR100 and seconds per image of the whole evaluation) with the machine, and
writes it as JSON next to the run (``inference_options.json``).

Example:
    python main.py --model_dir=runs/shapes          # the default run, once
    python benchmarks/bench_inference_options.py --model_dir=runs/shapes
"""

from __future__ import annotations

import argparse
import json
import os
import time

import keras_retina as kr  # sets TensorFlow's environment before it loads
from keras_retina.cli import modes
from keras_retina.data import RunData
from keras_retina.evaluation.detections import evaluate_model
from keras_retina.model.tta import TestTimeAugmentation
from keras_retina.training import rundir

#: (name, settings changed from the model's own, test-time augmentation scales or None).
SETTINGS = (
    ("class-wise hard NMS (the paper's, default)", {}, None),
    ("class-agnostic hard NMS", {"class_agnostic_nms": True}, None),
    ("class-wise soft-NMS, sigma 0.5", {"soft_nms_sigma": 0.5}, None),
    ("class-agnostic soft-NMS, sigma 0.5", {"class_agnostic_nms": True, "soft_nms_sigma": 0.5}, None),
    ("TTA: flip", {}, (1.0,)),
    ("TTA: flip, scales 0.8, 1.0, 1.2", {}, (0.8, 1.0, 1.2)),
    ("TTA: flip, scales 1.0, 1.25", {}, (1.0, 1.25)),
    ("TTA: flip, scales 1.0, 1.25, 1.5", {}, (1.0, 1.25, 1.5)),
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
        detector = model if tta_scales is None else TestTimeAugmentation(model, scales=tta_scales, flip=True)
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
    args = parser.parse_args()
    result = measure(args.model_dir, args.repeats)
    with open(os.path.join(args.model_dir, "inference_options.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{result['machine']['summary']}, {result['date']}, {kr.__name__} {kr.__version__}\n")
    print(markdown(result))


if __name__ == "__main__":
    main()
