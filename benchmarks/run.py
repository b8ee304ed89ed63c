"""keras_retina against keras-hub, side by side: ``python -m benchmarks.run``.

Runs every case of :mod:`benchmarks.cases` in its own fresh process
(ResNet-50 FPN, 80 classes, random weights, 512x512, batch 2, float32 by
default), then prints a table of the figures, the ratios keras_retina /
peer, and the achieved GFLOP/s against this machine's fp32 peak. keras-hub
comes from the optional ``bench`` extra (``pip install -e .[bench]``).

With ``--write_docs`` the table replaces the generated section of
``docs/BENCHMARKS.md`` and the raw figures go to ``docs/benchmarks.json``.

Examples:
    python -m benchmarks.run                  # everything, about 25 min on 2 cores
    python -m benchmarks.run --only=loss,predict --steps=3
    python -m benchmarks.run --write_docs
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

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "only", [], "Groups to run (default all): flops, loss, input, predict, train, train_frozen."
)
flags.DEFINE_integer("steps", 5, "Timed training steps per case (prediction times 2x as many batches).")
flags.DEFINE_float(
    "peak_gflops", 0.0, "This machine's fp32 peak, GFLOP/s; 0 = cores x clock x FLOP/cycle read from /proc/cpuinfo."
)
flags.DEFINE_bool("write_docs", False, "Write docs/benchmarks.json and the table in docs/BENCHMARKS.md.")
flags.DEFINE_bool("peers", True, "Also measure keras-hub and Keras' BinaryFocalCrossentropy.")

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- benchmarks.run: begin -->", "<!-- benchmarks.run: end -->"


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
    """(group, label, case, flags) for every measurement, peers after ours."""
    train = [f"--steps={steps}", "--warmup_steps=2"]
    predict = [f"--steps={2 * steps}", "--warmup_steps=2"]
    libs = ["keras_retina", "keras_hub"] if peers else ["keras_retina"]
    rows = []
    for lib in libs:
        rows.append(("flops", lib, "flops", [f"--lib={lib}"]))
    rows.append(("loss", "keras_retina", "loss", ["--lib=keras_retina", "--steps=10"]))
    if peers:
        rows.append(("loss", "keras", "loss", ["--lib=keras", "--steps=10"]))
    rows.append(("input", "keras_retina", "input", []))
    for lib in libs:
        rows.append(("predict", lib, "predict", [f"--lib={lib}", *predict]))
        rows.append(("predict_dense", lib, "predict", [f"--lib={lib}", "--dense", *predict]))
    for lib in libs:
        rows.append(("train", lib, "train", [f"--lib={lib}", *train, *predict[:1]]))
    for lib in libs:
        rows.append(
            ("train_frozen", lib, "train", [f"--lib={lib}", "--trainable=detectron", *train, "--predict_after=false"])
        )
    return rows


def _run_case(case: str, args: list[str]) -> dict:
    command = [sys.executable, "-m", "benchmarks.cases", case, *args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["wall_s"] = time.perf_counter() - start
            return result
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
    raise RuntimeError(f"benchmark case {' '.join(command[3:])} failed (exit {proc.returncode}):\n{tail}")


def _fmt(value, digits=2):
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(ours, theirs):
    return None if not ours or not theirs else ours / theirs


def build_table(results: dict, peak: float) -> str:
    """Markdown table from ``results[group][lib]`` dicts."""

    def get(group, lib, key):
        return results.get(group, {}).get(lib, {}).get(key)

    gflop = {lib: get("flops", lib, "forward_gflop_per_image") for lib in ("keras_retina", "keras_hub")}

    def gflops(group, lib, key, factor):
        rate = get(group, lib, key)
        return None if rate is None or gflop[lib] is None else rate * gflop[lib] * factor

    lines = [
        "| measurement | keras_retina | keras-hub | ratio (ours / peer) |",
        "| --- | --- | --- | --- |",
    ]

    def row(title, group, key, digits=2, peer_group=None, peer_lib="keras_hub", higher_is_better=True):
        ours = get(group, "keras_retina", key)
        theirs = get(peer_group or group, peer_lib, key)
        ratio = _ratio(ours, theirs) if higher_is_better else _ratio(theirs, ours)
        lines.append(f"| {title} | {_fmt(ours, digits)} | {_fmt(theirs, digits)} | {_fmt(ratio)}× |")

    row("forward GFLOP per image", "flops", "forward_gflop_per_image", 1)
    row("training, images/s (each library's defaults)", "train", "train_images_per_s", 3)
    row("training, images/s (same trainable layers: stem + stage 1 and BatchNorm frozen)",
        "train_frozen", "train_images_per_s", 3)
    row("prediction incl. decoding + NMS, images/s (fresh process)", "predict", "predict_images_per_s")
    row("prediction, dense scene (class bias +0.5), images/s", "predict_dense", "predict_images_per_s")
    row("prediction after fit in the same process, images/s", "train", "predict_after_fit_images_per_s")
    row("peak RSS of a training process, MiB (lower is better; ratio peer / ours)",
        "train", "train_peak_rss_mib", 0, higher_is_better=False)
    row("peak RSS of a prediction process, MiB (ratio peer / ours)",
        "predict", "predict_peak_rss_mib", 0, higher_is_better=False)
    ours_loss = get("loss", "keras_retina", "loss_ms")
    keras_loss = get("loss", "keras", "loss_ms")
    lines.append(
        f"| focal loss forward + backward on (8, 49104, 80), ms (peer: Keras BinaryFocalCrossentropy; "
        f"ratio peer / ours) | {_fmt(ours_loss, 1)} | {_fmt(keras_loss, 1)} | {_fmt(_ratio(keras_loss, ours_loss))}× |"
    )
    lines.append(
        f"| input pipeline at 512, images/s | {_fmt(get('input', 'keras_retina', 'input_images_per_s'), 0)} | — | — |"
    )
    lines.append("")
    lines.append(
        "| achieved GFLOP/s (training counted as 3× forward) | keras_retina | % of peak | keras-hub | % of peak |"
    )
    lines.append("| --- | --- | --- | --- | --- |")
    for title, group, key, factor in (
        ("training (defaults)", "train", "train_images_per_s", 3),
        ("training (same trainable layers)", "train_frozen", "train_images_per_s", 3),
        ("prediction (fresh process)", "predict", "predict_images_per_s", 1),
        ("prediction after fit", "train", "predict_after_fit_images_per_s", 1),
    ):
        ours, theirs = gflops(group, "keras_retina", key, factor), gflops(group, "keras_hub", key, factor)
        pct = lambda v: None if v is None or not peak else 100.0 * v / peak  # noqa: E731
        lines.append(
            f"| {title} | {_fmt(ours, 1)} | {_fmt(pct(ours), 0)} % | {_fmt(theirs, 1)} | {_fmt(pct(theirs), 0)} % |"
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
    print(f"machine: {how}; fp32 peak {peak:.0f} GFLOP/s; {versions}; Python {platform.python_version()}")
    results: dict = {}
    for group, lib, case, args in _cases(FLAGS.steps, FLAGS.peers):
        if FLAGS.only and group.split("_")[0] not in FLAGS.only and group not in FLAGS.only:
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {group:13s} {lib:12s} ...", end=" ", flush=True)
        result = _run_case(case, args)
        results.setdefault(group, {})[lib] = result
        shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items() if k not in ("case", "lib")}
        print(shown, flush=True)
    table = build_table(results, peak)
    print()
    print(table)
    if FLAGS.write_docs:
        record = {
            "date": datetime.date.today().isoformat(),
            "machine": how,
            "peak_gflops": peak,
            "versions": versions,
            "steps": FLAGS.steps,
            "results": results,
        }
        (ROOT / "docs" / "benchmarks.json").write_text(json.dumps(record, indent=1) + "\n")
        doc = ROOT / "docs" / "BENCHMARKS.md"
        text = doc.read_text()
        generated = (
            f"{BEGIN}\n_Generated by `python -m benchmarks.run --write_docs` on "
            f"{record['date']}: {how}, fp32 peak {peak:.0f} GFLOP/s; {versions}._\n\n{table}\n{END}"
        )
        if BEGIN in text:
            text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: generated, text, flags=re.S)
        else:
            text += "\n" + generated + "\n"
        doc.write_text(text)
        print(f"wrote {doc} and docs/benchmarks.json")


if __name__ == "__main__":
    app.run(main)
