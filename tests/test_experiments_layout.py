"""The paper study's own layout: its modules import one way, with no circles (``tests/test_layout.py``'s walker)."""

from test_layout import ROOT, find_cycle, graph


def test_the_study_modules_import_no_circle():
    edges = graph(ROOT / "experiments")
    assert len(edges) >= 13  # every module was walked
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_the_experiment_and_the_measurements_import_nothing_of_the_runner_or_the_doc():
    """The training subprocess imports ``paper_dense``: it must not pull in the study's runner."""
    edges = graph(ROOT / "experiments")
    study = {name for name in edges if name.startswith("experiments.")}
    assert {t for t in edges["experiments.paper_dense"] if t in study} == {"experiments.paper_pretrain", "experiments.study_measure"}
    assert not {t for t in edges["experiments.study_measure"] if t.startswith("experiments")}
    assert not {t for t in edges["experiments.study_stats"] if t.startswith("experiments")}
