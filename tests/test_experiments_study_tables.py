"""Tests for the study's tables (``experiments.study_tables``): every row a valid config, the follow-ups of 1c what they say."""

import dataclasses
import os

import pytest

from experiments import paper_dense, study_runs, study_tables
from keras_retina import config as config_lib
from keras_retina import training


def test_every_setting_is_a_valid_override_of_the_experiment():
    base = paper_dense.config()
    config_lib.validate(base)
    assert base.model.focal_alpha == 0.25 and base.model.focal_gamma == 2.0  # the paper's default stays
    for table in study_tables.TABLES.values():
        names = [s.name for s in table.settings]
        assert len(set(names)) == len(names)
        for setting in table.settings:
            config = config_lib.validate(config_lib.override(base, setting.overrides))
            if setting.name.startswith("ohem"):
                assert config.model.ohem_batch_size in (128, 256) and config.model.focal_gamma == 0.0
                assert config.model.focal_alpha is None
    ohem13 = config_lib.override(base, study_tables.TABLES["1d"].settings[2].overrides)
    assert ohem13.model.ohem_positive_fraction == 0.25
    sizes = [config_lib.override(base, s.overrides).data.image_size for s in study_tables.TABLES["1e"].settings]
    assert sizes == sorted(sizes) and 192 in sizes
    anchors = [config_lib.override(base, s.overrides).model.anchors for s in study_tables.TABLES["1c"].settings]
    assert [len(a.scales) * len(a.aspect_ratios) for a in anchors] == [s.x for s in study_tables.TABLES["1c"].settings]


def test_table_1c_wide_strict_is_1c_wide_without_low_quality_matches():
    """1 x 1 and 1 x 3 of 1c_wide, the same data, anchors and paper rows, only the matching differs."""
    wide, strict = study_tables.TABLES["1c_wide"], study_tables.TABLES["1c_wide_strict"]
    base = paper_dense.config()
    assert [s.name for s in strict.settings] == ["anchors_1x1", "anchors_1x3"]
    assert strict.data == wide.data == "wide"
    for setting in strict.settings:
        twin = next(s for s in wide.settings if s.name == setting.name)
        a, b = config_lib.override(base, twin.overrides), config_lib.override(base, setting.overrides)
        assert a.model.allow_low_quality_matches and not b.model.allow_low_quality_matches
        assert dataclasses.replace(b.model, allow_low_quality_matches=True) == a.model
        assert a.data == b.data and setting.paper == twin.paper
        assert study_runs.run_key(wide, twin, 0, 100) != study_runs.run_key(strict, setting, 0, 100)
    # The flag reaches the model that assigns the targets. No backbone weights: a clean clone has no
    # pretrained file (data/ is ignored), and the flag does not depend on them.
    model = training.build_model(dataclasses.replace(b.model, backbone_weights=None), num_classes=5)
    assert model.allow_low_quality_matches is False


def test_table_1c_wide_is_1c_on_the_wide_data(tmp_path, monkeypatch):
    """Same anchors and paper rows as 1c; every row trains on the wide data, which the runner writes."""
    narrow, wide = study_tables.TABLES["1c"], study_tables.TABLES["1c_wide"]
    base = paper_dense.config()
    assert [s.paper for s in wide.settings] == [s.paper for s in narrow.settings]
    for a, b in zip(narrow.settings, wide.settings):
        ca, cb = config_lib.override(base, a.overrides), config_lib.override(base, b.overrides)
        assert ca.model.anchors == cb.model.anchors
        assert cb.data.train_annotations == os.path.join("data", "paper_dense_wide", "train", "annotations.json")
        assert cb.data.val_images == os.path.join("data", "paper_dense_wide", "val", "images")
        assert study_runs.run_key(narrow, a, 0, 100) != study_runs.run_key(wide, b, 0, 100)  # never reused across the two
    written = []

    class Failed:
        returncode = 1

    monkeypatch.setattr(paper_dense, "write_data", lambda **kwargs: written.append(kwargs))
    monkeypatch.setattr(study_runs.subprocess, "run", lambda command, **kwargs: Failed())
    with pytest.raises(RuntimeError):
        study_runs.run_one(wide, wide.settings[0], 0, 10, str(tmp_path))
    assert written == [{"verbose": False, "pretrained": True, "data": "wide"}]


def test_every_claim_names_two_rows_of_its_table_in_the_papers_order():
    claims = [(table, claim) for table in study_tables.TABLES.values() for claim in table.claims]
    assert {table.key for table, _ in claims} == set(study_tables.TABLES)  # every table makes one
    for table, claim in claims:
        better, worse = study_tables.setting_named(table, claim.better), study_tables.setting_named(table, claim.worse)
        if claim.paper is None:
            assert better.paper[0] > worse.paper[0], claim  # the paper's own order
        else:
            assert better.paper is None and worse.paper is None, claim
    with pytest.raises(KeyError, match="table 1d has no setting 'nope'"):
        study_tables.setting_named(study_tables.TABLES["1d"], "nope")
