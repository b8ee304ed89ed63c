"""Anchor matching: thresholds, low-quality matches, padding, crowd, empty images."""

import numpy as np
import pytest

import keras_retina as kr
from keras_retina.model.matching import BACKGROUND, IGNORE, assign_targets


def _np_iou(a, b):
    ix = np.maximum(0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]))
    iy = np.maximum(0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]))
    inter = ix * iy
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-8), 0)


def _np_reference(anchors, boxes, classes, low_quality):
    """Straight transcription of the rules, one image, float64."""
    valid = (classes >= 0) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    iou = _np_iou(anchors.astype(np.float64), boxes.astype(np.float64))
    iou[:, ~valid] = -1
    labels = np.full(len(anchors), IGNORE)
    best = iou.max(1)
    labels[best < 0.4] = BACKGROUND
    fg = best >= 0.5
    if low_quality:
        for j in np.flatnonzero(valid):
            if iou[:, j].max() > 0:
                fg |= iou[:, j] == iou[:, j].max()
    labels[fg] = classes[iou.argmax(1)][fg]
    # Anchors within float32 rounding of a box's best IoU may or may not tie
    # with it when computed in float32: the comparison skips them.
    near_tie = np.zeros(len(anchors), bool)
    if low_quality:
        for j in np.flatnonzero(valid):
            gap = iou[:, j].max() - iou[:, j]
            near_tie |= (gap > 0) & (gap < 1e-5)
    return labels, near_tie


def _as_np(targets):
    return {k: np.asarray(v) for k, v in targets.items()}


ANCHORS = kr.AnchorGenerator()((128, 128))


def test_exact_anchor_is_foreground_with_zero_target():
    box = ANCHORS[100]
    t = _as_np(assign_targets(ANCHORS, box[None, None], np.array([[4]])))
    assert t["cls_targets"][0, 100] == 4
    assert t["foreground"][0, 100]
    np.testing.assert_allclose(t["box_targets"][0, 100], 0.0, atol=1e-5)
    assert t["cls_weights"][0, 100] == 1.0


def test_between_thresholds_is_ignored_and_weight_zero():
    # A 32x32 anchor and a box shifted so that IoU = 0.45: between 0.4 and 0.5.
    anchor = np.array([0.0, 0.0, 32.0, 32.0], "float32")
    anchors = np.stack([anchor, anchor + 200.0])
    shift = 32 * (1 - 0.45) / (1 + 0.45)  # IoU of two 32-squares offset by `shift` in x
    box = anchor + np.array([shift, 0, shift, 0], "float32")
    for low_quality, expected in ((False, IGNORE), (True, 7)):
        t = _as_np(assign_targets(anchors, box[None, None], np.array([[7]]), allow_low_quality_matches=low_quality))
        assert t["cls_targets"][0, 0] == expected
        assert t["cls_targets"][0, 1] == BACKGROUND
    t = _as_np(assign_targets(anchors, box[None, None], np.array([[7]]), allow_low_quality_matches=False))
    assert t["cls_weights"][0].tolist() == [0.0, 1.0]


def test_matches_numpy_reference_on_random_boxes():
    rng = np.random.default_rng(1)
    batch, slots = 3, 12
    xy = rng.uniform(0, 110, (batch, slots, 2))
    wh = rng.uniform(4, 90, (batch, slots, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, 128)], -1).astype("float32")
    classes = rng.integers(0, 5, (batch, slots)).astype("int32")
    classes[:, 9:] = -1  # padding rows
    boxes[1, 3] = [50, 50, 50, 80]  # zero width
    for low_quality in (True, False):
        t = _as_np(assign_targets(ANCHORS, boxes, classes, allow_low_quality_matches=low_quality))
        for b in range(batch):
            expected, near_tie = _np_reference(ANCHORS, boxes[b], classes[b], low_quality)
            assert near_tie.sum() < 20
            np.testing.assert_array_equal(t["cls_targets"][b][~near_tie], expected[~near_tie])
            assert (t["cls_targets"][b] >= 0).sum() >= (expected >= 0).sum()


def test_padding_and_degenerate_rows_never_positive():
    boxes = np.array([[ANCHORS[100], ANCHORS[200], [40, 40, 40, 90], [60, 70, 50, 20]]], "float32")
    classes = np.array([[-1, -1, 2, 3]], "int32")  # padding, padding, zero width, inverted
    t = _as_np(assign_targets(ANCHORS, boxes, classes))
    assert not t["foreground"].any()
    assert (t["cls_targets"] == BACKGROUND).all()


def test_image_without_boxes_is_all_background():
    boxes = np.zeros((2, 5, 4), "float32")
    classes = np.full((2, 5), -1, "int32")
    t = _as_np(assign_targets(ANCHORS, boxes, classes))
    assert (t["cls_targets"] == BACKGROUND).all()
    assert t["cls_weights"].min() == 1.0


def test_zero_box_slots():
    t = _as_np(assign_targets(ANCHORS, np.zeros((2, 0, 4), "float32"), np.zeros((2, 0), "int32")))
    assert t["cls_targets"].shape == (2, len(ANCHORS))
    assert (t["cls_targets"] == BACKGROUND).all()


def test_crowd_boxes_are_ignored_regions_never_positive():
    crowd = np.array([0.0, 0.0, 64.0, 64.0], "float32")
    person = np.array([80.0, 80.0, 120.0, 120.0], "float32")
    boxes = np.stack([crowd, person])[None]
    classes = np.array([[0, 0]], "int32")
    is_crowd = np.array([[True, False]])
    t = _as_np(assign_targets(ANCHORS, boxes, classes, is_crowd))
    inside = (ANCHORS[:, 0] >= 0) & (ANCHORS[:, 1] >= 0) & (ANCHORS[:, 2] <= 64) & (ANCHORS[:, 3] <= 64)
    assert inside.sum() > 10
    assert (t["cls_targets"][0, inside] == IGNORE).all()
    # The crowd box itself (an exact anchor would have IoU 1) is never a positive...
    exact = np.flatnonzero(np.all(np.isclose(ANCHORS, crowd), axis=1))
    assert not t["foreground"][0, exact].any()
    # ...while the normal box still gets positives.
    assert t["foreground"][0].sum() > 0
    matched = np.asarray(kr.model.boxes.decode_deltas(ANCHORS, t["box_targets"][0]))[t["foreground"][0]]
    np.testing.assert_allclose(matched, np.repeat(person[None], len(matched), 0), atol=1e-3)


def test_thresholds_validated():
    with pytest.raises(ValueError, match=r"^`background_iou` must be <= `foreground_iou` \(0.3\), got 0.4\.$"):
        assign_targets(ANCHORS, np.zeros((1, 1, 4)), np.zeros((1, 1)), foreground_iou=0.3, background_iou=0.4)


def test_box_targets_come_from_the_box_coder():
    boxes = np.array([[[10, 20, 60, 50], [70, 64, 120, 128]]], "float32")
    classes = np.array([[1, 0]], "int32")
    coder = kr.model.boxes.BoxCoder((10.0, 10.0, 5.0, 5.0))
    with_coder = _as_np(assign_targets(ANCHORS, boxes, classes, box_coder=coder))
    with_weights = _as_np(assign_targets(ANCHORS, boxes, classes, box_weights=(10, 10, 5, 5)))
    plain = _as_np(assign_targets(ANCHORS, boxes, classes))
    for key in with_coder:
        np.testing.assert_array_equal(with_coder[key], with_weights[key], err_msg=key)
    foreground = plain["foreground"][0]
    np.testing.assert_allclose(
        with_coder["box_targets"][0, foreground], plain["box_targets"][0, foreground] * [10, 10, 5, 5], rtol=1e-5, atol=1e-5
    )
    decoded = np.asarray(coder.decode(ANCHORS, with_coder["box_targets"][0]))[foreground]
    expected = boxes[0][np.asarray(kr.model.boxes.pairwise_iou(ANCHORS[foreground], boxes[0])).argmax(1)]
    np.testing.assert_allclose(decoded, expected, atol=1e-3)
    with pytest.raises(ValueError, match="`box_weights` must be None when `box_coder` is given"):
        assign_targets(ANCHORS, boxes, classes, box_coder=coder, box_weights=(1, 1, 1, 1))
