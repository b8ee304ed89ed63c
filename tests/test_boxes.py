"""Box maths: IoU, IoA, deltas, clipping."""

import math

import numpy as np

from keras_retina import boxes as box_ops


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
