"""NMS options: class-agnostic NMS and Gaussian soft-NMS, in predict and in every export."""

import dataclasses
import json
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_retina as kr
from keras_retina.config import ExperimentConfig, override
from keras_retina.deploy.class_names import INFERENCE_FILE
from keras_retina.model import boxes as box_ops
from keras_retina.model.postprocess import InferenceSettings, single_image_nms
from tests.helpers import small_model, toy_batch


def _iou(a, b):
    return np.asarray(box_ops.pairwise_iou(np.asarray(a, "float32"), np.asarray(b, "float32")))


def numpy_soft_nms(boxes, scores, sigma, score_threshold, max_detections):
    """Gaussian soft-NMS as Bodla et al. write it: take the best, decay the rest by exp(-IoU**2 / sigma)."""
    scores = scores.astype(np.float64).copy()
    alive = scores > score_threshold
    kept, kept_scores = [], []
    while alive.any() and len(kept) < max_detections:
        best = int(np.argmax(np.where(alive, scores, -1.0)))
        kept.append(best)
        kept_scores.append(scores[best])
        alive[best] = False
        overlap = _iou(boxes[best : best + 1], boxes)[0]
        scores = np.where(alive, scores * np.exp(-(overlap**2) / sigma), scores)
        alive &= scores > score_threshold
    return np.array(kept, int), np.array(kept_scores)


def _random_candidates(seed, count=60, num_classes=3):
    rng = np.random.default_rng(seed)
    corners = rng.uniform(0, 80, (count, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(8, 40, (count, 2))], axis=1).astype("float32")
    boxes = np.concatenate([boxes, boxes[:10] + rng.normal(0, 2, (10, 4)).astype("float32")])  # near-duplicates
    scores = rng.uniform(0.05, 1.0, len(boxes)).astype("float32")
    return boxes, scores, rng.integers(0, num_classes, len(boxes))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("sigma", [0.5, 0.1])
def test_soft_nms_equals_the_numpy_transcription(seed, sigma):
    boxes, scores, classes = _random_candidates(seed)
    expected, expected_scores = numpy_soft_nms(boxes, scores, sigma, score_threshold=0.05, max_detections=40)
    selected, selected_scores, count = single_image_nms(
        boxes, scores, classes, score_threshold=0.05, max_detections=40, class_agnostic_nms=True, soft_nms_sigma=sigma
    )
    count = int(count)
    assert count == len(expected) > 10
    np.testing.assert_array_equal(np.asarray(selected)[:count], expected)
    np.testing.assert_allclose(np.asarray(selected_scores)[:count], expected_scores, rtol=1e-5, atol=1e-6)
    # Class-wise soft-NMS: the same, class by class (boxes of other classes never decay a score).
    selected, selected_scores, count = single_image_nms(
        boxes, scores, classes, score_threshold=0.05, max_detections=100, soft_nms_sigma=sigma
    )
    by_class = {}
    for c in range(3):
        index = np.flatnonzero(classes == c)
        kept, kept_scores = numpy_soft_nms(boxes[index], scores[index], sigma, 0.05, 100)
        by_class.update(zip(index[kept].tolist(), kept_scores))
    got = dict(zip(np.asarray(selected)[: int(count)].tolist(), np.asarray(selected_scores)[: int(count)]))
    assert got.keys() == by_class.keys()
    np.testing.assert_allclose([got[i] for i in by_class], list(by_class.values()), rtol=1e-5, atol=1e-6)


def test_class_agnostic_output_has_no_two_boxes_over_the_iou_threshold_whatever_their_classes():
    model = small_model(score_threshold=0.0, max_detections=50, nms_iou_threshold=0.4)
    images, _ = toy_batch()
    plain = model.predict(images, verbose=0)
    model.class_agnostic_nms = True  # the next predict uses it
    agnostic = model.predict(images, verbose=0)
    for b in range(len(images)):
        n = int(agnostic["num_detections"][b])
        iou = _iou(agnostic["boxes"][b, :n], agnostic["boxes"][b, :n])
        assert n > 1 and (iou[np.triu_indices(n, 1)] <= 0.4 + 1e-6).all()
        m = int(plain["num_detections"][b])
        iou = _iou(plain["boxes"][b, :m], plain["boxes"][b, :m])
        classes = plain["classes"][b, :m]
        overlaps = (iou > 0.4) & (classes[:, None] != classes[None, :])
        assert overlaps.any()  # class-wise NMS keeps overlapping boxes of different classes: the test can fail


def test_options_are_settings_config_fields_and_survive_a_keras_round_trip(tmp_path):
    with pytest.raises(ValueError, match="soft_nms_sigma"):
        InferenceSettings(soft_nms_sigma=-1.0)
    with pytest.raises(ValueError, match="class_agnostic_nms"):
        InferenceSettings(class_agnostic_nms="yes")
    config = override(ExperimentConfig(), ["model.class_agnostic_nms=true", "model.soft_nms_sigma=0.5"])
    small = dataclasses.replace(config.model, backbone="tiny", fpn_channels=32, head_channels=32, num_head_convs=2)
    model = kr.training.build_model(small, num_classes=3)
    assert (model.class_agnostic_nms, model.soft_nms_sigma) == (True, 0.5)
    images, _ = toy_batch()
    before = model.predict(images, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert (loaded.class_agnostic_nms, loaded.soft_nms_sigma) == (True, 0.5)
    after = loaded.predict(images, verbose=0)
    np.testing.assert_allclose(after["scores"], before["scores"], atol=1e-5)


@pytest.fixture(scope="module")
def optioned_model():
    model = small_model(score_threshold=0.01, max_detections=30, class_agnostic_nms=True, soft_nms_sigma=0.5)
    model(np.zeros((1, 128, 128, 3), "float32"))
    return model


def test_saved_model_bakes_the_options_in_and_records_them(optioned_model, tmp_path):
    images, _ = toy_batch()
    image = np.clip(images[0], 0, 255).astype(np.uint8)
    path = kr.export_saved_model(optioned_model, str(tmp_path), image_size=128)
    served = tf.saved_model.load(path)
    metadata = served.signatures["metadata"]()
    assert bool(metadata["class_agnostic_nms"]) and float(metadata["soft_nms_sigma"]) == 0.5
    out = served.signatures["serving_images"](images=tf.constant(image[None]))
    expected = optioned_model.predict(image[None].astype("float32"), verbose=0)
    n = int(expected["num_detections"][0])
    assert int(out["num_detections"][0]) == n > 0
    np.testing.assert_allclose(out["detection_scores"][0, :n], expected["scores"][0, :n], atol=1e-4)
    np.testing.assert_allclose(out["detection_boxes"][0, :n], expected["boxes"][0, :n], atol=1e-2)


def test_litert_bakes_the_options_in_and_records_them(optioned_model, tmp_path):
    pytest.importorskip("ai_edge_litert")
    from keras_retina.deploy.litert import LiteRTDetector

    path = kr.export_litert(optioned_model, os.path.join(tmp_path, "m.tflite"), image_size=128)
    with zipfile.ZipFile(path) as archive:
        recorded = json.loads(archive.read(INFERENCE_FILE))
    assert recorded["class_agnostic_nms"] is True and recorded["soft_nms_sigma"] == 0.5
    images, _ = toy_batch()
    image = np.clip(images[0], 0, 255).astype(np.uint8)
    out = LiteRTDetector(path)(image)
    expected = optioned_model.predict(image[None].astype("float32"), verbose=0)
    n = int(expected["num_detections"][0])
    assert int(out["num_detections"][0]) == n > 0
    np.testing.assert_allclose(out["detection_scores"][0, :n], expected["scores"][0, :n], atol=1e-4)
    np.testing.assert_allclose(out["detection_boxes"][0, :n], expected["boxes"][0, :n], atol=1e-2)
