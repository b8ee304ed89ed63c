"""keras_retina command line: train, evaluate, export, predict, analyze.

    python main.py                      # shapes demo: train, evaluate, export, draw
    python main.py --dataset=coco_json --train_annotations=... --train_images=... \\
        --val_annotations=... --val_images=...
    python main.py --experiment=coco_r50_1x --tfds_data_dir=/data/tfds
    python main.py --mode=evaluate --model_dir=runs/shapes

Flags pick an experiment (``experiments/<name>.py``) and override its fields;
all logic lives in ``keras_retina.runs``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

MODES = ("train_and_evaluate", "train", "evaluate", "export", "predict", "analyze")

flags.DEFINE_enum("mode", "train_and_evaluate", MODES, "What to run.")
flags.DEFINE_string("experiment", "shapes", "A file in experiments/ (without .py).")
flags.DEFINE_string("model_dir", None, "Run directory (default runs/<experiment>).")
flags.DEFINE_string("dataset", None, "shapes | coco_json | tfds:<name>.")
flags.DEFINE_string("train_annotations", None, "COCO instances JSON of the training split.")
flags.DEFINE_string("train_images", None, "Image directory of the training split.")
flags.DEFINE_string("val_annotations", None, "COCO instances JSON of the validation split.")
flags.DEFINE_string("val_images", None, "Image directory of the validation split.")
flags.DEFINE_string("tfds_data_dir", None, "tensorflow-datasets data_dir.")
flags.DEFINE_string("backbone", None, "resnet50 | resnet101 | mobilenet_v2 | tiny.")
flags.DEFINE_string("backbone_weights", None, "imagenet | none | path to a weights file.")
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
flags.DEFINE_multi_string("image", [], "--mode=predict: an image file or a directory of images (repeatable).")
flags.DEFINE_string("output_dir", None, "--mode=predict: where detections.json and PNGs go.")
flags.DEFINE_string("split", "val", "--mode=analyze: train or val.")

FLAGS = flags.FLAGS


def main(argv):
    del argv
    strategy = None
    if FLAGS.strategy == "multi_worker":
        import tensorflow as tf  # noqa: PLC0415

        # Collective ops must be configured before any other TensorFlow op runs.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    from keras_retina import runs  # imported late so --help stays fast

    flag_values = {name: FLAGS[name].value for name in FLAGS}
    config = runs.config_from_flags(flag_values)
    runs.run(FLAGS.mode, config, flag_values, strategy=strategy)


if __name__ == "__main__":
    app.run(main)
