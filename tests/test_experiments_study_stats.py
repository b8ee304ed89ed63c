"""Tests for the study's statistics (``experiments.study_stats``): the sample std, the screen against the paper's order."""

import statistics

import pytest

from experiments import study_doc, study_runs, study_stats, study_tables
from experiments_helpers import fake_result as _fake_result


def test_mean_std_uses_the_sample_standard_deviation():
    values = [0.31, 0.35, 0.30]
    expected = f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
    assert study_stats.mean_std(values, scale=100) == expected
    assert study_stats.mean_std([0.5, 0.5], digits=2) == "0.50 ± 0.00"


def test_comparison_names_a_clear_disagreement_and_leaves_one_seed_unclear(tmp_path):
    table = study_tables.TABLES["1b"]
    # gamma 5 clearly above gamma 2 (the paper has it 1.8 points below); gamma 1 has one seed.
    for seed, (ap2, ap5) in enumerate([(0.60, 0.66), (0.61, 0.67), (0.62, 0.65)]):
        _fake_result(str(tmp_path), table, table.settings[3], seed, ap2)
        _fake_result(str(tmp_path), table, table.settings[4], seed, ap5)
    _fake_result(str(tmp_path), table, table.settings[2], 0, 0.70)
    found = study_stats.compare_to_paper(study_runs.collect(table, [0, 1, 2], str(tmp_path)))
    assert (found["agree"], found["disagree"], found["unclear"]) == (0, 1, 2)
    assert found["best_ours"] == "gamma = 1.0, alpha = 0.25" and found["best_paper"] == "gamma = 2.0, alpha = 0.25"
    text = study_stats.format_comparison(found)
    # Paired by seed: the differences -6, -6 and -3 points have SE 1.0 (Welch's would be 0.8).
    assert "gamma = 2.0, alpha = 0.25 vs gamma = 5.0, alpha = 0.25 (-5.0 ± 1.0 here, +1.8 in the paper)" in text
    assert "1 of 3 pairs of rows have the paper's sign" in text
    assert "paired by seed in 1 of 3 pairs" in text  # gamma 1's one seed pairs with nothing
    doc = tmp_path / "doc.md"
    study_doc.write_doc([0, 1, 2], str(tmp_path), str(doc), figures=False)
    assert text in doc.read_text()


def test_comparison_pairs_rows_by_seed_so_a_shared_seed_offset_cancels(tmp_path):
    """The rows of a seed share its backbone: a seed that lifts every row must not hide a steady gap."""
    table = study_tables.TABLES["1d"]
    ohem, fl = table.settings[0], table.settings[-1]
    for seed, offset in enumerate([0.0, 0.05, 0.10]):
        _fake_result(str(tmp_path), table, ohem, seed, 0.60 + offset)
        _fake_result(str(tmp_path), table, fl, seed, 0.63 + offset + 0.005 * seed)
    found = study_stats.compare_to_paper(study_runs.collect(table, [0, 1, 2], str(tmp_path)))
    (pair,) = found["pairs"]
    assert pair["paired"] and pair["verdict"] == "agree"
    assert pair["ours"] == pytest.approx(-3.5) and pair["se"] == pytest.approx(0.2887, abs=1e-3)
    # Unpaired, the 5-point seed offsets swamp the 3.5-point gap.
    means = study_stats.difference({0: 60.0, 1: 65.0, 2: 70.0}, {3: 63.0, 4: 68.5, 5: 74.0})
    assert not means[2] and abs(means[0]) < 2 * means[1]
    assert "(paired by seed)" in study_stats.format_comparison(found)
