"""The ``main.py`` flags, and the experiment config they make (:func:`config_from_flags`).

A new flag is defined here; one that sets a config field also goes in
``_FLAG_FIELDS``. ``--override section.field=value`` reaches every other field.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from keras_retina import config as config_lib
from keras_retina import recipes
from keras_retina.model import slicing, tta
from keras_retina.training import rundir

MODES = ("train_and_evaluate", "train", "evaluate", "export", "predict", "analyze", "convert")

flags.DEFINE_enum("mode", "train_and_evaluate", MODES, "What to run.")
flags.DEFINE_string(
    "experiment",
    None,
    "A recipe: a file in keras_retina/recipes/ (without .py), or a dotted module with a config(). Default: shapes "
    "(the CPU demo) on the built-in data; finetune_coco (the paper's recipe from COCO weights) on any other "
    "--dataset; cpu_small is the small offline model for any data on a CPU.",
)
flags.DEFINE_string("model_dir", None, "Run directory (default runs/<experiment>).")
flags.DEFINE_string("dataset", None, "shapes | coco_json | yolo | tfds:<name>.")
flags.DEFINE_string("train_annotations", None, "COCO instances JSON of the training split.")
flags.DEFINE_string("train_images", None, "Image directory of the training split.")
flags.DEFINE_string("val_annotations", None, "COCO instances JSON of the validation split.")
flags.DEFINE_string("val_images", None, "Image directory of the validation split.")
flags.DEFINE_string("data_yaml", None, "YOLO data.yaml (labelling tools' export): path, train, val, names.")
flags.DEFINE_string("tfds_data_dir", None, "tensorflow-datasets data_dir.")
flags.DEFINE_string("backbone", None, "resnet50 | resnet101 | mobilenet_v2 | tiny | torchvision_resnet50.")
flags.DEFINE_string("backbone_weights", None, "imagenet | none | path to a weights file.")
flags.DEFINE_string(
    "init_weights",
    None,
    "Fine-tune from a trained detector: torchvision_v1_coco | torchvision_v2_coco (downloaded once) | a "
    "torchvision .pth | a keras_retina .keras | none. Its architecture replaces the experiment's. Default: the "
    "recipe's (finetune_coco: torchvision_v2_coco).",
)
flags.DEFINE_bool(
    "sync_batchnorm",
    None,
    "BatchNorm that trains on several replicas normalises with the global batch's statistics (default: on "
    "exactly then); --nosync_batchnorm keeps per-replica statistics.",
)
flags.DEFINE_string(
    "data_service",
    None,
    "grpc://HOST:PORT of a tf.data service dispatcher: training images are decoded and augmented on its "
    "workers, each once per epoch (docs/SCALING.md).",
)
flags.DEFINE_integer("image_size", None, "Square input size in pixels.")
flags.DEFINE_integer("batch_size", None, "Global batch size (split over replicas).")
flags.DEFINE_integer("epochs", None, "Training epochs.")
flags.DEFINE_integer(
    "steps_per_epoch", None, "Steps per epoch (default: one pass over the training images; the shapes demo fixes 100)."
)
flags.DEFINE_float("learning_rate", None, "Peak learning rate.")
flags.DEFINE_enum("strategy", None, ["auto", "one_device", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy.")
flags.DEFINE_enum("mixed_precision", None, ["none", "float16", "bfloat16"], "Mixed-precision policy.")
flags.DEFINE_bool("jit_compile", None, "Compile the train step with XLA.")
flags.DEFINE_integer("seed", None, "Random seed.")
flags.DEFINE_multi_string("override", [], "section.field=value for any config field (repeatable).")
flags.DEFINE_bool("skip_invalid", None, "Skip and count bad images/annotations instead of failing.")
flags.DEFINE_string("export_dir", None, "--mode=export: where the export goes (default <model_dir>/export).")
flags.DEFINE_enum(
    "format", "saved_model", ["saved_model", "litert", "onnx", "openvino"],
    "--mode=export: TF Serving SavedModel (a version directory), LiteRT model.tflite, ONNX model.onnx or "
    "OpenVINO model.xml (docs/SERVING.md).",
)
flags.DEFINE_enum(
    "quantization", None, ["float16", "int8"],
    "--mode=export --format=litert|onnx|openvino: float16 weights (litert) or int8 (default float32).",
)
flags.DEFINE_string(
    "model", None, "--mode=evaluate / predict: an exported model to run instead of the run's checkpoint: a "
    "SavedModel version directory, a .tflite, a .onnx or an OpenVINO .xml file (evaluate writes its metrics beside "
    "it: FILE.metrics.json, or metrics.json in the SavedModel directory).",
)
flags.DEFINE_multi_string("image", [], "--mode=predict: an image file or a directory of images (repeatable).")
flags.DEFINE_string("output_dir", None, "--mode=predict: where detections.json and PNGs go.")
flags.DEFINE_string("split", "val", "--mode=analyze: train or val.")
flags.DEFINE_bool(
    "tta", False, "--mode=evaluate / predict: test-time augmentation, each image also flipped (and at --tta_scales), "
    "the detections merged (--tta_merge; docs/TRAINING.md, Inference options).",
)
flags.DEFINE_enum(
    "tta_merge", tta.DEFAULT_MERGE, list(tta.MERGES),
    "--tta: how the copies' detections are merged: weighted box fusion or the model's NMS (default: the one with "
    "the higher AP measured, docs/BENCHMARKS.md).",
)
flags.DEFINE_list(
    "tta_scales", [str(s) for s in tta.DEFAULT_SCALES],
    "--tta: factors on the input size (default: the best set measured, docs/BENCHMARKS.md).",
)
flags.DEFINE_integer(
    "slice_size", None, "--mode=evaluate / predict: sliced inference for large images: each image cut, at its own "
    "resolution, into overlapping tiles of this many pixels, each resized onto the model's input, plus one "
    "whole-image pass; the detections merged (default: off; docs/TRAINING.md, Inference options).", lower_bound=1,
)
flags.DEFINE_float(
    "slice_overlap", slicing.DEFAULT_OVERLAP, "--slice_size: fraction of a tile shared with its neighbour, in [0, 1).",
    lower_bound=0.0, upper_bound=0.99,
)
flags.DEFINE_enum(
    "slice_merge", slicing.DEFAULT_MERGE, list(slicing.MERGES),
    "--slice_size: how the tiles' detections are merged: the model's NMS, or greedy non-maximum merging "
    "(SAHI's GREEDYNMM; default: the one with the higher AP measured, docs/BENCHMARKS.md).",
)

FLAGS = flags.FLAGS

# Flags that map one-to-one onto config fields.
_FLAG_FIELDS = {
    "dataset": "data.dataset",
    "train_annotations": "data.train_annotations",
    "train_images": "data.train_images",
    "val_annotations": "data.val_annotations",
    "val_images": "data.val_images",
    "data_yaml": "data.data_yaml",
    "tfds_data_dir": "data.tfds_data_dir",
    "image_size": "data.image_size",
    "batch_size": "data.batch_size",
    "skip_invalid": "data.skip_invalid",
    "backbone": "model.backbone",
    "backbone_weights": "model.backbone_weights",
    "sync_batchnorm": "model.sync_batchnorm",
    "data_service": "data.data_service",
    "epochs": "train.epochs",
    "steps_per_epoch": "train.steps_per_epoch",
    "learning_rate": "train.learning_rate",
    "strategy": "train.strategy",
    "mixed_precision": "train.mixed_precision",
    "jit_compile": "train.jit_compile",
    "seed": "train.seed",
    "init_weights": "train.init_weights",
}


def config_from_flags(flag_values: dict) -> config_lib.ExperimentConfig:
    """Experiment named by ``flag_values["experiment"]`` with the flag values and ``--override`` applied.

    In a mode other than training, an existing ``<model_dir>/config.json``
    is the starting point, so evaluation and export see the trained config.
    """
    config = recipes.load(flag_values.get("experiment") or recipes.default_for(flag_values.get("dataset")))
    if flag_values.get("model_dir"):
        config = dataclasses.replace(config, model_dir=flag_values["model_dir"])
    if flag_values.get("mode") not in (None, "train", "train_and_evaluate"):
        written = rundir.read_config(config.resolved_model_dir())
        if written is not None:
            config = dataclasses.replace(written, model_dir=config.resolved_model_dir())
    for flag, field in _FLAG_FIELDS.items():
        value = flag_values.get(flag)
        if value is None:
            continue
        section, name = field.split(".")
        if flag in ("backbone_weights", "init_weights") and str(value).lower() == "none":
            value = None  # an explicit --backbone_weights=none / --init_weights=none: not from those weights
        current = getattr(config, section)
        config = dataclasses.replace(config, **{section: dataclasses.replace(current, **{name: value})})
    config = config_lib.override(config, flag_values.get("override") or [])
    return config_lib.validate(config)
