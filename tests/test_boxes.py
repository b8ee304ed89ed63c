"""Box maths: IoU, IoA, deltas (BoxCoder), clipping."""

import math

import keras
import numpy as np
import pytest

from keras_retina.model import boxes as box_ops


def test_pairwise_iou_hand_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], "float32")
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30]], "float32")
    iou = np.asarray(box_ops.pairwise_iou(a, b))
    np.testing.assert_allclose(iou, [[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)


def test_pairwise_iou_broadcasts_anchors_over_batch():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 20, 20]], "float32")
    gt = np.array([[[0, 0, 10, 10]], [[0, 0, 20, 20]]], "float32")  # (B=2, N=1, 4)
    iou = np.asarray(box_ops.pairwise_iou(anchors, gt))
    assert iou.shape == (2, 2, 1)
    np.testing.assert_allclose(iou[:, :, 0], [[1.0, 0.25], [0.25, 1.0]], rtol=1e-6)


def test_pairwise_ioa_is_share_of_first_box():
    anchors = np.array([[0, 0, 10, 10], [5, 5, 25, 25]], "float32")
    region = np.array([[0, 0, 100, 100]], "float32")
    np.testing.assert_allclose(np.asarray(box_ops.pairwise_ioa(anchors, region))[:, 0], [1.0, 1.0])
    small = np.array([[0, 0, 5, 10]], "float32")
    np.testing.assert_allclose(np.asarray(box_ops.pairwise_ioa(anchors, small))[:, 0], [0.5, 0.0])


def test_encode_hand_values_and_weights():
    anchors = np.array([[0, 0, 10, 20]], "float32")  # centre (5, 10), size 10 x 20
    target = np.array([[1, 4, 21, 24]], "float32")  # centre (11, 14), size 20 x 20
    deltas = np.asarray(box_ops.encode_deltas(anchors, target))
    np.testing.assert_allclose(deltas, [[0.6, 0.2, math.log(2.0), 0.0]], rtol=1e-5, atol=1e-6)
    weighted = np.asarray(box_ops.encode_deltas(anchors, target, weights=(10, 10, 5, 5)))
    np.testing.assert_allclose(weighted, deltas * [10, 10, 5, 5], rtol=1e-5, atol=1e-6)


def test_round_trip_is_exact():
    rng = np.random.default_rng(0)
    anchors = np.asarray(rng.uniform(0, 200, (50, 2)), "float32")
    anchors = np.concatenate([anchors, anchors + rng.uniform(8, 100, (50, 2))], axis=1).astype("float32")
    gt = np.concatenate([anchors[:, :2] + rng.uniform(-5, 5, (50, 2)), anchors[:, 2:] + rng.uniform(-5, 30, (50, 2))], 1)
    gt = gt.astype("float32")
    for weights in ((1, 1, 1, 1), (10, 10, 5, 5)):
        deltas = box_ops.encode_deltas(anchors, gt, weights=weights)
        decoded = np.asarray(box_ops.decode_deltas(anchors, deltas, weights=weights))
        np.testing.assert_allclose(decoded, gt, atol=1e-3)


def test_decode_clamps_log_scale():
    anchors = np.array([[0, 0, 16, 16]], "float32")
    decoded = np.asarray(box_ops.decode_deltas(anchors, np.array([[0, 0, 100.0, 100.0]], "float32")))
    assert np.all(np.isfinite(decoded))
    np.testing.assert_allclose(decoded[0, 2] - decoded[0, 0], 1000.0, rtol=1e-4)


def test_clip_and_convert():
    clipped = np.asarray(box_ops.clip_to_image(np.array([[-5, 3, 130, 70]], "float32"), (64, 128)))
    np.testing.assert_allclose(clipped, [[0, 3, 128, 64]])
    converted = np.asarray(box_ops.convert_format(np.array([[10, 20, 30, 40]], "float32"), "xywh", "xyxy"))
    np.testing.assert_allclose(converted, [[10, 20, 40, 60]])
    assert np.asarray(box_ops.box_area(np.array([[5, 5, 2, 9]], "float32")))[0] == 0.0


def test_box_coder_is_what_the_functions_compute():
    rng = np.random.default_rng(2)
    anchors = np.concatenate([rng.uniform(0, 100, (20, 2)), rng.uniform(110, 200, (20, 2))], 1).astype("float32")
    boxes = (anchors + rng.uniform(-8, 8, (20, 4))).astype("float32")
    coder = box_ops.BoxCoder(weights=(10, 10, 5, 5), scale_clamp=2.0)
    assert coder.weights == (10.0, 10.0, 5.0, 5.0) and coder.scale_clamp == 2.0
    deltas = np.asarray(coder.encode(anchors, boxes))
    np.testing.assert_array_equal(deltas, np.asarray(box_ops.encode_deltas(anchors, boxes, weights=(10, 10, 5, 5))))
    big = deltas * 20
    np.testing.assert_array_equal(
        np.asarray(coder.decode(anchors, big)), np.asarray(box_ops.decode_deltas(anchors, big, (10, 10, 5, 5), clip=2.0))
    )
    # The clamp applies to dw / ww: a huge delta gives exp(2) times the anchor's width.
    decoded = np.asarray(coder.decode(anchors[:1], np.array([[0, 0, 1e4, 0]], "float32")))
    np.testing.assert_allclose(decoded[0, 2] - decoded[0, 0], np.exp(2.0) * (anchors[0, 2] - anchors[0, 0]), rtol=1e-5)


def test_box_coder_batched_deltas_and_serialization():
    coder = box_ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
    anchors = np.array([[0, 0, 10, 20], [5, 5, 25, 15]], "float32")
    boxes = np.array([[[1, 4, 21, 24], [5, 5, 25, 15]], [[0, 0, 10, 20], [6, 4, 30, 20]]], "float32")  # (B=2, A=2, 4)
    deltas = coder.encode(anchors, boxes)
    assert tuple(deltas.shape) == (2, 2, 4)
    np.testing.assert_allclose(np.asarray(coder.decode(anchors, deltas)), boxes, atol=1e-4)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(coder))
    assert restored == coder and restored.get_config() == {"weights": (10.0, 10.0, 5.0, 5.0), "scale_clamp": coder.scale_clamp}
    assert box_ops.BoxCoder().scale_clamp == math.log(1000 / 16)


def test_box_coder_validates_its_arguments():
    with pytest.raises(ValueError, match=r"^`weights` must be 4 positive numbers \(wx, wy, ww, wh\), got \(1, 1, 1\)\.$"):
        box_ops.BoxCoder((1, 1, 1))
    with pytest.raises(ValueError, match="`weights` must be 4 positive numbers"):
        box_ops.BoxCoder((1, 1, 0, 1))
    with pytest.raises(ValueError, match=r"^`scale_clamp` must be a positive number, got -1\.0\.$"):
        box_ops.BoxCoder(scale_clamp=-1.0)
