"""Training step time under each single-device strategy `make_strategy` could pick, side by side.

The same model and data (the ``--experiment`` config, ``experiments.paper_dense``
by default: the paper study's runs; run from the repository root), compiled as ``training.train`` compiles
it and fed as it feeds it (``RunData.distributed_pipeline``), under
TensorFlow's default strategy or under ``OneDeviceStrategy`` on the first
device, each in processes of its own taken in turns (``--processes`` each):
``model.fit`` for ``--steps`` steps, ``--rounds`` times (the first round,
with the tracing, is dropped). Prints the median ms/step of each and their
ratio, and the machine.

Why: ``make_strategy("auto")`` used ``OneDeviceStrategy("/cpu:0")`` on
machines without a GPU, and the paper study's runs took twice as long a
step as the same model trained without a strategy.

Example:
    python -m benchmarks.bench_strategy --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_retina import recipes, training  # noqa: E402
from keras_retina.cli import modes  # noqa: E402
from keras_retina.data import RunData  # noqa: E402


class _StepTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def time_one(experiment: str, strategy_name: str, steps: int, rounds: int) -> list[float]:
    """ms/step of ``fit`` under one strategy, per round after the first (this process makes no other)."""
    config = recipes.load(experiment)
    device = (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))[0].name
    strategy = tf.distribute.get_strategy() if strategy_name == "default" else tf.distribute.OneDeviceStrategy(device)
    keras.utils.set_random_seed(0)
    data = RunData(config.data, seed=0)
    model = training.build_compiled_model(config, len(data.class_names), steps * rounds, strategy)
    batches = data.distributed_pipeline("train", strategy)  # as training.train feeds fit
    found = []
    for round_ in range(rounds):
        timer = _StepTimer()
        model.fit(batches, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
        if round_:  # the first round traces and compiles
            found.append(1000 * timer.seconds / steps)
    return found


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="experiments.paper_dense")
    parser.add_argument("--steps", type=int, default=20, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per process; the first is dropped")
    parser.add_argument("--processes", type=int, default=2, help="processes per strategy, in turns")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one strategy, this process
    parser.add_argument("--output", default=None, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(time_one(args.experiment, args.child, args.steps, args.rounds)), flush=True)
        return {}
    # One process per measurement: once a process has made a OneDeviceStrategy, a model
    # under the default strategy in the same process is slowed too, so they cannot share one.
    ms = {"default": [], "one_device": []}
    for _ in range(args.processes):
        for name in ms:
            command = [sys.executable, "-m", "benchmarks.bench_strategy", f"--child={name}", f"--experiment={args.experiment}",
                       f"--steps={args.steps}", f"--rounds={args.rounds}"]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            ms[name] += json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    result = {
        "experiment": args.experiment,
        "machine": modes.machine()["summary"],
        "steps_per_round": args.steps,
        "ms_per_step": {name: statistics.median(v) for name, v in ms.items()},
        "rounds": ms,
    }
    result["one_device_over_default"] = result["ms_per_step"]["one_device"] / result["ms_per_step"]["default"]
    print(json.dumps(result, indent=1))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
