"""Shared by the tests of the paper study (``experiments``): a fake finished run."""

import json
import os

from experiments import study_runs


def fake_result(runs_dir, table, setting, seed, ap, **extra):
    """Writes the ``study.json`` a finished run of ``setting`` (of ``table``) would leave; returns it."""
    run_dir = study_runs.run_dir_of(runs_dir, table.key, setting, seed)
    os.makedirs(run_dir, exist_ok=True)
    record = {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.05, "diverged": False, **extra}
    with open(os.path.join(run_dir, study_runs.RESULT_FILE), "w") as f:
        json.dump(record, f)
    return record
