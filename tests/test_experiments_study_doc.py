"""Tests for the study's doc (``experiments.study_doc``): the tables, the anchor-fit line, the generated part."""

import json
import os

from PIL import Image

from experiments import study_doc, study_runs, study_stats, study_tables
from experiments_helpers import fake_result as _fake_result
from keras_retina.data import shapes


def test_coverage_line_follows_the_objects_as_1e_scales_the_input(tmp_path):
    # A 32-pixel square on a P3 anchor at 192 px; at 128 px it is 21.3 px, inside the 32-pixel anchor: IoU 0.44.
    coco = {
        "images": [{"id": 1, "width": 192, "height": 192, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "shape"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [12, 12, 32, 32]}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco))
    Image.new("RGB", (192, 192)).save(tmp_path / "a.png")
    line = study_doc.coverage_line(study_tables.TABLES["1e"], annotation_file=str(path), image_dir=str(tmp_path))
    assert "192 px (paper 600): objects 32-32 px, median 1.00, 100 % at IoU >= 0.5" in line, line
    assert "128 px (paper 400): objects 21-21 px, median 0.44, 0 % at IoU >= 0.5" in line, line
    assert study_doc.coverage_line(study_tables.TABLES["1e"], annotation_file=str(tmp_path / "missing.json")) == ""


def test_coverage_line_of_1c_wide_reads_the_wide_data(tmp_path, monkeypatch):
    """Its anchor fit is measured on the data its rows train on, where 3 ratios fit better than 1."""
    monkeypatch.chdir(tmp_path)
    assert study_doc.coverage_line(study_tables.TABLES["1c_wide"]) == ""  # not written yet
    shapes.make_shapes_dataset(os.path.join("data", "paper_dense_wide", "train"), 60, seed=0, verbose=False, **shapes.WIDE_OBJECTS_IN_CLUTTER)
    line = study_doc.coverage_line(study_tables.TABLES["1c_wide"], max_images=60)
    assert line.startswith("Anchor fit") and "w/h 0.40-2.74" in line  # 1c's data: w/h 0.71-1.38
    covered = [int(part.split(", ")[-1].split(" %")[0]) for part in line.split(": ", 1)[1].split("; ")]
    assert len(covered) == 5 and covered[2] > covered[0] + 10  # 1 x 3 against 1 x 1
    assert study_doc.coverage_line(study_tables.TABLES["1c"]) == ""  # 1c's own data is not there


def test_collect_and_table_formatting_from_fake_runs(tmp_path):
    table = study_tables.TABLES["1b"]
    aps = {0: 0.20, 1: 0.26}
    for seed, ap in aps.items():
        _fake_result(str(tmp_path), table, table.settings[3], seed, ap)
    rows = study_runs.collect(table, [0, 1, 2], str(tmp_path))
    assert [len(r["results"]) for r in rows] == [0, 0, 0, 2, 0]
    assert rows[3]["missing"] == [2] and rows[0]["missing"] == [0, 1, 2]
    text = study_doc.format_table(table, rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(table.settings)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    row = next(line for line in lines if line.startswith("| gamma = 2.0"))
    assert study_stats.mean_std(list(aps.values()), 100) in row
    assert "2 (missing 2)" in row and "20.0, 26.0" in row and "34.0 / 52.5 / 36.5" in row


def test_write_doc_keeps_the_notes_and_marks_what_is_missing(tmp_path):
    table = study_tables.TABLES["1a"]
    for seed in (0, 1, 2):
        _fake_result(str(tmp_path / "runs"), table, table.settings[0], seed, 0.1 + 0.01 * seed)
    doc = tmp_path / "paper_study.md"
    doc.write_text("# Notes\n\nhand-written\n")
    study_doc.write_doc([0, 1, 2], str(tmp_path / "runs"), str(doc), figures=False)
    first = doc.read_text()
    assert first.startswith("# Notes\n\nhand-written\n")
    assert "Table 1a: alpha-balanced CE (gamma = 0) (partial: 3 of 15 runs)" in first
    assert "Table 1b: focal loss, gamma with the paper's best alpha (not run yet)" in first
    assert "--table=1d --seeds=0,1,2" in first
    assert "11.0 ± 1.0" in first
    # Rewriting replaces the generated part only.
    doc.write_text(first + "\ntrailing note\n")
    study_doc.write_doc([0, 1, 2], str(tmp_path / "runs"), str(doc), figures=False)
    second = doc.read_text()
    assert second.count(study_doc.BEGIN_MARK) == 1 and second.endswith("\ntrailing note\n")


def test_the_summary_comes_first_and_the_hand_written_notes_survive_a_rebuild(tmp_path):
    table = study_tables.TABLES["1b"]
    fl, ce = study_tables.setting_named(table, "fl_g2.0_a0.25"), study_tables.setting_named(table, "fl_g0.0_a0.75")
    for seed in (0, 1, 2):
        _fake_result(str(tmp_path / "runs"), table, fl, seed, 0.65 + 0.01 * seed)
        _fake_result(str(tmp_path / "runs"), table, ce, seed, 0.60 + 0.012 * seed)
    doc = tmp_path / "paper_study.md"
    doc.write_text("# Notes\n")
    study_doc.write_doc([0, 1, 2], str(tmp_path / "runs"), str(doc), figures=False)
    reading = f"{study_doc.notes_begin('1b')}\nGamma helps here.\n{study_doc.NOTES_END}"
    text = doc.read_text().replace(f"### {table.title} (partial: 6 of 15 runs)\n", f"### {table.title} (partial: 6 of 15 runs)\n\n{reading}\n")
    doc.write_text(text)
    for _ in range(2):
        study_doc.write_doc([0, 1, 2], str(tmp_path / "runs"), str(doc), figures=False)
    text = doc.read_text()
    assert text.index("## Results") < text.index("| table | the paper's claim |") < text.index("### Table 1a")
    assert text.count(reading) == 1
    section = study_doc.generated_sections(text)[f"### {table.title} (partial: 6 of 15 runs)"]
    assert section.index(reading) < section.index("| setting | seeds |")
    # FL leads CE by 5, 4.8 and 4.6 points: the paper's +2.9, beyond twice the standard error.
    row = next(line for line in text.splitlines() if line.startswith("| 1b | the focal loss"))
    assert "| +2.9 (34.0 vs 31.1) | +4.8 ± 0.1 (66.0 ± 1.0 vs 61.2 ± 1.2; 3 seeds) | yes |" in row, row
    assert "| 1a | alpha-balanced CE: alpha = 0.75 beats 0.5 | +0.9 (31.1 vs 30.2) | — | not run yet |" in text
