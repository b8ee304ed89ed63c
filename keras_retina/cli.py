"""The ``keras-retina`` command (and ``python main.py``): train, evaluate, export, predict, analyze.

    keras-retina                        # shapes demo: train, evaluate, export, draw
    keras-retina --dataset=coco_json --train_annotations=... --train_images=... \\
        --val_annotations=... --val_images=...
    keras-retina --experiment=coco_r50_1x --tfds_data_dir=/data/tfds
    keras-retina --mode=evaluate --model_dir=runs/shapes

Flags pick an experiment (``keras_retina/experiments/<name>.py``) and
override its fields; what each mode does lives in :mod:`keras_retina.runs`.
A new flag that sets a config field goes in ``runs._FLAG_FIELDS`` too.
"""

from __future__ import annotations

import sys

from absl import app, flags

MODES = ("train_and_evaluate", "train", "evaluate", "export", "predict", "analyze", "convert")

flags.DEFINE_enum("mode", "train_and_evaluate", MODES, "What to run.")
flags.DEFINE_string("experiment", "shapes", "A file in keras_retina/experiments/ (without .py).")
flags.DEFINE_string("model_dir", None, "Run directory (default runs/<experiment>).")
flags.DEFINE_string("dataset", None, "shapes | coco_json | tfds:<name>.")
flags.DEFINE_string("train_annotations", None, "COCO instances JSON of the training split.")
flags.DEFINE_string("train_images", None, "Image directory of the training split.")
flags.DEFINE_string("val_annotations", None, "COCO instances JSON of the validation split.")
flags.DEFINE_string("val_images", None, "Image directory of the validation split.")
flags.DEFINE_string("tfds_data_dir", None, "tensorflow-datasets data_dir.")
flags.DEFINE_string("backbone", None, "resnet50 | resnet101 | mobilenet_v2 | tiny | torchvision_resnet50.")
flags.DEFINE_string("backbone_weights", None, "imagenet | none | path to a weights file.")
flags.DEFINE_string(
    "init_weights",
    None,
    "Fine-tune from a trained detector: torchvision_v1_coco | torchvision_v2_coco (downloaded once) | a "
    "torchvision .pth | a keras_retina .keras. Its architecture replaces the experiment's.",
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
flags.DEFINE_integer("steps_per_epoch", None, "Steps per epoch (default: one pass over the data).")
flags.DEFINE_float("learning_rate", None, "Peak learning rate.")
flags.DEFINE_enum("strategy", None, ["auto", "one_device", "mirrored", "multi_worker", "tpu"], "tf.distribute strategy.")
flags.DEFINE_enum("mixed_precision", None, ["none", "float16", "bfloat16"], "Mixed-precision policy.")
flags.DEFINE_bool("jit_compile", None, "Compile the train step with XLA.")
flags.DEFINE_integer("seed", None, "Random seed.")
flags.DEFINE_multi_string("override", [], "section.field=value for any config field (repeatable).")
flags.DEFINE_bool("skip_invalid", None, "Skip and count bad images/annotations instead of failing.")
flags.DEFINE_string("export_dir", None, "SavedModel export directory (default <model_dir>/export).")
flags.DEFINE_enum("format", "saved_model", ["saved_model", "litert"], "--mode=export: TF Serving SavedModel or LiteRT .tflite.")
flags.DEFINE_enum(
    "quantization", None, ["float16", "int8"], "--mode=export --format=litert: float16 weights or int8 (default float32)."
)
flags.DEFINE_string("model", None, "--mode=predict: a .tflite file to run with LiteRT (default: the run's checkpoint).")
flags.DEFINE_multi_string("image", [], "--mode=predict: an image file or a directory of images (repeatable).")
flags.DEFINE_string("output_dir", None, "--mode=predict: where detections.json and PNGs go.")
flags.DEFINE_string("split", "val", "--mode=analyze: train or val.")

FLAGS = flags.FLAGS


def main(argv) -> None:
    """absl entry point: flags -> config -> :func:`keras_retina.runs.run`."""
    del argv
    strategy = None
    if FLAGS.strategy == "multi_worker":
        import tensorflow as tf  # noqa: PLC0415

        # Collective ops must be configured before any other TensorFlow op runs.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from keras_retina import runs  # noqa: PLC0415 (imported late so --help stays fast)

    flag_values = {name: FLAGS[name].value for name in FLAGS}
    config = runs.config_from_flags(flag_values)
    runs.run(FLAGS.mode, config, flag_values, strategy=strategy)


def run() -> None:
    """The console script ``keras-retina``: parses ``sys.argv`` and runs :func:`main`."""
    entry = sys.modules["__main__"]
    if not entry.__doc__:  # absl prints the __main__ module's docstring as --help's usage
        entry.__doc__ = __doc__
    # --help lists the main program's flags: ours are defined here, not there.
    for flag in FLAGS.get_flags_for_module(__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)


if __name__ == "__main__":
    run()
