"""Post-processing: per-level top-k, score threshold, class-wise NMS (against tf.image NMS), padding, clipping."""

import numpy as np
import pytest
import tensorflow as tf

import keras_retina as kr
from keras_retina.model import boxes as box_ops
from keras_retina.model.postprocess import (
    InferenceSettings,
    class_wise_nms,
    decode_detections,
    decode_level,
    decode_levels,
)


def _np(tree):
    return {key: np.asarray(value) for key, value in tree.items()}


def _random_boxes(rng, n, size=100.0):
    xy = rng.uniform(0, size * 0.8, (n, 2))
    wh = rng.uniform(5, size * 0.4, (n, 2))
    return np.concatenate([xy, xy + wh], -1).astype("float32")


def test_decode_level_keeps_the_highest_anchor_class_pairs():
    rng = np.random.default_rng(0)
    batch, num_anchors, num_classes, k = 2, 30, 4, 10
    logits = rng.normal(0, 3, (batch, num_anchors, num_classes)).astype("float32")
    deltas = rng.normal(0, 0.2, (batch, num_anchors, 4)).astype("float32")
    anchors = _random_boxes(rng, num_anchors)
    coder = box_ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
    boxes, scores, classes = decode_level(logits, deltas, anchors, (100, 100), pre_nms_topk=k, box_coder=coder)
    assert tuple(boxes.shape) == (batch, k, 4) and tuple(scores.shape) == (batch, k) and tuple(classes.shape) == (batch, k)
    for b in range(batch):
        order = np.argsort(-logits[b].reshape(-1), kind="stable")[:k]  # best pairs, (anchor, class) flattened
        anchor_index, class_index = np.divmod(order, num_classes)
        np.testing.assert_array_equal(np.asarray(classes[b]), class_index)
        np.testing.assert_allclose(np.asarray(scores[b]), 1 / (1 + np.exp(-logits[b][anchor_index, class_index])), rtol=1e-6)
        expected = np.clip(np.asarray(coder.decode(anchors[anchor_index], deltas[b, anchor_index])), 0, 100)
        np.testing.assert_allclose(np.asarray(boxes[b]), expected, rtol=1e-6)
    # Fewer pairs than pre_nms_topk: all of them, best first.
    boxes, scores, classes = decode_level(logits[:, :2], deltas[:, :2], anchors[:2], (100, 100), pre_nms_topk=1000)
    assert tuple(scores.shape) == (batch, 2 * num_classes)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)


def test_decode_level_traces_with_an_unknown_anchor_count():
    """The SavedModel export traces with unknown image sizes: the level's size comes from its anchors."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (1, 12, 2)).astype("float32")
    deltas = np.zeros((1, 12, 4), "float32")
    anchors = _random_boxes(rng, 12)

    @tf.function(input_signature=[tf.TensorSpec((None, None, 2)), tf.TensorSpec((None, None, 4))])
    def traced(level_logits, level_deltas):
        return decode_level(level_logits, level_deltas, anchors, (100, 100), pre_nms_topk=5)

    for got, want in zip(traced(logits, deltas), decode_level(logits, deltas, anchors, (100, 100), pre_nms_topk=5)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_score_threshold_drops_candidates_at_or_below_it():
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]]], "float32")
    scores = np.array([[0.9, 0.5, 0.3, 0.1]], "float32")
    classes = np.array([[0, 1, 0, 1]], "int32")
    out = _np(class_wise_nms(boxes, scores, classes, 2, score_threshold=0.4, max_detections=5))
    assert out["num_detections"].tolist() == [2]
    np.testing.assert_allclose(out["scores"][0], [0.9, 0.5, 0, 0, 0])
    # 0 keeps every real candidate, never a zero-score (anchor, other class) column.
    out = _np(class_wise_nms(boxes, scores, classes, 2, score_threshold=0.0, max_detections=5))
    assert out["num_detections"].tolist() == [4]
    assert out["classes"][0].tolist() == [0, 1, 0, 1, -1]


def test_class_wise_nms_suppresses_only_within_a_class():
    box = np.array([0, 0, 40, 40], "float32")
    shifted = box + np.array([4, 0, 4, 0], "float32")  # IoU 36/44 = 0.82 with box
    boxes = np.stack([box, shifted])[None]
    scores = np.array([[0.9, 0.8]], "float32")
    different = _np(class_wise_nms(boxes, scores, np.array([[0, 1]]), 2, nms_iou_threshold=0.5, max_detections=3))
    assert different["num_detections"].tolist() == [2]
    assert different["classes"][0].tolist() == [0, 1, -1]
    np.testing.assert_allclose(different["boxes"][0, :2], boxes[0])
    same = _np(class_wise_nms(boxes, scores, np.array([[1, 1]]), 2, nms_iou_threshold=0.5, max_detections=3))
    assert same["num_detections"].tolist() == [1]
    np.testing.assert_allclose(same["boxes"][0, 0], box)
    assert same["classes"][0].tolist() == [1, -1, -1]
    # Above the pair's IoU, nothing is suppressed.
    loose = _np(class_wise_nms(boxes, scores, np.array([[1, 1]]), 2, nms_iou_threshold=0.9, max_detections=3))
    assert loose["num_detections"].tolist() == [2]


def test_class_wise_nms_matches_tf_image_nms_per_class():
    rng = np.random.default_rng(3)
    batch, num_candidates, num_classes = 2, 80, 3
    boxes = np.stack([_random_boxes(rng, num_candidates) for _ in range(batch)])
    scores = rng.uniform(0, 1, (batch, num_candidates)).astype("float32")
    classes = rng.integers(0, num_classes, (batch, num_candidates)).astype("int32")
    out = _np(
        class_wise_nms(boxes, scores, classes, num_classes, score_threshold=0.2, nms_iou_threshold=0.4, max_detections=200)
    )
    for b in range(batch):
        n = out["num_detections"][b]
        expected_count = 0
        for c in range(num_classes):
            mine = np.flatnonzero(classes[b] == c)
            keep = tf.image.non_max_suppression(
                boxes[b, mine], scores[b, mine], max_output_size=200, iou_threshold=0.4, score_threshold=0.2
            ).numpy()
            expected_count += len(keep)
            ours = out["classes"][b, :n] == c
            np.testing.assert_allclose(out["scores"][b, :n][ours], scores[b, mine][keep], err_msg=f"image {b} class {c}")
            np.testing.assert_allclose(out["boxes"][b, :n][ours], boxes[b, mine][keep])
        assert n == expected_count
        assert np.all(np.diff(out["scores"][b, :n]) <= 0)  # best first across classes


def test_padding_rows_have_class_minus_one_score_and_box_zero():
    boxes = np.array([[[0, 0, 10, 10], [50, 50, 60, 60]], [[0, 0, 10, 10], [1, 1, 11, 11]]], "float32")
    scores = np.array([[0.9, 0.8], [0.9, 0.01]], "float32")
    out = _np(class_wise_nms(boxes, scores, np.zeros((2, 2), "int32"), 1, max_detections=4))
    assert out["num_detections"].tolist() == [2, 1]
    assert out["classes"].tolist() == [[0, 0, -1, -1], [0, -1, -1, -1]]
    assert out["classes"].dtype == np.int32 and out["num_detections"].dtype == np.int32
    for b, n in enumerate(out["num_detections"]):
        assert (out["scores"][b, n:] == 0).all() and (out["boxes"][b, n:] == 0).all()


def _outputs(seed=0, image_shape=(96, 128), num_classes=3):
    gen = kr.AnchorGenerator()
    anchors = gen(image_shape)
    rng = np.random.default_rng(seed)
    logits = rng.normal(-1, 2, (2, len(anchors), num_classes)).astype("float32")
    deltas = rng.normal(0, 1, (2, len(anchors), 4)).astype("float32")
    return logits, deltas, anchors, gen.anchors_per_level(image_shape)


def test_decode_detections_boxes_are_clipped_to_the_image():
    logits, deltas, anchors, per_level = _outputs()
    deltas[..., 2:] += 3.0  # boxes e^3 times their anchors: most reach past the image
    out = _np(decode_detections(logits, deltas, anchors, per_level, (96, 128), score_threshold=0.0, max_detections=300))
    assert out["num_detections"].min() > 20
    for b, n in enumerate(out["num_detections"]):
        boxes = out["boxes"][b, :n]
        assert boxes[:, [0, 2]].min() >= 0 and boxes[:, [0, 2]].max() <= 128
        assert boxes[:, [1, 3]].min() >= 0 and boxes[:, [1, 3]].max() <= 96
        assert (boxes[:, 2] == 128).any() and (boxes[:, 1] == 0).any()  # clipped, not merely small


def test_decode_detections_is_decode_level_then_class_wise_nms():
    logits, deltas, anchors, per_level = _outputs(seed=1)
    coder = box_ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
    settings = InferenceSettings(score_threshold=0.3, pre_nms_topk=50, nms_iou_threshold=0.4, max_detections=60)
    out = _np(decode_detections(logits, deltas, anchors, per_level, (96, 128), **settings.as_dict(), box_coder=coder))
    candidates, start = [], 0
    for count in per_level:
        level = slice(start, start + count)
        candidates.append(decode_level(logits[:, level], deltas[:, level], anchors[level], (96, 128), pre_nms_topk=50, box_coder=coder))
        start += count
    boxes, scores, classes = (np.concatenate([np.asarray(c[i]) for c in candidates], axis=1) for i in range(3))
    assert boxes.shape == (2, sum(min(50, count * 3) for count in per_level), 4)  # P7 has only 9 * 3 pairs
    expected = _np(class_wise_nms(boxes, scores, classes, 3, score_threshold=0.3, nms_iou_threshold=0.4, max_detections=60))
    for key in expected:
        np.testing.assert_array_equal(out[key], expected[key], err_msg=key)
    with_weights = _np(
        decode_detections(logits, deltas, anchors, per_level, (96, 128), **settings.as_dict(), box_weights=(10, 10, 5, 5))
    )
    for key in expected:
        np.testing.assert_array_equal(with_weights[key], expected[key], err_msg=key)


def test_decode_levels_is_decode_level_on_each_level_concatenated():
    logits, deltas, anchors, per_level = _outputs(seed=3)
    coder = box_ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
    got = decode_levels(logits, deltas, anchors, per_level, (96, 128), pre_nms_topk=40, box_coder=coder)
    starts = np.cumsum([0, *per_level])
    expected = [
        decode_level(logits[:, a:b], deltas[:, a:b], anchors[a:b], (96, 128), pre_nms_topk=40, box_coder=coder)
        for a, b in zip(starts[:-1], starts[1:])
    ]
    assert tuple(got[0].shape) == (2, sum(min(40, count * 3) for count in per_level), 4)
    for i, name in enumerate(("boxes", "scores", "classes")):
        np.testing.assert_array_equal(np.asarray(got[i]), np.concatenate([np.asarray(e[i]) for e in expected], 1), name)
    # float16 head outputs are decoded in float32, as decode_detections does.
    half = decode_levels(logits.astype("float16"), deltas.astype("float16"), anchors, per_level, (96, 128), pre_nms_topk=40)
    assert half[0].dtype == tf.float32 and half[1].dtype == tf.float32 and half[2].dtype == tf.int32


def test_decode_detections_accepts_float16_outputs():
    logits, deltas, anchors, per_level = _outputs(seed=2)
    out = _np(decode_detections(logits.astype("float16"), deltas.astype("float16"), anchors, per_level, (96, 128)))
    assert out["boxes"].dtype == np.float32 and out["scores"].dtype == np.float32
    assert out["boxes"].shape == (2, 100, 4)


def test_settings_are_validated():
    settings = InferenceSettings()
    assert settings.as_dict() == dict(
        score_threshold=0.05, pre_nms_topk=1000, nms_iou_threshold=0.5, max_detections=100,
        class_agnostic_nms=False, soft_nms_sigma=0.0,
    )
    assert settings.replace(pre_nms_topk=np.int64(20)).pre_nms_topk == 20
    assert type(settings.replace(max_detections=30.0).max_detections) is int
    with pytest.raises(ValueError, match=r"^`score_threshold` must be a number in \[0, 1\], got nan\.$"):
        settings.replace(score_threshold=float("nan"))
    with pytest.raises(ValueError, match=r"^`pre_nms_topk` must be an integer >= 1, got True\.$"):
        settings.replace(pre_nms_topk=True)
    with pytest.raises(ValueError, match=r"^`nms_iou_threshold` must be a number in \[0, 1\], got '0.5'\.$"):
        InferenceSettings(nms_iou_threshold="0.5")
    with pytest.raises(Exception):  # frozen
        settings.score_threshold = 0.5
    logits, deltas, anchors, per_level = _outputs()
    with pytest.raises(ValueError, match=r"^`max_detections` must be an integer >= 1, got 0\.$"):
        decode_detections(logits, deltas, anchors, per_level, (96, 128), max_detections=0)
    with pytest.raises(ValueError, match="`box_weights` must be None when `box_coder` is given"):
        decode_detections(logits, deltas, anchors, per_level, (96, 128), box_coder=box_ops.BoxCoder(), box_weights=(1, 1, 1, 1))
