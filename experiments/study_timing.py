"""Table 1e's ms/image column: every input size's trained model timed in turns (``--time_1e``).

Each 1e run also times its own model right after training
(:func:`experiments.study_measure.time_predict`), but those timings are
hours apart on a shared machine; :func:`time_table_1e` times all sizes side
by side, once, into ``<runs_dir>/1e_timing.json``, which the table prefers.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

import keras_retina as kr
from experiments import study_measure, study_runs
from experiments.study_tables import TABLES

#: Table 1e's ms/image, all sizes measured side by side (``--time_1e``).
TIMING_FILE = "1e_timing.json"


def time_table_1e(runs_dir: str = study_runs.RUNS_DIR, seed: int = 0, rounds: int = 10, repeats: int = 20) -> dict:
    """The predict milliseconds of every 1e input size, side by side, written to ``<runs_dir>/1e_timing.json``.

    Loads each size's trained model (seed ``seed``) and times its
    ``detect_function`` (network, decoding, NMS; batch 1) on the first
    validation image resized to that size
    (:func:`experiments.study_measure.time_side_by_side`). The weights are
    trained ones so that NMS sees real candidate boxes. Run it on a quiet
    machine: this is the ms/image column of table 1e.

    Returns:
        the record written: ``{"machine", "seed", "image", "sizes": {size:
        {"median_ms", "p10_ms", "p90_ms", "calls"}}}``.
    """
    table = TABLES["1e"]
    found = {int(s.x): study_runs.load_result(study_runs.run_dir_of(runs_dir, "1e", s, seed)) for s in table.settings}
    missing = [size for size, record in found.items() if record is None]
    if missing:
        raise FileNotFoundError(
            f"time_table_1e: no finished 1e run of seed {seed} for sizes {missing} under {runs_dir}; "
            f"run --table=1e --seeds={seed} first."
        )
    with open(os.path.join(found[min(found)]["run_dir"], "config.json")) as f:
        data = json.load(f)["data"]
    source = kr.data.CocoJsonSource(data["val_annotations"], data["val_images"])
    if not source.image_ids:
        raise ValueError(f"{data['val_annotations']}: 'images' has no entry with a 'file_name' to time 1e on")
    image_path = source.image_record(source.image_ids[0]).path
    image = tf.io.decode_image(tf.io.read_file(image_path), channels=3, expand_animations=False)
    functions, inputs = {}, {}
    for size, record in sorted(found.items()):
        functions[size] = study_measure.load_model(record["run_dir"]).detect_function()
        inputs[size] = tf.cast(tf.image.resize(image[None], (size, size)), tf.uint8)
    print(f"[1e] timing {len(functions)} sizes side by side ({rounds} rounds x {repeats} calls each)", flush=True)
    record = {
        "machine": kr.cli.modes.machine()["summary"],
        "seed": seed,
        "image": image_path,
        "sizes": {str(k): v for k, v in study_measure.time_side_by_side(functions, inputs, rounds, repeats).items()},
    }
    path = os.path.join(runs_dir, TIMING_FILE)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    for size, t in record["sizes"].items():
        print(f"[1e] {size} px: {t['median_ms']:.1f} ms (10-90 %: {t['p10_ms']:.1f}-{t['p90_ms']:.1f})", flush=True)
    return record


def read_timing(runs_dir: str = study_runs.RUNS_DIR, records_dir: str | None = None) -> dict | None:
    """``<runs_dir>/1e_timing.json`` (:func:`time_table_1e`), else its kept copy in ``records_dir``,
    or ``None`` before it is measured."""
    for folder in filter(None, (runs_dir, records_dir)):
        if os.path.exists(os.path.join(folder, TIMING_FILE)):
            with open(os.path.join(folder, TIMING_FILE)) as f:
                return json.load(f)
    return None
