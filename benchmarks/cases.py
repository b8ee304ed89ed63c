"""One benchmark case per process: ``python -m benchmarks.cases CASE [--flags]``.

Each case builds its model from scratch, measures, and prints one JSON line
(prefixed ``RESULT``) that :mod:`benchmarks.run` collects. A fresh process per
case keeps one library's threads, caches and allocator state out of the
other's figures.

Cases (``--lib`` is ``keras_retina`` or ``keras_hub``):

* ``train``: images/s of ``model.fit`` on one fixed in-memory batch repeated
  (so neither library's input pipeline is measured), then, in the same
  process, ``predict`` images/s after training (``--predict_after``).
* ``predict``: images/s of ``model.predict`` (forward, decoding and NMS) in
  a fresh process; ``--dense`` sets the classification bias to +0.5 so that
  every anchor is a candidate for NMS.
* ``loss``: forward + backward of the classification loss on a
  ``(8, 49104, 80)`` logits tensor (``--lib=keras`` is Keras'
  ``BinaryFocalCrossentropy``).
* ``flops``: forward FLOPs per image of each model, counted by TensorFlow's
  graph profiler.
* ``default_step``: seconds per training step of the default experiment
  (``python main.py``: the ``tiny`` model on shapes images through the run's
  own input pipeline), with ``--override`` applied: the levers of the first run.
* ``time_to_accuracy``: the default experiment end to end as ``python
  main.py`` trains it (the data written first), evaluated every
  ``--tta_eval_every`` epochs: COCO AP against wall-clock seconds.
* ``litert``: keras_retina's model as the ``predict`` case builds it, timed
  with TF ``model.predict`` at ``--batch_size`` (1 in ``benchmarks.run``) and
  then exported with :func:`keras_retina.deploy.litert.export_litert` (float32,
  float16, int8) and run one image at a time by
  :class:`keras_retina.deploy.litert.LiteRTDetector` (XNNPACK,
  ``--litert_threads``); network-only files (``--litert_network_only``)
  split each file's time between the network and the post-processing.

Peak memory is the process's maximum resident set size (``ru_maxrss``).
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time

from absl import app, flags

from benchmarks.models import build_keras_hub, build_keras_retina, set_class_bias, synthetic_batch

FLAGS = flags.FLAGS
flags.DEFINE_enum("lib", "keras_retina", ["keras_retina", "keras_hub", "keras"], "Library measured.")
flags.DEFINE_integer("image_size", 512, "Square input size, pixels.")
flags.DEFINE_integer("batch_size", 2, "Images per step.")
flags.DEFINE_integer("num_classes", 80, "Object classes.")
flags.DEFINE_integer("warmup_steps", 2, "Steps run before timing (tracing, first allocations).")
flags.DEFINE_integer("steps", 6, "Timed steps.")
flags.DEFINE_bool("dense", False, "predict: classification bias +0.5, every anchor a candidate.")
flags.DEFINE_bool("predict_after", True, "train: also time predict in the same process afterwards.")
flags.DEFINE_string(
    "trainable",
    "default",
    "train: 'default' (each library's own default for random weights), "
    "'detectron' (stem and stage 1 (conv1, conv2_x) frozen, every BatchNorm frozen, as "
    "keras_retina does with ImageNet weights), or 'all'.",
)
flags.DEFINE_string("jit_compile", "default", "train/loss: 'default', 'true' or 'false'.")
flags.DEFINE_bool("fold_batchnorm", True, "keras_retina: fold inference-mode BatchNorm into convs.")
flags.DEFINE_integer("inter_op_threads", 0, "tf.config inter-op threads (0: TensorFlow's default).")
flags.DEFINE_integer(
    "threads", 0, "default_step: run on this many threads (intra-op, inter-op and OpenMP; 0: TensorFlow's "
    "default). 1 gives CPU seconds per step that other processes' load hardly changes.",
)
flags.DEFINE_string("dtype_policy", "float32", "Keras dtype policy (float32, mixed_bfloat16, ...).")
flags.DEFINE_multi_string("override", [], "default_step / time_to_accuracy: section.field=value for the default experiment.")
flags.DEFINE_integer("tta_eval_every", 2, "time_to_accuracy: evaluate every this many epochs.")
flags.DEFINE_list("litert_quantizations", ["float32", "float16", "int8"], "litert: files exported and timed.")
flags.DEFINE_list(
    "litert_network_only", ["float32", "int8"],
    "litert: quantizations also exported without decoding and NMS (the network alone), to split the time.",
)
flags.DEFINE_bool(
    "litert_dense", True,
    "litert: also the float32 file of a dense scene (class bias +0.5: 5000 candidates for NMS).",
)
flags.DEFINE_integer("litert_threads", 2, "litert: LiteRT interpreter threads (XNNPACK).")
flags.DEFINE_integer("calibration_images", 20, "litert: synthetic images calibrating int8.")

def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _jit_flag():
    return {"default": None, "true": True, "false": False}[FLAGS.jit_compile]


# ------------------------------------------------------------------ models
def _build(lib, trainable="default"):
    if lib == "keras_retina":
        return build_keras_retina(FLAGS.num_classes, FLAGS.image_size, trainable, FLAGS.fold_batchnorm)
    return build_keras_hub(FLAGS.num_classes, FLAGS.image_size, trainable)


def _compile(model):
    jit = _jit_flag()
    model.compile(**({} if jit is None else {"jit_compile": jit}))


class _Timer:
    """Wall time of batches ``warmup..end`` through Keras callbacks."""

    def __init__(self, warmup):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def _begin(self, batch, logs=None):
                if batch == warmup:
                    timer.start = time.perf_counter()
                    timer.cpu_start = time.process_time()

            on_train_batch_begin = _begin
            on_predict_batch_begin = _begin

            def on_train_end(self, logs=None):
                timer.end = time.perf_counter()
                timer.cpu_end = time.process_time()

            def on_predict_end(self, logs=None):
                timer.end = time.perf_counter()

        self.callback = Callback()
        self.start = self.end = self.cpu_start = self.cpu_end = None

    def images_per_second(self, images):
        return images / (self.end - self.start)


def _time_predict(model, lib):
    import numpy as np

    batch, size = FLAGS.batch_size, FLAGS.image_size
    images, _ = synthetic_batch(lib, batch, size, FLAGS.num_classes, seed=1)
    images = np.concatenate([images] * (FLAGS.warmup_steps + FLAGS.steps))
    timer = _Timer(FLAGS.warmup_steps)
    outputs = model.predict(images, batch_size=batch, verbose=0, callbacks=[timer.callback])
    count = outputs["num_detections"] if "num_detections" in outputs else None
    return {
        "predict_images_per_s": timer.images_per_second(FLAGS.steps * batch),
        "mean_detections": float(np.mean(count)) if count is not None else None,
    }


# ------------------------------------------------------------------- cases
def case_train():
    import tensorflow as tf

    lib = FLAGS.lib
    model = _build(lib, FLAGS.trainable)
    _compile(model)
    x, y = synthetic_batch(lib, FLAGS.batch_size, FLAGS.image_size, FLAGS.num_classes)
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    timer = _Timer(FLAGS.warmup_steps)
    start = time.perf_counter()
    model.fit(
        dataset,
        epochs=1,
        steps_per_epoch=FLAGS.warmup_steps + FLAGS.steps,
        verbose=0,
        callbacks=[timer.callback],
    )
    result = {
        "train_images_per_s": timer.images_per_second(FLAGS.steps * FLAGS.batch_size),
        "train_first_steps_s": timer.start - start,
        "train_peak_rss_mib": _peak_rss_mib(),
        "trainable_weights": len(model.trainable_weights),
        "trainable_params": int(sum(w.numpy().size for w in model.trainable_weights)),
        "jit_compile": bool(model.jit_compile),
    }
    if FLAGS.predict_after:
        after = _time_predict(model, lib)
        result["predict_after_fit_images_per_s"] = after["predict_images_per_s"]
        result["peak_rss_mib"] = _peak_rss_mib()
    return result


def case_predict():
    model = _build(FLAGS.lib)
    if FLAGS.dense:
        set_class_bias(model, FLAGS.lib, 0.5)
    result = _time_predict(model, FLAGS.lib)
    result["predict_peak_rss_mib"] = _peak_rss_mib()
    return result


def case_loss():
    import keras
    import numpy as np
    import tensorflow as tf

    shape = (8, 49104, 80)
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(-4.0, 2.0, shape).astype("float32"))
    labels = np.zeros(shape, "float32")
    positives = rng.integers(0, shape[1], (shape[0], 100))
    for b in range(shape[0]):
        labels[b, positives[b], rng.integers(0, shape[2], 100)] = 1.0
    labels = tf.constant(labels)
    jit = _jit_flag()
    if FLAGS.lib == "keras":
        loss = keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, from_logits=True)
    else:
        import keras_retina as kr

        # --jit_compile=false: our loss without its XLA fusion.
        loss = kr.FocalLoss(jit_compile=jit is not False)
        jit = None

    def step(y_true, y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            value = loss(y_true, y_pred)
        return value, tape.gradient(value, y_pred)

    # Called from an ordinary tf.function, as a train step calls it.
    step = tf.function(step, jit_compile=jit)
    for _ in range(FLAGS.warmup_steps):
        value, grad = step(labels, logits)
        grad.numpy()
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        value, grad = step(labels, logits)
        grad.numpy()
    seconds = (time.perf_counter() - start) / FLAGS.steps
    return {"loss_ms": seconds * 1000.0, "loss_value": float(value), "peak_rss_mib": _peak_rss_mib()}


def _forward_gflop(model):
    """Forward GFLOP per image of ``model`` (TensorFlow's graph profiler)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((1, FLAGS.image_size, FLAGS.image_size, 3), tf.float32)
    concrete = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    graph = convert_variables_to_constants_v2(concrete).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=graph, options=options)
    return profile.total_float_ops / 1e9


def case_flops():
    return {"forward_gflop_per_image": _forward_gflop(_build(FLAGS.lib))}


def case_input():
    """The training input pipeline alone (see ``benchmarks/bench_input.py``)."""
    from benchmarks.bench_input import make_synthetic_jpegs, synthetic_raw, time_dataset
    from keras_retina.data.pipeline import make_pipeline

    batch = 8
    jpegs, boxes, classes = make_synthetic_jpegs(64)
    dataset = make_pipeline(
        synthetic_raw(jpegs, boxes, classes), image_size=FLAGS.image_size, batch_size=batch,
        training=True, seed=None,
    )
    rate = time_dataset(dataset, batches=40, warmup=10, batch_size=batch, repeats=3)
    return {"input_images_per_s": rate}


def case_default_step():
    import tempfile

    from benchmarks.models import default_config, default_model_and_data

    config = default_config(FLAGS.override)
    model, data = default_model_and_data(config, tempfile.mkdtemp(prefix="keras_retina_step_"))
    timer = _Timer(FLAGS.warmup_steps)
    start = time.perf_counter()
    model.fit(
        data.pipeline("train"), epochs=1, steps_per_epoch=FLAGS.warmup_steps + FLAGS.steps, verbose=0,
        callbacks=[timer.callback],
    )
    seconds = (timer.end - timer.start) / FLAGS.steps
    from tensorflow.python.util import _pywrap_util_port  # noqa: PLC0415  (TF's own "is oneDNN on" query)

    return {
        "step_s": seconds,
        # CPU seconds of this process per step (all its threads): on --threads=1
        # the figure other processes' load hardly changes.
        "cpu_s_per_step": (timer.cpu_end - timer.cpu_start) / FLAGS.steps,
        "threads": FLAGS.threads,
        "onednn": bool(_pywrap_util_port.IsMklEnabled()),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "train_images_per_s": config.data.batch_size / seconds,
        "train_first_steps_s": timer.start - start,
        "overrides": FLAGS.override,
        "trainable_params": int(sum(w.numpy().size for w in model.trainable_weights)),
    }


def case_time_to_accuracy():
    import csv
    import dataclasses
    import tempfile

    import keras

    from benchmarks.models import default_config
    from keras_retina import training

    start = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="keras_retina_tta_")
    base = default_config(FLAGS.override)
    config = default_config(
        FLAGS.override
        + [f"data.shapes_dir={workdir}/shapes", f"train.eval_every_epochs={FLAGS.tta_eval_every}", "train.tensorboard=false"],
        model_dir=f"{workdir}/run",
    )
    curve = []

    class Curve(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs and logs.get("val_AP") is not None:
                curve.append({"epoch": epoch + 1, "seconds": time.perf_counter() - start, "AP": logs["val_AP"]})

    _, _, _, metrics = training.train(config, callbacks=[Curve()])
    with open(f"{workdir}/run/train_log.csv") as f:
        epochs = len(list(csv.DictReader(f)))
    return {
        "curve": curve,
        "final_AP": metrics["AP"],
        "final_AP50": metrics["AP50"],
        "train_seconds": time.perf_counter() - start,
        "epochs": epochs,
        "eval_every_epochs": FLAGS.tta_eval_every,
        "default_eval_every_epochs": base.train.eval_every_epochs,
        "overrides": FLAGS.override,
        "config": dataclasses.asdict(config),
    }


def _litert_network_only(model, path, quantization, calibration):
    """A ``.tflite`` file of the network alone (uint8 images in, ``cls_logits`` and ``box_deltas`` out).

    The same graph as :func:`keras_retina.deploy.litert.export_litert` up to the
    network's outputs, without decoding and NMS: its time against the full
    file's is the post-processing's share.
    """
    import keras
    import tensorflow as tf

    from keras_retina.deploy import litert
    from keras_retina.deploy.class_names import class_names_zip

    class NetworkOnly(litert._LiteRTModule):  # noqa: SLF001 (benchmark of the module's own graph)
        def serve_fn(self, images):
            outputs = self.model(tf.cast(images, tf.float32), training=False)
            return {key: tf.cast(outputs[key], tf.float32) for key in ("cls_logits", "box_deltas")}

    module = NetworkOnly(model, FLAGS.image_size, list(range(model.num_classes)))
    with tempfile.TemporaryDirectory() as scratch:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", module.serve_fn, input_signature=[module.input_spec])
        archive.write_out(scratch, verbose=False)
        flatbuffer = litert._convert(  # noqa: SLF001
            scratch, quantization, calibration, FLAGS.image_size, len(calibration)
        )
    with open(path, "wb") as f:
        f.write(flatbuffer)
        f.write(class_names_zip([f"class_{i}" for i in range(model.num_classes)], range(model.num_classes)))
    return path


def _litert_postprocess_only(model, path):
    """A ``.tflite`` file of the post-processing alone: the network's outputs in, detections out.

    :func:`keras_retina.deploy.litert.export_litert`'s graph after the network
    (per-level top-k, decoding, class-wise NMS, category ids), fed the
    network's ``cls_logits`` and ``box_deltas`` concatenated, float32
    ``(1, A, C + 4)``: the post-processing timed directly, not as a difference.
    """
    import tensorflow as tf

    from keras_retina.deploy import litert

    num_classes = model.num_classes

    class NetworkOutputs:
        """Stands in for the model: its input is already the network's outputs."""

        def __getattr__(self, name):
            return getattr(model, name)

        def __call__(self, x, training=False):
            return {"cls_logits": x[..., :num_classes], "box_deltas": x[..., num_classes:]}

    module = litert._LiteRTModule(NetworkOutputs(), FLAGS.image_size, list(range(num_classes)))  # noqa: SLF001
    spec = tf.TensorSpec((1, int(module.anchors.shape[0]), num_classes + 4), tf.float32, name="images")
    serve = tf.function(module.serve_fn, input_signature=[spec])
    holder = tf.Module()
    holder.serve = serve
    with tempfile.TemporaryDirectory() as scratch:
        tf.saved_model.save(holder, scratch, signatures={"serving_default": serve})
        flatbuffer = litert._convert(scratch, None, None, FLAGS.image_size, 0)  # noqa: SLF001
    with open(path, "wb") as f:
        f.write(flatbuffer)
    return path


def _time_calls(call, calls):
    """Seconds of each of ``calls`` timed calls of ``call()``, after ``--warmup_steps`` untimed ones."""
    for _ in range(FLAGS.warmup_steps):
        outputs = call()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        outputs = call()
        times.append(time.perf_counter() - start)
    return times, outputs


def _time_litert(path, image):
    """images/s and median ms of ``LiteRTDetector`` on one image, ``--warmup_steps`` + ``--steps`` calls."""
    import numpy as np

    from keras_retina.deploy.litert import LiteRTDetector

    detector = LiteRTDetector(path, num_threads=FLAGS.litert_threads)
    times, outputs = _time_calls(lambda: detector(image), FLAGS.steps)
    result = {"images_per_s": FLAGS.steps / sum(times), "median_ms": 1000.0 * float(np.median(times))}
    if "num_detections" in outputs:
        result["num_detections"] = int(outputs["num_detections"][0])
    return result


def case_litert():
    """TF ``model.predict`` and LiteRT (float32, float16, int8) of one model, in one process."""
    from importlib.metadata import version

    import numpy as np
    import tensorflow as tf

    from keras_retina.deploy.litert import export_litert

    lib, size = "keras_retina", FLAGS.image_size
    model = _build(lib)
    result = {
        "batch_size": FLAGS.batch_size, "litert_threads": FLAGS.litert_threads,
        "calibration_images": FLAGS.calibration_images, "ai_edge_litert": version("ai-edge-litert"),
    }
    tf_predict = _time_predict(model, lib)
    result["tf_predict_images_per_s"] = tf_predict["predict_images_per_s"]
    result["tf_mean_detections"] = tf_predict["mean_detections"]
    # The TF network alone (no decoding, NMS), at the same batch size: TF's own split.
    images, _ = synthetic_batch(lib, FLAGS.batch_size, size, FLAGS.num_classes, seed=1)
    forward = tf.function(lambda x: model(x, training=False))
    x = tf.constant(images.astype("float32"))

    def network_outputs():  # (1, A, C + 4): the post-processing file's input
        outputs = forward(x)
        return np.concatenate([outputs["cls_logits"].numpy(), outputs["box_deltas"].numpy()], -1)[:1]

    for _ in range(FLAGS.warmup_steps):
        tf.nest.map_structure(lambda t: t.numpy(), forward(x))
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        tf.nest.map_structure(lambda t: t.numpy(), forward(x))
    result["tf_network_images_per_s"] = FLAGS.steps * FLAGS.batch_size / (time.perf_counter() - start)
    result["tf_predict_peak_rss_mib"] = _peak_rss_mib()
    result["forward_gflop_per_image"] = _forward_gflop(model)
    sparse_outputs = network_outputs()

    image = images[0]  # the first image TF predicted (uint8, (S, S, 3))
    # int8 calibration on random-pixel images: the ranges they give are not
    # those of real photos, so the int8 file's accuracy means nothing here,
    # but its speed does not depend on the calibration (the same ops and
    # shapes, int8 kernels whatever the scales).
    calibration = list(synthetic_batch(lib, FLAGS.calibration_images, size, FLAGS.num_classes, seed=2)[0])
    result["litert"] = {}
    with tempfile.TemporaryDirectory() as directory:
        for name in FLAGS.litert_quantizations:
            quantization = None if name == "float32" else name
            entry = {}
            path = os.path.join(directory, f"model_{name}.tflite")
            start = time.perf_counter()
            export_litert(model, path, quantization=quantization, representative_data=calibration,
                          num_calibration_images=len(calibration))
            entry["convert_s"] = time.perf_counter() - start
            entry["file_mb"] = os.path.getsize(path) / 1e6
            entry.update(_time_litert(path, image))
            if name in FLAGS.litert_network_only:
                network_path = os.path.join(directory, f"network_{name}.tflite")
                _litert_network_only(model, network_path, quantization, calibration)
                network = _time_litert(network_path, image)
                entry["network_images_per_s"] = network["images_per_s"]
                entry["network_median_ms"] = network["median_ms"]
            result["litert"][name] = entry
            print(name, {k: round(v, 3) if isinstance(v, float) else v for k, v in entry.items()}, flush=True)
        # The post-processing alone (float32 in every file: int8 leaves it
        # out), on the network's outputs for the image, then for a dense scene.
        from ai_edge_litert.interpreter import Interpreter

        path = _litert_postprocess_only(model, os.path.join(directory, "postprocess.tflite"))
        runner = Interpreter(model_path=path, num_threads=FLAGS.litert_threads).get_signature_runner("serving_default")
        calls = 5 * FLAGS.steps
        post = {"file_mb": os.path.getsize(path) / 1e6, "calls": calls}
        times, outputs = _time_calls(lambda: runner(images=sparse_outputs), calls)
        post["median_ms"], post["num_detections"] = 1000.0 * float(np.median(times)), int(outputs["num_detections"][0])
        set_class_bias(model, lib, 0.5)
        dense_outputs = network_outputs()
        times, outputs = _time_calls(lambda: runner(images=dense_outputs), calls)
        post["dense_median_ms"] = 1000.0 * float(np.median(times))
        post["dense_num_detections"] = int(outputs["num_detections"][0])
        result["litert_postprocess"] = post
        print("postprocess", post, flush=True)
        if FLAGS.litert_dense:
            # Every anchor scores 0.62: each level's top 1000 reach NMS (the
            # network's time is unchanged; only the post-processing's grows).
            path = os.path.join(directory, "model_float32_dense.tflite")
            start = time.perf_counter()
            export_litert(model, path)
            entry = {"convert_s": time.perf_counter() - start, "file_mb": os.path.getsize(path) / 1e6}
            entry.update(_time_litert(path, image))
            result["litert"]["float32_dense"] = entry
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


CASES = {
    "default_step": case_default_step,
    "time_to_accuracy": case_time_to_accuracy,
    "train": case_train,
    "predict": case_predict,
    "loss": case_loss,
    "flops": case_flops,
    "input": case_input,
    "litert": case_litert,
}


def main(argv):
    if len(argv) != 2 or argv[1] not in CASES:
        raise app.UsageError(f"usage: python -m benchmarks.cases {{{','.join(CASES)}}} [--flags]")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if FLAGS.threads:
        os.environ["OMP_NUM_THREADS"] = str(FLAGS.threads)  # oneDNN's OpenMP pool; read when TF loads
    import keras
    import tensorflow as tf

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    if FLAGS.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.inter_op_threads)
    keras.config.set_dtype_policy(FLAGS.dtype_policy)
    keras.utils.set_random_seed(0)
    result = CASES[argv[1]]()
    result.update(case=argv[1], lib=FLAGS.lib)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
