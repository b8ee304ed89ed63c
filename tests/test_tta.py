"""Test-time augmentation (kr.model.tta): flips and scales, mapped back, merged by the model's NMS."""

import numpy as np
import pytest
import tensorflow as tf

from keras_retina.model import postprocess
from keras_retina.model.tta import TestTimeAugmentation, predict_tta, weighted_box_fusion
from tests.helpers import small_model, toy_batch, untrained_shapes_run


class _SymmetricDetector:
    """A stand-in detector that is exactly flip-equivariant: one box around the bright pixels of each image."""

    num_classes = 2
    inference_settings = postprocess.InferenceSettings(max_detections=4)

    def detect(self, images):
        bright = tf.reduce_max(images, axis=-1) > 128  # (B, H, W)
        rows = tf.where(tf.reduce_any(bright, axis=2), tf.range(images.shape[1])[None], -1)
        cols = tf.where(tf.reduce_any(bright, axis=1), tf.range(images.shape[2])[None], -1)
        y2 = tf.cast(tf.reduce_max(rows, axis=1) + 1, tf.float32)
        x2 = tf.cast(tf.reduce_max(cols, axis=1) + 1, tf.float32)
        y1 = tf.cast(tf.reduce_min(tf.where(rows >= 0, rows, 10**6), axis=1), tf.float32)
        x1 = tf.cast(tf.reduce_min(tf.where(cols >= 0, cols, 10**6), axis=1), tf.float32)
        boxes = tf.stack([x1, y1, x2, y2], axis=-1)[:, None]  # (B, 1, 4)
        batch = tf.shape(images)[0]
        pad = tf.zeros((batch, 3, 4))
        return {
            "boxes": tf.concat([boxes, pad], axis=1),
            "scores": tf.concat([tf.fill((batch, 1), 0.9), tf.zeros((batch, 3))], axis=1),
            "classes": tf.concat([tf.ones((batch, 1), tf.int32), -tf.ones((batch, 3), tf.int32)], axis=1),
            "num_detections": tf.ones((batch,), tf.int32),
        }


def _symmetric_image():
    image = np.zeros((1, 64, 96, 3), "float32")
    image[0, 20:40, 30:66] = 255.0  # centred: columns 30..65 mirror onto themselves in a 96-wide image
    return image


@pytest.mark.parametrize("merge", ["wbf", "nms"])
def test_flip_of_a_symmetric_image_returns_the_plain_detections(merge):
    detector, image = _SymmetricDetector(), _symmetric_image()
    plain = detector.detect(tf.constant(image))
    merged = predict_tta(detector, image, scales=(1.0,), flip=True, merge=merge)
    assert int(merged["num_detections"][0]) == 1
    np.testing.assert_allclose(merged["boxes"][0, 0], plain["boxes"][0, 0])
    assert int(merged["classes"][0, 0]) == 1 and float(merged["scores"][0, 0]) == pytest.approx(0.9)


def test_boxes_of_flipped_and_rescaled_copies_map_back_to_the_input():
    detector = _SymmetricDetector()
    image = np.zeros((1, 64, 96, 3), "float32")
    image[0, 10:30, 5:25] = 255.0  # off-centre: the flipped copy finds it mirrored
    for scales, merge in (((1.0,), "nms"), ((0.5,), "wbf"), ((1.5,), "nms"), ((1.0, 1.5), "wbf")):
        merged = predict_tta(detector, image, scales=scales, flip=True, merge=merge)
        assert int(merged["num_detections"][0]) == 1
        np.testing.assert_allclose(merged["boxes"][0, 0], [5, 10, 25, 30], atol=1.5)


def test_identity_augmentation_equals_predict_and_flip_adds_the_mirrored_copys_detections():
    model = small_model(score_threshold=0.2, max_detections=20)
    images, _ = toy_batch()
    plain = model.predict(images, verbose=0)
    for merge in ("nms", "wbf"):  # one copy: NMS has left no two boxes of a class above IoU 0.5 < WBF's 0.55
        same = predict_tta(model, images, scales=(1.0,), flip=False, merge=merge)
        for key in ("boxes", "scores", "classes", "num_detections"):
            np.testing.assert_allclose(np.asarray(same[key]), plain[key], atol=1e-4, err_msg=f"{merge} {key}")
    flipped = model.detect(images[:, :, ::-1])
    x1, y1, x2, y2 = np.moveaxis(np.asarray(flipped["boxes"]), -1, 0)
    mirrored = np.stack([128 - x2, y1, 128 - x1, y2], axis=-1)
    expected = postprocess.select_detections(
        np.concatenate([plain["boxes"], mirrored], axis=1), np.concatenate([plain["scores"], flipped["scores"]], axis=1),
        np.concatenate([plain["classes"], flipped["classes"]], axis=1), 3, model.inference_settings,
    )
    merged = predict_tta(model, images, scales=(1.0,), flip=True, merge="nms")
    np.testing.assert_allclose(np.asarray(merged["scores"]), np.asarray(expected["scores"]), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(merged["num_detections"]), np.asarray(expected["num_detections"]))


def test_wrapper_runs_where_a_model_is_expected_and_refuses_bad_arguments():
    model = small_model(max_detections=7)
    tta = TestTimeAugmentation(model, scales=(1.0, 1.25))
    images, _ = toy_batch()
    out = tta.detect_function()(images)
    assert tuple(out["boxes"].shape) == (2, 7, 4) and tta.num_classes == model.num_classes
    with pytest.raises(ValueError, match="scales"):
        TestTimeAugmentation(model, scales=())
    with pytest.raises(ValueError, match="scales"):
        predict_tta(model, images, scales=(10.0,))
    with pytest.raises(ValueError, match="merge"):
        TestTimeAugmentation(model, merge="mean")
    fused = TestTimeAugmentation(model, scales=(1.0,), merge="wbf").detect_function()(images)
    assert tuple(fused["scores"].shape) == (2, 7)


def test_evaluate_and_predict_modes_with_tta(tmp_path, capsys):
    """--mode=evaluate --tta writes the report from augmented detections; --mode=predict --tta its detections.json."""
    import json

    from PIL import Image

    from keras_retina.cli import modes
    from keras_retina.training import rundir

    config = untrained_shapes_run(tmp_path)
    flags = {"tta": True, "tta_scales": ["1.0", "1.5"]}
    metrics = modes.evaluate(config, flags)
    assert "Test-time augmentation: scales [1.0, 1.5]" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / rundir.METRICS_FILE).read_text())["AP"] == metrics["AP"]
    Image.fromarray(np.full((50, 70, 3), 90, np.uint8)).save(tmp_path / "photo.png")
    path = modes.predict(config, {**flags, "image": [str(tmp_path / "photo.png")], "output_dir": str(tmp_path / "out")})
    with open(path) as f:
        results = json.load(f)
    assert results and all(0 <= r["bbox"][0] <= 70 and 0 <= r["bbox"][1] <= 50 for r in results)


def _random_copies(seed, copies=4, n=25):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 180, (8, 2))
    out = []
    for _ in range(copies):
        at = centres[rng.integers(0, 8, n)] + rng.normal(0, 3, (n, 2))
        wh = rng.uniform(10, 40, (n, 2))
        boxes = np.clip(np.concatenate([at - wh / 2, at + wh / 2], axis=1), 0, 200)
        out.append((boxes, rng.uniform(0.05, 1.0, n), rng.integers(0, 3, n)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weighted_box_fusion_equals_the_authors_package(seed):
    ensemble_boxes = pytest.importorskip("ensemble_boxes")
    copies = _random_copies(seed)
    boxes, scores, classes = ensemble_boxes.weighted_boxes_fusion(
        [b / 200.0 for b, _, _ in copies], [s for _, s, _ in copies], [c for _, _, c in copies], iou_thr=0.55,
        skip_box_thr=0.0,
    )
    ours = weighted_box_fusion([b for b, _, _ in copies], [s for _, s, _ in copies], [c for _, _, c in copies])
    assert len(ours[1]) == len(scores) < sum(len(s) for _, s, _ in copies)
    expected = sorted(zip(np.round(scores, 4), classes.astype(int), *np.round(boxes * 200, 2).T))
    found = sorted(zip(np.round(ours[1], 4), ours[2], *np.round(ours[0], 2).T))
    np.testing.assert_allclose(np.array(found, float), np.array(expected, float), atol=0.02)


def test_weighted_box_fusion_averages_a_cluster_by_score_and_keeps_classes_apart():
    boxes = [np.array([[0, 0, 10, 10], [50, 50, 60, 60]]), np.array([[1, 0, 11, 10], [0, 0, 10, 10]])]
    scores = [np.array([0.8, 0.5]), np.array([0.4, 0.7])]
    classes = [np.array([0, 0]), np.array([0, 1])]
    fused_boxes, fused_scores, fused_classes = weighted_box_fusion(boxes, scores, classes)
    by_class_and_x = sorted(zip(fused_classes.tolist(), fused_boxes[:, 0].round(3).tolist(), fused_scores.tolist()))
    # Class 0's two near boxes fuse: x1 = (0.8 * 0 + 0.4 * 1) / 1.2, score (0.8 + 0.4) / 2; alone, a box's score halves.
    assert [(c, x) for c, x, _ in by_class_and_x] == [(0, pytest.approx(1 / 3, abs=1e-3)), (0, 50.0), (1, 0.0)]
    np.testing.assert_allclose([s for _, _, s in by_class_and_x], [0.6, 0.25, 0.35], atol=1e-6)
    with pytest.raises(ValueError, match="one of each per detector"):
        weighted_box_fusion(boxes, scores[:1], classes)
