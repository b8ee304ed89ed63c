"""What each ``main.py --mode`` does, from a resolved config (:mod:`keras_retina.cli` only parses flags).

One function per mode; a new mode is a function here, a name in
``cli.flags.MODES`` and a line in :func:`run`. Data comes from one
:class:`keras_retina.data.RunData` per mode, the trained model and its
classes from the run directory (:mod:`keras_retina.training.rundir`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import time

import keras
from PIL import Image

from keras_retina import config as config_lib
from keras_retina import evaluation, pretrained, training
from keras_retina.data import RunData, original_size_pipeline
from keras_retina.deploy import litert, onnx, runners, saved_model  # onnx: tf2onnx only when exporting
from keras_retina.deploy import predict as predict_lib
from keras_retina.deploy.exported_model import ExportedModel
from keras_retina.evaluation import anchor_fit, preflight, report
from keras_retina.model import slicing
from keras_retina.model.slicing import SlicedInference
from keras_retina.model.tta import DEFAULT_MERGE as DEFAULT_TTA_MERGE
from keras_retina.model.tta import DEFAULT_SCALES as DEFAULT_TTA_SCALES
from keras_retina.model.tta import TestTimeAugmentation
from keras_retina.training import rundir, transfer


def run(mode: str, config: config_lib.ExperimentConfig, flags: dict, strategy=None) -> None:
    """Dispatches one ``main.py`` mode (``strategy``: one made at program start, for multi_worker)."""
    if mode == "train_and_evaluate":
        train_and_evaluate(config, flags, strategy)
    elif mode == "train":
        training.train(config, strategy)
    elif mode == "evaluate":
        evaluate(config, flags)
    elif mode == "export":
        export(config, flags)
    elif mode == "predict":
        predict(config, flags)
    elif mode == "analyze":
        analyze(config, flags)
    elif mode == "convert":
        convert(config)
    else:
        raise ValueError(f"Unknown mode {mode!r}.")


def train_and_evaluate(config: config_lib.ExperimentConfig, flags: dict, strategy=None) -> dict:
    """Trains, evaluates the final model (metrics.json, ``report/``), exports it and draws validation predictions.

    Prints, and writes to ``<model_dir>/timing.json``, the seconds each stage
    took and the machine they were measured on (:func:`machine`).
    """
    start = time.time()
    epochs = _EpochTimer()
    model, _, data, metrics = training.train(config, strategy, callbacks=[epochs])  # writes metrics.json
    stages = {"data, build and training (evaluation included)": time.time() - start}
    model_dir = config.resolved_model_dir()
    print(evaluation.format_metrics(metrics))
    if config.train.strategy == "multi_worker":
        # Drawing and export would run collectively on every worker: do them
        # afterwards in one process (--mode=export, --mode=predict).
        print(f"\nDone: COCO AP {metrics['AP']:.3f}. Export with --mode=export --model_dir={model_dir}.")
        return metrics
    report_dir = os.path.join(model_dir, report.REPORT_DIR)
    detections = None
    if os.path.exists(os.path.join(model_dir, rundir.DETECTIONS_FILE)):
        detections = rundir.read_detections(model_dir)  # the final evaluation's: not detected again
    stage_start = time.time()
    report.write_report(
        model, data.pipeline("val"), data.coco_gt, data.class_names, data.category_ids, report_dir,
        tensorboard_dir=os.path.join(model_dir, "logs", "report") if config.train.tensorboard else None,
        detections=detections,
    )
    stages["report"] = time.time() - stage_start
    stage_start = time.time()
    drawing = draw_validation_predictions(model, data, os.path.join(model_dir, "val_predictions.png"))
    stages["drawing"] = time.time() - stage_start
    stage_start = time.time()
    export_path = _export(model, flags, model_dir, config, data.class_names, data.category_ids)
    stages["export"] = time.time() - stage_start
    total = time.time() - start
    timing = {
        "total_s": round(total, 1),
        "stages_s": {name: round(seconds, 1) for name, seconds in stages.items()},
        "epoch_s": [round(seconds, 1) for seconds in epochs.seconds],
        "machine": machine(),
    }
    with open(os.path.join(model_dir, "timing.json"), "w") as f:
        json.dump(timing, f, indent=1)
    print(f"\nDone in {total / 60:.1f} min. COCO AP {metrics['AP']:.3f} (AP50 {metrics['AP50']:.3f}).")
    print("  " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items()))
    if epochs.seconds:
        print(f"  {len(epochs.seconds)} epochs, {sum(epochs.seconds) / len(epochs.seconds):.1f} s each on average;"
              f" {timing['machine']['summary']}")
    print(f"  run directory:     {model_dir}")
    print(f"  checkpoints:       {os.path.join(model_dir, 'checkpoints')}")
    print(f"  metrics:           {os.path.join(model_dir, 'metrics.json')}")
    print(f"  report:            {os.path.join(report_dir, report.REPORT_FILE)}")
    print(f"  predictions drawn: {drawing}")
    print(f"  SavedModel:        {export_path}")
    print(f"  timing:            {os.path.join(model_dir, 'timing.json')}")
    return metrics


class _EpochTimer(keras.callbacks.Callback):
    """Wall-clock seconds of each epoch of a fit, its evaluation and checkpoints included."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.time() - self._start)


def machine() -> dict:
    """What a time was measured on: CPU model, family, vector extensions, cores, whether oneDNN is on.

    Example:
        >>> sorted(machine())
        ['cores', 'cpu', 'family', 'onednn', 'onednn_max_cpu_isa', 'summary', 'vector_isa']
    """
    info = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            info = f.read()
    field = lambda name: (re.search(rf"^{name}\s*:\s*(.*)$", info, re.M) or [None, platform.processor()])[1]  # noqa: E731
    flag_words = set(field("flags").split())
    isa = "AVX-512" if "avx512f" in flag_words else ("AVX2" if "avx2" in flag_words else "no AVX2")
    try:
        from tensorflow.python.util import _pywrap_util_port  # noqa: PLC0415  (TF's own query; no public API)

        onednn = bool(_pywrap_util_port.IsMklEnabled())
    except ImportError:
        onednn = None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpu, family = field("model name"), field("cpu family")
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")  # oneDNN limited to older kernels (the AVX2 stand-in)
    summary = f"{cores} cores, {cpu}, family {family}, {isa}, oneDNN {'on' if onednn else 'off'}"
    summary += f" (ONEDNN_MAX_CPU_ISA={cap})" if cap else ""
    return {
        "cpu": cpu, "family": family, "vector_isa": isa, "cores": cores, "onednn": onednn,
        "onednn_max_cpu_isa": cap, "summary": summary,
    }


def _with_tta(model, flags: dict | None):
    """``model``, or with ``--tta`` the model wrapped to detect with test-time augmentation."""
    if not (flags or {}).get("tta"):
        return model
    scales = [float(s) for s in flags.get("tta_scales") or DEFAULT_TTA_SCALES]
    merge = flags.get("tta_merge") or DEFAULT_TTA_MERGE
    print(f"Test-time augmentation: scales {scales}, flipped and not, merged by {merge}.")
    return TestTimeAugmentation(model, scales=scales, flip=True, merge=merge)


def _with_slicing(model, flags: dict | None, image_size: int):
    """``model``, or with ``--slice_size`` the model wrapped to detect tile by tile (each image at its own resolution)."""
    slice_size = (flags or {}).get("slice_size")
    if not slice_size:
        return model
    overlap = flags.get("slice_overlap")
    overlap = slicing.DEFAULT_OVERLAP if overlap is None else float(overlap)
    merge = flags.get("slice_merge") or slicing.DEFAULT_MERGE
    print(f"Sliced inference: tiles of {slice_size} px overlapping by {overlap:g}, each resized to {image_size} px, "
          f"plus the whole image; merged by {merge}.")
    return SlicedInference(model, slice_size=int(slice_size), slice_overlap=overlap, image_size=image_size, merge=merge)


def evaluate(config: config_lib.ExperimentConfig, flags: dict | None = None) -> dict:
    """Evaluates ``<model_dir>/checkpoints/latest.keras`` on the validation split: metrics.json and ``report/``.

    The report (:mod:`keras_retina.evaluation.report`) goes to ``<model_dir>/report/report.md`` and its PNGs, and to
    TensorBoard under ``<model_dir>/logs/report`` when the run has TensorBoard on. With ``--model=FILE`` it
    evaluates that exported file instead (:func:`evaluate_exported`).
    """
    if (flags or {}).get("model"):
        return evaluate_exported(config, flags)
    model_dir = config.resolved_model_dir()
    model = _with_slicing(_with_tta(rundir.load_trained_model(model_dir), flags), flags, config.data.image_size)
    data = RunData(config.data)
    report_dir = os.path.join(model_dir, report.REPORT_DIR)
    # Sliced inference sizes each image itself: the images come at their own resolution.
    pipeline = original_size_pipeline(data.raw("val")) if isinstance(model, SlicedInference) else data.pipeline("val")
    metrics = report.write_report(
        model, pipeline, data.coco_gt, data.class_names, data.category_ids, report_dir,
        tensorboard_dir=os.path.join(model_dir, "logs", "report") if config.train.tensorboard else None,
    ).metrics  # evaluation.evaluate_model's
    evaluation.write_metrics(metrics, os.path.join(model_dir, rundir.METRICS_FILE))
    print(evaluation.format_metrics(metrics))
    print(f"\nReport: {os.path.join(report_dir, report.REPORT_FILE)}")
    return metrics


def evaluate_exported(config: config_lib.ExperimentConfig, flags: dict) -> dict:
    """``--mode=evaluate --model=FILE``: COCO metrics of an exported file on the run's validation split.

    ``FILE`` is anything :func:`keras_retina.deploy.runners.open_detector`
    opens (a SavedModel directory, ``.tflite``, ``.onnx``, OpenVINO ``.xml``);
    the validation images are resized to the file's input size and resize
    rule. Prints the metrics table of the Keras model's evaluation and writes
    the metrics beside the file: ``<FILE>.metrics.json``, or
    ``<SavedModel dir>/metrics.json``.
    """
    path = flags["model"]
    detector = runners.open_detector(path)
    data_config = dataclasses.replace(
        config.data, image_size=detector.image_size, min_size=detector.min_size, max_size=detector.max_size
    )
    data = RunData(data_config)
    if list(data.category_ids) != list(detector.category_ids):
        print(f"Note: {path} has category ids {list(detector.category_ids)}, the data {list(data.category_ids)}.")
    wrapped = _with_slicing(_with_tta(ExportedModel(detector), flags), flags, detector.image_size)
    if isinstance(wrapped, ExportedModel):
        # A SavedModel with a shorter-side rule resizes each image itself: it gets them at their own size.
        resizes_itself = getattr(detector, "resizes_itself", False)
        pipeline = original_size_pipeline(data.raw("val")) if resizes_itself else data.pipeline("val")
        metrics = runners.evaluate_detector(detector, pipeline, data.coco_gt)
    else:  # --tta / --slice_size through the file's own runtime
        pipeline = original_size_pipeline(data.raw("val")) if isinstance(wrapped, SlicedInference) else data.pipeline("val")
        metrics = evaluation.evaluate_model(wrapped, pipeline, data.coco_gt, detector.category_ids, verbose=False)
    metrics_path = (
        os.path.join(path, rundir.METRICS_FILE) if os.path.isdir(path) else f"{path}.{rundir.METRICS_FILE}"
    )
    evaluation.write_metrics(metrics, metrics_path)
    print(evaluation.format_metrics(metrics))
    print(f"\nMetrics of {path}: {metrics_path}")
    return metrics


def draw_validation_predictions(model, data: RunData, path: str) -> str:
    """Draws the first validation batch to a PNG at ``path``: ground truth beside detections (score >= 0.3).

    The title names the threshold and the model as the folder of ``path``
    (the run directory); see :func:`keras_retina.evaluation.detection_grid`.
    """
    grid = evaluation.detection_grid(
        model, data.pipeline("val"), data.class_names, model_name=os.path.dirname(path) or None
    )
    Image.fromarray(grid).save(path)
    return path


def _export(model, flags, model_dir, config, class_names, category_ids) -> str:
    export_dir = flags.get("export_dir") or os.path.join(model_dir, "export")
    return saved_model.export_saved_model(
        model, export_dir, class_names=class_names, category_ids=category_ids, image_size=config.data.image_size,
        min_size=config.data.min_size, max_size=config.data.max_size,
    )


#: ``--format`` values of ``--mode=export``.
EXPORT_FORMATS = ("saved_model", "litert", "onnx", "openvino")


def export(config: config_lib.ExperimentConfig, flags: dict) -> str:
    """Exports ``<model_dir>/checkpoints/latest.keras`` in ``--format`` (:data:`EXPORT_FORMATS`).

    ``saved_model`` (default): a version directory for TF Serving. The other
    formats write one file to ``--export_dir`` (default ``<model_dir>/export``):
    ``litert``: ``model.tflite``, ``model_float16.tflite`` or ``model_int8.tflite``;
    ``onnx``: ``model.onnx`` or ``model_int8.onnx``; ``openvino``: ``model.xml`` (or ``model_int8.xml``)
    and its ``.bin``. int8 calibrates on 100 images of the run's training pipeline.
    """
    model_dir = config.resolved_model_dir()
    fmt = flags.get("format") or "saved_model"
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format must be one of {EXPORT_FORMATS}, got {fmt!r}.")
    model = rundir.load_trained_model(model_dir)
    class_names, category_ids = rundir.read_classes(model_dir)
    if fmt == "saved_model":
        path = _export(model, flags, model_dir, config, class_names, category_ids)
        print(f"SavedModel written to {path}")
        return path
    quantization = flags.get("quantization")
    export_dir = flags.get("export_dir") or os.path.join(model_dir, "export")
    common = dict(
        class_names=class_names,
        category_ids=category_ids,
        image_size=config.data.image_size,
        min_size=config.data.min_size,
        max_size=config.data.max_size,
    )
    representative = None
    if quantization == "int8":
        batches = RunData(config.data, seed=config.train.seed).pipeline("train")
        representative = (images.numpy() for images, _ in batches)
    if fmt == "onnx":
        if quantization == "float16":
            raise ValueError("--format=onnx --quantization=float16: ONNX is written float32 or int8.")
        path = os.path.join(export_dir, f"model{'_' + quantization if quantization else ''}.onnx")
        onnx.export_onnx(model, path, quantization=quantization, representative_data=representative, **common)
        print(f"ONNX model written to {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
        return path
    if fmt == "openvino":
        from keras_retina.deploy import openvino  # noqa: PLC0415  (openvino is an extra: imported when asked for)

        path = os.path.join(export_dir, f"model{'_' + quantization if quantization else ''}.xml")
        openvino.export_openvino(
            model, path, quantization=quantization, representative_data=representative, **common
        )
        print(f"OpenVINO model written to {path}")
        return path
    path = os.path.join(export_dir, f"model{'_' + quantization if quantization else ''}.tflite")
    litert.export_litert(model, path, quantization=quantization, representative_data=representative, **common)
    print(f"LiteRT model written to {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    return path


def predict(config: config_lib.ExperimentConfig, flags: dict) -> str:
    """Detections on ``--image`` files with ``<model_dir>``'s model: detections.json and drawn PNGs.

    ``--model=FILE``: an exported file instead (anything
    :func:`keras_retina.deploy.runners.open_detector` opens), with its own
    classes, input size and resize rule.
    """
    model_dir = config.resolved_model_dir()
    output_dir = flags.get("output_dir") or os.path.join(model_dir, "predictions")
    if flags.get("model"):  # an exported file, with its own classes, input size and resize rule
        model = runners.open_detector(flags["model"])
        image_size, class_names, category_ids = model.image_size, model.class_names, model.category_ids
        if flags.get("tta") or flags.get("slice_size"):  # through the file's own runtime
            model = _with_slicing(_with_tta(ExportedModel(model), flags), flags, image_size)
    else:
        image_size = config.data.image_size
        model = _with_slicing(_with_tta(rundir.load_trained_model(model_dir), flags), flags, image_size)
        class_names, category_ids = rundir.read_classes(model_dir)
    return predict_lib.predict_files(
        model,
        flags.get("image") or [],
        output_dir,
        image_size=image_size,
        class_names=class_names,
        category_ids=category_ids,
        min_size=getattr(model, "min_size", None) if flags.get("model") else config.data.min_size,
        max_size=getattr(model, "max_size", None) if flags.get("model") else config.data.max_size,
    )


def convert(config: config_lib.ExperimentConfig) -> str:
    """A run directory holding ``--init_weights``' model as it is, untrained: export and predict work on it.

    Writes ``<model_dir>/checkpoints/latest.keras``, ``classes.json`` (for
    torchvision's COCO models: the 91 labels, class ``i`` = COCO category id
    ``i``) and ``config.json`` (the experiment's, with the source's
    architecture and inference settings). Returns the model directory.
    """
    if not config.train.init_weights:
        raise ValueError("--mode=convert needs --init_weights (a published name, a .pth or a .keras file).")
    source = transfer.open_source(config.train.init_weights)
    model = source.model
    model_config = dataclasses.replace(
        transfer.finetune_model_config(config.model, model), **model.inference_settings.as_dict()
    )
    config = dataclasses.replace(config, model=model_config)
    if source.resize is not None:  # the source's test-time resize: its detections on a photo are ours
        min_size, max_size = source.resize
        canvas = -(-max_size // 32) * 32
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, min_size=min_size, max_size=max_size, image_size=canvas)
        )
    model_dir = config.resolved_model_dir()
    os.makedirs(os.path.join(model_dir, "checkpoints"), exist_ok=True)
    class_names = source.class_names or tuple(f"class_{i}" for i in range(model.num_classes))
    rundir.write_classes(model_dir, class_names, source.category_ids or tuple(range(model.num_classes)))
    rundir.write_config(model_dir, config)
    rundir.save_checkpoint(model, os.path.join(model_dir, rundir.LATEST_CHECKPOINT))  # whole or not at all
    print(f"{source.description} written to {model_dir} ({model.num_classes} classes). Next:")
    if config.data.min_size is not None:
        print(f"  Images are resized as the source was tested: shorter side {config.data.min_size}, longer at most "
              f"{config.data.max_size}.")
    print(f"  --mode=export  --model_dir={model_dir}   (SavedModel for TF Serving)")
    print(f"  --mode=predict --model_dir={model_dir} --image=photo.jpg")
    return model_dir


def analyze(config: config_lib.ExperimentConfig, flags: dict) -> dict:
    """The data's pre-flight check, then the anchor coverage of a split's boxes (``--split``) and an anchor search.

    The pre-flight check (:func:`keras_retina.evaluation.preflight.check_data`:
    box format, classes, image sizes, anchors, empty splits, each with its
    fix) is printed and written to ``preflight.json``; it compares the data's
    classes with those of ``--init_weights`` or of a model already trained in
    ``--model_dir``. The coverage is printed (with the ``--override`` flags of
    the anchors found) and written to ``anchor_coverage.json``; recall is
    counted at the run's matching threshold (``model.foreground_iou``), see
    :func:`keras_retina.evaluation.anchor_fit.search_anchors`. It is skipped
    when a split cannot be read.

    Returns:
        What ``anchor_coverage.json`` holds, plus ``"preflight"``: the pre-flight report's JSON.
    """
    data = RunData(config.data)
    anchors = training.build_anchor_generator(config.model)  # the run's anchors, --override included
    model_dir = config.resolved_model_dir()
    checked = preflight.check_data(
        data,
        anchors,
        foreground_iou=config.model.foreground_iou,
        allow_low_quality_matches=config.model.allow_low_quality_matches,
        **_preflight_model(config, model_dir),
    )
    print(checked.format())
    os.makedirs(model_dir, exist_ok=True)
    print(f"Pre-flight report: {checked.write(os.path.join(model_dir, preflight.REPORT_FILE))}\n")
    if any(finding.code == "unreadable" for finding in checked.errors):
        print("Anchor coverage skipped: a split cannot be read (see the errors above).")
        return {"preflight": checked.to_json()}
    coverage = anchor_fit.analyze_split(
        data,
        flags.get("split") or "val",
        model_dir,
        anchors,
        foreground_iou=config.model.foreground_iou,
        allow_low_quality_matches=config.model.allow_low_quality_matches,
    )
    return {**coverage, "preflight": checked.to_json()}


def _preflight_model(config: config_lib.ExperimentConfig, model_dir: str) -> dict:
    """The model whose classes the pre-flight check compares with the data's, as ``check_data`` arguments.

    ``--init_weights`` (a published name, or a ``.keras`` file with a
    ``classes.json`` in its run directory; nothing is loaded), else a model
    already trained in ``model_dir``; ``{}`` when neither names its classes.
    """
    init = config.train.init_weights
    if init:
        names = None
        if init in pretrained.CHECKPOINTS:
            names = pretrained.COCO_CATEGORIES
        elif init.endswith(".keras"):
            for directory in (os.path.dirname(init), os.path.dirname(os.path.dirname(init))):
                if os.path.exists(os.path.join(directory, rundir.CLASSES_FILE)):
                    names = rundir.read_classes(directory)[0]
                    break
        if names is None:
            return {}
        return {"model_class_names": names, "fine_tuning": True, "model_description": init,
                "match_classes": transfer.match_classes}
    if os.path.exists(os.path.join(model_dir, rundir.CLASSES_FILE)):
        return {"model_class_names": rundir.read_classes(model_dir)[0],
                "model_description": f"the model trained in {model_dir}"}
    return {}
