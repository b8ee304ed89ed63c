"""Tests for the paper study's durable record (``experiments.study_records``).

A fresh checkout has no run directories; the tables, the skipping of
finished runs and the backbone must come back from what git keeps.
"""

import json
import os

import pytest

from experiments import paper_dense, paper_pretrain, study_doc, study_measure, study_records, study_runs, study_tables, study_timing


def _finished_run(runs_dir, table_key, setting, seed, ap, **extra):
    run_dir = study_runs.run_dir_of(runs_dir, table_key, setting, seed)
    os.makedirs(run_dir, exist_ok=True)
    record = {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.05, "diverged": False, "table": table_key, "setting": setting.name, "seed": seed, **extra}
    with open(os.path.join(run_dir, study_runs.RESULT_FILE), "w") as f:
        json.dump(record, f)
    return record


def test_archive_keeps_finished_runs_only_and_rewrites_only_what_changed(tmp_path):
    runs, records = str(tmp_path / "runs"), str(tmp_path / "records")
    b = study_tables.TABLES["1b"]
    _finished_run(runs, "1b", b.settings[0], 0, 0.60)
    os.makedirs(study_runs.run_dir_of(runs, "1b", b.settings[1], 0))  # started, not finished
    os.makedirs(os.path.join(runs, "_code_abc", "keras_retina"))  # a code snapshot: not a table
    with open(os.path.join(runs, study_timing.TIMING_FILE), "w") as f:
        json.dump({"sizes": {}}, f)
    written = study_records.archive(runs, records, list(study_tables.TABLES), [study_timing.TIMING_FILE])
    assert sorted(os.path.relpath(p, records) for p in written) == ["1b/fl_g0.0_a0.75_seed0.json", study_timing.TIMING_FILE]
    assert study_records.load(records, "1b", "fl_g0.0_a0.75_seed0")["AP"] == 0.60
    assert study_records.load(records, "1b", "fl_g0.5_a0.5_seed0") is None
    assert study_records.archive(runs, records, list(study_tables.TABLES), [study_timing.TIMING_FILE]) == []
    _finished_run(runs, "1b", b.settings[0], 0, 0.61)  # a rerun replaces its record
    assert len(study_records.archive(runs, records, ["1b"])) == 1
    assert study_records.load(records, "1b", "fl_g0.0_a0.75_seed0")["AP"] == 0.61


@pytest.mark.parametrize("content, message", [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object"), ('{"AP50": 0.5}', "no 'AP' field")])
def test_a_broken_kept_record_is_refused_naming_the_file(tmp_path, content, message):
    path = study_records.record_path(str(tmp_path), "1d", "ohem_128_seed1")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match=rf"ohem_128_seed1\.json.*{message}"):
        study_records.load(str(tmp_path), "1d", "ohem_128_seed1")


def test_the_backbone_is_kept_with_its_hash_and_restored_only_when_it_matches(tmp_path, monkeypatch):
    weights, records = str(tmp_path / "data" / "w.weights.h5"), str(tmp_path / "records")
    os.makedirs(os.path.dirname(weights))
    with open(weights, "wb") as f:
        f.write(b"weights v1")
    with open(weights + ".json", "w") as f:
        json.dump({"val_accuracy": 0.9}, f)
    kept = study_records.archive_backbone(weights, records)
    info = json.load(open(kept + ".json"))
    assert info["sha256"] == study_records.sha256(weights) and info["val_accuracy"] == 0.9 and info["bytes"] == 10
    assert study_records.archive_backbone(weights, records) == kept  # the same file: nothing to do
    assert not study_records.restore_backbone(weights, records)  # present: left alone
    # A fresh checkout: the weights come back from the record, with their pre-training record.
    os.remove(weights)
    os.remove(weights + ".json")
    assert study_records.restore_backbone(weights, records)
    assert open(weights, "rb").read() == b"weights v1" and json.load(open(weights + ".json"))["val_accuracy"] == 0.9
    # A retrained backbone must not mix silently into tables trained from the kept one.
    with open(weights, "wb") as f:
        f.write(b"weights v2")
    with pytest.raises(ValueError, match=r"w\.weights\.h5: SHA-256 .* differs from the kept backbone"):
        study_records.archive_backbone(weights, records)
    # A kept file that does not match its hash, or is far too large, is not used.
    os.remove(weights)
    with open(kept, "wb") as f:
        f.write(b"tampered!!")
    with pytest.raises(ValueError, match=r"w\.weights\.h5: SHA-256 differs"):
        study_records.restore_backbone(weights, records)
    monkeypatch.setattr(study_records, "MAX_BACKBONE_BYTES", 4)
    with pytest.raises(ValueError, match="more than 4"):
        study_records.restore_backbone(weights, records)
    assert not os.path.exists(weights)


def test_ensure_weights_restores_the_kept_backbone_instead_of_pretraining(tmp_path, monkeypatch):
    weights, records = str(tmp_path / "data" / "w.weights.h5"), str(tmp_path / "records")
    os.makedirs(os.path.dirname(weights))
    with open(weights, "wb") as f:
        f.write(b"kept")
    study_records.archive_backbone(weights, records)
    os.remove(weights)
    monkeypatch.setattr(paper_pretrain, "RECORDS_DIR", records)
    monkeypatch.setattr(paper_pretrain, "pretrain", lambda **kwargs: pytest.fail("pre-trained although a backbone is kept"))
    assert paper_pretrain.ensure_weights(weights) == weights and open(weights, "rb").read() == b"kept"


def test_a_fresh_checkout_builds_tables_from_the_record_and_keeps_what_no_record_holds(tmp_path):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    docs.mkdir()
    doc = docs / "paper_study.md"
    doc.write_text("# Notes\n")
    b, d = study_tables.TABLES["1b"], study_tables.TABLES["1d"]
    for seed in (0, 1, 2):
        _finished_run(str(runs), "1b", b.settings[3], seed, 0.64 + 0.01 * seed, backbone_sha256="ab12cd34ef56", machine="2 cores, CPU A")
    _finished_run(str(runs), "1d", d.settings[0], 1, 0.60, backbone_sha256="ab12cd34ef56", machine="2 cores, CPU A")
    study_doc.write_doc([0, 1, 2], str(runs), str(doc), figures=False)
    first = doc.read_text()
    assert "Table 1b: focal loss, gamma with the paper's best alpha (partial: 3 of 15 runs)" in first
    assert "Records: 3 trained from backbone ab12cd34 on 2 cores, CPU A." in first
    records = study_records.records_dir_for(str(doc))
    assert sorted(os.listdir(os.path.join(records, "1b"))) == [f"fl_g2.0_a0.25_seed{k}.json" for k in (0, 1, 2)]
    # A record transcribed from an earlier doc joins a table like any other and says so.
    with open(study_records.record_path(records, "1d", "ohem_128_seed0"), "w") as f:
        json.dump({"AP": 0.58, "AP50": 0.8, "AP75": 0.7, "transcribed_from": "docs/paper_study.md at 0123abc"}, f)
    # The machine is gone: no run directories, only the doc and its record.
    for root, _, names in os.walk(runs):
        for name in names:
            os.remove(os.path.join(root, name))
    study_doc.write_doc([0, 1, 2], str(runs), str(doc), figures=False)
    second = doc.read_text()
    assert "(partial: 2 of 12 runs)" in second  # 1d: 2 seeds of OHEM 128 ...
    assert "| OHEM, 128 per image | 2 (missing 2) | 59.0 ± 1.4 |" in second  # ... from the two records
    assert "Records: 1 transcribed from docs/paper_study.md at 0123abc; 1 trained from backbone ab12cd34 on 2 cores, CPU A." in second
    assert "| gamma = 2.0, alpha = 0.25 | 3 | 65.0 ± 1.0 |" in second  # 1b, rebuilt from the record alone
    # A table whose records are gone altogether keeps its earlier section, marked, once.
    for name in os.listdir(os.path.join(records, "1b")):
        os.remove(os.path.join(records, "1b", name))
    study_doc.write_doc([0, 1, 2], str(runs), str(doc), figures=False)
    study_doc.write_doc([0, 1, 2], str(runs), str(doc), figures=False)
    third = doc.read_text()
    section = study_doc.generated_sections(third)["### Table 1b: focal loss, gamma with the paper's best alpha (partial: 3 of 15 runs)"]
    assert section.count(study_doc.KEPT_NOTE) == 1 and "| gamma = 2.0, alpha = 0.25 | 3 | 65.0 ± 1.0 |" in section
    assert "Table 1a: alpha-balanced CE (gamma = 0) (not run yet)" in third  # never run: not kept, not invented
    assert study_doc.KEPT_NOTE not in study_doc.generated_sections(third)["### Table 1a: alpha-balanced CE (gamma = 0) (not run yet)"]


def test_the_anchor_fit_line_is_kept_while_the_data_is_not_written(tmp_path, monkeypatch):
    """A fresh checkout has no study data: 1c's anchor-fit line stays as the last collection wrote it."""
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    docs.mkdir()
    doc = docs / "paper_study.md"
    doc.write_text("# Notes\n")
    c = study_tables.TABLES["1c"]
    _finished_run(str(runs), "1c", c.settings[0], 0, 0.60, backbone_sha256="ab12cd34ef56", machine="2 cores, CPU A")
    fit = "Anchor fit (each object's best IoU with any anchor; ...): 1 scale(s) x 1 ratio(s): median 0.51."
    monkeypatch.setattr(study_doc, "coverage_line", lambda table, **kw: fit if table.key == "1c" else "")
    study_doc.write_doc([0, 1, 2], str(runs), str(doc), figures=False)
    assert fit in doc.read_text()
    monkeypatch.setattr(study_doc, "coverage_line", lambda table, **kw: "")  # the data is not there
    study_doc.write_doc([0, 1, 2], str(runs), str(doc), figures=False)
    text = doc.read_text()
    assert text.count(fit) == 1
    section = next(v for k, v in study_doc.generated_sections(text).items() if k.startswith(f"### {c.title} ("))
    assert fit in section  # in 1c's own section, not another table's


def test_a_kept_record_counts_as_finished_and_a_kept_twin_is_reused(tmp_path, monkeypatch):
    runs, records = str(tmp_path / "runs"), str(tmp_path / "records")
    d, e = study_tables.TABLES["1d"], study_tables.TABLES["1e"]
    key = study_runs.run_key(d, d.settings[3], 1, 500)
    _finished_run(runs, "1d", d.settings[3], 1, 0.63, run_key=key, ms_per_image=9.0)
    _finished_run(runs, "1d", d.settings[0], 1, 0.60)
    study_records.archive(runs, records, ["1d"])
    for name in os.listdir(os.path.join(runs, "1d")):  # a fresh checkout
        for file in os.listdir(os.path.join(runs, "1d", name)):
            os.remove(os.path.join(runs, "1d", name, file))
    monkeypatch.setattr(study_runs.subprocess, "run", lambda *a, **k: pytest.fail("a kept run was trained again"))
    monkeypatch.setattr(paper_dense, "write_data", lambda **kwargs: pytest.fail("a kept run was about to be trained again"))
    assert study_runs.run_one(d, d.settings[0], 1, 500, runs, records)["AP"] == 0.60
    monkeypatch.setattr(study_measure, "print_foreground_ratio", lambda config, path, images: {"size": config.data.image_size})
    found = study_runs.run_one(e, e.settings[2], 1, 500, runs, records)  # 192 px: the same training as 1d's FL
    assert found["AP"] == 0.63 and found["table"] == "1e" and found["reused_from"] == "kept record 1d/fl_seed1"
    assert "ms_per_image" not in found and found["foreground"] == {"size": 192}  # no model to time; its own ratio
    assert study_runs.load_result(study_runs.run_dir_of(runs, "1e", e.settings[2], 1))["AP"] == 0.63
    # A transcribed record is no twin: its model and exact metrics are gone.
    assert study_runs.find_kept_twin(records, "no-such-key") is None
