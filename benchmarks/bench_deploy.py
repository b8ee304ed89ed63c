"""Every deployment format side by side: ``python -m benchmarks.run --only=deploy``.

Two models:

* the default run's (``python main.py``: the ``tiny`` RetinaNet on shapes at
  256 px, ``--deploy_model_dir``): every format's COCO AP on the shapes
  validation split, and its speed;
* ResNet-50-FPN at 512 px, 80 classes, random weights: speed only.

Formats: Keras ``model.predict``, the SavedModel (its ``serving_images``
signature), LiteRT float32 / float16 / int8, ONNX Runtime float32 (and int8)
when ``keras_retina.deploy.onnx`` is present, OpenVINO float32 and int8 at
float32 inference precision, and OpenVINO float32 at the CPU plugin's own
default precision when that is not float32 (bf16 on AVX512_BF16 / AMX CPUs).
int8 files are calibrated on the run's training images (random pixels for
ResNet-50: its AP means nothing, its speed does not depend on the ranges).

One process exports every file (``export``); then each format runs in a
process of its own (``measure``) so its load time and peak RSS are its own:
batch 1, 2 threads, ``--warmup`` untimed calls then ``--calls`` timed ones
(p50, p95, images/s), then (default model) every validation image once for
the AP, which this process scores. The LiteRT, ONNX and OpenVINO processes
import their runtime alone, never TensorFlow: the OpenVINO one loads
``keras_retina/deploy/openvino.py`` as a file, the others call the runtime
directly with the files' ``images`` input.

Examples:
    python -m benchmarks.run --only=deploy --write_docs     # 10-20 min on 2 cores
    python -m benchmarks.bench_deploy measure --format=openvino_float32 --path=model.xml --images=val.npz
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
#: (name, label) of every format, in table order.
FORMATS = (
    ("keras", "Keras `model.predict`, float32"),
    ("saved_model", "SavedModel (TF), float32"),
    ("litert_float32", "LiteRT float32 (XNNPACK)"),
    ("litert_float16", "LiteRT float16 weights (XNNPACK)"),
    ("litert_int8", "LiteRT int8"),
    ("onnx_float32", "ONNX Runtime float32"),
    ("onnx_int8", "ONNX Runtime int8"),
    ("openvino_float32", "OpenVINO float32 (f32 precision hint)"),
    ("openvino_int8", "OpenVINO int8 (f32 hint for the float ops)"),
    ("openvino_float32_default", "OpenVINO float32 file, the CPU plugin's default precision"),
)
#: Goals: (formats, least AP difference to Keras).
AP_GOALS = ((("saved_model", "litert_float32", "litert_float16", "onnx_float32", "openvino_float32"), 0.01),
            (("litert_int8", "onnx_int8", "openvino_int8"), 0.02))
THREADS = 2


# ------------------------------------------------------------------ export (one process, TensorFlow)
def export_all(kind: str, model_dir: str, out: str, calibration_images: int) -> dict:
    """Writes every format's file of the ``kind`` model (``"default"`` or ``"resnet50"``) under ``out``.

    Returns ``{"files": {format: path}, "export_s": {format: seconds}, "image_size", "category_ids", ...}``;
    for ``"default"`` also writes ``out/val.npz`` (the validation images and what maps boxes back).
    """
    import keras

    from keras_retina.deploy import litert, openvino, saved_model
    from keras_retina.training import rundir

    os.makedirs(out, exist_ok=True)
    record = {"files": {}, "export_s": {}, "errors": {}}
    if kind == "default":
        from benchmarks.models import default_config
        from keras_retina.data.run_data import RunData

        config = rundir.read_config(model_dir) or default_config()
        model = rundir.load_trained_model(model_dir)
        class_names, category_ids = rundir.read_classes(model_dir)
        data = RunData(config.data, seed=config.train.seed)
        size = config.data.image_size
        images, ids, scales, shapes = [], [], [], []
        for x, y in data.pipeline("val"):
            images.append(np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8))
            ids.append(y["image_id"].numpy())
            scales.append(y["scale"].numpy())
            shapes.append(y["image_shape"].numpy())
        np.savez(os.path.join(out, "val.npz"), images=np.concatenate(images), image_ids=np.concatenate(ids),
                 scales=np.concatenate(scales), image_shapes=np.concatenate(shapes))
        calibration = [x.numpy() for x, _ in data.pipeline("train").take(-(-calibration_images // 8))]
    else:
        from benchmarks.models import build_keras_retina, synthetic_batch

        size = 512
        keras.utils.set_random_seed(0)
        model = build_keras_retina(80, size, "default")
        class_names, category_ids = [f"class_{i}" for i in range(80)], list(range(80))
        calibration = list(synthetic_batch("keras_retina", calibration_images, size, 80, seed=2)[0])
        rng = np.random.default_rng(1)
        np.savez(os.path.join(out, "val.npz"), images=rng.integers(0, 256, (4, size, size, 3), dtype=np.uint8))
    record.update(image_size=size, class_names=list(class_names), category_ids=[int(c) for c in category_ids],
                  num_params=int(model.count_params()))
    common = {"class_names": class_names, "category_ids": category_ids, "image_size": size}
    keras_path = os.path.join(out, "model.keras")
    exports = {
        "keras": lambda: model.save(keras_path) or keras_path,
        "saved_model": lambda: saved_model.export_saved_model(model, os.path.join(out, "saved_model"), **common),
        "litert_float32": lambda: litert.export_litert(model, os.path.join(out, "model.tflite"), **common),
        "litert_float16": lambda: litert.export_litert(
            model, os.path.join(out, "model_float16.tflite"), quantization="float16", **common),
        "litert_int8": lambda: litert.export_litert(
            model, os.path.join(out, "model_int8.tflite"), quantization="int8", representative_data=calibration,
            num_calibration_images=calibration_images, **common),
        "openvino_float32": lambda: openvino.export_openvino(model, os.path.join(out, "model.xml"), **common),
        "openvino_int8": lambda: openvino.export_openvino(
            model, os.path.join(out, "model_int8.xml"), quantization="int8", representative_data=calibration,
            num_calibration_images=calibration_images, **common),
    }
    onnx = _onnx_module()
    if onnx is not None:
        exports["onnx_float32"] = lambda: onnx.export_onnx(model, os.path.join(out, "model.onnx"), **common)
        if "int8" in getattr(onnx, "QUANTIZATIONS", ()):
            exports["onnx_int8"] = lambda: onnx.export_onnx(
                model, os.path.join(out, "model_int8.onnx"), quantization="int8", representative_data=calibration,
                **common)
    for name, export in exports.items():
        start = time.perf_counter()
        try:
            record["files"][name] = export()
        except Exception as error:  # noqa: BLE001  a format that fails is a row that says so, not a lost benchmark
            record["errors"][name] = f"{type(error).__name__}: {str(error)[:300]}"
            print(f"export {name} failed: {record['errors'][name]}", flush=True)
            continue
        record["export_s"][name] = time.perf_counter() - start
        print(f"exported {name} in {record['export_s'][name]:.1f} s", flush=True)
    if "openvino_float32" in record["files"]:
        record["files"]["openvino_float32_default"] = record["files"]["openvino_float32"]
    return record


def _onnx_module():
    try:
        from keras_retina.deploy import onnx
    except ImportError:
        return None
    return onnx if hasattr(onnx, "export_onnx") else None


# ------------------------------------------------------------------ runners (one format per process)
def _runner(name: str, path: str, category_ids: list[int]):
    """``(call, info)``: ``call(image (S, S, 3) uint8)`` → detections dict with category ids; ``info`` versions."""
    if name == "keras":
        import keras
        import tensorflow as tf

        import keras_retina  # noqa: F401  (registers the model's classes)

        _tf_threads(tf)
        model = keras.saving.load_model(path)
        ids = np.asarray(category_ids)

        def call(image):
            out = model.predict(image[None], verbose=0)
            count = int(out["num_detections"][0])
            classes = np.where(np.arange(out["classes"].shape[1]) < count, ids[np.clip(out["classes"][0], 0, None)], -1)
            return {"detection_boxes": out["boxes"], "detection_scores": out["scores"],
                    "detection_classes": classes[None], "num_detections": out["num_detections"]}

        return call, {"tensorflow": tf.__version__, "keras": keras.__version__}
    if name == "saved_model":
        import tensorflow as tf

        _tf_threads(tf)
        signature = tf.saved_model.load(path).signatures["serving_images"]
        return (lambda image: {k: v.numpy() for k, v in signature(images=tf.constant(image[None])).items()},
                {"tensorflow": tf.__version__})
    if name.startswith("litert"):
        from importlib.metadata import version

        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=path, num_threads=THREADS).get_signature_runner("serving_default")
        return lambda image: runner(images=image[None]), {"ai_edge_litert": version("ai-edge-litert")}
    if name.startswith("onnx"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        names = [o.name for o in session.get_outputs()]
        return (lambda image: dict(zip(names, session.run(None, {input_name: image[None]}))),
                {"onnxruntime": ort.__version__})
    if name.startswith("openvino"):
        import importlib.util
        from importlib.metadata import version

        # The project's detector, loaded as a file: importing keras_retina would load TensorFlow.
        spec = importlib.util.spec_from_file_location("kr_openvino", ROOT / "keras_retina" / "deploy" / "openvino.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        detector = module.OpenVINODetector(path, num_threads=THREADS,
                                           precision="default" if name.endswith("_default") else None)
        return detector, {"openvino": version("openvino"), "inference_precision": detector.inference_precision}
    raise ValueError(f"unknown format {name!r}")


def _tf_threads(tf):
    tf.config.threading.set_intra_op_parallelism_threads(THREADS)
    tf.config.threading.set_inter_op_parallelism_threads(THREADS)


def measure(name: str, path: str, images_file: str, category_ids: list[int], warmup: int, calls: int,
            detections_out: str | None, profile: bool = False) -> dict:
    """One format in this process: import, load, first call, timed calls, detections of every image, peak RSS."""
    images = np.load(images_file)["images"]
    start = time.perf_counter()
    call, info = _runner(name, path, category_ids)
    loaded = time.perf_counter()
    call(images[0])
    result = {"format": name, "load_s": loaded - start, "first_call_s": time.perf_counter() - loaded, **info}
    for i in range(warmup):
        call(images[i % len(images)])
    times = []
    for i in range(calls):
        image = images[i % len(images)]
        begin = time.perf_counter()
        call(image)
        times.append(time.perf_counter() - begin)
    result.update(
        calls=calls, images_per_s=calls / sum(times), p50_ms=1000 * float(np.percentile(times, 50)),
        p95_ms=1000 * float(np.percentile(times, 95)),
    )
    if detections_out:
        outputs = [call(image) for image in images]
        np.savez(detections_out, **{key: np.concatenate([o[key] for o in outputs]) for key in (
            "detection_boxes", "detection_scores", "detection_classes", "num_detections")})
    if profile and name.startswith("openvino"):
        result["profile"] = _openvino_profile(call, images[0])
    if profile and name.startswith("onnx"):
        result["profile"] = _onnx_profile(path, images[0])
    result["peak_rss_mib"] = _peak_rss_mib()
    result["file_mb"] = _size_mb(path)
    return result


def _peak_rss_mib() -> float:
    """This process's peak resident set (``VmHWM``): Linux keeps ``ru_maxrss`` across ``exec``, so a child of a
    large parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _openvino_profile(detector, image) -> dict:
    """Milliseconds per node type of one call, and the post-processing's share, from ``PERF_COUNT``."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": THREADS, "PERF_COUNT": True}
    if detector.inference_precision != "bf16":
        config["INFERENCE_PRECISION_HINT"] = detector.inference_precision
    ov_model = core.read_model(detector.path)
    post = _postprocess_names(ov_model)
    request = core.compile_model(ov_model, "CPU", config).create_infer_request()
    for _ in range(3):
        request.infer({0: image[None]})
    by_type, post_ms, total = {}, 0.0, 0.0
    for node in request.get_profiling_info():
        ms = node.real_time.total_seconds() * 1000.0
        total += ms
        by_type[node.node_type] = by_type.get(node.node_type, 0.0) + ms
        if node.node_name in post or any(n in post for n in node.node_name.split(",")):
            post_ms += ms
    top = dict(sorted(by_type.items(), key=lambda kv: -kv[1])[:8])
    return {"total_ms": total, "postprocess_ms": post_ms, "by_type_ms": top}


def _onnx_profile(path: str, image) -> dict:
    """Milliseconds per op type of one call, and the post-processing's share, from ONNX Runtime's profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: image[None]}
    runs = 3
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    # The last run's node events: each "<node>_kernel_time" event of category Node, microseconds.
    kernel = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    last_call = kernel[-(len(kernel) // runs):]
    by_type, post_ms = {}, 0.0
    for event in last_call:
        ms = event["dur"] / 1000.0
        op = event.get("args", {}).get("op_name", "?")
        by_type[op] = by_type.get(op, 0.0) + ms
        if "postprocess" in event["name"] or op in ("NonMaxSuppression", "TopK", "Loop"):
            post_ms += ms
    top = dict(sorted(by_type.items(), key=lambda kv: -kv[1])[:8])
    return {"total_ms": sum(by_type.values()), "postprocess_ms": post_ms, "by_type_ms": top}


def _postprocess_names(ov_model) -> set:
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("kr_openvino", ROOT / "keras_retina" / "deploy" / "openvino.py")
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.postprocess_node_names(ov_model)


def _size_mb(path: str) -> float:
    if os.path.isdir(path):
        return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 1e6
    if path.endswith(".xml"):
        return (os.path.getsize(path) + os.path.getsize(path[:-4] + ".bin")) / 1e6
    return os.path.getsize(path) / 1e6


# ------------------------------------------------------------------ the group (run from benchmarks.run)
def _subprocess(args: list[str], timeout: float = 1800) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result_file = f.name
    try:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_deploy", *args, f"--result={result_file}"],
                              check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line]
            return {"error": lines[-1].strip()[:300] if lines else f"exit status {proc.returncode}"}
        return json.loads(Path(result_file).read_text())
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        os.unlink(result_file)


def run_group(model_dir: str, calls: int, resnet_calls: int, log=print) -> dict:
    """Exports and measures both models; returns the ``docs/benchmarks_deploy.json`` record's results."""
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for kind, count, calibration in (("default", calls, 100), ("resnet50", resnet_calls, 8)):
            if kind == "default" and not os.path.isdir(os.path.join(model_dir, "checkpoints")):
                results[kind] = {"error": f"no trained run in {model_dir}: run `python main.py` first, or pass "
                                          "--deploy_model_dir"}
                continue
            out = os.path.join(scratch, kind)
            log(f"[{time.strftime('%H:%M:%S')}] deploy: exporting the {kind} model ...")
            exported = _subprocess(["export", f"--kind={kind}", f"--model_dir={model_dir}", f"--out={out}",
                                    f"--calibration_images={calibration}"])
            if "error" in exported:
                results[kind] = {"error": exported["error"]}
                continue
            rows = {}
            for name, _ in FORMATS:
                if name in exported["errors"]:
                    rows[name] = {"error": exported["errors"][name]}
                if name not in exported["files"]:
                    continue
                detections = os.path.join(out, f"detections_{name}.npz") if kind == "default" else ""
                args = ["measure", f"--format={name}", f"--path={exported['files'][name]}",
                        f"--images={os.path.join(out, 'val.npz')}", f"--calls={count}",
                        f"--category_ids={','.join(map(str, exported['category_ids']))}",
                        f"--detections={detections}", f"--profile={kind == 'resnet50'}"]
                row = _subprocess(args)
                if detections and "error" not in row:
                    row["AP"] = _coco_ap(detections, os.path.join(out, "val.npz"), exported, model_dir)
                row["export_s"] = exported["export_s"].get(name)
                rows[name] = row
                log(f"[{time.strftime('%H:%M:%S')}] deploy {kind} {name}: "
                    f"{ {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k != 'profile'} }")
            if rows.get("openvino_float32_default", {}).get("inference_precision") == "f32":
                rows.pop("openvino_float32_default")  # the plugin's default is float32 here: the same row
            results[kind] = {"image_size": exported["image_size"], "num_params": exported["num_params"], "rows": rows}
    return results


def _coco_ap(detections_file: str, val_file: str, exported: dict, model_dir: str) -> float:
    from benchmarks.models import default_config
    from keras_retina import evaluation
    from keras_retina.data.run_data import RunData
    from keras_retina.training import rundir

    found, val = np.load(detections_file), np.load(val_file)
    scale = np.stack([val["scales"][:, 1], val["scales"][:, 0]] * 2, -1)[:, None]  # (N, 1, 4) x, y, x, y
    limits = np.stack([val["image_shapes"][:, 1], val["image_shapes"][:, 0]] * 2, -1)[:, None]
    boxes = np.clip(found["detection_boxes"] / scale, 0, limits)  # original pixels
    contiguous = {cid: i for i, cid in enumerate(exported["category_ids"])}
    classes = np.vectorize(lambda c: contiguous.get(int(c), 0))(found["detection_classes"])
    results = evaluation.detections_to_coco(boxes, found["detection_scores"], classes, found["num_detections"],
                                            [int(i) for i in val["image_ids"]], exported["category_ids"])
    config = rundir.read_config(model_dir) or default_config()
    coco_gt = RunData(config.data, seed=config.train.seed).coco_gt
    return float(evaluation.coco_evaluate(coco_gt, results, image_ids=[int(i) for i in val["image_ids"]])["AP"])


# ------------------------------------------------------------------ the section of docs/BENCHMARKS.md
def build_table(results: dict) -> str:
    """Markdown: the default model's rows (AP, speed, size, load, RSS), ResNet-50's, the goals and the profile."""
    lines = []
    default, resnet = results.get("default", {}), results.get("resnet50", {})
    keras_ap = default.get("rows", {}).get("keras", {}).get("AP")
    for kind, title in ((default, "default run's model (`tiny`, {s} px), shapes validation split"),
                        (resnet, "ResNet-50-FPN, {s} px, 80 classes, random weights (speed only)")):
        if not kind:
            continue
        if "error" in kind:
            lines += [f"Export fails: `{kind['error']}`", ""]
            continue
        rows = kind["rows"]
        base = rows.get("keras", {}).get("images_per_s")
        lines += [
            f"**{title.format(s=kind['image_size'])}**, batch 1, {THREADS} threads",
            "",
            ("| format | precision run | COCO AP | Δ AP vs Keras | images/s | vs Keras | p50 ms | p95 ms | file MB "
             "| load s (to first detections) | peak RSS MiB |"),
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, label in FORMATS:
            row = rows.get(name)
            if row is None:
                continue
            if "error" in row:
                lines.append(f"| {label} | fails: `{row['error'][:120]}` | | | | | | | | | |")
                continue
            ap = row.get("AP")
            delta = None if ap is None or keras_ap is None else ap - keras_ap
            lines.append(
                f"| {label} | {_precision(name, row)} | {_f(ap, 3)} | {_f(delta, 3, sign=True)} "
                f"| {_f(row['images_per_s'], 1)} | {_f(row['images_per_s'] / base if base else None, 2)}× "
                f"| {_f(row['p50_ms'], 1)} | {_f(row['p95_ms'], 1)} | {_f(row['file_mb'], 1)} "
                f"| {_f(row['load_s'] + row['first_call_s'], 2)} | {_f(row['peak_rss_mib'], 0)} |"
            )
        lines.append("")
    lines += _goals(default.get("rows", {}), resnet.get("rows", {}))
    for name, how in (("openvino_float32", "OpenVINO's `PERF_COUNT`"), ("onnx_float32", "ONNX Runtime's profiler")):
        profile = resnet.get("rows", {}).get(name, {}).get("profile")
        if profile:
            lines += [
                "",
                f"Where {name}'s time goes (ResNet-50-FPN 512, one call, {how}): "
                f"{profile['total_ms']:.0f} ms in its kernels, {profile['postprocess_ms']:.1f} ms of them in the "
                "post-processing (decoding, top-k, NMS); by op type: "
                + ", ".join(f"{k} {v:.0f} ms" for k, v in profile["by_type_ms"].items()) + ".",
            ]
    return "\n".join(lines)


def _precision(name: str, row: dict) -> str:
    if name.startswith("openvino"):
        return ("int8 network, " if "int8" in name else "") + row.get("inference_precision", "?")
    if name in ("keras", "saved_model", "litert_float32", "onnx_float32", "litert_float16"):
        return "f32"
    return "int8 network, f32 post-processing"


def _goals(default: dict, resnet: dict) -> list[str]:
    lines = ["Goals:", ""]
    keras_ap = default.get("keras", {}).get("AP")
    for names, limit in AP_GOALS:
        for name in names:
            ap = default.get(name, {}).get("AP")
            if ap is None or keras_ap is None:
                continue
            ok = abs(ap - keras_ap) <= limit
            lines.append(f"* {name}: AP within {limit} of Keras' ({ap:.3f} vs {keras_ap:.3f}): "
                         f"{'met' if ok else '**missed**'}.")
    base = resnet.get("keras", {}).get("images_per_s")
    if base:
        candidates = [
            (row["images_per_s"], name) for name, row in resnet.items()
            if "images_per_s" in row and name != "keras" and keras_ap is not None
            and default.get(name, {}).get("AP") is not None and abs(default[name]["AP"] - keras_ap) <= 0.02
        ]
        if candidates:
            rate, name = max(candidates)
            goal = 10 if _has_amx() else 5
            lines.append(
                f"* ResNet-50-FPN 512, batch 1, {THREADS} threads: fastest format with AP within 0.02 "
                f"({name}, {rate:.2f} images/s) at least {goal}× Keras `predict` ({base:.2f} images/s): "
                f"{rate / base:.2f}×, {'met' if rate / base >= goal else '**missed**'}."
            )
        onnx = resnet.get("onnx_float32", {}).get("images_per_s")
        if onnx:
            lines.append(f"* ONNX Runtime float32 at least 1.2× Keras `predict`: {onnx / base:.2f}×, "
                         f"{'met' if onnx / base >= 1.2 else '**missed**'}.")
        else:
            lines.append("* ONNX Runtime float32 at least 1.2× Keras `predict`: not measured (no ONNX export).")
    return lines


def _has_amx() -> bool:
    try:
        return "amx_tile" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _f(value, digits, sign=False) -> str:
    if value is None:
        return "—"
    if sign and round(value, digits) == 0:
        return f"{0:.{digits}f}"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["export", "measure"])
    parser.add_argument("--kind", default="default")
    parser.add_argument("--model_dir", default="runs/shapes")
    parser.add_argument("--out")
    parser.add_argument("--calibration_images", type=int, default=100)
    parser.add_argument("--format")
    parser.add_argument("--path")
    parser.add_argument("--images")
    parser.add_argument("--category_ids", default="")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--detections", default="")
    parser.add_argument("--profile", default="False")
    parser.add_argument("--result", required=True)
    args = parser.parse_args(argv)
    if args.command == "export":
        result = export_all(args.kind, args.model_dir, args.out, args.calibration_images)
    else:
        ids = [int(c) for c in args.category_ids.split(",") if c]
        result = measure(args.format, args.path, args.images, ids, args.warmup, args.calls, args.detections or None,
                         profile=args.profile == "True")
    Path(args.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
