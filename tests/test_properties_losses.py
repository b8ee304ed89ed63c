"""Property-based tests (Hypothesis) of the losses, the loss over replicas, and class-id mappings.

The losses must be finite, with finite gradients, for any logits (up to
+-1e4) and any batch of boxes (all padding, zero-size, outside the image) in
float32, float16 and bfloat16; the loss of a batch must not depend on how
many replicas share it (normalised by the global number of positives);
contiguous classes and COCO category ids must map both ways, class 0 included.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from keras import ops
from pycocotools.coco import COCO

import keras_retina as kr
from keras_retina.data.coco_annotations import CocoAnnotations
from keras_retina.data.tfds_source import COCO_CATEGORY_IDS
from keras_retina.evaluation import coco as coco_eval

IMAGE = 64  # the tiny model's input side: 774 anchors
NUM_CLASSES = 3
DTYPES = ("float32", "float16", "bfloat16")


def _logits(draw, shape):
    """Logits with a mix of ordinary values and extremes (+-1e4, +-88, 0)."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    values = rng.normal(0, draw(st.sampled_from((1.0, 10.0, 1e3))), shape)
    extremes = rng.choice([1e4, -1e4, 88.0, -88.0, 0.0, 30.0, -30.0], shape)
    mask = rng.random(shape) < draw(st.sampled_from((0.0, 0.1, 1.0)))
    return np.where(mask, extremes, values).astype(np.float32)


@st.composite
def focal_cases(draw):
    shape = (2, draw(st.integers(1, 12)), NUM_CLASSES)
    targets = draw(st.sampled_from(("zeros", "ones", "one_hot")))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    y_true = {"zeros": np.zeros(shape), "ones": np.ones(shape),
              "one_hot": np.eye(NUM_CLASSES)[rng.integers(0, NUM_CLASSES, shape[:2])]}[targets]
    return y_true.astype(np.float32), _logits(draw, shape)


@settings(max_examples=12)  # each (dtype, jit) pair compiles once
@given(focal_cases(), st.sampled_from(DTYPES), st.booleans(), st.sampled_from((0.0, 0.5, 2.0)))
def test_focal_loss_and_its_gradient_are_finite_for_any_logits(case, dtype, jit_compile, gamma):
    y_true, logits = case
    loss_fn = kr.FocalLoss(gamma=gamma, jit_compile=jit_compile, reduction=None)
    y_pred = tf.Variable(tf.cast(logits, dtype))
    with tf.GradientTape() as tape:
        loss = loss_fn(y_true, y_pred)
        total = tf.reduce_sum(loss)
    gradient = tape.gradient(total, y_pred)
    assert loss.dtype == tf.float32
    assert np.isfinite(loss.numpy()).all() and (loss.numpy() >= 0).all()
    assert np.isfinite(tf.cast(gradient, tf.float32).numpy()).all()


@given(focal_cases(), st.floats(0.0, 1.0), st.sampled_from((0.0, 1.0, 2.0)))
def test_focal_loss_equals_the_papers_formula(case, alpha, gamma):
    """FL = -alpha_t (1 - p_t)^gamma log(p_t), summed over classes, in float64 NumPy, for logits within +-30."""
    y_true, logits = case
    logits = np.clip(logits, -30, 30)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    p_t = np.where(y_true == 1, p, 1 - p)
    alpha_t = np.where(y_true == 1, alpha, 1 - alpha)
    expected = (-alpha_t * (1 - p_t) ** gamma * np.log(p_t)).sum(-1)
    loss = kr.FocalLoss(alpha=alpha, gamma=gamma, reduction=None)(y_true, logits)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=2e-4, atol=1e-6)


@pytest.fixture(scope="module")
def model():
    import helpers

    model = helpers.small_model(num_classes=NUM_CLASSES)
    model.compile(optimizer="sgd")
    return model


@st.composite
def batches(draw, batch_size=2):
    """``(y, y_pred)``: boxes of every awkward kind, and raw outputs with extreme values."""
    num_anchors = len(kr.AnchorGenerator()((IMAGE, IMAGE)))
    n = draw(st.integers(0, 5))
    kind = draw(st.sampled_from(("mixed", "padding", "zero", "outside", "huge")))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    xy = rng.uniform(-20, IMAGE + 20, (batch_size, n, 2))
    wh = rng.uniform(1, 80, (batch_size, n, 2))
    classes = rng.integers(-1, NUM_CLASSES, (batch_size, n))
    if kind == "padding":
        classes[:] = -1
    elif kind == "zero":
        wh[..., rng.integers(0, 2)] = 0.0
    elif kind == "outside":
        xy = xy + rng.choice([-500.0, 500.0], xy.shape)
    elif kind == "huge":
        wh = wh * 1e5
    boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
    y = {"boxes": boxes, "classes": classes.astype(np.int32)}
    y_pred = {"cls_logits": _logits(draw, (batch_size, num_anchors, NUM_CLASSES)),
              "box_deltas": _logits(draw, (batch_size, num_anchors, 4))}
    return y, y_pred


@given(batches(), st.sampled_from(DTYPES))
def test_compute_loss_and_its_gradient_are_finite_for_any_batch(model, case, dtype):
    """The RetinaNet's loss path (matching, focal + box loss, normaliser) on awkward batches and raw outputs."""
    y, y_pred = case
    x = np.zeros((len(y["boxes"]), IMAGE, IMAGE, 3), np.float32)
    outputs = {key: tf.Variable(tf.cast(value, dtype)) for key, value in y_pred.items()}
    with tf.GradientTape() as tape:
        loss = model.compute_loss(x, y, outputs)
    gradients = tape.gradient(loss, list(outputs.values()))
    assert np.isfinite(float(loss)) and float(loss) >= 0
    for gradient in gradients:
        assert np.isfinite(tf.cast(gradient, tf.float32).numpy()).all()


def _split(value, replicas):
    return np.split(np.asarray(value), replicas)


@given(batches(batch_size=4))
def test_loss_of_a_batch_is_the_same_on_one_and_two_replicas(case):
    """Each replica's share sums to the one-device loss: the normaliser is the global number of positives."""
    from helpers import small_model, two_replica_strategy

    y, y_pred = case
    mirrored, _ = two_replica_strategy()
    global _MIRRORED_MODEL
    if _MIRRORED_MODEL is None:
        with mirrored.scope():
            _MIRRORED_MODEL = small_model(num_classes=NUM_CLASSES)
            _MIRRORED_MODEL.compile(optimizer="sgd")
    model = _MIRRORED_MODEL
    x = np.zeros((4, IMAGE, IMAGE, 3), np.float32)
    one_device = float(model.compute_loss(x, y, y_pred))

    def shard(value):
        return mirrored.experimental_distribute_values_from_function(
            lambda context: tf.nest.map_structure(lambda v: _split(v, 2)[context.replica_id_in_sync_group], value)
        )

    per_replica = mirrored.run(model.compute_loss, args=(shard(x), shard(y), shard(y_pred)))
    two_replicas = float(mirrored.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
    np.testing.assert_allclose(two_replicas, one_device, rtol=2e-5)


_MIRRORED_MODEL = None


@pytest.mark.slow
def test_loss_of_a_batch_is_the_same_on_one_two_and_four_replicas():
    """The same on 1, 2 and 4 replicas: child processes with four logical CPUs (keras #19891)."""
    script = os.path.join(os.path.dirname(__file__), "properties_replicas_script.py")
    losses = {}
    for replicas in (1, 2, 4):
        result = subprocess.run(
            [sys.executable, script, str(replicas)], check=False, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr[-3000:]
        losses[replicas] = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(losses[1]) >= 5 and any(case["positives"] > 0 for case in losses[1])
    for one, two, four in zip(losses[1], losses[2], losses[4]):
        assert one["kind"] == two["kind"] == four["kind"]
        np.testing.assert_allclose([two["loss"], four["loss"]], one["loss"], rtol=2e-5, err_msg=one["kind"])


# ------------------------------------------------------------------ classes <-> COCO category ids

def _coco_file(directory, category_ids):
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    categories = [{"id": int(c), "name": f"c{c}"} for c in category_ids]
    path = os.path.join(directory, "instances.json")
    with open(path, "w") as f:
        json.dump({"images": [], "annotations": [], "categories": categories}, f)
    return path


@given(st.permutations(COCO_CATEGORY_IDS), st.lists(st.integers(0, 79), max_size=30))
def test_80_contiguous_classes_map_to_cocos_90_ids_both_ways(tmp_path_factory, order, classes):
    directory = str(tmp_path_factory.mktemp("coco"))
    annotations = CocoAnnotations(_coco_file(directory, order), os.path.join(directory, "images"))
    assert annotations.category_ids == COCO_CATEGORY_IDS  # ascending, whatever the file's order
    classes = np.asarray(classes, np.int64)
    category_ids = annotations.class_to_category_id(classes)
    np.testing.assert_array_equal(category_ids, np.asarray(COCO_CATEGORY_IDS)[classes])
    np.testing.assert_array_equal(annotations.category_id_to_class(category_ids), classes)
    assert annotations.class_to_category_id([0, 79]).tolist() == [1, 90]


@settings(max_examples=6)  # a COCOeval of 80 categories is ~1 s
@given(st.sets(st.integers(1, 79), max_size=4), st.integers(1, 4))
def test_class_0_is_scored_by_the_metric(other_classes, num_images):
    """Perfect detections of class 0 (and others) through detections_to_coco score AP 1: class 0 is not dropped."""
    present = sorted({0} | other_classes)
    gt = COCO()
    images = [{"id": i + 1, "width": 200, "height": 100} for i in range(num_images)]
    annotations, boxes, classes = [], [], []
    for image in images:
        image_boxes = []
        for k, cls in enumerate(present):
            x = 10 + 35 * k
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "iscrowd": 0,
                                "category_id": COCO_CATEGORY_IDS[cls], "bbox": [x, 10, 30, 40], "area": 1200})
            image_boxes.append([x, 10, x + 30, 50])
        boxes.append(image_boxes)
        classes.append(present)
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c, "name": str(c)} for c in COCO_CATEGORY_IDS]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    n = len(present)
    results = coco_eval.detections_to_coco(
        np.asarray(boxes, np.float32), np.full((num_images, n), 0.9), np.asarray(classes), np.full(num_images, n),
        [image["id"] for image in images], COCO_CATEGORY_IDS,
    )
    assert {r["category_id"] for r in results} == {COCO_CATEGORY_IDS[c] for c in present}
    evaluator = coco_eval.run_cocoeval(gt, results)
    assert evaluator.stats[0] == pytest.approx(1.0)
    precision_class_0 = evaluator.eval["precision"][:, :, 0, 0, -1]  # (IoU, recall) of category 1 = class 0
    np.testing.assert_allclose(precision_class_0, 1.0)  # pycocotools divides by tp + fp + eps


def test_metric_property_can_fail():
    """Detections of class 0 reported as class 1 leave category 1 unmatched: the property above would fail."""
    gt = COCO()
    gt.dataset = {"images": [{"id": 1, "width": 100, "height": 100}],
                  "annotations": [{"id": 1, "image_id": 1, "iscrowd": 0, "category_id": 1, "bbox": [10, 10, 30, 40],
                                   "area": 1200}],
                  "categories": [{"id": c, "name": str(c)} for c in COCO_CATEGORY_IDS]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    results = coco_eval.detections_to_coco(np.float32([[[10, 10, 40, 50]]]), np.float32([[0.9]]), np.int32([[1]]),
                                           np.int32([1]), [1], COCO_CATEGORY_IDS)
    assert coco_eval.run_cocoeval(gt, results).stats[0] < 1.0


def test_focal_property_can_fail():
    """The formula test's reference differs from the loss when alpha is misapplied."""
    y_true, logits = np.float32([[1.0, 0.0]]), np.float32([[0.3, -1.2]])
    loss = kr.FocalLoss(alpha=0.25, reduction=None)(y_true, logits).numpy()
    wrong = kr.FocalLoss(alpha=0.75, reduction=None)(y_true, logits).numpy()
    assert not np.allclose(loss, wrong, rtol=2e-4)
    assert ops.convert_to_numpy(loss).shape == (1,)
