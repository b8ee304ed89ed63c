"""Tests for the study's command line (``python -m experiments.paper_study``): which runs it starts, in which order."""

import os

import pytest

from experiments import paper_dense, paper_study, study_doc, study_runs, study_tables
from keras_retina import config as config_lib


def test_budget_on_the_wide_data_is_the_budget_run_pointed_at_it(tmp_path, monkeypatch):
    """`--budget --budget_data=wide`: the constant-LR run, on 1c_wide's data, in its own directory."""
    base = paper_dense.config()
    dense = config_lib.override(base, study_tables.BUDGET.settings[0].overrides)
    wide = config_lib.override(base, study_tables.BUDGET_WIDE.settings[0].overrides)
    assert wide.train == dense.train and wide.model == dense.model  # same loss, anchors and constant LR
    assert dense.data.train_annotations != wide.data.train_annotations
    assert wide.data.train_annotations == os.path.join("data", "paper_dense_wide", "train", "annotations.json")
    assert study_tables.BUDGET_WIDE.data == "wide" and study_tables.BUDGET.data == "dense"
    calls = []
    monkeypatch.setattr(study_runs, "run_one", lambda table, setting, seed, steps, runs_dir: calls.append((table.key, steps)))
    monkeypatch.setattr(study_runs, "read_train_log", lambda run_dir: calls.append(run_dir) or [])
    paper_study.main(["--budget", "--budget_data=wide", f"--runs_dir={tmp_path}"])
    assert calls == [("budget_wide", study_tables.BUDGET_STEPS), os.path.join(str(tmp_path), "budget_wide", "fl_constant_lr_seed0")]
    with pytest.raises(SystemExit):
        paper_study.main(["--budget", "--budget_data=coco"])


def test_main_runs_seed_by_seed_and_only_the_named_rows(monkeypatch):
    calls = []
    records = []
    monkeypatch.setattr(
        study_runs,
        "run_one",
        lambda table, setting, seed, steps, runs_dir, records_dir: calls.append((table.key, setting.name, seed, steps)) or records.append(records_dir),
    )
    monkeypatch.setattr(study_doc, "write_doc", lambda *args, **kwargs: "")
    monkeypatch.setattr(paper_study, "_keep_backbone", lambda records_dir: None)
    paper_study.main(["--table=1b,prior", "--seeds=0,1", "--only=fl_g2.0_a0.25,ce_bias0"])
    assert calls == [
        ("1b", "fl_g2.0_a0.25", 0, study_tables.STEPS),
        ("1b", "fl_g2.0_a0.25", 1, study_tables.STEPS),
        ("prior", "ce_bias0", 0, study_tables.PRIOR_STEPS),
        ("prior", "ce_bias0", 1, study_tables.PRIOR_STEPS),
    ]
    assert set(records) == {os.path.join("docs", "paper_study_runs")}  # kept runs are skipped too
    calls.clear()
    paper_study.main(["--table=1b", "--seeds=0,1"])
    assert [(name, seed) for _, name, seed, _ in calls] == [
        (s.name, seed) for seed in (0, 1) for s in study_tables.TABLES["1b"].settings
    ]
    with pytest.raises(SystemExit):
        paper_study.main(["--table=1z"])
