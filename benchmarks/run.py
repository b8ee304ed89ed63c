"""keras_retina against keras-hub, side by side: ``python -m benchmarks.run``.

Runs every case of :mod:`benchmarks.cases` in its own fresh process
(ResNet-50 FPN, 80 classes, random weights, 512x512, batch 2, float32 by
default), then prints a table of the figures, the ratios keras_retina /
peer, and the achieved GFLOP/s against this machine's fp32 peak. keras-hub
comes from the optional ``bench`` extra (``pip install -e .[bench]``).

Two more groups measure the first run a newcomer makes (``python main.py``,
the default experiment): ``first_step`` times one training step of the
default model under each lever (an ``--override`` of the experiment), and
``time_to_accuracy`` trains the default experiment end to end, evaluating
every few epochs, for COCO AP against wall-clock seconds.

The ``litert`` group times keras_retina's model exported to LiteRT
(float32, float16, int8; XNNPACK, 2 threads, batch 1) beside its TF
``model.predict`` and keras-hub's ``predict``, both at batch 1.

The ``deploy`` group (:mod:`benchmarks.bench_deploy`) runs every export
format (Keras, SavedModel, LiteRT, ONNX Runtime, OpenVINO) of the default
run's model (``--deploy_model_dir``: COCO AP on the shapes validation split
and speed) and of ResNet-50-FPN at 512 px (speed), each in its own process;
it writes ``docs/benchmarks_deploy.json`` and its section of the doc.

With ``--write_docs`` the tables replace the generated sections of
``docs/BENCHMARKS.md`` whose groups ran (the peer comparison, the first
run, LiteRT), and the raw figures go to ``docs/benchmarks.json``,
``docs/benchmarks_first_run.json`` and ``docs/benchmarks_litert.json``.

Examples:
    python -m benchmarks.run                  # everything: about 25 min on 2 cores, plus ~10 for the first run, 10-20 for deploy
    python -m benchmarks.run --only=loss,predict --steps=3
    python -m benchmarks.run --write_docs
    python -m benchmarks.run --only=first_step,time_to_accuracy --nopeers --write_docs
    python -m benchmarks.run --only=litert --write_docs   # about 5 minutes on 2 cores
    python -m benchmarks.run --only=kernels --nopeers --write_docs   # the train step per kernel path, 4 minutes
    python -m benchmarks.run --only=deploy --write_docs   # every export format, 10-20 min (after python main.py)
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

from benchmarks import bench_deploy

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "only", [], "Groups to run (default all): flops, loss, input, predict, train, bf16, first_step, "
    "time_to_accuracy, litert, deploy (a prefix selects every group it starts: 'train' runs train_all, train_frozen, "
    "train_xla, train_nofold)."
)
flags.DEFINE_integer("steps", 5, "Timed training steps per case (prediction times 2x as many batches).")
flags.DEFINE_float(
    "peak_gflops", 0.0, "This machine's fp32 peak, GFLOP/s; 0 = cores x clock x FLOP/cycle read from /proc/cpuinfo."
)
flags.DEFINE_bool("write_docs", False, "Write docs/benchmarks.json and the table in docs/BENCHMARKS.md.")
flags.DEFINE_bool("peers", True, "Also measure keras-hub and Keras' BinaryFocalCrossentropy.")
flags.DEFINE_string("deploy_model_dir", "runs/shapes", "deploy: the default run's directory (python main.py's).")
flags.DEFINE_integer("deploy_calls", 50, "deploy: timed calls per format, default model (batch 1).")
flags.DEFINE_integer("deploy_resnet_calls", 10, "deploy: timed calls per format, ResNet-50-FPN 512 (batch 1).")

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- benchmarks.run: begin -->", "<!-- benchmarks.run: end -->"
FIRST_BEGIN, FIRST_END = "<!-- benchmarks.run first_run: begin -->", "<!-- benchmarks.run first_run: end -->"
LITERT_BEGIN, LITERT_END = "<!-- benchmarks.run litert: begin -->", "<!-- benchmarks.run litert: end -->"
KERNELS_BEGIN, KERNELS_END = "<!-- benchmarks.run kernels: begin -->", "<!-- benchmarks.run kernels: end -->"
DEPLOY_BEGIN, DEPLOY_END = "<!-- benchmarks.run deploy: begin -->", "<!-- benchmarks.run deploy: end -->"
#: Groups of the first-run sections; every other group belongs to the peer comparison.
FIRST_RUN_GROUPS = ("first_step", "time_to_accuracy")
#: Groups of the LiteRT section.
LITERT_GROUPS = ("litert",)
#: Groups of the kernel-path section (the default train step on one thread, per oneDNN setting).
KERNEL_GROUPS = ("kernels",)
#: LiteRT goals: (quantization, least images/s as a multiple of our TF float32 ``model.predict``).
LITERT_GOALS = (("int8", 2.0), ("float32", 1.0))

#: Levers of the default experiment's train step, each an --override list (see docs/BENCHMARKS.md).
FIRST_RUN_LEVERS = (
    ("default", []),
    ("XLA train step", ["train.jit_compile=true"]),
    ("no GroupNorm in the heads", ["model.use_group_norm=false"]),
    ("2 convs per head", ["model.num_head_convs=2"]),
    ("32 head channels", ["model.head_channels=32"]),
    ("192 px", ["data.image_size=192"]),
    ("batch 16", ["data.batch_size=16"]),
)

#: The kernel paths TensorFlow's CPU wheel can take for the default train step, each an environment.
#: TensorFlow turns oneDNN on by default on Linux only for CPUs with AVX512_VNNI, AVX512_BF16,
#: AVX_VNNI or AMX (``IsMklEnabled`` in tensorflow/core/util/util.cc): an AVX2-only EPYC (family 25)
#: runs Eigen's kernels unless TF_ENABLE_ONEDNN_OPTS=1. Eigen's matrix products still go through
#: oneDNN's sgemm, which ONEDNN_MAX_CPU_ISA caps too.
FIRST_RUN_KERNELS = (
    ("oneDNN, this CPU's widest ISA", {"TF_ENABLE_ONEDNN_OPTS": "1"}),
    ("oneDNN, AVX2 kernels", {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("Eigen (oneDNN off: TF's default on AVX2-only CPUs), AVX2 sgemm",
     {"TF_ENABLE_ONEDNN_OPTS": "0", "ONEDNN_MAX_CPU_ISA": "AVX2"}),
    ("oneDNN, SSE4.1 kernels", {"TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "SSE41"}),
)


def cpu_peak_gflops() -> tuple[float, str]:
    """fp32 peak of this machine as cores x clock x FLOP per cycle, and how it was found.

    FLOP per cycle per core: 64 with AVX-512 (two 16-wide FMA units), 32
    with AVX2 + FMA (two 8-wide FMA units), 16 otherwise. The clock is the
    ``cpu MHz`` that ``/proc/cpuinfo`` reports (the nominal clock in a VM).

    Example:
        >>> cpu_peak_gflops()
        (156.8, '2 cores x 2.45 GHz x 32 FLOP/cycle (AVX2 + FMA)')
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 0.0, "unknown (no /proc/cpuinfo)"
    mhz = float(re.search(r"cpu MHz\s*:\s*([\d.]+)", info).group(1))
    flag_line = re.search(r"flags\s*:(.*)", info).group(1).split()
    if "avx512f" in flag_line:
        per_cycle, unit = 64, "AVX-512"
    elif "avx2" in flag_line and "fma" in flag_line:
        per_cycle, unit = 32, "AVX2 + FMA"
    else:
        per_cycle, unit = 16, "SSE"
    model = re.search(r"model name\s*:\s*(.*)", info).group(1).strip()
    peak = cores * mhz / 1000.0 * per_cycle
    return peak, f"{cores} cores x {mhz / 1000:.2f} GHz x {per_cycle} FLOP/cycle ({unit}; {model})"


def _cases(steps: int, peers: bool):
    """(group, lib, case, flags[, environment]) for every measurement.

    Groups: ``train_all`` (every layer trainable, BatchNorm in training mode:
    both libraries' default with random weights), ``train_frozen`` (stem and
    first stage frozen, every BatchNorm frozen: what keras_retina does by
    default with ImageNet weights, applied to both), ``train_xla`` (ours,
    frozen, ``jit_compile=True``), ``bf16_*`` (``mixed_bfloat16``).
    """
    train = [f"--steps={steps}", "--warmup_steps=2"]
    predict = [f"--steps={2 * steps}", "--warmup_steps=2"]
    libs = ["keras_retina", "keras_hub"] if peers else ["keras_retina"]
    rows = []
    for lib in libs:
        rows.append(("flops", lib, "flops", [f"--lib={lib}"]))
    rows.append(("loss", "keras_retina", "loss", ["--lib=keras_retina", "--steps=10"]))
    rows.append(("loss_noxla", "keras_retina", "loss", ["--lib=keras_retina", "--steps=10", "--jit_compile=false"]))
    if peers:
        rows.append(("loss", "keras", "loss", ["--lib=keras", "--steps=10"]))
    rows.append(("input", "keras_retina", "input", []))
    for lib in libs:
        rows.append(("predict", lib, "predict", [f"--lib={lib}", *predict]))
        rows.append(("predict_dense", lib, "predict", [f"--lib={lib}", "--dense", *predict]))
    rows.append(("predict_nofold", "keras_retina", "predict", ["--nofold_batchnorm", *predict]))
    for lib in libs:
        rows.append(("train_all", lib, "train", [f"--lib={lib}", "--trainable=all", *train]))
        rows.append(("train_frozen", lib, "train", [f"--lib={lib}", "--trainable=detectron", *train]))
    rows.append(("train_xla", "keras_retina", "train", ["--trainable=detectron", "--jit_compile=true", *train]))
    rows.append(("train_nofold", "keras_retina", "train", ["--trainable=detectron", "--nofold_batchnorm", *train]))
    for name, overrides in FIRST_RUN_LEVERS:
        rows.append(("first_step", name, "default_step", ["--steps=10", "--warmup_steps=3"]
                     + [f"--override={o}" for o in overrides]))
    for name, env in FIRST_RUN_KERNELS:
        rows.append(("kernels", name, "default_step", ["--steps=5", "--warmup_steps=2", "--threads=1"], env))
    rows.append(("time_to_accuracy", "keras_retina", "time_to_accuracy", ["--tta_eval_every=2"]))
    # LiteRT at batch 1 (XNNPACK, 2 threads) beside TF predict of the same
    # model (inside the litert case) and keras-hub's predict, both batch 1.
    single = ["--batch_size=1", *predict]
    rows.append(("litert", "keras_retina", "litert", single))
    if peers:
        rows.append(("litert", "keras_hub", "predict", ["--lib=keras_hub", *single]))
    bf16 = ["--dtype_policy=mixed_bfloat16"]
    for lib in libs:
        rows.append(("bf16_predict", lib, "predict", [f"--lib={lib}", *bf16, *predict]))
        trainable = "detectron" if lib == "keras_retina" else "all"  # each library's fine-tuning default
        after = [] if lib == "keras_retina" else ["--predict_after=false"]  # keras-hub's fails: see bf16_predict
        rows.append(
            ("bf16_train", lib, "train", [f"--lib={lib}", f"--trainable={trainable}", *bf16, *train, *after])
        )
    return rows


def _run_case(case: str, args: list[str], extra_env: dict | None = None) -> dict:
    command = [sys.executable, "-m", "benchmarks.cases", case, *args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT), **(extra_env or {}))
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["wall_s"] = time.perf_counter() - start
            return result
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if "Error" in line]
    return {"error": errors[-1].strip() if errors else f"exit status {proc.returncode}", "wall_s": time.perf_counter() - start}


def _fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(ours, theirs):
    return None if not ours or not theirs else ours / theirs


def build_first_run_table(results: dict) -> str:
    """Markdown tables of the ``first_step`` levers and the ``time_to_accuracy`` curve."""
    lines = []
    steps = results.get("first_step", {})
    if steps:
        base = steps.get("default", {}).get("step_s")
        lines += [
            "| default experiment, one training step (`--override`) | s/step | images/s | step time vs default |",
            "| --- | --- | --- | --- |",
        ]
        for name, overrides in FIRST_RUN_LEVERS:
            result = steps.get(name)
            if result is None:
                continue
            label = name if not overrides else f"{name} (`{' '.join(overrides)}`)"
            if "error" in result:
                lines.append(f"| {label} | fails: `{result['error'][:90]}` | | |")
                continue
            lines.append(
                f"| {label} | {_fmt(result['step_s'])} | {_fmt(result['train_images_per_s'], 1)} "
                f"| {_fmt(_ratio(result['step_s'], base))}× |"
            )
    tta = results.get("time_to_accuracy", {}).get("keras_retina")
    if tta and "error" not in tta:
        lines += [
            "",
            f"Time to accuracy: `python main.py`'s experiment from a fresh data directory, evaluated every "
            f"{tta['eval_every_epochs']} epochs here (the run itself evaluates every "
            f"{tta['default_eval_every_epochs']}); seconds since the case began (after importing TensorFlow), "
            "data writing included.",
            "",
            "| epoch | wall-clock s | COCO AP |",
            "| --- | --- | --- |",
        ]
        lines += [f"| {c['epoch']} | {c['seconds']:.0f} | {c['AP']:.3f} |" for c in tta["curve"]]
        lines.append(f"| end of training | {tta['train_seconds']:.0f} | {tta['final_AP']:.3f} (AP50 {tta['final_AP50']:.3f}) |")
    elif tta:
        lines.append(f"\nTime to accuracy fails: `{tta['error'][:200]}`")
    return "\n".join(lines)


def build_kernel_table(results: dict) -> str:
    """Markdown table of the ``kernels`` group: the default train step on one thread, per kernel path."""
    rows = results.get("kernels", {})
    base = rows.get(FIRST_RUN_KERNELS[1][0], {}).get("cpu_s_per_step")
    lines = [
        "| default train step, 1 thread, kernel path (environment) | oneDNN on | CPU s/step | vs oneDNN AVX2 |",
        "| --- | --- | --- | --- |",
    ]
    for name, env in FIRST_RUN_KERNELS:
        result = rows.get(name)
        if result is None:
            continue
        label = f"{name} (`{' '.join(f'{k}={v}' for k, v in env.items())}`)"
        if "error" in result:
            lines.append(f"| {label} | fails: `{result['error'][:90]}` | | |")
            continue
        lines.append(
            f"| {label} | {'yes' if result['onednn'] else 'no'} | {_fmt(result['cpu_s_per_step'], 3)} "
            f"| {_fmt(_ratio(result['cpu_s_per_step'], base))}× |"
        )
    return "\n".join(lines)


def build_litert_table(results: dict, peak: float) -> str:
    """Markdown tables of the ``litert`` group: images/s and ratios, the time split, the goals."""
    ours = results.get("litert", {}).get("keras_retina")
    hub = results.get("litert", {}).get("keras_hub", {})
    if not ours:
        return ""
    if "error" in ours:
        return f"The LiteRT case fails: `{ours['error'][:200]}`"
    tf_rate = ours["tf_predict_images_per_s"]
    hub_rate = hub.get("predict_images_per_s")
    hub_cell = f"fails: `{hub['error'][:90]}`" if "error" in hub else None
    gflop = ours.get("forward_gflop_per_image")
    lines = [
        "| ResNet-50 FPN, 512, batch 1 | images/s | ms per image | vs our TF float32 predict "
        "| vs keras-hub predict | file MB | export s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| keras_retina, TF `model.predict`, float32 | {_fmt(tf_rate)} | {_fmt(1000 / tf_rate, 0)} | 1.00× "
        f"| {_x(_ratio(tf_rate, hub_rate))} | — | — |",
    ]
    if hub:
        lines.append(
            f"| keras-hub, TF `predict`, float32 | {hub_cell or _fmt(hub_rate)} "
            f"| {_fmt(1000 / hub_rate if hub_rate else None, 0)} | {_x(_ratio(hub_rate, tf_rate))} | 1.00× | — | — |"
        )
    for name, entry in ours["litert"].items():
        rate = entry["images_per_s"]
        lines.append(
            f"| keras_retina, LiteRT {_litert_label(name)} ({ours['litert_threads']} threads, XNNPACK) | {_fmt(rate)} "
            f"| {_fmt(entry['median_ms'], 0)} | {_x(_ratio(rate, tf_rate))} | {_x(_ratio(rate, hub_rate))} "
            f"| {_fmt(entry['file_mb'], 1)} | {_fmt(entry['convert_s'], 0)} |"
        )
    lines += [
        "",
        "ms per image: median of the timed calls for LiteRT (one image per call), 1000 / images/s for "
        "TF `predict`. All files include decoding and NMS; TF `predict` includes Keras' predict loop.",
        "",
        "Where the time goes (LiteRT's Python interpreter has no per-op profiler): the file cut in two, each "
        "part timed alone the same way. Network alone: the same graph up to `cls_logits` and `box_deltas` "
        "(its time includes copying those outputs out of the interpreter). Post-processing alone: the graph after the network "
        "(per-level top-k, decoding, class-wise NMS; float32 in every file, int8 included), fed the "
        "network's outputs for the same image, median of "
        f"{ours.get('litert_postprocess', {}).get('calls', '?')} calls. TF: `predict` against the model "
        "called in a `tf.function`, the difference being Keras' predict loop, decoding and NMS.",
        "",
        "| runtime | whole, ms | network alone, ms | post-processing alone, ms "
        "| network GFLOP/s (% of the fp32 peak at the nominal clock) |",
        "| --- | --- | --- | --- | --- |",
    ]
    post = ours.get("litert_postprocess", {})
    tf_network = ours.get("tf_network_images_per_s")
    if tf_network:
        rate = None if gflop is None else gflop * tf_network
        lines.append(
            f"| TF float32 | {_fmt(1000 / tf_rate, 0)} "
            f"| {_fmt(1000 / tf_network, 0)} | {_fmt(1000 / tf_rate - 1000 / tf_network, 0)} (difference) "
            f"| {_fmt(rate, 0)} ({_fmt(100 * rate / peak if rate and peak else None, 0)} %) |"
        )
    for name, entry in ours["litert"].items():
        network_ms, own = entry.get("network_median_ms"), True
        if name == "float32_dense" and "network_median_ms" in ours["litert"].get("float32", {}):
            network_ms, own = ours["litert"]["float32"]["network_median_ms"], False  # the same network
        if network_ms is None:
            continue
        rate = None if gflop is None else gflop * 1000 / network_ms
        if name == "int8":  # int8 multiply-adds: the fp32 peak does not bound them
            pct = f"{_fmt(rate, 0)} G int8 OP/s (—)"
        else:
            pct = f"{_fmt(rate, 0)} ({_fmt(100 * rate / peak if rate and peak else None, 0)} %)"
        post_ms = post.get("dense_median_ms" if name == "float32_dense" else "median_ms")
        lines.append(
            f"| LiteRT {_litert_label(name)} | {_fmt(entry['median_ms'], 0)} "
            f"| {_fmt(network_ms, 0)}{'' if own else ' (float32’s)'} "
            f"| {_fmt(post_ms, 1)} | {pct if own else '—'} |"
        )
    if gflop:
        lines += [
            "",
            f"Forward pass: {_fmt(gflop, 1)} GFLOP per image (TensorFlow's graph profiler); this machine's fp32 "
            f"peak {peak:.0f} GFLOP/s at the clock /proc/cpuinfo reports (cores that boost above it can pass 100 %).",
        ]
    lines += ["", "Goals (2 cores):", ""]
    for name, goal in LITERT_GOALS:
        entry = ours["litert"].get(name)
        if entry is None:
            lines.append(f"* LiteRT {name} ≥ {goal:g}× our TF float32 predict: not measured.")
            continue
        ratio = _ratio(entry["images_per_s"], tf_rate)
        verdict = "met" if ratio >= goal else f"**missed** by a factor of {goal / ratio:.2f}"
        lines.append(f"* LiteRT {name} ≥ {goal:g}× our TF float32 predict: {_x(ratio)}, {verdict}.")
    return "\n".join(lines)


def _x(ratio) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def _litert_label(name: str) -> str:
    return "float32, dense scene (class bias +0.5)" if name == "float32_dense" else name


def _write_section(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with the generated section between ``begin`` and ``end`` replaced (appended if absent)."""
    generated = f"{begin}\n{body}\n{end}"
    if begin in text:
        return re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: generated, text, flags=re.S)
    return text + "\n" + generated + "\n"


def build_table(results: dict, peak: float) -> str:
    """Markdown tables from ``results[group][lib]`` dicts (see :func:`_cases`)."""

    def get(group, lib, key):
        return results.get(group, {}).get(lib, {}).get(key)

    def error(group, lib):
        message = results.get(group, {}).get(lib, {}).get("error")
        return None if message is None else f"fails: `{message[:90]}`"

    def cell(group, lib, key, digits):
        return error(group, lib) or _fmt(get(group, lib, key), digits)

    lines = [
        "| measurement (fp32) | keras_retina | keras-hub | ratio | goal | met |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def row(title, ours, theirs, goal, digits=3, lower_is_better=False):
        (og, ok), (tg, tk) = ours, theirs
        o, t = get(og, "keras_retina", ok), get(tg, "keras_hub", tk)
        ratio = _ratio(t, o) if lower_is_better else _ratio(o, t)
        met = "—" if ratio is None else ("yes" if ratio >= goal else "**no**")
        lines.append(
            f"| {title} | {cell(og, 'keras_retina', ok, digits)} | {cell(tg, 'keras_hub', tk, digits)} "
            f"| {_fmt(ratio)}× | ≥ {goal}× | {met} |"
        )

    tr, pr = "train_images_per_s", "predict_images_per_s"
    row("training images/s, each library's fine-tuning default (ours: stem + stage 1 and BatchNorm frozen; "
        "keras-hub: all trainable)", ("train_frozen", tr), ("train_all", tr), 1.5)
    row("training images/s, same trainable layers: all (both libraries' default with random weights)",
        ("train_all", tr), ("train_all", tr), 1.5)
    row("training images/s, same trainable layers: stem + stage 1 and BatchNorm frozen",
        ("train_frozen", tr), ("train_frozen", tr), 1.5)
    row("prediction images/s incl. decoding + NMS, fresh process", ("predict", pr), ("predict", pr), 1.2)
    row("prediction images/s, dense scene (class bias +0.5)", ("predict_dense", pr), ("predict_dense", pr), 1.2)
    row("peak RSS of training, MiB, fine-tuning defaults (ratio: peer / ours)",
        ("train_frozen", "train_peak_rss_mib"), ("train_all", "train_peak_rss_mib"), 1.0, 0, True)
    row("peak RSS of training, MiB, all trainable (ratio: peer / ours)",
        ("train_all", "train_peak_rss_mib"), ("train_all", "train_peak_rss_mib"), 1.0, 0, True)
    row("peak RSS of prediction, MiB (ratio: peer / ours)",
        ("predict", "predict_peak_rss_mib"), ("predict", "predict_peak_rss_mib"), 1.0, 0, True)
    ours_loss, keras_loss = get("loss", "keras_retina", "loss_ms"), get("loss", "keras", "loss_ms")
    ratio = _ratio(keras_loss, ours_loss)
    lines.append(
        f"| focal loss forward + backward, (8, 49104, 80), ms (peer: Keras `BinaryFocalCrossentropy`; "
        f"ratio: peer / ours) | {_fmt(ours_loss, 1)} | {_fmt(keras_loss, 1)} | {_fmt(ratio)}× | ≥ 3× "
        f"| {'—' if ratio is None else ('yes' if ratio >= 3 else '**no**')} |"
    )
    for lib, group in (("keras_retina", "train_frozen"), ("keras_hub", "train_all")):
        after, fresh = get(group, lib, "predict_after_fit_images_per_s"), get("predict", lib, pr)
        ratio = _ratio(after, fresh)
        met = "—" if ratio is None or lib != "keras_retina" else ("yes" if ratio >= 0.9 else "**no**")
        lines.append(
            f"| {lib}: prediction images/s after `fit` in the same process, and its ratio to a fresh "
            f"process | {_fmt(after) if lib == 'keras_retina' else ''} | {_fmt(after) if lib != 'keras_retina' else ''} "
            f"| {_fmt(ratio)}× | ≥ 0.9× (ours) | {met} |"
        )
    lines.append(
        f"| input pipeline at 512, images/s | {_fmt(get('input', 'keras_retina', 'input_images_per_s'), 0)} "
        "| — | — | ≥ 150 (goal) | "
        f"{'yes' if (get('input', 'keras_retina', 'input_images_per_s') or 0) >= 150 else '—'} |"
    )

    lines += ["", "| keras_retina lever, measured both ways | on | off | on / off |", "| --- | --- | --- | --- |"]

    def lever(title, on, off, key, digits=3, lower_is_better=False):
        o, f = get(on, "keras_retina", key), get(off, "keras_retina", key)
        ratio = _ratio(f, o) if lower_is_better else _ratio(o, f)
        lines.append(
            f"| {title} | {cell(on, 'keras_retina', key, digits)} | {cell(off, 'keras_retina', key, digits)} "
            f"| {_fmt(ratio)}× |"
        )

    lever("BatchNorm folded into convs (default on): prediction images/s", "predict", "predict_nofold", pr)
    lever("BatchNorm folded into convs: training images/s, frozen BatchNorm", "train_frozen", "train_nofold", tr)
    lever("XLA for the whole train step (`jit_compile=True`; default off): training images/s",
          "train_xla", "train_frozen", tr)
    lever("XLA for the focal loss alone (default on): forward + backward ms (ratio: off / on)",
          "loss", "loss_noxla", "loss_ms", 1, True)

    lines += [
        "",
        "| `mixed_bfloat16` (bf16 compute, float32 weights) | keras_retina | keras-hub | ratio | "
        "keras_retina vs its fp32 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for title, group, fp32_group, key in (
        ("prediction images/s", "bf16_predict", "predict", pr),
        ("training images/s, fine-tuning defaults", "bf16_train", "train_frozen", tr),
        ("prediction images/s after `fit`", "bf16_train", "train_frozen", "predict_after_fit_images_per_s"),
    ):
        o, t = get(group, "keras_retina", key), get(group, "keras_hub", key)
        lines.append(
            f"| {title} | {cell(group, 'keras_retina', key, 3)} | {cell(group, 'keras_hub', key, 3)} "
            f"| {_fmt(_ratio(o, t))}× | {_fmt(_ratio(o, get(fp32_group, 'keras_retina', key)))}× |"
        )

    gflop = {lib: get("flops", lib, "forward_gflop_per_image") for lib in ("keras_retina", "keras_hub")}
    lines += [
        "",
        f"Forward pass: keras_retina {_fmt(gflop['keras_retina'], 1)} GFLOP per image, keras-hub "
        f"{_fmt(gflop['keras_hub'], 1)} (TensorFlow's graph profiler). Achieved rates below count a "
        "training step as 3x the forward pass, including frozen layers.",
        "",
        "| achieved fp32 GFLOP/s | keras_retina | % of peak | keras-hub | % of peak |",
        "| --- | --- | --- | --- | --- |",
    ]
    for title, (og, tg), key, factor in (
        ("training, fine-tuning defaults", ("train_frozen", "train_all"), tr, 3),
        ("training, all trainable", ("train_all", "train_all"), tr, 3),
        ("prediction, fresh process", ("predict", "predict"), pr, 1),
        ("prediction after fit", ("train_frozen", "train_all"), "predict_after_fit_images_per_s", 1),
    ):
        rates = []
        for lib, group in (("keras_retina", og), ("keras_hub", tg)):
            rate = get(group, lib, key)
            rates.append(None if rate is None or gflop[lib] is None else rate * gflop[lib] * factor)
        pct = lambda v: None if v is None or not peak else 100.0 * v / peak  # noqa: E731
        lines.append(
            f"| {title} | {_fmt(rates[0], 0)} | {_fmt(pct(rates[0]), 0)} % | {_fmt(rates[1], 0)} "
            f"| {_fmt(pct(rates[1]), 0)} % |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    peak, how = cpu_peak_gflops()
    if FLAGS.peak_gflops:
        peak, how = FLAGS.peak_gflops, "given by --peak_gflops"
    import keras
    import tensorflow as tf

    versions = f"TensorFlow {tf.__version__}, Keras {keras.__version__}"
    try:
        import keras_hub

        versions += f", keras-hub {keras_hub.__version__}"
    except ImportError:
        if FLAGS.peers:
            raise SystemExit("keras-hub is not installed: pip install -e .[bench] (or pass --nopeers)")
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    if isa:
        how += f", ONEDNN_MAX_CPU_ISA={isa}"
    print(f"machine: {_cpu_model()}; {how}; fp32 peak {peak:.0f} GFLOP/s; {versions}; Python {platform.python_version()}")
    results: dict = {}
    load_before = os.getloadavg()
    for group, lib, case, args, *env in _cases(FLAGS.steps, FLAGS.peers):
        if FLAGS.only and not any(group.startswith(prefix) for prefix in FLAGS.only):
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {group:13s} {lib:12s} ...", end=" ", flush=True)
        result = _run_case(case, args, env[0] if env else None)
        results.setdefault(group, {})[lib] = result
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items() if k not in ("case", "lib")}
        print(shown, flush=True)
    deploy_results = {}
    if not FLAGS.only or any("deploy".startswith(prefix) for prefix in FLAGS.only):
        model_dir = str(ROOT / FLAGS.deploy_model_dir)
        deploy_results = bench_deploy.run_group(model_dir, FLAGS.deploy_calls, FLAGS.deploy_resnet_calls)
    load_after = os.getloadavg()
    peer_results = {g: r for g, r in results.items() if g not in FIRST_RUN_GROUPS + LITERT_GROUPS + KERNEL_GROUPS}
    kernel_results = {g: r for g, r in results.items() if g in KERNEL_GROUPS}
    first_results = {g: r for g, r in results.items() if g in FIRST_RUN_GROUPS}
    litert_results = {g: r for g, r in results.items() if g in LITERT_GROUPS}
    table = build_table(peer_results, peak) if peer_results else ""
    first_table = build_first_run_table(first_results) if first_results else ""
    litert_table = build_litert_table(litert_results, peak) if litert_results else ""
    kernel_table = build_kernel_table(kernel_results) if kernel_results else ""
    deploy_table = bench_deploy.build_table(deploy_results) if deploy_results else ""
    print()
    print("\n\n".join(part for part in (table, first_table, kernel_table, litert_table, deploy_table) if part))
    load = f"load average (1, 5, 15 min) {_fmt_load(load_before)} before the cases, {_fmt_load(load_after)} after"
    print(load)
    if FLAGS.write_docs:
        date = datetime.date.today().isoformat()
        stamp = f"_Generated by `python -m benchmarks.run --write_docs` on {date}: {how}, fp32 peak {peak:.0f} GFLOP/s; {versions}._"
        doc = ROOT / "docs" / "BENCHMARKS.md"
        text = doc.read_text()
        litert = litert_results.get("litert", {}).get("keras_retina", {})
        litert_stamp = (
            f"_Generated by `python -m benchmarks.run --only=litert --write_docs` on {date}: {_cpu_model()}; "
            f"{how}, fp32 peak {peak:.0f} GFLOP/s; {versions}, ai-edge-litert {litert.get('ai_edge_litert', '?')}; "
            f"{load}._"
        )
        for part, part_results, begin, end, json_name, part_stamp in (
            (table, peer_results, BEGIN, END, "benchmarks.json", stamp),
            (first_table, first_results, FIRST_BEGIN, FIRST_END, "benchmarks_first_run.json", stamp),
            (litert_table, litert_results, LITERT_BEGIN, LITERT_END, "benchmarks_litert.json", litert_stamp),
            (kernel_table, kernel_results, KERNELS_BEGIN, KERNELS_END, "benchmarks_kernels.json",
             f"{stamp[:-2]}; {_cpu_model()}; {load}._"),
            (deploy_table, deploy_results, DEPLOY_BEGIN, DEPLOY_END, "benchmarks_deploy.json",
             (f"_Generated by `python -m benchmarks.run --only=deploy --write_docs` on {date}: {_cpu_model()}; "
              f"{how}; {_deploy_versions(deploy_results)}; {load}._")),
        ):
            if not part_results:
                continue
            record = {
                "date": date, "machine": how, "cpu": _cpu_model(), "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                "peak_gflops": peak, "versions": versions, "steps": FLAGS.steps, "results": part_results,
            }
            if json_name in ("benchmarks_litert.json", "benchmarks_kernels.json", "benchmarks_deploy.json"):
                record["load_average_before"], record["load_average_after"] = list(load_before), list(load_after)
            (ROOT / "docs" / json_name).write_text(json.dumps(record, indent=1) + "\n")
            text = _write_section(text, begin, end, f"{part_stamp}\n\n{part}")
        doc.write_text(text)
        print(f"wrote {doc} and its JSON figures")


def _deploy_versions(results: dict) -> str:
    """Each runtime's version, as the deploy group's processes reported them."""
    found = {}
    for kind in results.values():
        for row in kind.get("rows", {}).values():
            for key in ("tensorflow", "keras", "ai_edge_litert", "onnxruntime", "openvino"):
                if key in row:
                    found[key] = row[key]
    return ", ".join(f"{key} {value}" for key, value in found.items())


def _fmt_load(load) -> str:
    return ", ".join(f"{value:.2f}" for value in load)


def _cpu_model() -> str:
    """``lscpu``'s model name, family and the widest vector extension, for the record."""
    from keras_retina.cli.modes import machine  # noqa: PLC0415  (what python main.py's timing.json records)

    found = machine()
    return f"{found['cpu']}, family {found['family']}, {found['vector_isa']}"

if __name__ == "__main__":
    app.run(main)
