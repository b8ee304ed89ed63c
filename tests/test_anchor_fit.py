"""keras_retina.evaluation.anchor_fit: anchor coverage of a dataset's boxes and the advice printed about it."""

import json
import re

import numpy as np
import pytest

from keras_retina.config import DataConfig
from keras_retina.data import make_shapes_splits, run_data
from keras_retina.evaluation import anchor_fit
from keras_retina.model.anchors import AnchorGenerator


def _example(boxes, size=256):
    return {"image": np.zeros((size, size, 3), np.uint8), "boxes": np.asarray(boxes, np.float32)}


def test_an_anchor_sized_box_is_covered_and_a_sliver_is_not():
    # A 32x32 box at a P3 anchor position (centre (j + 0.5) * 8) matches exactly.
    report = anchor_fit.anchor_coverage(
        [_example([[4, 4, 36, 36], [10, 10, 12, 250]])], image_size=256, verbose=False
    )
    assert report["num_images"] == 1 and report["num_boxes"] == 2
    assert report["all"]["iou_0.5"] == 0.5
    # COCO's buckets: 32 x 32 = 1024 px² is the first "medium" area; the 2 x 240 sliver is "small".
    assert (report["small"]["boxes"], report["medium"]["boxes"]) == (1, 1)
    assert (report["small"]["iou_0.5"], report["medium"]["iou_0.5"]) == (0.0, 1.0)

def test_buckets_use_original_pixels_and_crowds_are_left_out():
    example = _example([[0, 0, 20, 20], [0, 0, 60, 60], [0, 0, 200, 200], [50, 50, 90, 90]], size=512)
    example["is_crowd"] = np.array([False, False, False, True])
    report = anchor_fit.anchor_coverage([example], image_size=256, verbose=False)  # resized by 0.5
    assert report["num_boxes"] == 3
    assert (report["small"]["boxes"], report["medium"]["boxes"], report["large"]["boxes"]) == (1, 1, 1)


def test_suggestions_name_the_problem():
    tiny = [_example([[10, 10, 13, 13], [40, 40, 43, 44], [100, 100, 103, 102]])]
    report = anchor_fit.anchor_coverage(tiny, image_size=256, verbose=False)
    tips = anchor_fit.suggestions(report)
    assert report["small"]["iou_0.5"] == 0.0
    assert any("Small objects are poorly covered" in tip and "32 px" in tip for tip in tips), tips
    healthy = anchor_fit.suggestions(anchor_fit.anchor_coverage(
        [_example([[0, 0, 32, 32]])], image_size=256, anchor_generator=AnchorGenerator(), verbose=False
    ))
    assert healthy == ["Anchor coverage looks healthy."]


def test_analyze_split_prints_and_writes_the_report(tmp_path, capsys):
    make_shapes_splits(tmp_path / "shapes", num_train=2, num_val=3, seed=0, image_size=(64, 64), verbose=False)
    data = run_data.RunData(DataConfig(shapes_dir=str(tmp_path / "shapes"), shapes_num_train=2, shapes_num_val=3,
                                       shapes_image_size=64, image_size=64))
    report = anchor_fit.analyze_split(data, "val", str(tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "anchor_coverage.json").read_text())
    assert written["num_images"] == report["num_images"] == 3
    assert written["suggestions"] and "median" in capsys.readouterr().out.lower()


def test_the_printed_override_fixes_small_anchors():
    from keras_retina import training
    from keras_retina.config import ExperimentConfig, override

    small = [_example([[4, 4, 20, 20], [36, 36, 52, 52], [100, 4, 116, 20]])]  # 16 px boxes on stride-8 centres
    before = anchor_fit.anchor_coverage(small, image_size=256, verbose=False)
    tip = next(t for t in anchor_fit.suggestions(before) if "Small objects" in t)
    flag = re.search(r"--override \S+=[\d.]+", tip).group(0)
    assert flag == "--override model.anchors.size_multiplier=2"
    config = override(ExperimentConfig(), [flag.split(" ", 1)[1]])
    after = anchor_fit.anchor_coverage(
        small, image_size=256, anchor_generator=training.build_anchor_generator(config.model), verbose=False
    )
    assert before["small"]["iou_0.5"] == 0.0 and after["small"]["iou_0.5"] == 1.0


# --- The anchor search -------------------------------------------------------------------------------------------


def _thin_and_tiny_boxes(num_boxes, image_size=128, seed=0):
    """``num_boxes`` 6 x 30 and 8 x 8 boxes (alternating) at random whole-pixel corners."""
    rng = np.random.default_rng(seed)
    sizes = np.where(np.arange(num_boxes)[:, None] % 2, [6.0, 30.0], [8.0, 8.0])  # (N, 2) width, height
    corners = rng.integers(0, image_size - 30, (num_boxes, 2)).astype(np.float64)
    return np.concatenate([corners, corners + sizes], axis=1)


def _write_coco(directory, num_images, boxes_per_image=4, image_size=128, seed=0):
    """A COCO-format folder of blank PNGs with 6 x 30 and 8 x 8 boxes; returns (annotation file, image dir)."""
    from PIL import Image

    image_dir = directory / "images"
    image_dir.mkdir(parents=True)
    images, annotations = [], []
    boxes = _thin_and_tiny_boxes(num_images * boxes_per_image, image_size, seed).reshape(num_images, -1, 4)
    for i in range(num_images):
        Image.fromarray(np.zeros((image_size, image_size, 3), np.uint8)).save(image_dir / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": image_size, "width": image_size})
        for x1, y1, x2, y2 in boxes[i]:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1 + int(x2 - x1 == 6),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    path = directory / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "dot"}, {"id": 2, "name": "stick"}]}))
    return str(path), str(image_dir)


@pytest.mark.parametrize(
    "generator",
    [
        AnchorGenerator(),
        AnchorGenerator(offset=0.0, order="ratio_major", round_to_pixels=True),
        AnchorGenerator(size_multiplier=1.5, scales=anchor_fit.octave_scales(4), aspect_ratios=(0.2, 0.5, 1.0, 2.0, 5.0)),
        AnchorGenerator(max_level=6, size_multiplier=1.0),
    ],
)
@pytest.mark.parametrize("image_size", [256, 200])
def test_best_anchor_iou_equals_the_max_over_all_anchors(generator, image_size):
    from keras_retina.model import boxes as box_ops

    rng = np.random.default_rng(1)
    corners = rng.uniform(-10, image_size, (300, 2))
    sizes = np.exp(rng.uniform(np.log(2), np.log(300), (300, 2)))  # 2 to 300 px, any aspect ratio
    boxes = np.concatenate([corners, corners + sizes], axis=1).clip(0, image_size).astype(np.float32)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0] + 1) & (boxes[:, 3] > boxes[:, 1] + 1)]
    brute = np.asarray(box_ops.pairwise_iou(generator((image_size, image_size)), boxes)).max(axis=0)
    np.testing.assert_allclose(anchor_fit.best_anchor_iou(boxes, generator, image_size), brute, atol=1e-5)


def test_the_search_covers_small_and_thin_boxes_and_keeps_fitting_anchors():
    boxes = _thin_and_tiny_boxes(2000, image_size=256)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    result = anchor_fit.search_anchors(boxes, areas, 256, max_boxes=1000)
    before, after = result["before"]["coverage"], result["after"]["coverage"]
    assert result["changed"] and (result["num_boxes"], result["num_boxes_searched"]) == (2000, 1000)
    assert before["small"]["recall"] == 0.0 and after["small"]["recall"] > 0.4
    assert before["all"]["low_quality_matched"] == 1.0  # low-quality matches give every box an anchor, weakly
    assert result["after"]["anchors_per_location"] <= result["max_anchors_per_location"]
    # The sample is seeded: the same boxes, the same answer.
    again = anchor_fit.search_anchors(boxes, areas, 256, max_boxes=1000)
    assert again["after"]["anchors"] == result["after"]["anchors"]

    # Boxes the paper's anchors already fit: no change proposed, no flag printed.
    fitting = np.array([[4, 4, 36, 36], [8, 0, 72, 64], [16, 8, 48, 72], [0, 16, 128, 80]] * 10, np.float64)
    kept = anchor_fit.search_anchors(fitting, np.full(len(fitting), 5000.0), 256)
    assert not kept["changed"] and kept["override"] == [] and kept["before"] == kept["after"]
    assert "Keep the run's anchors" in anchor_fit.format_search(kept)


def test_the_foreground_threshold_is_the_runs():
    boxes = _thin_and_tiny_boxes(200, image_size=256)
    areas = np.full(len(boxes), 64.0)
    generator = AnchorGenerator(size_multiplier=1.0)
    best = anchor_fit.best_anchor_iou(boxes, generator, 256)
    for foreground_iou in (0.4, 0.6):
        result = anchor_fit.search_anchors(boxes, areas, 256, generator, foreground_iou=foreground_iou)
        assert result["before"]["coverage"]["all"]["recall"] == pytest.approx((best >= foreground_iou).mean())
        assert f"IoU >= {foreground_iou:g}" in result["recall_is"]


@pytest.mark.slow  # a one-step training run
def test_analyze_prints_flags_that_a_run_trains_with(tmp_path, capsys):
    import shlex

    from keras_retina import config as config_lib
    from keras_retina import training
    from keras_retina.cli import modes
    from keras_retina.cli.flags import config_from_flags
    from keras_retina.training import rundir

    train_json, train_images = _write_coco(tmp_path / "train", num_images=64)
    val_json, val_images = _write_coco(tmp_path / "val", num_images=4, seed=1)
    data_flags = {"experiment": "shapes", "dataset": "coco_json", "train_annotations": train_json, "train_images": train_images,
                  "val_annotations": val_json, "val_images": val_images, "image_size": 128}
    config = config_from_flags({**data_flags, "mode": "analyze", "model_dir": str(tmp_path / "analyze")})
    written = modes.analyze(config, {"split": "val"})
    out = capsys.readouterr().out
    search = written["search"]
    assert search == json.loads((tmp_path / "analyze" / "anchor_coverage.json").read_text())["search"]
    assert search["num_boxes"] == 64 * 4 and search["held_out"]["split"] == "val"
    before, after = search["before"]["coverage"]["all"]["recall"], search["after"]["coverage"]["all"]["recall"]
    assert before < 0.05 and after > before + 0.35, (before, after)
    assert search["held_out"]["after"]["all"]["recall"] > search["held_out"]["before"]["all"]["recall"]

    # The printed line is the flags; they parse into exactly the anchors found.
    line = out.split("Apply with")[1].splitlines()[1]
    words = shlex.split(line)
    assert words[::2] == ["--override"] * len(search["override"]) and words[1::2] == search["override"]
    found = config_lib.override(config, words[1::2]).model.anchors
    anchors = search["after"]["anchors"]
    assert (found.size_multiplier, list(found.scales), list(found.aspect_ratios)) == (
        anchors["size_multiplier"], anchors["scales"], anchors["aspect_ratios"])

    # A run with those flags uses those anchors: its config.json and its model say so.
    run_dir = tmp_path / "run"
    train_config = config_from_flags({
        **data_flags, "mode": "train", "model_dir": str(run_dir), "batch_size": 4, "epochs": 1, "steps_per_epoch": 1,
        "override": ["tensorboard=false", *words[1::2]],
    })
    model, *_ = training.train(train_config)
    assert rundir.read_config(str(run_dir)).model.anchors == found
    assert json.loads((run_dir / "config.json").read_text())["model"]["anchors"]["scales"] == anchors["scales"]
    assert model.anchor_generator == training.build_anchor_generator(train_config.model)
    assert model.anchor_generator.size_multiplier == anchors["size_multiplier"]

    # And --mode=analyze with them (from the run's config.json) shows the coverage the search promised.
    rerun = modes.analyze(config_from_flags({"mode": "analyze", "model_dir": str(run_dir)}), {"split": "train"})
    assert rerun["all"]["iou_0.5"] == pytest.approx(after)
    assert not rerun["search"]["changed"]
