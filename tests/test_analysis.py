"""keras_retina.analysis: anchor coverage of a dataset's boxes and the advice printed about it."""

import json
import re

import numpy as np

from keras_retina import analysis, datasets
from keras_retina.anchors import AnchorGenerator
from keras_retina.config import DataConfig
from keras_retina.data import make_shapes_splits


def _example(boxes, size=256):
    return {"image": np.zeros((size, size, 3), np.uint8), "boxes": np.asarray(boxes, np.float32)}


def test_an_anchor_sized_box_is_covered_and_a_sliver_is_not():
    # A 32x32 box at a P3 anchor position (centre (j + 0.5) * 8) matches exactly.
    report = analysis.anchor_coverage(
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
    report = analysis.anchor_coverage([example], image_size=256, verbose=False)  # resized by 0.5
    assert report["num_boxes"] == 3
    assert (report["small"]["boxes"], report["medium"]["boxes"], report["large"]["boxes"]) == (1, 1, 1)


def test_suggestions_name_the_problem():
    tiny = [_example([[10, 10, 13, 13], [40, 40, 43, 44], [100, 100, 103, 102]])]
    report = analysis.anchor_coverage(tiny, image_size=256, verbose=False)
    tips = analysis.suggestions(report)
    assert report["small"]["iou_0.5"] == 0.0
    assert any("Small objects are poorly covered" in tip and "32 px" in tip for tip in tips), tips
    healthy = analysis.suggestions(analysis.anchor_coverage(
        [_example([[0, 0, 32, 32]])], image_size=256, anchor_generator=AnchorGenerator(), verbose=False
    ))
    assert healthy == ["Anchor coverage looks healthy."]


def test_analyze_split_prints_and_writes_the_report(tmp_path, capsys):
    make_shapes_splits(tmp_path / "shapes", num_train=2, num_val=3, seed=0, image_size=(64, 64), verbose=False)
    data = datasets.RunData(DataConfig(shapes_dir=str(tmp_path / "shapes"), shapes_num_train=2, shapes_num_val=3,
                                       shapes_image_size=64, image_size=64))
    report = analysis.analyze_split(data, "val", str(tmp_path / "run"))
    written = json.loads((tmp_path / "run" / "anchor_coverage.json").read_text())
    assert written["num_images"] == report["num_images"] == 3
    assert written["suggestions"] and "median" in capsys.readouterr().out.lower()


def test_the_printed_override_fixes_small_anchors():
    from keras_retina import training
    from keras_retina.config import ExperimentConfig, override

    small = [_example([[4, 4, 20, 20], [36, 36, 52, 52], [100, 4, 116, 20]])]  # 16 px boxes on stride-8 centres
    before = analysis.anchor_coverage(small, image_size=256, verbose=False)
    tip = next(t for t in analysis.suggestions(before) if "Small objects" in t)
    flag = re.search(r"--override \S+=[\d.]+", tip).group(0)
    assert flag == "--override model.anchors.size_multiplier=2"
    config = override(ExperimentConfig(), [flag.split(" ", 1)[1]])
    after = analysis.anchor_coverage(
        small, image_size=256, anchor_generator=training.build_anchor_generator(config.model), verbose=False
    )
    assert before["small"]["iou_0.5"] == 0.0 and after["small"]["iou_0.5"] == 1.0
