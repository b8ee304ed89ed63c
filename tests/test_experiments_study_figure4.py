"""Tests for the paper's Figure 4 on the study's models (``experiments.study_figure4``)."""

import os

import numpy as np
from PIL import Image

import keras_retina as kr
from experiments import paper_dense, study_doc, study_figure4, study_runs, study_tables
from experiments_helpers import fake_result as _fake_result
from keras_retina import config as config_lib
from keras_retina.data import shapes


def test_figure4_draws_every_seeds_model_and_reads_the_share_of_hardest_anchors(tmp_path):
    """Figure 4 from the finished gamma = 2 runs of 1b (2 of 3 seeds here), on a tiny model and data."""
    files = shapes.make_shapes_dataset(tmp_path / "val", 4, seed=3, image_size=(64, 64), empty_fraction=0.0, verbose=False)
    config = config_lib.override(
        paper_dense.config(),
        ["data.image_size=64", "data.batch_size=2", f"data.train_annotations={files.annotation_file}",
         f"data.train_images={files.image_dir}", f"data.val_annotations={files.annotation_file}",
         f"data.val_images={files.image_dir}"],
    )
    runs, table = tmp_path / "runs", study_tables.TABLES["1b"]
    setting = next(s for s in table.settings if s.name == study_figure4.FIG4_RUN[1])
    model = kr.RetinaNet(num_classes=5, backbone="tiny", fpn_channels=8, head_channels=8)
    model.build((None, 64, 64, 3))
    for seed in (0, 1):
        run_dir = study_runs.run_dir_of(str(runs), "1b", setting, seed)
        os.makedirs(os.path.join(run_dir, "checkpoints"))
        model.save(os.path.join(run_dir, "checkpoints", "latest.keras"))
        from keras_retina.training import rundir

        rundir.write_config(run_dir, config)
        _fake_result(str(runs), table, setting, seed, 0.5)
    assert study_figure4.fig4_run_dirs(str(runs), [0, 1, 2]) == [study_runs.run_dir_of(str(runs), "1b", setting, s) for s in (0, 1)]

    found = study_figure4.anchor_losses(study_runs.run_dir_of(str(runs), "1b", setting, 0), max_images=4)
    assert found["images"] == 4
    fg, bg = found[0.0]["foreground"], found[0.0]["background"]
    assert len(fg) > 0 and len(bg) > 10 * len(fg) and np.all(np.diff(bg) >= 0)
    for group in ("foreground", "background"):  # the modulating factor (1 - p_t)^gamma only lowers the loss
        assert found[2.0][group].sum() < found[0.5][group].sum() < found[0.0][group].sum()

    doc = tmp_path / "docs" / "paper_study.md"
    doc.parent.mkdir()
    study_doc.write_doc([0, 1, 2], str(runs), str(doc))
    text = doc.read_text()
    assert "### Figure 4: CDF of the normalised loss (2 of 3 seeds)" in text
    # The two seeds share one model here: the spread between them is exactly 0.
    assert "holds half of the loss (mean ± std over 2 model(s), 4 validation images each): foreground: gamma 0: " in text
    assert text.count(" ± 0 %") == 8
    with Image.open(doc.parent / "paper_study_fig4.png") as image:
        assert image.format == "PNG" and image.size[0] > 600
