"""Tests for what the study measures beside AP (``experiments.study_measure``): foreground anchors and anchor fit."""

import json

import pytest
from PIL import Image

import keras_retina as kr
from experiments import paper_dense, study_doc, study_measure, study_tables
from keras_retina import config as config_lib
from keras_retina.data import shapes


def test_measured_foreground_ratio_is_cocos(tmp_path):
    files = shapes.make_shapes_dataset(tmp_path, 60, seed=0, verbose=False, **shapes.SMALL_OBJECTS_IN_CLUTTER)
    found = study_measure.foreground_anchor_ratio(files.annotation_file, files.image_dir, kr.AnchorGenerator(), 192)
    assert found["anchors"] == 6921 and found["images"] == 60
    assert 1 / 1500 < found["ratio"] < 1 / 700, found
    # The library's own matching decides: every object gets a foreground anchor.
    assert found["foreground_per_image"] >= found["objects_per_image"]
    # Same data, twice the side: anchors x ~4, objects' boxes x 2: a different ratio, so the size is measured, not assumed.
    larger = study_measure.foreground_anchor_ratio(files.annotation_file, files.image_dir, kr.AnchorGenerator(), 384)
    assert larger["anchors"] > 4 * found["anchors"] - 200 and larger["ratio"] != found["ratio"]


def test_measured_foreground_ratio_follows_the_runs_matching(tmp_path):
    """A 16-pixel square has IoU 0.25 with its best (32-pixel) anchor: a positive only through the
    low-quality match. 1c_wide_strict's runs turn that off, and their measured ratio must say so."""
    coco = {
        "images": [{"id": 1, "width": 192, "height": 192, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "shape"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [20, 20, 16, 16]}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco))
    Image.new("RGB", (192, 192)).save(tmp_path / "a.png")
    generator = kr.AnchorGenerator(scales=(1.0,), aspect_ratios=(1.0,))
    loose = study_measure.foreground_anchor_ratio(str(path), str(tmp_path), generator, 192)
    strict = study_measure.foreground_anchor_ratio(str(path), str(tmp_path), generator, 192, allow_low_quality_matches=False)
    assert loose["foreground_per_image"] >= 1 and loose["allow_low_quality_matches"] is True
    assert strict["foreground_per_image"] == 0 and strict["allow_low_quality_matches"] is False
    config = config_lib.override(paper_dense.config(), study_tables.TABLES["1c_wide_strict"].settings[0].overrides)
    assert study_measure.print_foreground_ratio(config, str(path), str(tmp_path))["allow_low_quality_matches"] is False


def test_anchor_coverage_sees_aspect_ratios_fit_elongated_objects_and_1c_names_its_data(tmp_path):
    # A 2:1 box of a P3 anchor's area, on an anchor centre: the 1:2 anchor fits it exactly,
    # the square one at IoU 724 / 1324 = 0.547 (the overlap is 32 x 22.6 px).
    half_w, half_h = 16 * 2**0.5, 8 * 2**0.5
    coco = {
        "images": [{"id": 1, "width": 192, "height": 192, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "shape"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [28 - half_w, 28 - half_h, 2 * half_w, 2 * half_h]}],
    }
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(coco))
    Image.new("RGB", (192, 192)).save(tmp_path / "a.png")
    square = study_measure.anchor_coverage(str(path), str(tmp_path), kr.AnchorGenerator(scales=(1.0,), aspect_ratios=(1.0,)), 192)
    three = study_measure.anchor_coverage(str(path), str(tmp_path), kr.AnchorGenerator(scales=(1.0,)), 192)
    assert square["median_best_iou"] == pytest.approx(0.547, abs=0.002) and square["covered"] == 1.0
    assert three["median_best_iou"] == pytest.approx(1.0, abs=1e-4)
    assert three["aspect"][1] == pytest.approx(2.0, rel=1e-4)
    assert study_doc.coverage_line(study_tables.TABLES["1b"]) == ""
    path.write_text(json.dumps({**coco, "annotations": []}))
    with pytest.raises(ValueError, match="annotations.json: `annotations` holds no"):
        study_measure.anchor_coverage(str(path), str(tmp_path), kr.AnchorGenerator(), 192)
