"""Running the study: one training subprocess per (setting, seed), skipped when finished, and its record.

Every (setting, seed) of a table is a subprocess that runs keras_retina's
command line (:data:`CLI`) with ``--experiment=experiments.paper_dense
--mode=train`` in
``runs/paper_study/<table>/<setting>_seed<k>/``. A finished run leaves
``study.json`` (its metrics and measurements) and is skipped next time, as
is a run whose record is kept in ``docs/paper_study_runs/``
(:mod:`experiments.study_records`); a row that trains exactly what another
table's finished row trained (:func:`run_key`) reuses that run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from typing import Sequence

import keras_retina as kr
from experiments import paper_dense, study_measure, study_records
from experiments.study_tables import STEPS_PER_EPOCH, TABLES, Setting, Table

RUNS_DIR = os.path.join("runs", "paper_study")
RESULT_FILE = study_records.RESULT_FILE  # "study.json"
#: The folder that holds the ``experiments`` package: the training subprocess imports it from there.
CHECKOUT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The Python arguments that run keras_retina's command line, as the installed ``keras-retina``
#: command does (``keras_retina.cli.run``), with this interpreter and no launcher script.
CLI = ("-c", "from keras_retina.cli import run; run()")


def run_dir_of(runs_dir: str, table: str, setting: Setting, seed: int) -> str:
    """``<runs_dir>/<table>/<setting>_seed<k>``.

    Example:
        >>> run_dir_of("runs/paper_study", "1b", TABLES["1b"].settings[0], 2)
        'runs/paper_study/1b/fl_g0.0_a0.75_seed2'
    """
    return os.path.join(runs_dir, table, f"{setting.name}_seed{seed}")


def load_result(run_dir: str) -> dict | None:
    """The finished run's ``study.json``, or ``None`` (not run, or not finished).

    Example:
        >>> import tempfile
        >>> load_result(tempfile.mkdtemp()) is None
        True
    """
    path = os.path.join(run_dir, RESULT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        result = json.load(f)
    if "AP" not in result:
        raise ValueError(f"{path}: no 'AP' field; delete the file to rerun this run.")
    return result


def finished(table: Table, setting: Setting, seed: int, runs_dir: str, records_dir: str | None) -> dict | None:
    """The run's record: its ``study.json``, else its kept copy in ``records_dir``, else ``None``."""
    found = load_result(run_dir_of(runs_dir, table.key, setting, seed))
    if found is None:
        found = study_records.load(records_dir, table.key, f"{setting.name}_seed{seed}")
    return found


def collect(table: Table, seeds: Sequence[int], runs_dir: str = RUNS_DIR, records_dir: str | None = None) -> list[dict]:
    """Per setting: its finished seeds' records (no training).

    A run's ``study.json`` in ``runs_dir`` comes first; where the run
    directory is gone, its kept copy in ``records_dir``
    (:mod:`experiments.study_records`).

    Returns:
        ``[{"setting": Setting, "results": [study.json records], "missing": [seeds]}]``;
        each record's ``"seed"`` is the seed it was found for.
    """
    rows = []
    for setting in table.settings:
        results, missing = [], []
        for seed in seeds:
            found = finished(table, setting, seed, runs_dir, records_dir)
            (results.append({**found, "seed": seed}) if found is not None else missing.append(seed))
        rows.append({"setting": setting, "results": results, "missing": missing})
    return rows


def read_train_log(run_dir: str) -> list[dict]:
    """Rows of ``train_log.csv`` (one per epoch) with numbers as floats; ``[]`` if absent."""
    path = os.path.join(run_dir, "train_log.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return text


def plateau_step(rows: list[dict], tolerance: float = 0.01, steps_per_epoch: int = STEPS_PER_EPOCH) -> int | None:
    """The first evaluated step after which ``val_AP`` never rises more than ``tolerance`` above it.

    Args:
        rows: :func:`read_train_log` rows (``epoch``, ``val_AP``: a float
            where the epoch was evaluated).
        tolerance: in AP (0.01 = 1 point).
        steps_per_epoch: steps of one row.

    Example:
        >>> rows = [{"epoch": e, "val_AP": ap} for e, ap in enumerate([0.1, "NA", 0.3, 0.305, 0.31, 0.309])]
        >>> plateau_step(rows)
        300
    """
    evaluated = [(int(r["epoch"]), r["val_AP"]) for r in rows if isinstance(r.get("val_AP"), float)]
    for i, (epoch, ap) in enumerate(evaluated):
        if all(later <= ap + tolerance for _, later in evaluated[i + 1 :]):
            return (epoch + 1) * steps_per_epoch
    return None


def train_command(table: Table, setting: Setting, seed: int, steps: int, run_dir: str) -> list[str]:
    """The command line of one run: keras_retina's CLI (:data:`CLI`) with the experiment, the schedule and the row's overrides.

    Example:
        >>> command = train_command(TABLES["1b"], TABLES["1b"].settings[3], 1, 3000, "r")
        >>> command[3:5]
        ['--experiment=experiments.paper_dense', '--mode=train']
        >>> [c for c in command if "focal" in c or "epochs" in c]
        ['--epochs=30', '--override=train.eval_every_epochs=10', '--override=model.focal_alpha=0.25', '--override=model.focal_gamma=2.0']
    """
    epochs = max(steps // table.steps_per_epoch, 1)
    return [
        sys.executable,
        *CLI,
        "--experiment=experiments.paper_dense",
        "--mode=train",
        f"--model_dir={run_dir}",
        f"--seed={seed}",
        f"--epochs={epochs}",
        f"--steps_per_epoch={table.steps_per_epoch}",
        f"--override=train.eval_every_epochs={table.eval_every_epochs or epochs}",
        "--override=train.tensorboard=false",
        *(f"--override={o}" for o in setting.overrides),
    ]


def train_environment(environ: dict | None = None) -> dict:
    """The training subprocess's environment: this one, with :data:`CHECKOUT_DIR` first on ``PYTHONPATH``.

    So that ``--experiment=experiments.paper_dense`` imports this checkout's
    experiment from any working directory (the study's paths, ``runs/`` and
    ``data/``, stay relative to the working directory).

    Example:
        >>> train_environment({"PYTHONPATH": "/x"})["PYTHONPATH"] == os.pathsep.join([CHECKOUT_DIR, "/x"])
        True
    """
    environ = dict(os.environ if environ is None else environ)
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, (CHECKOUT_DIR, environ.get("PYTHONPATH"))))
    return environ


#: Config fields that appeared after the study's runs were keyed, with their defaults: left out of the key
#: while they hold them (at their defaults they change nothing, so the kept records' keys stay valid).
FIELDS_ADDED_SINCE = {
    ("data", "data_yaml"): None,
    ("data", "min_size"): None,
    ("data", "max_size"): None,
    ("model", "class_agnostic_nms"): False,
    ("model", "soft_nms_sigma"): 0.0,
}


def run_key(table: Table, setting: Setting, seed: int, steps: int) -> str:
    """A hash of everything that decides a run's training: the resolved config, seed, steps, schedule.

    Rows of different tables that train the same model (1a's alpha 0.75 and
    1b's gamma 0; 1b's gamma 2, 1c's 3 x 3, 1d's FL and 1e's 192 px) get the
    same key, so each is trained once.

    Example:
        >>> run_key(TABLES["1b"], TABLES["1b"].settings[3], 0, 100) == run_key(TABLES["1d"], TABLES["1d"].settings[3], 0, 100)
        True
        >>> run_key(TABLES["1b"], TABLES["1b"].settings[3], 0, 100) == run_key(TABLES["1b"], TABLES["1b"].settings[3], 1, 100)
        False
    """
    resolved = kr.config.to_dict(kr.config.override(paper_dense.config(), setting.overrides))
    for (section, name), default in FIELDS_ADDED_SINCE.items():
        if name in resolved[section] and resolved[section][name] == default:
            del resolved[section][name]
    schedule = {"seed": seed, "steps": steps, "steps_per_epoch": table.steps_per_epoch, "eval_every_epochs": table.eval_every_epochs}
    text = json.dumps({"config": resolved, **schedule}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def find_twin(runs_dir: str, key: str) -> str | None:
    """The directory of a finished run (any table) whose ``run_key`` is ``key``, or ``None``.

    Example:
        >>> import tempfile
        >>> find_twin(tempfile.mkdtemp(), "0123") is None
        True
    """
    if not os.path.isdir(runs_dir):
        return None
    for table_dir in sorted(os.listdir(runs_dir)):
        if table_dir.startswith("_") or not os.path.isdir(os.path.join(runs_dir, table_dir)):
            continue  # _from_scratch, _code_*: not this study's runs
        for name in sorted(os.listdir(os.path.join(runs_dir, table_dir))):
            path = os.path.join(runs_dir, table_dir, name, RESULT_FILE)
            if os.path.exists(path):
                with open(path) as f:
                    record = json.load(f)
                if record.get("run_key") == key and not record.get("reused_from"):
                    return os.path.dirname(path)
    return None


def find_kept_twin(records_dir: str | None, key: str) -> dict | None:
    """The kept record (:mod:`~experiments.study_records`) of a trained run whose
    ``run_key`` is ``key``, or ``None``: a twin whose run directory is gone.

    Example:
        >>> import tempfile
        >>> find_kept_twin(tempfile.mkdtemp(), "0123") is None, find_kept_twin(None, "0123") is None
        (True, True)
    """
    if not records_dir or not os.path.isdir(records_dir):
        return None
    for table_key in sorted(TABLES):
        table_dir = os.path.join(records_dir, table_key)
        if not os.path.isdir(table_dir):
            continue
        for name in sorted(os.listdir(table_dir)):
            if name.endswith(".json"):
                record = study_records.load(records_dir, table_key, name[: -len(".json")])
                if record.get("run_key") == key and not record.get("reused_from") and not record.get("transcribed_from"):
                    return record
    return None


def run_one(table: Table, setting: Setting, seed: int, steps: int, runs_dir: str = RUNS_DIR, records_dir: str | None = None) -> dict:
    """Trains one (setting, seed) unless its ``study.json`` (or its kept copy in
    ``records_dir``) exists; returns that record.

    The record holds the COCO metrics of the final model (``metrics.json``),
    the measured foreground ratio, the wall-clock time (on a shared machine
    it is only indicative), the machine and the SHA-256 of the pre-trained
    backbone it started from, for table 1e the predict milliseconds per
    image, and for the prior table the logged losses and whether they
    diverged. A run killed midway restarts from its last epoch (the CLI's
    BackupAndRestore).
    """
    run_dir = run_dir_of(runs_dir, table.key, setting, seed)
    found = finished(table, setting, seed, runs_dir, records_dir)
    if found is not None:
        print(f"[{table.key}] {setting.name} seed {seed}: done (AP {found['AP']:.3f}), skipped", flush=True)
        return found
    key = run_key(table, setting, seed, steps)
    twin = find_twin(runs_dir, key)
    if twin is not None:  # the same training in another table (e.g. 1b's gamma 2 is 1c's 3x3 and 1d's FL)
        return _reuse(table, setting, seed, load_result(twin), run_dir, twin)
    kept_twin = find_kept_twin(records_dir, key)
    if kept_twin is not None:  # its run directory is gone, its record is kept
        return _reuse(table, setting, seed, kept_twin, run_dir)
    paper_dense.write_data(verbose=False, pretrained=True, data=table.data)
    os.makedirs(run_dir, exist_ok=True)
    print(f"[{table.key}] {setting.name} seed {seed}: training {steps} steps in {run_dir}", flush=True)
    start = time.time()
    with open(os.path.join(run_dir, "study_train.log"), "a") as log:
        completed = subprocess.run(
            train_command(table, setting, seed, steps, run_dir), stdout=log, stderr=subprocess.STDOUT, env=train_environment()
        )
    elapsed = time.time() - start
    rows = read_train_log(run_dir)
    losses = [row.get("loss") for row in rows]
    diverged = any(not isinstance(v, float) or not math.isfinite(v) for v in losses)
    if completed.returncode != 0 and not diverged:
        raise RuntimeError(
            f"{run_dir}: training failed (exit {completed.returncode}); see {os.path.join(run_dir, 'study_train.log')}."
        )
    metrics_path = os.path.join(run_dir, "metrics.json")
    if os.path.exists(metrics_path) and not diverged:
        with open(metrics_path) as f:
            metrics = json.load(f)
    else:
        metrics = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}  # diverged: counted as AP 0, and marked
    result = {
        "backbone_sha256": _backbone_sha256(run_dir),
        "machine": kr.cli.modes.machine()["summary"],
        "run_key": key,
        "run_dir": run_dir,
        "code": os.path.dirname(os.path.abspath(kr.__file__)),  # which snapshot of the code ran
        "table": table.key,
        "setting": setting.name,
        "seed": seed,
        "steps": steps,
        "wall_s": round(elapsed, 1),
        "diverged": diverged,
        "AP": float(metrics["AP"]),
        "AP50": float(metrics["AP50"]),
        "AP75": float(metrics["AP75"]),
        "metrics": metrics,
        "ap_curve": [
            [(int(row["epoch"]) + 1) * table.steps_per_epoch, row["val_AP"]]
            for row in rows
            if isinstance(row.get("val_AP"), float)
        ],
        "plateau_step": plateau_step(rows, steps_per_epoch=table.steps_per_epoch),
        "loss_log": [
            {"step": (int(row["epoch"]) + 1) * table.steps_per_epoch, "loss": row.get("loss"), "cls_loss": row.get("cls_loss")}
            for row in rows
        ],
    }
    result.update(_measure(table, run_dir))
    _write_result(run_dir, result)
    print(f"[{table.key}] {setting.name} seed {seed}: AP {result['AP']:.3f} in {elapsed / 60:.1f} min", flush=True)
    return result


def _backbone_sha256(run_dir: str) -> str | None:
    """SHA-256 of the pre-trained backbone the run's ``config.json`` names (``None``: from scratch)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        weights = json.load(f).get("model", {}).get("backbone_weights")
    return study_records.sha256(weights) if weights and os.path.exists(weights) else None


def _write_result(run_dir: str, result: dict) -> None:
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, RESULT_FILE + ".tmp"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
    os.replace(os.path.join(run_dir, RESULT_FILE + ".tmp"), os.path.join(run_dir, RESULT_FILE))


def _reuse(table: Table, setting: Setting, seed: int, twin: dict, run_dir: str, twin_dir: str | None = None) -> dict:
    """This row's record from its twin's record ``twin``: the same metrics, this table's measurements.

    With the twin's run directory ``twin_dir``, they are measured on its
    model (:func:`_measure`); when only its record is kept, the foreground
    ratio is measured for this row's config and there is no ms/image
    (table 1e's column comes from ``--time_1e``).
    """
    result = {k: v for k, v in twin.items() if k not in ("ms_per_image", "initial_loss")}
    if twin_dir:
        source = twin_dir
        result.update({"reused_from": twin_dir, "run_dir": twin_dir}, **_measure(table, twin_dir))
    else:
        source = f"kept record {twin['table']}/{twin['setting']}_seed{twin['seed']}"
        config = kr.config.override(paper_dense.config(), setting.overrides)
        foreground = study_measure.print_foreground_ratio(config, config.data.train_annotations, config.data.train_images)
        result.update({"reused_from": source, "run_dir": run_dir, "foreground": foreground})
    result.update({"table": table.key, "setting": setting.name})
    _write_result(run_dir, result)
    print(f"[{table.key}] {setting.name} seed {seed}: the same training as {source} (AP {result['AP']:.3f}), reused", flush=True)
    return result


def _measure(table: Table, run_dir: str) -> dict:
    """The run's foreground ratio (its anchors, its input size); ms/image for table 1e; initial loss for the prior."""
    config = study_measure.read_config(run_dir)
    measured = {"foreground": study_measure.print_foreground_ratio(config)}
    if table.key == "1e":
        measured["ms_per_image"] = study_measure.time_predict(study_measure.load_model(run_dir), config.data.image_size)
    if table.key == "prior":
        measured["initial_loss"] = study_measure.initial_loss(config)
    return measured
