"""torchvision RetinaNet checkpoints → kr.RetinaNet.

Without torch (CI): the mapping on synthetic state dicts with torchvision's
names and shapes, and its errors. With torch and torchvision importable (a
developer's machine): equality with torchvision's own models.
"""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_retina as kr
from keras_retina.pretrained import torchvision as tv


def _iou_or_same(a, b):
    """IoU of boxes ``(N, 4)`` x ``(M, 4)``; 1 for boxes within 0.01 px of each other.

    Boxes clipped at the image border can have zero area, where IoU is undefined.
    """
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)

    def area(z):
        return (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])

    union = area(a)[:, None] + area(b)[None, :] - inter
    same = np.all(np.abs(a[:, None] - b[None, :]) <= 0.01, axis=-1)
    return np.where(same, 1.0, inter / np.maximum(union, 1e-9))


# ----------------------------------------------------------------- no torch
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_synthetic_state_dict_converts_every_parameter(version):
    state = tv.random_state_dict(version, num_classes=5, seed=1)
    model = tv.from_torchvision(state)
    assert model.num_classes == 5 and model.p6_from == ("p5" if version == "v1" else "c5")
    assert model.use_group_norm == (version == "v2")
    # Spot checks of the layout: a transposed conv kernel, BatchNorm statistics, a head output.
    np.testing.assert_array_equal(
        model.backbone.get_layer("conv3_block1_2_conv").kernel.numpy(),
        state["backbone.body.layer2.0.conv2.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        model.backbone.get_layer("conv4_block1_0_bn").moving_variance.numpy(),
        state["backbone.body.layer3.0.downsample.1.running_var"],
    )
    np.testing.assert_array_equal(
        model.classification_head.output_conv.bias.numpy(), state["head.classification_head.cls_logits.bias"]
    )
    np.testing.assert_array_equal(
        model.feature_pyramid.extra_convs[0].kernel.numpy(),
        state["backbone.fpn.extra_blocks.p6.weight"].transpose(2, 3, 1, 0),
    )
    if version == "v2":
        np.testing.assert_array_equal(
            model.box_head.norms[2].gamma.numpy(), state["head.regression_head.conv.2.1.weight"]
        )
        assert not model.box_head.convs[0].bias.numpy().any()  # v2's convs have none: zero


def test_old_torchvision_names_and_module_prefix_are_accepted():
    state = tv.random_state_dict("v1", num_classes=3, seed=2)
    old = {}
    for key, value in state.items():
        key = key.replace("inner_blocks.0.0.", "inner_blocks.0.").replace("layer_blocks.2.0.", "layer_blocks.2.")
        for i in range(4):
            key = key.replace(f"classification_head.conv.{i}.0.", f"classification_head.conv.{2 * i}.")
        old["module." + key] = value
    converted = tv.from_torchvision(old)
    reference = tv.from_torchvision(state)
    images = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    for key, value in reference(images).items():
        np.testing.assert_array_equal(converted(images)[key], value)


def test_errors_name_the_parameter():
    state = tv.random_state_dict("v1", num_classes=3)
    with pytest.raises(ValueError, match="is a v1 RetinaNet"):
        tv.from_torchvision(state, version="v2")
    missing = dict(state)
    del missing["backbone.body.layer3.2.bn2.running_mean"]
    with pytest.raises(ValueError, match=r"lacks `backbone\.body\.layer3\.2\.bn2\.running_mean`"):
        tv.from_torchvision(missing)
    wrong = dict(state, **{"backbone.fpn.layer_blocks.1.0.weight": np.zeros((256, 256, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"layer_blocks\.1\.0\.weight` has shape \(256, 256, 1, 1\)"):
        tv.from_torchvision(wrong)
    extra = dict(state, **{"roi_heads.box_predictor.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="unexpected parameters.*roi_heads"):
        tv.from_torchvision(extra)
    with pytest.raises(ValueError, match="`checkpoint` must be"):
        tv.from_torchvision([1, 2])


def test_converted_model_has_torchvisions_inference_and_anchors():
    model = tv.from_torchvision(tv.random_state_dict("v2", num_classes=91))
    assert len(tv.COCO_CATEGORIES) == 91 and tv.COCO_CATEGORIES[1] == "person" and tv.COCO_CATEGORIES[12] == "N/A"
    settings = model.inference_settings
    assert (settings.score_threshold, settings.pre_nms_topk, settings.nms_iou_threshold, settings.max_detections) == (
        0.05, 1000, 0.5, 300,
    )
    anchors = model.anchors((512, 512))
    # torchvision's first P3 anchors (cell (0, 0), ratio 0.5, sizes 32, 40, 50).
    np.testing.assert_array_equal(anchors[:3], [[-23, -11, 23, 11], [-28, -14, 28, 14], [-35, -18, 35, 18]])


# -------------------------------------------------------- against torchvision
@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="needs torch and torchvision")
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_outputs_equal_torchvisions(version, tmp_path):
    # torchvision runs in its own process (tests/torchvision_reference.py):
    # torch and TensorFlow in one process crash.
    script = os.path.join(os.path.dirname(__file__), "torchvision_reference.py")
    subprocess.run([sys.executable, script, version, str(tmp_path)], check=True, timeout=600)
    reference = np.load(tmp_path / "reference.npz")
    print(f"torch {reference['torch_version']}, torchvision {reference['torchvision_version']}")
    image = reference["image"]

    model = kr.pretrained.from_torchvision(str(tmp_path / "retinanet.pth"), version=version)
    outputs = model(image[None])
    for key in ("cls_logits", "box_deltas"):
        got, expected = np.asarray(outputs[key][0]), reference[key]
        assert got.shape == expected.shape == ((49104, 91) if key == "cls_logits" else (49104, 4))
        # Within 1e-4 relative, with an absolute floor of 1e-4 of the outputs' scale for values near 0.
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max(), err_msg=key)
        print(key, "max abs difference", np.abs(got - expected).max(), "largest |value|", np.abs(expected).max())

    predicted = model.predict(image[None], verbose=0)
    count = int(predicted["num_detections"][0])
    boxes, scores, labels = reference["boxes"], reference["scores"], reference["labels"]
    assert count == len(boxes) == 300
    ours_boxes = predicted["boxes"][0, :count]
    ours_scores = predicted["scores"][0, :count]
    ours_labels = predicted["classes"][0, :count]
    # Each of our detections has a torchvision detection of the same label,
    # a score within 1e-3 and IoU >= 0.99.
    candidates = (ours_labels[:, None] == labels[None, :]) & (np.abs(ours_scores[:, None] - scores[None, :]) <= 1e-3)
    best = np.where(candidates, _iou_or_same(ours_boxes, boxes), 0.0).max(axis=1)
    assert (best >= 0.99).all(), f"{(best < 0.99).sum()} detections without a torchvision twin"
    np.testing.assert_allclose(ours_scores, scores, atol=1e-3)  # same ranking
    print(f"{count} detections, each with a torchvision twin; min IoU {best.min():.4f}")


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None, reason="needs torch and torchvision")
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_converted_savedmodel_gives_torchvisions_detections_on_a_photo(version, tmp_path):
    """--mode=convert records torchvision's resize (800, 1333); the SavedModel given a 640x480 photo's bytes
    returns what torchvision's own model([image]) returns for it (resize, padded canvas, GroupNorm statistics)."""
    import tensorflow as tf

    from keras_retina.cli import modes
    from keras_retina.cli.flags import config_from_flags

    script = os.path.join(os.path.dirname(__file__), "torchvision_reference.py")
    subprocess.run([sys.executable, script, version, str(tmp_path), "photo"], check=True, timeout=600)
    reference = np.load(tmp_path / "reference.npz")
    assert tuple(reference["resized_size"]) == (800, 1066) and tuple(reference["canvas_size"]) == (800, 1088)

    flags = {"mode": "convert", "model_dir": str(tmp_path / "run"), "init_weights": str(tmp_path / "retinanet.pth")}
    modes.convert(config_from_flags(flags))
    flags = {"mode": "export", "model_dir": str(tmp_path / "run"), "export_dir": str(tmp_path / "export")}
    config = config_from_flags(flags)
    assert (config.data.min_size, config.data.max_size) == (800, 1333)  # recorded in the run's config.json
    path = modes.export(config, flags)

    served = tf.saved_model.load(path)
    metadata = served.signatures["metadata"]()
    assert (int(metadata["min_size"]), int(metadata["max_size"])) == (800, 1333)
    png = tf.io.encode_png(reference["image"])  # lossless: both models see the same pixels
    out = {k: v.numpy()[0] for k, v in served.signatures["serving_default"](images=tf.stack([png])).items()}
    count = int(out["num_detections"])
    boxes, scores, labels = reference["boxes"], reference["scores"], reference["labels"]
    assert count == len(boxes) == 300
    ours_boxes, ours_scores = out["detection_boxes"][:count], out["detection_scores"][:count]
    ours_labels = out["detection_classes"][:count]  # COCO category ids = torchvision's labels
    for a_boxes, a_scores, a_labels, b_boxes, b_scores, b_labels in (
        (ours_boxes, ours_scores, ours_labels, boxes, scores, labels),
        (boxes, scores, labels, ours_boxes, ours_scores, ours_labels),
    ):  # both ways: every detection of one has a twin in the other
        candidates = (a_labels[:, None] == b_labels[None, :]) & (np.abs(a_scores[:, None] - b_scores[None, :]) <= 1e-3)
        best = np.where(candidates, _iou_or_same(a_boxes, b_boxes), 0.0).max(axis=1)
        assert (best >= 0.99).all(), f"{(best < 0.99).sum()} detections without a twin; worst IoU {best.min():.3f}"
    np.testing.assert_allclose(np.sort(ours_scores), np.sort(scores), atol=1e-3)
    print(f"{version}: {count} detections, each with a torchvision twin both ways")
