"""Where the time goes: TensorFlow profiler op statistics of a train or predict step.

Traces ``--steps`` steps of keras_retina's ResNet-50 RetinaNet (80 classes,
512x512, batch 2, random weights) after a warm-up, or with ``--model=default``
the default experiment's model on its own shapes batches (what ``python
main.py`` trains; ``--override`` changes it), then prints the self time by op
type and the slowest ops. Needs ``xprof`` (in the ``bench`` extra) to read the
trace.

Self times are summed over TensorFlow's inter-op threads, which run two ops
at once on a 2-core machine: compare shares, not milliseconds, and expect
small ops that overlap a large convolution to look slower than they are.

Examples:
    python -m benchmarks.profile --mode=train
    python -m benchmarks.profile --mode=predict --top=40
    python -m benchmarks.profile --model=default --steps=5
    ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.profile --model=default   # AVX2 kernels only
"""

from __future__ import annotations

import collections
import glob
import json
import os
import tempfile

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_enum("mode", "train", ["train", "predict"], "Step to profile.")
flags.DEFINE_enum(
    "trainable", "detectron", ["detectron", "all"],
    "'detectron': stem + stage 1 and BatchNorm frozen (the default with ImageNet weights); 'all'.",
)
flags.DEFINE_integer("steps", 2, "Steps traced.")
flags.DEFINE_integer("top", 25, "Slowest single ops listed.")
flags.DEFINE_string("dtype_policy", "float32", "Keras dtype policy.")
flags.DEFINE_enum("model", "resnet50", ["resnet50", "default"], "resnet50: the benchmark's; default: python main.py's.")
flags.DEFINE_multi_string("override", [], "--model=default: section.field=value for the default experiment.")


def op_table(xplane_path: str) -> list[dict]:
    """Rows of xprof's ``framework_op_stats`` tool: one dict per op (type, name, self time in us)."""
    from xprof.convert import raw_to_tool_data

    data, _ = raw_to_tool_data.xspace_to_tool_data([xplane_path], "framework_op_stats", {})
    table = json.loads(data)[0]
    columns = [column["id"] for column in table["cols"]]
    return [dict(zip(columns, [cell.get("v") for cell in row["c"]])) for row in table["rows"]]


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np
    import tensorflow as tf

    from benchmarks.models import build_keras_retina, default_config, default_model_and_data, synthetic_batch

    keras.config.set_dtype_policy(FLAGS.dtype_policy)
    keras.utils.set_random_seed(0)
    if FLAGS.model == "default":
        # The same model and pipeline as `benchmarks.run`'s default_step case.
        model, data = default_model_and_data(default_config(FLAGS.override), tempfile.mkdtemp())
        dataset = data.pipeline("train")
        images = next(iter(data.pipeline("val")))[0].numpy()
        batch = images.shape[0]
    else:
        # The same model and batch as `benchmarks.run`'s keras_retina cases.
        model = build_keras_retina(80, 512, FLAGS.trainable)
        model.compile()
        images, targets = synthetic_batch("keras_retina", 2, 512, 80)
        dataset = tf.data.Dataset.from_tensors((images, targets)).repeat()
        batch = 2
    logdir = tempfile.mkdtemp(prefix="keras_retina_profile_")

    def run(steps):
        if FLAGS.mode == "train":
            model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        else:
            model.predict(np.concatenate([images] * steps), batch_size=batch, verbose=0)

    run(2)  # tracing and first allocations stay out of the profile
    tf.profiler.experimental.start(logdir)
    run(FLAGS.steps)
    tf.profiler.experimental.stop()
    rows = op_table(sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1])

    by_type, by_op = collections.Counter(), collections.Counter()
    for row in rows:
        by_type[row["type"]] += row["total_self_time"]
        by_op[(row["type"], row["operation"])] += row["total_self_time"]
    busy = sum(v for k, v in by_type.items() if k != "IDLE")
    print(f"{FLAGS.model} model, {FLAGS.mode}, trainable={FLAGS.trainable}, {FLAGS.dtype_policy}, {FLAGS.steps} steps; "
          f"busy self time {busy / 1e3:.0f} ms (IDLE excluded)")
    print("| op type | self time, ms | share of busy time |\n| --- | --- | --- |")
    for op_type, micros in by_type.most_common():
        if op_type == "IDLE" or micros < 0.002 * busy:
            continue
        print(f"| {op_type} | {micros / 1e3:.0f} | {100 * micros / busy:.1f} % |")
    print(f"\nslowest {FLAGS.top} ops:")
    for (op_type, name), micros in by_op.most_common(FLAGS.top + 1):
        if op_type != "IDLE":
            print(f"  {micros / 1e3:8.1f} ms  {op_type:40s} {name[-80:]}")


if __name__ == "__main__":
    app.run(main)
