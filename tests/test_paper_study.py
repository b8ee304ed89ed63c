"""Tests for the paper study (issue 15): its data setting, the runner's skip and collect logic, the tables.

No training here: the runner is exercised on fake run directories holding
the files a finished run leaves (``study.json``, ``train_log.csv``).
"""

import dataclasses
import json
import os
import statistics

import numpy as np
import pytest
from PIL import Image

import keras_retina as kr
from keras_retina import config as config_lib
from keras_retina import training
from keras_retina.data import shapes
from experiments import paper_dense, paper_study


def _files(directory):
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), directory)] = f.read()
    return found


# ----------------------------------------------------------------------- data
def test_clutter_setting_is_deterministic_and_leaves_the_default_alone(tmp_path):
    setting = shapes.SMALL_OBJECTS_IN_CLUTTER
    a = shapes.make_shapes_dataset(tmp_path / "a", 6, seed=5, verbose=False, **setting)
    b = shapes.make_shapes_dataset(tmp_path / "b", 6, seed=5, verbose=False, **setting)
    assert _files(os.path.dirname(a.annotation_file)) == _files(os.path.dirname(b.annotation_file))
    # The new options at their default values draw and write exactly what the plain call does.
    plain = shapes.make_shapes_dataset(tmp_path / "plain", 6, seed=5, verbose=False)
    explicit = shapes.make_shapes_dataset(
        tmp_path / "explicit", 6, seed=5, verbose=False, min_objects=1,
        size_probabilities=shapes.SIZE_BUCKET_PROBABILITIES, max_clutter=0,
    )
    assert _files(os.path.dirname(plain.annotation_file)) == _files(os.path.dirname(explicit.annotation_file))
    with open(plain.annotation_file) as f:
        assert "setting" not in json.load(f)["info"]["keras_retina_shapes"]
    with open(a.annotation_file) as f:
        assert json.load(f)["info"]["keras_retina_shapes"]["setting"]["max_clutter"] == 16


def _strong_pixels_outside_boxes(files, coco, images=10):
    """Per image: the share of pixels outside every box more than 60 RGB units from the median colour."""
    shares = []
    for image in coco["images"][:images]:
        pixels = np.asarray(Image.open(os.path.join(files.image_dir, image["file_name"])), np.float32)
        outside = np.ones(pixels.shape[:2], bool)
        for a in coco["annotations"]:
            if a["image_id"] == image["id"]:
                x, y, w, h = (int(round(v)) for v in a["bbox"])
                outside[y : y + h, x : x + w] = False
        distance = np.linalg.norm(pixels - np.median(pixels[outside], axis=0), axis=-1)
        shares.append(float((distance[outside] > 60).mean()))
    return shares


def test_clutter_setting_has_few_small_objects_and_unannotated_clutter(tmp_path):
    files = shapes.make_shapes_dataset(tmp_path, 30, seed=1, verbose=False, **shapes.SMALL_OBJECTS_IN_CLUTTER)
    with open(files.annotation_file) as f:
        coco = json.load(f)
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=31)[1:]
    assert per_image.min() >= 1 and per_image.max() <= 2
    assert max(a["bbox"][2] * a["bbox"][3] for a in coco["annotations"]) < 32**2  # all COCO "small"
    # Clutter: pixels outside every box that differ strongly from their image's median colour;
    # without the clutter, (almost) none.
    strong = _strong_pixels_outside_boxes(files, coco)
    assert np.median(strong) > 0.03, strong
    plain = shapes.make_shapes_dataset(tmp_path / "plain", 10, seed=1, verbose=False,
                                       **{**shapes.SMALL_OBJECTS_IN_CLUTTER, "max_clutter": 0})
    with open(plain.annotation_file) as f:
        plain_strong = _strong_pixels_outside_boxes(plain, json.load(f))
    assert np.median(plain_strong) < np.median(strong) / 3, (plain_strong, strong)


def test_measured_foreground_ratio_is_cocos(tmp_path):
    files = shapes.make_shapes_dataset(tmp_path, 60, seed=0, verbose=False, **shapes.SMALL_OBJECTS_IN_CLUTTER)
    found = paper_study.foreground_anchor_ratio(files.annotation_file, kr.AnchorGenerator(), 192)
    assert found["anchors"] == 6921 and found["images"] == 60
    assert 1 / 1500 < found["ratio"] < 1 / 700, found
    # The library's own matching decides: every object gets a foreground anchor.
    assert found["foreground_per_image"] >= found["objects_per_image"]
    # Same data, twice the side: anchors x ~4, objects' boxes x 2: a different ratio, so the size is measured, not assumed.
    larger = paper_study.foreground_anchor_ratio(files.annotation_file, kr.AnchorGenerator(), 384)
    assert larger["anchors"] > 4 * found["anchors"] - 200 and larger["ratio"] != found["ratio"]


def test_measured_foreground_ratio_follows_the_runs_matching(tmp_path):
    """A 16-pixel square has IoU 0.25 with its best (32-pixel) anchor: a positive only through the
    low-quality match. 1c_wide_strict's runs turn that off, and their measured ratio must say so."""
    coco = {
        "images": [{"id": 1, "width": 192, "height": 192, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 16, 16]}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco))
    generator = kr.AnchorGenerator(scales=(1.0,), aspect_ratios=(1.0,))
    loose = paper_study.foreground_anchor_ratio(str(path), generator, 192)
    strict = paper_study.foreground_anchor_ratio(str(path), generator, 192, allow_low_quality_matches=False)
    assert loose["foreground_per_image"] >= 1 and loose["allow_low_quality_matches"] is True
    assert strict["foreground_per_image"] == 0 and strict["allow_low_quality_matches"] is False
    config = config_lib.override(paper_dense.config(), paper_study.TABLES["1c_wide_strict"].settings[0].overrides)
    assert paper_study.print_foreground_ratio(config, str(path))["allow_low_quality_matches"] is False


def test_anchor_coverage_sees_aspect_ratios_fit_elongated_objects_and_1c_names_its_data(tmp_path):
    # A 2:1 box of a P3 anchor's area, on an anchor centre: the 1:2 anchor fits it exactly,
    # the square one at IoU 724 / 1324 = 0.547 (the overlap is 32 x 22.6 px).
    half_w, half_h = 16 * 2**0.5, 8 * 2**0.5
    coco = {
        "images": [{"id": 1, "width": 192, "height": 192, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [28 - half_w, 28 - half_h, 2 * half_w, 2 * half_h]}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco))
    square = paper_study.anchor_coverage(str(path), kr.AnchorGenerator(scales=(1.0,), aspect_ratios=(1.0,)), 192)
    three = paper_study.anchor_coverage(str(path), kr.AnchorGenerator(scales=(1.0,)), 192)
    assert square["median_best_iou"] == pytest.approx(0.547, abs=0.002) and square["covered"] == 1.0
    assert three["median_best_iou"] == pytest.approx(1.0, abs=1e-4)
    assert three["aspect"][1] == pytest.approx(2.0, rel=1e-4)
    assert paper_study.coverage_line(paper_study.TABLES["1b"]) == ""
    path.write_text(json.dumps({**coco, "annotations": []}))
    with pytest.raises(ValueError, match="annotations.json: `annotations` holds no"):
        paper_study.anchor_coverage(str(path), kr.AnchorGenerator(), 192)


def test_coverage_line_follows_the_objects_as_1e_scales_the_input(tmp_path):
    # A 32-pixel square on a P3 anchor at 192 px; at 128 px it is 21.3 px, inside the 32-pixel anchor: IoU 0.44.
    coco = {
        "images": [{"id": 1, "width": 192, "height": 192, "file_name": "a.png"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [12, 12, 32, 32]}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco))
    line = paper_study.coverage_line(paper_study.TABLES["1e"], annotation_file=str(path))
    assert "192 px (paper 600): objects 32-32 px, median 1.00, 100 % at IoU >= 0.5" in line, line
    assert "128 px (paper 400): objects 21-21 px, median 0.44, 0 % at IoU >= 0.5" in line, line
    assert paper_study.coverage_line(paper_study.TABLES["1e"], annotation_file=str(tmp_path / "missing.json")) == ""


@pytest.mark.parametrize(
    "kwargs, message",
    (
        (dict(min_objects=3, max_objects=2), "min_objects"),
        (dict(size_probabilities=(0.5, 0.2, 0.2)), "size_probabilities"),
        (dict(size_probabilities=(1.0, 0.0)), "size_probabilities"),
        (dict(max_clutter=-1), "max_clutter"),
    ),
)
def test_bad_setting_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        shapes.make_shapes_dataset(tmp_path, 2, verbose=False, **kwargs)


# --------------------------------------------------------------- the settings
def test_every_setting_is_a_valid_override_of_the_experiment():
    base = paper_dense.config()
    config_lib.validate(base)
    assert base.model.focal_alpha == 0.25 and base.model.focal_gamma == 2.0  # the paper's default stays
    for table in paper_study.TABLES.values():
        names = [s.name for s in table.settings]
        assert len(set(names)) == len(names)
        for setting in table.settings:
            config = config_lib.validate(config_lib.override(base, setting.overrides))
            if setting.name.startswith("ohem"):
                assert config.model.ohem_batch_size in (128, 256) and config.model.focal_gamma == 0.0
                assert config.model.focal_alpha is None
    ohem13 = config_lib.override(base, paper_study.TABLES["1d"].settings[2].overrides)
    assert ohem13.model.ohem_positive_fraction == 0.25
    sizes = [config_lib.override(base, s.overrides).data.image_size for s in paper_study.TABLES["1e"].settings]
    assert sizes == sorted(sizes) and 192 in sizes
    anchors = [config_lib.override(base, s.overrides).model.anchors for s in paper_study.TABLES["1c"].settings]
    assert [len(a.scales) * len(a.aspect_ratios) for a in anchors] == [s.x for s in paper_study.TABLES["1c"].settings]


def test_table_1c_wide_strict_is_1c_wide_without_low_quality_matches():
    """1 x 1 and 1 x 3 of 1c_wide, the same data, anchors and paper rows, only the matching differs."""
    wide, strict = paper_study.TABLES["1c_wide"], paper_study.TABLES["1c_wide_strict"]
    base = paper_dense.config()
    assert [s.name for s in strict.settings] == ["anchors_1x1", "anchors_1x3"]
    assert strict.data == wide.data == "wide"
    for setting in strict.settings:
        twin = next(s for s in wide.settings if s.name == setting.name)
        a, b = config_lib.override(base, twin.overrides), config_lib.override(base, setting.overrides)
        assert a.model.allow_low_quality_matches and not b.model.allow_low_quality_matches
        assert dataclasses.replace(b.model, allow_low_quality_matches=True) == a.model
        assert a.data == b.data and setting.paper == twin.paper
        assert paper_study.run_key(wide, twin, 0, 100) != paper_study.run_key(strict, setting, 0, 100)
    # The flag reaches the model that assigns the targets. No backbone weights: a clean clone has no
    # pretrained file (data/ is ignored), and the flag does not depend on them.
    model = training.build_model(dataclasses.replace(b.model, backbone_weights=None), num_classes=5)
    assert model.allow_low_quality_matches is False


def test_table_1c_wide_is_1c_on_the_wide_data(tmp_path, monkeypatch):
    """Same anchors and paper rows as 1c; every row trains on the wide data, which the runner writes."""
    narrow, wide = paper_study.TABLES["1c"], paper_study.TABLES["1c_wide"]
    base = paper_dense.config()
    assert [s.paper for s in wide.settings] == [s.paper for s in narrow.settings]
    for a, b in zip(narrow.settings, wide.settings):
        ca, cb = config_lib.override(base, a.overrides), config_lib.override(base, b.overrides)
        assert ca.model.anchors == cb.model.anchors
        assert cb.data.train_annotations == os.path.join("data", "paper_dense_wide", "train", "annotations.json")
        assert cb.data.val_images == os.path.join("data", "paper_dense_wide", "val", "images")
        assert paper_study.run_key(narrow, a, 0, 100) != paper_study.run_key(wide, b, 0, 100)  # never reused across the two
    written = []

    class Failed:
        returncode = 1

    monkeypatch.setattr(paper_dense, "write_data", lambda **kwargs: written.append(kwargs))
    monkeypatch.setattr(paper_study.subprocess, "run", lambda command, **kwargs: Failed())
    with pytest.raises(RuntimeError):
        paper_study.run_one(wide, wide.settings[0], 0, 10, str(tmp_path))
    assert written == [{"verbose": False, "pretrained": True, "data": "wide"}]


def test_budget_on_the_wide_data_is_the_budget_run_pointed_at_it(tmp_path, monkeypatch):
    """`--budget --budget_data=wide`: the constant-LR run, on 1c_wide's data, in its own directory."""
    base = paper_dense.config()
    dense = config_lib.override(base, paper_study.BUDGET.settings[0].overrides)
    wide = config_lib.override(base, paper_study.BUDGET_WIDE.settings[0].overrides)
    assert wide.train == dense.train and wide.model == dense.model  # same loss, anchors and constant LR
    assert dense.data.train_annotations != wide.data.train_annotations
    assert wide.data.train_annotations == os.path.join("data", "paper_dense_wide", "train", "annotations.json")
    assert paper_study.BUDGET_WIDE.data == "wide" and paper_study.BUDGET.data == "dense"
    calls = []
    monkeypatch.setattr(paper_study, "run_one", lambda table, setting, seed, steps, runs_dir: calls.append((table.key, steps)))
    monkeypatch.setattr(paper_study, "read_train_log", lambda run_dir: calls.append(run_dir) or [])
    paper_study.main(["--budget", "--budget_data=wide", f"--runs_dir={tmp_path}"])
    assert calls == [("budget_wide", paper_study.BUDGET_STEPS), os.path.join(str(tmp_path), "budget_wide", "fl_constant_lr_seed0")]
    with pytest.raises(SystemExit):
        paper_study.main(["--budget", "--budget_data=coco"])


def test_coverage_line_of_1c_wide_reads_the_wide_data(tmp_path, monkeypatch):
    """Its anchor fit is measured on the data its rows train on, where 3 ratios fit better than 1."""
    monkeypatch.chdir(tmp_path)
    assert paper_study.coverage_line(paper_study.TABLES["1c_wide"]) == ""  # not written yet
    shapes.make_shapes_dataset(os.path.join("data", "paper_dense_wide", "train"), 60, seed=0, verbose=False, **shapes.WIDE_OBJECTS_IN_CLUTTER)
    line = paper_study.coverage_line(paper_study.TABLES["1c_wide"], max_images=60)
    assert line.startswith("Anchor fit") and "w/h 0.40-2.74" in line  # 1c's data: w/h 0.71-1.38
    covered = [int(part.split(", ")[-1].split(" %")[0]) for part in line.split(": ", 1)[1].split("; ")]
    assert len(covered) == 5 and covered[2] > covered[0] + 10  # 1 x 3 against 1 x 1
    assert paper_study.coverage_line(paper_study.TABLES["1c"]) == ""  # 1c's own data is not there


def test_train_command_runs_the_experiment_with_the_settings_overrides():
    table = paper_study.TABLES["prior"]
    command = paper_study.train_command(table, table.settings[1], 2, 3000, "some/dir")
    assert command[1:4] == ["-m", "keras_retina.cli", "--experiment=paper_dense"]
    assert "--seed=2" in command and "--model_dir=some/dir" in command
    assert f"--epochs={3000 // paper_study.PRIOR_LOG_STEPS}" in command  # the prior logs every 10 steps
    assert "--override=model.prior_probability=0.5" in command


# ---------------------------------------------------------------- the runner
def _fake_result(runs_dir, table, setting, seed, ap, **extra):
    run_dir = paper_study.run_dir_of(runs_dir, table.key, setting, seed)
    os.makedirs(run_dir, exist_ok=True)
    record = {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.05, "diverged": False, **extra}
    with open(os.path.join(run_dir, paper_study.RESULT_FILE), "w") as f:
        json.dump(record, f)
    return record


def test_finished_runs_are_skipped(tmp_path, monkeypatch):
    table = paper_study.TABLES["1b"]
    record = _fake_result(str(tmp_path), table, table.settings[0], 0, 0.25)

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(paper_study.subprocess, "run", no_training)
    assert paper_study.run_one(table, table.settings[0], 0, 10, str(tmp_path)) == record


def test_unfinished_run_is_trained_and_a_failure_names_the_run(tmp_path, monkeypatch):
    table = paper_study.TABLES["1b"]
    calls = []

    class Failed:
        returncode = 1

    monkeypatch.setattr(paper_dense, "write_data", lambda **kwargs: None)
    monkeypatch.setattr(paper_study.subprocess, "run", lambda command, **kwargs: calls.append(command) or Failed())
    run_dir = paper_study.run_dir_of(str(tmp_path), "1b", table.settings[1], 0)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:  # an intermediate evaluation is not a finished run
        json.dump({"AP": 0.1, "AP50": 0.2, "AP75": 0.1}, f)
    with pytest.raises(RuntimeError, match=r"fl_g0.5_a0.5_seed0.*exit 1"):
        paper_study.run_one(table, table.settings[1], 0, 10, str(tmp_path))
    assert len(calls) == 1 and paper_study.load_result(run_dir) is None


def test_a_run_whose_loss_went_nan_is_recorded_as_diverged(tmp_path, monkeypatch):
    table = paper_study.TABLES["prior"]

    class Stopped:
        returncode = 1

    monkeypatch.setattr(paper_dense, "write_data", lambda **kwargs: None)
    monkeypatch.setattr(paper_study.subprocess, "run", lambda command, **kwargs: Stopped())
    monkeypatch.setattr(paper_study, "_measure", lambda table, run_dir: {})
    run_dir = paper_study.run_dir_of(str(tmp_path), "prior", table.settings[1], 0)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "train_log.csv"), "w") as f:
        f.write("epoch,loss,cls_loss\n0,812.5,811.0\n1,nan,nan\n")
    result = paper_study.run_one(table, table.settings[1], 0, 20, str(tmp_path))
    assert result["diverged"] and result["AP"] == 0.0
    assert result["loss_log"][0] == {"step": paper_study.PRIOR_LOG_STEPS, "loss": 812.5, "cls_loss": 811.0}
    assert paper_study.load_result(run_dir)["diverged"]


def test_a_row_that_trains_the_same_model_as_another_tables_row_is_reused(tmp_path, monkeypatch):
    b, d, e = (paper_study.TABLES[k] for k in ("1b", "1d", "1e"))
    fl_b, fl_d = b.settings[3], d.settings[3]  # FL gamma 2, alpha 0.25 in both tables
    assert fl_b.overrides != fl_d.overrides  # spelled differently, the same training
    key = paper_study.run_key(b, fl_b, 1, 500)
    assert key == paper_study.run_key(d, fl_d, 1, 500) == paper_study.run_key(e, e.settings[2], 1, 500)  # 192 px
    assert key != paper_study.run_key(b, fl_b, 1, 600) and key != paper_study.run_key(b, b.settings[2], 1, 500)
    assert key != paper_study.run_key(paper_study.TABLES["prior"], fl_b, 1, 500)  # its own schedule
    record = _fake_result(str(tmp_path), b, fl_b, 1, 0.41, run_key=key, ms_per_image=None)

    def no_training(*args, **kwargs):
        raise AssertionError("a twin run was trained again")

    monkeypatch.setattr(paper_study.subprocess, "run", no_training)
    measured = []
    monkeypatch.setattr(paper_study, "_measure", lambda table, run_dir: measured.append((table.key, run_dir)) or {"ms_per_image": 7.5})
    result = paper_study.run_one(e, e.settings[2], 1, 500, str(tmp_path))
    twin_dir = paper_study.run_dir_of(str(tmp_path), "1b", fl_b, 1)
    assert result["AP"] == record["AP"] and result["table"] == "1e" and result["reused_from"] == twin_dir
    assert measured == [("1e", twin_dir)] and result["ms_per_image"] == 7.5  # 1e's timing, on the twin's model
    assert paper_study.load_result(paper_study.run_dir_of(str(tmp_path), "1e", e.settings[2], 1))["AP"] == 0.41
    # A row with no twin is trained.
    monkeypatch.setattr(paper_study.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("trained")))
    monkeypatch.setattr(paper_dense, "write_data", lambda **kwargs: None)
    with pytest.raises(RuntimeError, match="trained"):
        paper_study.run_one(e, e.settings[0], 1, 500, str(tmp_path))


def test_pretraining_crops_hold_their_object_or_none_and_the_weights_load(tmp_path):
    from keras_retina.model.backbones import build_backbone
    from experiments import paper_pretrain
    from keras_retina.training import backbone_pretraining

    split = paper_pretrain.write_data(str(tmp_path / "data"), num_train=6, num_val=1, verbose=False)["train"]
    found = backbone_pretraining.crops(split.annotation_file, split.image_dir, seed=3)
    images, labels, names = found["images"], found["labels"], found["class_names"]
    with open(split.annotation_file) as f:
        coco = json.load(f)
    assert names == tuple(shapes.SHAPE_CLASSES) + ("background",)
    assert images.shape == (len(labels), 64, 64, 3)
    objects = sorted(a["category_id"] - 1 for a in coco["annotations"])
    assert sorted(labels[labels < 5].tolist()) == objects and (labels == 5).sum() == 2 * 6
    assert found["background_skipped"] == 0
    # The study's data is seed 0; the pre-training images are others.
    assert paper_pretrain.DATA_SEED != paper_dense.DATA_SEED
    weights = str(tmp_path / "w.weights.h5")
    result = paper_pretrain.pretrain(str(tmp_path / "data"), weights, steps=3, batch_size=8, num_train=6, num_val=1, verbose=0)
    assert result["train_crops"] == len(labels) and os.path.exists(weights + ".json")
    loaded, again, fresh = build_backbone("tiny", weights=weights), build_backbone("tiny", weights=weights), build_backbone("tiny")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(loaded(x)[-1], again(x)[-1])  # the file's weights, not each build's random init
    assert not np.allclose(loaded(x)[-1], fresh(x)[-1])
    assert paper_dense.config().model.backbone_weights == paper_pretrain.WEIGHTS_PATH


def test_a_study_json_without_ap_is_refused_naming_the_file(tmp_path):
    with open(tmp_path / paper_study.RESULT_FILE, "w") as f:
        json.dump({"setting": "x"}, f)
    with pytest.raises(ValueError, match=r"study.json: no 'AP'"):
        paper_study.load_result(str(tmp_path))


# ---------------------------------------------------------------- collecting
def test_mean_std_uses_the_sample_standard_deviation():
    values = [0.31, 0.35, 0.30]
    expected = f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"
    assert paper_study.mean_std(values, scale=100) == expected
    assert paper_study.mean_std([0.5, 0.5], digits=2) == "0.50 ± 0.00"


def test_collect_and_table_formatting_from_fake_runs(tmp_path):
    table = paper_study.TABLES["1b"]
    aps = {0: 0.20, 1: 0.26}
    for seed, ap in aps.items():
        _fake_result(str(tmp_path), table, table.settings[3], seed, ap)
    rows = paper_study.collect(table, [0, 1, 2], str(tmp_path))
    assert [len(r["results"]) for r in rows] == [0, 0, 0, 2, 0]
    assert rows[3]["missing"] == [2] and rows[0]["missing"] == [0, 1, 2]
    text = paper_study.format_table(table, rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(table.settings)
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    row = next(line for line in lines if line.startswith("| gamma = 2.0"))
    assert paper_study.mean_std(list(aps.values()), 100) in row
    assert "2 (missing 2)" in row and "20.0, 26.0" in row and "34.0 / 52.5 / 36.5" in row


def test_write_doc_keeps_the_notes_and_marks_what_is_missing(tmp_path):
    table = paper_study.TABLES["1a"]
    for seed in (0, 1, 2):
        _fake_result(str(tmp_path / "runs"), table, table.settings[0], seed, 0.1 + 0.01 * seed)
    doc = tmp_path / "paper_study.md"
    doc.write_text("# Notes\n\nhand-written\n")
    paper_study.write_doc([0, 1, 2], str(tmp_path / "runs"), str(doc), figures=False)
    first = doc.read_text()
    assert first.startswith("# Notes\n\nhand-written\n")
    assert "Table 1a: alpha-balanced CE (gamma = 0) (partial: 3 of 15 runs)" in first
    assert "Table 1b: focal loss, gamma with the paper's best alpha (not run yet)" in first
    assert "--table=1d --seeds=0,1,2" in first
    assert "11.0 ± 1.0" in first
    # Rewriting replaces the generated part only.
    doc.write_text(first + "\ntrailing note\n")
    paper_study.write_doc([0, 1, 2], str(tmp_path / "runs"), str(doc), figures=False)
    second = doc.read_text()
    assert second.count(paper_study.BEGIN_MARK) == 1 and second.endswith("\ntrailing note\n")


def test_plot_table_writes_a_png_only_when_there_are_results(tmp_path):
    table = paper_study.TABLES["1d"]
    empty = paper_study.collect(table, [0], str(tmp_path / "runs"))
    assert paper_study.plot_table(table, empty, str(tmp_path / "none.png")) is None
    _fake_result(str(tmp_path / "runs"), table, table.settings[3], 0, 0.4)
    rows = paper_study.collect(table, [0], str(tmp_path / "runs"))
    path = paper_study.plot_table(table, rows, str(tmp_path / "1d.png"))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300


def test_plot_table_names_the_ticks_of_a_table_of_named_settings(tmp_path, monkeypatch):
    """1d's settings sit at x = 0-3: the axis must still say which is which, not print 0.5 steps."""
    import matplotlib.axes

    ticks = []
    original = matplotlib.axes.Axes.set_xticks
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks", lambda self, *a, **k: (ticks.append(a), original(self, *a, **k))[1])
    for key in ("1d", "1b"):
        table = paper_study.TABLES[key]
        _fake_result(str(tmp_path / "runs"), table, table.settings[0], 0, 0.4)
        paper_study.plot_table(table, paper_study.collect(table, [0], str(tmp_path / "runs")), str(tmp_path / f"{key}.png"))
    d = paper_study.TABLES["1d"]
    assert ticks == [([0, 1, 2, 3], [s.label for s in d.settings])]  # 1d named; 1b's gamma axis left to matplotlib


def test_plateau_is_where_ap_stops_rising_by_more_than_a_point():
    aps = [0.1, 0.3, 0.45, 0.50, 0.505, 0.51, 0.512]
    rows = [{"epoch": 4 * i + 3, "val_AP": ap} for i, ap in enumerate(aps)]
    # At 0.50 a later 0.512 is still 1.2 points more; from 0.505 on no later AP gains more than 1 point.
    assert paper_study.plateau_step(rows) == (4 * 4 + 4) * paper_study.STEPS_PER_EPOCH
    assert paper_study.plateau_step(rows, tolerance=0.001) == (4 * 6 + 4) * paper_study.STEPS_PER_EPOCH
    assert paper_study.plateau_step([]) is None


def test_main_runs_seed_by_seed_and_only_the_named_rows(monkeypatch):
    calls = []
    records = []
    monkeypatch.setattr(
        paper_study,
        "run_one",
        lambda table, setting, seed, steps, runs_dir, records_dir: calls.append((table.key, setting.name, seed, steps)) or records.append(records_dir),
    )
    monkeypatch.setattr(paper_study, "write_doc", lambda *args, **kwargs: "")
    monkeypatch.setattr(paper_study, "_keep_backbone", lambda records_dir: None)
    paper_study.main(["--table=1b,prior", "--seeds=0,1", "--only=fl_g2.0_a0.25,ce_bias0"])
    assert calls == [
        ("1b", "fl_g2.0_a0.25", 0, paper_study.STEPS),
        ("1b", "fl_g2.0_a0.25", 1, paper_study.STEPS),
        ("prior", "ce_bias0", 0, paper_study.PRIOR_STEPS),
        ("prior", "ce_bias0", 1, paper_study.PRIOR_STEPS),
    ]
    assert set(records) == {os.path.join("docs", "paper_study_runs")}  # kept runs are skipped too
    calls.clear()
    paper_study.main(["--table=1b", "--seeds=0,1"])
    assert [(name, seed) for _, name, seed, _ in calls] == [
        (s.name, seed) for seed in (0, 1) for s in paper_study.TABLES["1b"].settings
    ]
    with pytest.raises(SystemExit):
        paper_study.main(["--table=1z"])


def test_comparison_names_a_clear_disagreement_and_leaves_one_seed_unclear(tmp_path):
    table = paper_study.TABLES["1b"]
    # gamma 5 clearly above gamma 2 (the paper has it 1.8 points below); gamma 1 has one seed.
    for seed, (ap2, ap5) in enumerate([(0.60, 0.66), (0.61, 0.67), (0.62, 0.65)]):
        _fake_result(str(tmp_path), table, table.settings[3], seed, ap2)
        _fake_result(str(tmp_path), table, table.settings[4], seed, ap5)
    _fake_result(str(tmp_path), table, table.settings[2], 0, 0.70)
    found = paper_study.compare_to_paper(paper_study.collect(table, [0, 1, 2], str(tmp_path)))
    assert (found["agree"], found["disagree"], found["unclear"]) == (0, 1, 2)
    assert found["best_ours"] == "gamma = 1.0, alpha = 0.25" and found["best_paper"] == "gamma = 2.0, alpha = 0.25"
    text = paper_study.format_comparison(found)
    # Paired by seed: the differences -6, -6 and -3 points have SE 1.0 (Welch's would be 0.8).
    assert "gamma = 2.0, alpha = 0.25 vs gamma = 5.0, alpha = 0.25 (-5.0 ± 1.0 here, +1.8 in the paper)" in text
    assert "1 of 3 pairs of rows have the paper's sign" in text
    assert "paired by seed in 1 of 3 pairs" in text  # gamma 1's one seed pairs with nothing
    doc = tmp_path / "doc.md"
    paper_study.write_doc([0, 1, 2], str(tmp_path), str(doc), figures=False)
    assert text in doc.read_text()


def test_comparison_pairs_rows_by_seed_so_a_shared_seed_offset_cancels(tmp_path):
    """The rows of a seed share its backbone: a seed that lifts every row must not hide a steady gap."""
    table = paper_study.TABLES["1d"]
    ohem, fl = table.settings[0], table.settings[-1]
    for seed, offset in enumerate([0.0, 0.05, 0.10]):
        _fake_result(str(tmp_path), table, ohem, seed, 0.60 + offset)
        _fake_result(str(tmp_path), table, fl, seed, 0.63 + offset + 0.005 * seed)
    found = paper_study.compare_to_paper(paper_study.collect(table, [0, 1, 2], str(tmp_path)))
    (pair,) = found["pairs"]
    assert pair["paired"] and pair["verdict"] == "agree"
    assert pair["ours"] == pytest.approx(-3.5) and pair["se"] == pytest.approx(0.2887, abs=1e-3)
    # Unpaired, the 5-point seed offsets swamp the 3.5-point gap.
    means = paper_study._difference({0: 60.0, 1: 65.0, 2: 70.0}, {3: 63.0, 4: 68.5, 5: 74.0})
    assert not means[2] and abs(means[0]) < 2 * means[1]
    assert "(paired by seed)" in paper_study.format_comparison(found)


def test_time_table_1e_times_every_size_in_turns_and_fills_the_ms_column(tmp_path, monkeypatch):
    """``--time_1e``: each size's model on the validation image at its size, side by side; the doc shows it."""
    model_dir = tmp_path / "model"
    (model_dir / "checkpoints").mkdir(parents=True)
    model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=8, head_channels=8)
    model.build((None, 64, 64, 3))
    model.save(model_dir / "checkpoints" / "latest.keras")
    Image.fromarray(np.full((192, 192, 3), 90, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "val.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 192, "height": 192}]}))
    (model_dir / "config.json").write_text(json.dumps({"data": {"val_annotations": str(tmp_path / "val.json"), "val_images": str(tmp_path)}}))
    runs, table = tmp_path / "runs", paper_study.TABLES["1e"]
    with pytest.raises(FileNotFoundError, match=r"no finished 1e run of seed 0 for sizes \[128, 160, 192, 224, 256\]"):
        paper_study.time_table_1e(str(runs), seed=0)
    for i, setting in enumerate(table.settings):
        _fake_result(str(runs), table, setting, 0, 0.3 + 0.1 * i, run_dir=str(model_dir), ms_per_image=99.0)
    seen = {}
    real = paper_study.time_side_by_side

    def spy(functions, inputs, rounds, repeats):
        seen.update({key: tuple(image.shape) for key, image in inputs.items()})
        return real(functions, inputs, rounds, repeats, warmup=1)

    monkeypatch.setattr(paper_study, "time_side_by_side", spy)
    record = paper_study.time_table_1e(str(runs), seed=0, rounds=2, repeats=1)
    assert seen == {s: (1, s, s, 3) for s in (128, 160, 192, 224, 256)}
    assert sorted(record["sizes"], key=int) == ["128", "160", "192", "224", "256"]
    assert all(t["calls"] == 2 and 0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"] for t in record["sizes"].values())
    assert paper_study.read_timing(str(runs)) == record and "cores" in record["machine"]
    doc = tmp_path / "docs" / "paper_study.md"
    doc.parent.mkdir()
    paper_study.write_doc([0], str(runs), str(doc))
    text = doc.read_text()
    t = record["sizes"]["128"]
    assert "ms/image, side by side (this CPU)" in text
    assert "| 128 px (paper 400) | 1 | 30.0 (1 seed) | " in text and f"| {t['median_ms']:.1f} ({t['p10_ms']:.1f}-{t['p90_ms']:.1f}) | 64 |" in text
    assert "99.0" not in text  # the per-run timings give way to the side-by-side ones
    assert "`--time_1e`, every size's seed-0 model in turns (2 calls each" in text
    with Image.open(doc.parent / "paper_study_1e_speed.png") as image:
        assert image.format == "PNG" and image.size[0] > 600
    (tmp_path / "val.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"val.json: 'images' has no entry with a 'file_name'"):
        paper_study.time_table_1e(str(runs), seed=0)


def test_figure4_draws_every_seeds_model_and_reads_the_share_of_hardest_anchors(tmp_path):
    """Figure 4 from the finished gamma = 2 runs of 1b (2 of 3 seeds here), on a tiny model and data."""
    files = shapes.make_shapes_dataset(tmp_path / "val", 4, seed=3, image_size=(64, 64), empty_fraction=0.0, verbose=False)
    config = config_lib.override(
        paper_dense.config(),
        ["data.image_size=64", "data.batch_size=2", f"data.train_annotations={files.annotation_file}",
         f"data.train_images={files.image_dir}", f"data.val_annotations={files.annotation_file}",
         f"data.val_images={files.image_dir}"],
    )
    runs, table = tmp_path / "runs", paper_study.TABLES["1b"]
    setting = next(s for s in table.settings if s.name == paper_study.FIG4_RUN[1])
    model = kr.RetinaNet(num_classes=5, backbone="tiny", fpn_channels=8, head_channels=8)
    model.build((None, 64, 64, 3))
    for seed in (0, 1):
        run_dir = paper_study.run_dir_of(str(runs), "1b", setting, seed)
        os.makedirs(os.path.join(run_dir, "checkpoints"))
        model.save(os.path.join(run_dir, "checkpoints", "latest.keras"))
        from keras_retina.training import rundir

        rundir.write_config(run_dir, config)
        _fake_result(str(runs), table, setting, seed, 0.5)
    assert paper_study.fig4_run_dirs(str(runs), [0, 1, 2]) == [paper_study.run_dir_of(str(runs), "1b", setting, s) for s in (0, 1)]

    found = paper_study.anchor_losses(paper_study.run_dir_of(str(runs), "1b", setting, 0), max_images=4)
    assert found["images"] == 4
    fg, bg = found[0.0]["foreground"], found[0.0]["background"]
    assert len(fg) > 0 and len(bg) > 10 * len(fg) and np.all(np.diff(bg) >= 0)
    for group in ("foreground", "background"):  # the modulating factor (1 - p_t)^gamma only lowers the loss
        assert found[2.0][group].sum() < found[0.5][group].sum() < found[0.0][group].sum()

    doc = tmp_path / "docs" / "paper_study.md"
    doc.parent.mkdir()
    paper_study.write_doc([0, 1, 2], str(runs), str(doc))
    text = doc.read_text()
    assert "### Figure 4: CDF of the normalised loss (2 of 3 seeds)" in text
    # The two seeds share one model here: the spread between them is exactly 0.
    assert "holds half of the loss (mean ± std over 2 model(s), 4 validation images each): foreground: gamma 0: " in text
    assert text.count(" ± 0 %") == 8
    with Image.open(doc.parent / "paper_study_fig4.png") as image:
        assert image.format == "PNG" and image.size[0] > 600
