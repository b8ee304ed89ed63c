"""Tests for the summary of the paper's claims (``experiments.study_summary``)."""

import pytest

from experiments import study_doc, study_runs, study_summary, study_tables
from experiments_helpers import fake_result as _fake_result


def test_a_kept_section_gives_the_rows_its_records_gave(tmp_path):
    """A section kept after its records are gone stands in for them in the summary, to 0.1 point."""
    table = study_tables.TABLES["1d"]
    for i, setting in enumerate(table.settings):
        for seed in (0, 2):
            _fake_result(str(tmp_path), table, setting, seed, 0.6 + 0.013 * i + 0.021 * seed, diverged=(i, seed) == (1, 2))
    rows = study_runs.collect(table, [0, 1, 2], str(tmp_path))
    section = f"### {table.title} (partial)\n\n" + study_doc.format_table(table, rows)
    parsed = study_summary.rows_from_section(table, section, [0, 1, 2])
    assert [r["setting"] for r in parsed] == list(table.settings)
    for mine, theirs in zip(parsed, rows):
        assert mine["missing"] == theirs["missing"] == [1]
        assert [r["seed"] for r in mine["results"]] == [0, 2]
        assert [round(r["AP"], 3) for r in mine["results"]] == [round(r["AP"], 3) for r in theirs["results"]]
        assert [r["diverged"] for r in mine["results"]] == [r["diverged"] for r in theirs["results"]]
    claim = table.claims[0]
    assert study_summary.judge(table, claim, parsed, [0, 1, 2]) == study_summary.judge(table, claim, rows, [0, 1, 2])
    assert study_summary.judge(table, claim, rows, [0, 1, 2])["reproduced"].startswith("not yet (2 of 3 seeds; so far ")


@pytest.mark.parametrize("fl_gain, expected", [(0.04, "yes"), (-0.04, "no (reversed)"), (0.0, "no (no clear difference)")])
def test_the_verdict_follows_the_sign_beyond_twice_the_standard_error(tmp_path, fl_gain, expected):
    table = study_tables.TABLES["1d"]
    for seed, noise in enumerate((0.0, 0.004, -0.003)):
        _fake_result(str(tmp_path), table, study_tables.setting_named(table, "ohem_128"), seed, 0.6 + 0.02 * seed)
        _fake_result(str(tmp_path), table, study_tables.setting_named(table, "fl"), seed, 0.6 + 0.02 * seed + fl_gain + noise)
    rows = study_runs.collect(table, [0, 1, 2], str(tmp_path))
    assert study_summary.judge(table, table.claims[0], rows, [0, 1, 2])["reproduced"] == expected


def test_the_prior_claim_counts_the_diverged_runs(tmp_path):
    table = study_tables.TABLES["prior"]
    for seed in (0, 1):
        _fake_result(str(tmp_path), table, study_tables.setting_named(table, "ce_pi0.01_sgd_nowarmup"), seed, 0.3 + 0.01 * seed)
        _fake_result(str(tmp_path), table, study_tables.setting_named(table, "ce_bias0_sgd_nowarmup"), seed, 0.0, diverged=seed == 1)
    found = study_summary.judge(table, table.claims[0], study_runs.collect(table, [0, 1], str(tmp_path)), [0, 1])
    assert found["paper"] == "CE with bias 0 diverges"
    assert found["ours"].endswith("; 1 of 4 runs diverged") and found["reproduced"] == "yes"
