"""Property-based tests (Hypothesis) of the box maths, label assignment and NMS, against NumPy references.

The profile (examples per property, derandomized) is tests/conftest.py's; set
HYPOTHESIS_PROFILE=dev for a longer search.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops

import keras_retina as kr
from keras_retina.model import boxes as box_ops
from keras_retina.model import matching, postprocess

FORMATS = ("xyxy", "yxyx", "xywh", "center_xywh", "center_yxhw", "rel_xyxy", "rel_yxyx", "rel_xywh",
           "rel_center_xywh")


def _reference_format(boxes_xyxy, fmt, height, width):
    """NumPy: ``xyxy`` boxes in ``fmt``, written out from the format's definition (float64)."""
    x1, y1, x2, y2 = np.moveaxis(np.asarray(boxes_xyxy, np.float64), -1, 0)
    if fmt.startswith("rel_"):
        x1, x2, y1, y2 = x1 / width, x2 / width, y1 / height, y2 / height
        fmt = fmt[4:]
    columns = {
        "xyxy": (x1, y1, x2, y2),
        "yxyx": (y1, x1, y2, x2),
        "xywh": (x1, y1, x2 - x1, y2 - y1),
        "center_xywh": ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1),
        "center_yxhw": ((y1 + y2) / 2, (x1 + x2) / 2, y2 - y1, x2 - x1),
    }[fmt]
    return np.stack(columns, axis=-1)


@st.composite
def images_and_boxes(draw, max_boxes=6, min_size=1.0):
    """``(height, width, boxes)``: a non-square image and float32 xyxy boxes of positive size inside it."""
    height = draw(st.integers(16, 1500))
    width = draw(st.integers(16, 1500).filter(lambda w: w != height))
    n = draw(st.integers(1, max_boxes))
    unit = st.floats(0.0, 1.0, allow_nan=False, width=32)
    rows = []
    for _ in range(n):
        xa, xb = sorted(draw(st.tuples(unit, unit)))
        ya, yb = sorted(draw(st.tuples(unit, unit)))
        x1, x2 = xa * (width - min_size), xb * (width - min_size) + min_size
        y1, y2 = ya * (height - min_size), yb * (height - min_size) + min_size
        rows.append((x1, y1, x2, y2))
    return height, width, np.asarray(rows, np.float32)


# ------------------------------------------------------------------ box formats

@given(images_and_boxes(), st.sampled_from(FORMATS))
def test_every_format_is_its_definition_and_round_trips_on_non_square_images(case, fmt):
    """xyxy -> fmt matches the format's definition (width and height not swapped) and comes back to xyxy."""
    height, width, boxes = case
    original = boxes.copy()
    converted = ops.convert_to_numpy(box_ops.convert_format(boxes, "xyxy", fmt, image_shape=(height, width)))
    np.testing.assert_allclose(converted, _reference_format(boxes, fmt, height, width), rtol=1e-5, atol=1e-4)
    back = ops.convert_to_numpy(box_ops.convert_format(converted, fmt, "xyxy", image_shape=(height, width)))
    scale = max(height, width)
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=scale * 2e-6)
    np.testing.assert_array_equal(boxes, original)  # the NumPy input is not modified in place
    converted_copy = converted.copy()
    box_ops.convert_format(converted, fmt, "xyxy", image_shape=(height, width))
    np.testing.assert_array_equal(converted, converted_copy)


@given(images_and_boxes(), st.sampled_from(FORMATS), st.sampled_from(FORMATS))
def test_conversions_compose(case, first, second):
    """xyxy -> first -> second equals xyxy -> second directly."""
    height, width, boxes = case
    shape = (height, width)
    via = box_ops.convert_format(box_ops.convert_format(boxes, "xyxy", first, shape), first, second, shape)
    direct = box_ops.convert_format(boxes, "xyxy", second, shape)
    atol = 2e-6 * max(height, width) if not second.startswith("rel_") else 2e-6
    np.testing.assert_allclose(ops.convert_to_numpy(via), ops.convert_to_numpy(direct), rtol=1e-5, atol=atol)


# ------------------------------------------------------------------ BoxCoder

_weights = st.tuples(*[st.floats(0.5, 10.0) for _ in range(4)])


@given(images_and_boxes(max_boxes=8, min_size=2.0), _weights, st.integers(0, 2**31 - 1))
def test_box_coder_decode_inverts_encode(case, weights, seed):
    """decode(anchor, encode(anchor, box)) == box within float32 rounding, for boxes within 50x of their anchors."""
    height, width, boxes = case
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, [width, height], (len(boxes), 2))
    sizes = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], -1) * rng.uniform(0.1, 10, (len(boxes), 2))
    anchors = np.concatenate([centers - sizes / 2, centers + sizes / 2], -1).astype(np.float32)
    coder = box_ops.BoxCoder(weights)
    anchors_before, boxes_before = anchors.copy(), boxes.copy()
    deltas = coder.encode(anchors, boxes)
    decoded = ops.convert_to_numpy(coder.decode(anchors, deltas))
    scale = max(float(np.abs(anchors).max()), float(np.abs(boxes).max()), 1.0)
    np.testing.assert_allclose(decoded, boxes, atol=scale * 1e-5)
    np.testing.assert_array_equal(anchors, anchors_before)
    np.testing.assert_array_equal(boxes, boxes_before)


@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=4, max_size=4),
    _weights,
    st.floats(0.1, 8.0),
)
def test_box_coder_clamp_bounds_decoded_size_and_stays_finite(deltas, weights, clamp):
    """Decoded width / anchor width <= exp(scale_clamp), for any delta up to +-1e4; every value finite."""
    anchor = np.array([[10.0, 20.0, 42.0, 36.0]], np.float32)  # 32 x 16
    coder = box_ops.BoxCoder(weights, clamp)
    box = ops.convert_to_numpy(coder.decode(anchor, np.array([deltas], np.float32)))[0]
    assert np.isfinite(box).all()
    bound = np.exp(clamp) * (1 + 1e-5)
    rounding = 4 * np.spacing(np.abs(box).max())  # float32 corners far from the origin (a delta of 2046 anchors)
    assert box[2] - box[0] <= 32 * bound + rounding
    assert box[3] - box[1] <= 16 * bound + rounding


# ------------------------------------------------------------------ IoU

@given(images_and_boxes(max_boxes=6), images_and_boxes(max_boxes=6))
def test_iou_is_bounded_symmetric_and_one_on_itself(first, second):
    boxes1, boxes2 = first[2], second[2]
    iou = ops.convert_to_numpy(box_ops.pairwise_iou(boxes1, boxes2))
    assert iou.shape == (len(boxes1), len(boxes2))
    assert np.isfinite(iou).all() and (iou >= 0).all() and (iou <= 1).all()
    np.testing.assert_allclose(iou, ops.convert_to_numpy(box_ops.pairwise_iou(boxes2, boxes1)).T, atol=1e-6)
    np.testing.assert_allclose(np.diag(ops.convert_to_numpy(box_ops.pairwise_iou(boxes1, boxes1))), 1.0, atol=1e-6)


@given(images_and_boxes(max_boxes=4), st.floats(0.0, 100.0), st.booleans())
def test_iou_of_disjoint_boxes_is_zero(case, gap, vertical):
    """A box moved past another's far edge (by ``gap`` >= 0 pixels) has IoU 0 with it."""
    _, _, boxes = case
    shift = np.zeros_like(boxes)
    axis = 1 if vertical else 0
    shift[:, [axis, axis + 2]] = (boxes[:, axis + 2] - boxes[:, axis] + np.float32(gap))[:, None]
    moved = boxes + shift
    iou = np.diag(ops.convert_to_numpy(box_ops.pairwise_iou(boxes, moved)))
    np.testing.assert_array_equal(iou, 0.0)


@given(images_and_boxes(max_boxes=4), st.floats(0.0, 500.0), st.floats(0.0, 500.0))
def test_iou_with_zero_area_boxes_is_zero_not_nan(case, x, y):
    _, _, boxes = case
    degenerate = np.array([[x, y, x, y], [x, y, x + 5, y], [x, y, x, y + 5], [x + 3, y, x, y + 3]], np.float32)
    for iou in (box_ops.pairwise_iou(boxes, degenerate), box_ops.pairwise_iou(degenerate, degenerate)):
        np.testing.assert_array_equal(ops.convert_to_numpy(iou), 0.0)


# ------------------------------------------------------------------ matching

_ANCHOR_SHAPE = (64, 96)  # non-square: anchors laid out on 8 x 12 ... grids
_ANCHORS = None


def _anchors():
    global _ANCHORS
    if _ANCHORS is None:
        _ANCHORS = np.asarray(kr.AnchorGenerator()(_ANCHOR_SHAPE), np.float32)
    return _ANCHORS


@st.composite
def ground_truth(draw):
    """``(boxes (1, N, 4), classes (1, N), is_crowd (1, N))``: real boxes, crowd boxes, padding, zero-size rows."""
    height, width = _ANCHOR_SHAPE
    n = draw(st.integers(1, 6))
    boxes, classes, crowd = [], [], []
    for _ in range(n):
        kind = draw(st.sampled_from(("real", "real", "crowd", "padding", "zero")))
        x1 = draw(st.floats(-10, width - 2, width=32))
        y1 = draw(st.floats(-10, height - 2, width=32))
        w = draw(st.floats(2, 90, width=32))
        h = draw(st.floats(2, 70, width=32))
        if kind == "zero":
            w = 0.0
        boxes.append((x1, y1, x1 + w, y1 + h))
        classes.append(-1 if kind == "padding" else 3 if kind == "crowd" else draw(st.integers(0, 2)))
        crowd.append(kind == "crowd")
    return (np.asarray([boxes], np.float32), np.asarray([classes], np.int32), np.asarray([crowd]))


def _reference_targets(iou, classes, crowd_ioa, matchable, crowd, fg, bg, low_quality):
    """NumPy transcription of matching.assign_targets' class rules from the library's IoU / IoA (A, N)."""
    iou = np.where(matchable[None, :], iou, -1.0)
    max_iou, argmax = iou.max(1), iou.argmax(1)
    foreground = max_iou >= fg
    if low_quality:
        best = iou.max(0, keepdims=True)
        foreground |= ((iou == best) & (best > 0) & matchable[None, :]).any(1)
    background = (max_iou < bg) & ~foreground
    if crowd.any():
        background &= ~(np.where(crowd[None, :], crowd_ioa, 0.0).max(1) >= 0.5)
    return np.where(foreground, classes[argmax], np.where(background, matching.BACKGROUND, matching.IGNORE))


@given(ground_truth(), st.floats(0.3, 0.7), st.floats(0.0, 0.3), st.booleans())
def test_assign_targets_follows_the_rules(gt, foreground_iou, band, low_quality):
    """Foreground, background and the ignore band as the paper's rules say; crowd and padding never positive."""
    boxes, classes, is_crowd = gt
    background_iou = foreground_iou - band
    anchors = _anchors()
    targets = matching.assign_targets(
        anchors, boxes, classes, is_crowd, foreground_iou=foreground_iou, background_iou=background_iou,
        allow_low_quality_matches=low_quality,
    )
    cls_targets = ops.convert_to_numpy(targets["cls_targets"])[0]
    foreground = ops.convert_to_numpy(targets["foreground"])[0]
    iou = ops.convert_to_numpy(box_ops.pairwise_iou(anchors, boxes[0]))
    ioa = ops.convert_to_numpy(box_ops.pairwise_ioa(anchors, boxes[0]))
    widths, heights = boxes[0, :, 2] - boxes[0, :, 0], boxes[0, :, 3] - boxes[0, :, 1]
    real = (classes[0] >= 0) & (widths > 0) & (heights > 0)
    crowd = real & is_crowd[0]
    matchable = real & ~crowd
    expected = _reference_targets(iou, classes[0], ioa, matchable, crowd, foreground_iou, background_iou, low_quality)
    np.testing.assert_array_equal(cls_targets, expected)
    # The invariants, spelled out:
    assert not (foreground & (cls_targets == 3)).any(), "a crowd box's class (3, crowd only) became a positive"
    assert (cls_targets[foreground] >= 0).all(), "a padding row (class -1) was matched"
    np.testing.assert_array_equal(foreground, cls_targets >= 0)
    if low_quality:
        for j in np.flatnonzero(matchable):
            if iou[:, j].max() > 0:
                assert foreground[np.argmax(iou[:, j])], f"ground truth {j} lost its best anchor"
    weights = ops.convert_to_numpy(targets["cls_weights"])[0]
    np.testing.assert_array_equal(weights, (cls_targets != matching.IGNORE).astype(np.float32))
    band_only = (iou.max(1, initial=-1, where=matchable[None, :]) >= background_iou) & ~foreground
    assert (cls_targets[band_only] == matching.IGNORE).all(), "an anchor in the ignore band was not ignored"


# ------------------------------------------------------------------ NMS

def _reference_nms(boxes, scores, classes, iou_threshold, score_threshold, max_detections, agnostic):
    """Greedy NMS in NumPy (float64): the indices kept, best score first."""
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] > score_threshold]
    kept = []
    for i in order:
        if len(kept) == max_detections:
            break
        ok = True
        for j in kept:
            if not agnostic and classes[i] != classes[j]:
                continue
            x1, y1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            x2, y2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(x2 - x1, 0) * max(y2 - y1, 0)
            area = lambda k: (boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1])
            if inter / (area(i) + area(j) - inter) > iou_threshold:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


@st.composite
def candidates(draw):
    """``(boxes (K, 4) >= 0, distinct scores (K,), classes (K,))`` of one image, clustered so that NMS has work."""
    k = draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    centers = rng.uniform(20, 200, (3, 2))[rng.integers(0, 3, k)] + rng.normal(0, 6, (k, 2))
    sizes = rng.uniform(10, 40, (k, 2))
    boxes = np.concatenate([np.maximum(centers - sizes / 2, 0), centers + sizes / 2], 1).astype(np.float32)
    scores = (rng.permutation(k) + rng.uniform(0.05, 0.95, k).round(3)) / k  # distinct
    scores = (scores / scores.max() * 0.98 + 0.01).astype(np.float32)
    classes = rng.integers(0, draw(st.integers(1, 3)), k).astype(np.int32)
    return boxes, scores, classes


@given(candidates(), st.sampled_from((0.3, 0.5, 0.7)), st.sampled_from((0.0, 0.05, 0.4)),
       st.integers(1, 10), st.booleans())
def test_single_image_nms_equals_numpy_greedy_nms(case, iou_threshold, score_threshold, max_detections, agnostic):
    boxes, scores, classes = case
    selected, selected_scores, count = postprocess.single_image_nms(
        boxes, scores, classes, score_threshold=score_threshold, nms_iou_threshold=iou_threshold,
        max_detections=max_detections, class_agnostic_nms=agnostic,
    )
    count = int(count)
    expected = _reference_nms(boxes.astype(np.float64), scores, classes, iou_threshold, score_threshold,
                              max_detections, agnostic)
    assert ops.convert_to_numpy(selected)[:count].tolist() == expected
    np.testing.assert_array_equal(ops.convert_to_numpy(selected_scores)[:count], scores[expected])


@given(candidates(), st.sampled_from((0.3, 0.5)), st.integers(1, 10), st.booleans(), st.booleans())
def test_select_detections_equals_numpy_nms_and_never_selects_padding(case, iou_threshold, max_detections,
                                                                      agnostic, pad):
    """The model's NMS dispatch (class-wise: combined NMS; agnostic: one NMS) equals the reference; class -1 never out."""
    boxes, scores, classes = case
    if pad:  # padding candidates: class -1, with the best scores, anywhere
        boxes = np.concatenate([boxes, boxes[:2]])
        scores = np.concatenate([scores, np.float32([0.999, 0.995])[: len(boxes) - len(scores)]])
        classes = np.concatenate([classes, np.int32([-1, -1])[: len(boxes) - len(classes)]])
    num_classes = int(classes.max()) + 1 if (classes >= 0).any() else 1
    settings = postprocess.InferenceSettings(
        score_threshold=0.05, nms_iou_threshold=iou_threshold, max_detections=max_detections,
        class_agnostic_nms=agnostic,
    )
    out = postprocess.select_detections(boxes[None], scores[None], classes[None], num_classes, settings)
    n = int(out["num_detections"][0])
    real = classes >= 0
    keep = np.flatnonzero(real)
    expected = keep[_reference_nms(boxes[real].astype(np.float64), scores[real], classes[real], iou_threshold, 0.05,
                                   max_detections, agnostic)]
    assert n == len(expected)
    np.testing.assert_allclose(ops.convert_to_numpy(out["scores"])[0, :n], scores[expected], rtol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(out["classes"])[0, :n], classes[expected])
    np.testing.assert_allclose(ops.convert_to_numpy(out["boxes"])[0, :n], boxes[expected], rtol=1e-6)
    assert (ops.convert_to_numpy(out["classes"])[0, n:] == -1).all()


def test_reference_nms_can_fail():
    """The NumPy reference suppresses: two same-class boxes at IoU 0.82 keep one, different classes keep both."""
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float64)
    scores = np.array([0.9, 0.8])
    assert _reference_nms(boxes, scores, np.array([0, 0]), 0.5, 0.05, 10, False) == [0]
    assert _reference_nms(boxes, scores, np.array([0, 1]), 0.5, 0.05, 10, False) == [0, 1]
    assert _reference_nms(boxes, scores, np.array([0, 1]), 0.5, 0.05, 10, True) == [0]
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(_reference_format([[1, 2, 5, 9]], "rel_xyxy", 10, 20),
                                      _reference_format([[1, 2, 5, 9]], "rel_xyxy", 20, 10))


