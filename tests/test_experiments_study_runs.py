"""Tests for running the study (``experiments.study_runs``): the command, skipping, failures, divergence, reuse.

No training here: the runner is exercised on fake run directories holding
the files a finished run leaves (``study.json``, ``train_log.csv``).
"""

import json
import os
import subprocess

import pytest

from experiments import paper_dense, study_runs, study_tables
from experiments_helpers import fake_result as _fake_result


def test_train_command_runs_the_experiment_with_the_settings_overrides():
    table = study_tables.TABLES["prior"]
    command = study_runs.train_command(table, table.settings[1], 2, 3000, "some/dir")
    assert command[1:4] == ["-c", "from keras_retina.cli import run; run()", "--experiment=experiments.paper_dense"]
    assert "--seed=2" in command and "--model_dir=some/dir" in command
    assert f"--epochs={3000 // study_tables.PRIOR_LOG_STEPS}" in command  # the prior logs every 10 steps
    assert "--override=model.prior_probability=0.5" in command


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
    table = study_tables.TABLES["1b"]
    record = _fake_result(str(tmp_path), table, table.settings[0], 0, 0.25)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(study_runs.subprocess, "run", no_training)
    assert study_runs.run_one(table, table.settings[0], 0, 10, str(tmp_path)) == record


def test_unfinished_run_is_trained_and_a_failure_names_the_run(tmp_path, monkeypatch):
    table = study_tables.TABLES["1b"]
    calls = []

    class Failed:
        returncode = 1

    monkeypatch.setattr(paper_dense, "write_data", lambda **kwargs: None)
    monkeypatch.setattr(study_runs.subprocess, "run", lambda command, **kwargs: calls.append(command) or Failed())
    run_dir = study_runs.run_dir_of(str(tmp_path), "1b", table.settings[1], 0)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:  # an intermediate evaluation is not a finished run
        json.dump({"AP": 0.1, "AP50": 0.2, "AP75": 0.1}, f)
    with pytest.raises(RuntimeError, match=r"fl_g0.5_a0.5_seed0.*exit 1"):
        study_runs.run_one(table, table.settings[1], 0, 10, str(tmp_path))
    assert len(calls) == 1 and study_runs.load_result(run_dir) is None


def test_a_run_whose_loss_went_nan_is_recorded_as_diverged(tmp_path, monkeypatch):
    table = study_tables.TABLES["prior"]

    class Stopped:
        returncode = 1

    monkeypatch.setattr(paper_dense, "write_data", lambda **kwargs: None)
    monkeypatch.setattr(study_runs.subprocess, "run", lambda command, **kwargs: Stopped())
    monkeypatch.setattr(study_runs, "_measure", lambda table, run_dir: {})
    run_dir = study_runs.run_dir_of(str(tmp_path), "prior", table.settings[1], 0)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "train_log.csv"), "w") as f:
        f.write("epoch,loss,cls_loss\n0,812.5,811.0\n1,nan,nan\n")
    result = study_runs.run_one(table, table.settings[1], 0, 20, str(tmp_path))
    assert result["diverged"] and result["AP"] == 0.0
    assert result["loss_log"][0] == {"step": study_tables.PRIOR_LOG_STEPS, "loss": 812.5, "cls_loss": 811.0}
    assert study_runs.load_result(run_dir)["diverged"]


def test_a_row_that_trains_the_same_model_as_another_tables_row_is_reused(tmp_path, monkeypatch):
    b, d, e = (study_tables.TABLES[k] for k in ("1b", "1d", "1e"))
    fl_b, fl_d = b.settings[3], d.settings[3]  # FL gamma 2, alpha 0.25 in both tables
    assert fl_b.overrides != fl_d.overrides  # spelled differently, the same training
    key = study_runs.run_key(b, fl_b, 1, 500)
    assert key == study_runs.run_key(d, fl_d, 1, 500) == study_runs.run_key(e, e.settings[2], 1, 500)  # 192 px
    assert key != study_runs.run_key(b, fl_b, 1, 600) and key != study_runs.run_key(b, b.settings[2], 1, 500)
    assert key != study_runs.run_key(study_tables.TABLES["prior"], fl_b, 1, 500)  # its own schedule
    record = _fake_result(str(tmp_path), b, fl_b, 1, 0.41, run_key=key, ms_per_image=None)

    def no_training(*args, **kwargs):
        raise AssertionError("a twin run was trained again")

    monkeypatch.setattr(study_runs.subprocess, "run", no_training)
    measured = []
    monkeypatch.setattr(study_runs, "_measure", lambda table, run_dir: measured.append((table.key, run_dir)) or {"ms_per_image": 7.5})
    result = study_runs.run_one(e, e.settings[2], 1, 500, str(tmp_path))
    twin_dir = study_runs.run_dir_of(str(tmp_path), "1b", fl_b, 1)
    assert result["AP"] == record["AP"] and result["table"] == "1e" and result["reused_from"] == twin_dir
    assert measured == [("1e", twin_dir)] and result["ms_per_image"] == 7.5  # 1e's timing, on the twin's model
    assert study_runs.load_result(study_runs.run_dir_of(str(tmp_path), "1e", e.settings[2], 1))["AP"] == 0.41
    # A row with no twin is trained.
    monkeypatch.setattr(study_runs.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("trained")))
    monkeypatch.setattr(paper_dense, "write_data", lambda **kwargs: None)
    with pytest.raises(RuntimeError, match="trained"):
        study_runs.run_one(e, e.settings[0], 1, 500, str(tmp_path))


def test_a_study_json_without_ap_is_refused_naming_the_file(tmp_path):
    with open(tmp_path / study_runs.RESULT_FILE, "w") as f:
        json.dump({"setting": "x"}, f)
    with pytest.raises(ValueError, match=r"study.json: no 'AP'"):
        study_runs.load_result(str(tmp_path))


def test_plateau_is_where_ap_stops_rising_by_more_than_a_point():
    aps = [0.1, 0.3, 0.45, 0.50, 0.505, 0.51, 0.512]
    rows = [{"epoch": 4 * i + 3, "val_AP": ap} for i, ap in enumerate(aps)]
    # At 0.50 a later 0.512 is still 1.2 points more; from 0.505 on no later AP gains more than 1 point.
    assert study_runs.plateau_step(rows) == (4 * 4 + 4) * study_tables.STEPS_PER_EPOCH
    assert study_runs.plateau_step(rows, tolerance=0.001) == (4 * 6 + 4) * study_tables.STEPS_PER_EPOCH
    assert study_runs.plateau_step([]) is None


def test_run_one_puts_this_checkout_first_on_the_subprocess_path(tmp_path, monkeypatch):
    table = study_tables.TABLES["1b"]
    seen = {}

    class Failed:
        returncode = 1

    monkeypatch.setattr(paper_dense, "write_data", lambda **kwargs: None)
    monkeypatch.setattr(study_runs.subprocess, "run", lambda command, **kwargs: seen.update(kwargs) or Failed())
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    with pytest.raises(RuntimeError):
        study_runs.run_one(table, table.settings[0], 0, 10, str(tmp_path))
    assert seen["env"]["PYTHONPATH"].split(os.pathsep) == [study_runs.CHECKOUT_DIR, "/elsewhere"]
    assert os.path.isfile(os.path.join(study_runs.CHECKOUT_DIR, "experiments", "paper_dense.py"))


def test_the_training_command_loads_the_experiment_from_any_directory(tmp_path):
    """The runner's own command, from another directory: keras_retina's CLI parses it and loads
    ``experiments.paper_dense``, then stops at an override that names no field (so nothing trains)."""
    table = study_tables.TABLES["1b"]
    command = study_runs.train_command(table, table.settings[3], 0, 100, str(tmp_path / "run"))
    env = {**study_runs.train_environment(), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command + ["--override=model.no_such_field=1"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode != 0 and last == "ValueError: --override: unknown field 'model.no_such_field'.", done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_the_kept_records_keep_their_run_keys():
    """A run directory or record written before still counts as finished, and as a twin: its key is unchanged."""
    records_dir = os.path.join(study_runs.CHECKOUT_DIR, "docs", "paper_study_runs")
    tables = {**study_tables.TABLES, **{t.key: t for t in study_tables.BUDGETS.values()}}
    checked = 0
    for table_key in sorted(os.listdir(records_dir)):
        if table_key not in tables:
            continue
        for name in sorted(os.listdir(os.path.join(records_dir, table_key))):
            with open(os.path.join(records_dir, table_key, name)) as f:
                record = json.load(f)
            if "run_key" in record:
                setting = study_tables.setting_named(tables[table_key], record["setting"])
                assert study_runs.run_key(tables[table_key], setting, record["seed"], record["steps"]) == record["run_key"], name
                checked += 1
    assert checked >= 40
