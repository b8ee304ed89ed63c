"""Tests for the study's figures (``experiments.study_plots``)."""

from PIL import Image

from experiments import study_plots, study_runs, study_tables
from experiments_helpers import fake_result as _fake_result


def test_plot_table_writes_a_png_only_when_there_are_results(tmp_path):
    table = study_tables.TABLES["1d"]
    empty = study_runs.collect(table, [0], str(tmp_path / "runs"))
    assert study_plots.plot_table(table, empty, str(tmp_path / "none.png")) is None
    _fake_result(str(tmp_path / "runs"), table, table.settings[3], 0, 0.4)
    rows = study_runs.collect(table, [0], str(tmp_path / "runs"))
    path = study_plots.plot_table(table, rows, str(tmp_path / "1d.png"))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_plot_table_names_the_ticks_of_a_table_of_named_settings(tmp_path, monkeypatch):
    """1d's settings sit at x = 0-3: the axis must still say which is which, not print 0.5 steps."""
    import matplotlib.axes

    ticks = []
    original = matplotlib.axes.Axes.set_xticks
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks", lambda self, *a, **k: (ticks.append(a), original(self, *a, **k))[1])
    for key in ("1d", "1b"):
        table = study_tables.TABLES[key]
        _fake_result(str(tmp_path / "runs"), table, table.settings[0], 0, 0.4)
        study_plots.plot_table(table, study_runs.collect(table, [0], str(tmp_path / "runs")), str(tmp_path / f"{key}.png"))
    d = study_tables.TABLES["1d"]
    assert ticks == [([0, 1, 2, 3], [s.label for s in d.settings])]  # 1d named; 1b's gamma axis left to matplotlib
