"""Tests for table 1e's side-by-side timing (``experiments.study_timing``, ``--time_1e``)."""

import json

import numpy as np
import pytest
from PIL import Image

import keras_retina as kr
from experiments import study_doc, study_measure, study_tables, study_timing
from experiments_helpers import fake_result as _fake_result


def test_time_table_1e_times_every_size_in_turns_and_fills_the_ms_column(tmp_path, monkeypatch):
    """``--time_1e``: each size's model on the validation image at its size, side by side; the doc shows it."""
    model_dir = tmp_path / "model"
    (model_dir / "checkpoints").mkdir(parents=True)
    model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=8, head_channels=8)
    model.build((None, 64, 64, 3))
    model.save(model_dir / "checkpoints" / "latest.keras")
    Image.fromarray(np.full((192, 192, 3), 90, np.uint8)).save(tmp_path / "a.png")
    categories = [{"id": 1, "name": "shape"}]
    val = {"images": [{"id": 1, "file_name": "a.png", "width": 192, "height": 192}], "annotations": [], "categories": categories}
    (tmp_path / "val.json").write_text(json.dumps(val))
    (model_dir / "config.json").write_text(json.dumps({"data": {"val_annotations": str(tmp_path / "val.json"), "val_images": str(tmp_path)}}))
    runs, table = tmp_path / "runs", study_tables.TABLES["1e"]
    with pytest.raises(FileNotFoundError, match=r"no finished 1e run of seed 0 for sizes \[128, 160, 192, 224, 256\]"):
        study_timing.time_table_1e(str(runs), seed=0)
    for i, setting in enumerate(table.settings):
        _fake_result(str(runs), table, setting, 0, 0.3 + 0.1 * i, run_dir=str(model_dir), ms_per_image=99.0)
    seen = {}
    real = study_measure.time_side_by_side

    def spy(functions, inputs, rounds, repeats):
        seen.update({key: tuple(image.shape) for key, image in inputs.items()})
        return real(functions, inputs, rounds, repeats, warmup=1)

    monkeypatch.setattr(study_measure, "time_side_by_side", spy)
    record = study_timing.time_table_1e(str(runs), seed=0, rounds=2, repeats=1)
    assert seen == {s: (1, s, s, 3) for s in (128, 160, 192, 224, 256)}
    assert sorted(record["sizes"], key=int) == ["128", "160", "192", "224", "256"]
    assert all(t["calls"] == 2 and 0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"] for t in record["sizes"].values())
    assert study_timing.read_timing(str(runs)) == record and "cores" in record["machine"]
    doc = tmp_path / "docs" / "paper_study.md"
    doc.parent.mkdir()
    study_doc.write_doc([0], str(runs), str(doc))
    text = doc.read_text()
    t = record["sizes"]["128"]
    assert "ms/image, side by side (this CPU)" in text
    assert "| 128 px (paper 400) | 1 | 30.0 (1 seed) | " in text and f"| {t['median_ms']:.1f} ({t['p10_ms']:.1f}-{t['p90_ms']:.1f}) | 64 |" in text
    assert "99.0" not in text  # the per-run timings give way to the side-by-side ones
    assert "`--time_1e`, every size's seed-0 model in turns (2 calls each" in text
    with Image.open(doc.parent / "paper_study_1e_speed.png") as image:
        assert image.format == "PNG" and image.size[0] > 600
    (tmp_path / "val.json").write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    with pytest.raises(ValueError, match=r"val.json: 'images' has no entry with a 'file_name'"):
        study_timing.time_table_1e(str(runs), seed=0)
