"""Tests for keras_retina.model.losses: focal loss (Lin et al. 2017) and box losses.

References, not magic numbers: a float64 NumPy transcription of the paper's
formula, tf.nn.sigmoid_cross_entropy_with_logits (values and gradients),
keras_cv.losses.FocalLoss and keras.losses.Huber; Keras' own reduction rules
recomputed from the unreduced (``reduction=None``) output.
"""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_retina as kr
from keras_retina.model.losses import (
    FocalLoss,
    HuberLoss,
    SmoothL1Loss,
    focal_loss,
    get_box_loss,
    huber_loss,
    smooth_l1_loss,
)

BATCH, ANCHORS, CLASSES = 3, 5, 4
ALPHAS = (0.25, 0.5, 0.9, 0.0, 1.0, None)
GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
REDUCTIONS = (None, "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight")


# --------------------------------------------------------------------------- #
# References and data
# --------------------------------------------------------------------------- #
def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def np_focal_paper(y, p, alpha, gamma):
    """The paper's formula for hard labels y in {0, 1}, in float64.

    FL(p_t) = -alpha_t (1 - p_t)^gamma log(p_t), summed over the class axis;
    p_t = p if y = 1 else 1 - p; alpha_t = alpha if y = 1 else 1 - alpha.
    """
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    assert np.all((y == 0) | (y == 1)), "paper formula is for hard labels"
    p_t = np.where(y == 1, p, 1.0 - p)
    alpha_t = 1.0 if alpha is None else np.where(y == 1, alpha, 1.0 - alpha)
    return np.sum(-alpha_t * (1.0 - p_t) ** gamma * np.log(p_t), axis=-1)


def np_focal_soft(y, p, alpha, gamma):
    """Soft-label generalisation (as torchvision's sigmoid_focal_loss), float64.

    -log(p_t) becomes the binary cross-entropy -[y log p + (1 - y) log(1 - p)],
    p_t = y p + (1 - y)(1 - p), alpha_t = y alpha + (1 - y)(1 - alpha); for
    y in {0, 1} this is exactly ``np_focal_paper``.
    """
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    ce = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    p_t = y * p + (1.0 - y) * (1.0 - p)
    alpha_t = 1.0 if alpha is None else y * alpha + (1.0 - y) * (1.0 - alpha)
    return np.sum(alpha_t * (1.0 - p_t) ** gamma * ce, axis=-1)


def np_focal_from_logits_stable(y, x, alpha, gamma):
    """float64 focal loss from logits, stable for |x| up to 1e4 (hard labels)."""
    y = np.asarray(y, np.float64)
    x = np.asarray(x, np.float64)
    # -log(p_t) = softplus(-x) if y = 1 else softplus(x), via logaddexp.
    ce = np.where(y == 1, np.logaddexp(0.0, -x), np.logaddexp(0.0, x))
    # 1 - p_t = sigmoid(-x) if y = 1 else sigmoid(x), as exp(-softplus(.)).
    one_minus_p_t = np.exp(-np.where(y == 1, np.logaddexp(0.0, x), np.logaddexp(0.0, -x)))
    alpha_t = 1.0 if alpha is None else np.where(y == 1, alpha, 1.0 - alpha)
    return np.sum(alpha_t * one_minus_p_t**gamma * ce, axis=-1)


def np_smooth_l1(y_true, y_pred, beta):
    d = np.abs(np.asarray(y_pred, np.float64) - np.asarray(y_true, np.float64))
    if beta == 0:
        return d.sum(-1)
    out = np.empty_like(d)
    small = d < beta
    out[small] = 0.5 * d[small] ** 2 / beta
    out[~small] = d[~small] - 0.5 * beta
    return out.sum(-1)


def _data(seed, shape=(BATCH, ANCHORS, CLASSES), scale=3.0):
    """Random logits (float32) and one-hot-ish 0/1 targets (float32)."""
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal(shape) * scale).astype(np.float32)
    targets = (rng.random(shape) < 0.3).astype(np.float32)
    return targets, logits


# --------------------------------------------------------------------------- #
# FocalLoss against the paper's formula
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_matches_numpy_paper_formula_from_logits(alpha, gamma):
    y, x = _data(seed=0)
    got = FocalLoss(alpha=alpha, gamma=gamma, reduction=None)(y, x)
    want = np_focal_paper(y, _np_sigmoid(x), alpha, gamma)
    assert tuple(got.shape) == (BATCH, ANCHORS)
    assert got.dtype == "float32"
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # The pure function is what the class wraps.
    np.testing.assert_allclose(
        focal_loss(y, x, alpha=alpha, gamma=gamma).numpy(), want, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("alpha", (0.25, None))
@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_matches_numpy_paper_formula_from_probabilities(alpha, gamma):
    y, _ = _data(seed=1)
    probs = np.random.default_rng(2).uniform(0.01, 0.99, y.shape).astype(np.float32)
    got = FocalLoss(alpha=alpha, gamma=gamma, from_logits=False, reduction=None)(y, probs)
    want = np_focal_paper(y, probs, alpha, gamma)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_focal_docstring_example():
    # One easy negative (p ~ 0.01) and one unsure positive (p = 0.5).
    got = focal_loss([[0.0, 1.0]], [[-4.6, 0.0]]).numpy()
    want = np_focal_paper([[0.0, 1.0]], _np_sigmoid([[-4.6, 0.0]]), 0.25, 2.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got, [0.25 * 0.25 * np.log(2.0)], rtol=1e-3)


def test_focal_default_arguments_are_the_papers():
    loss = FocalLoss()
    assert (loss.alpha, loss.gamma, loss.from_logits, loss.label_smoothing) == (0.25, 2.0, True, 0.0)
    assert loss.reduction == "sum_over_batch_size"
    assert loss.name == "focal_loss"
    assert kr.FocalLoss is FocalLoss


# --------------------------------------------------------------------------- #
# Properties: gamma = 0 is cross-entropy; focal / CE = alpha_t (1 - p_t)^gamma
# --------------------------------------------------------------------------- #
def test_gamma0_alpha_none_equals_sigmoid_ce_values_and_gradients():
    y, x = _data(seed=3, scale=8.0)  # includes saturated logits (|x| ~ 20)
    x = tf.constant(x)
    upstream = tf.constant(np.random.default_rng(4).random((BATCH, ANCHORS)), tf.float32)
    loss_fn = FocalLoss(alpha=None, gamma=0.0, reduction=None)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        focal = loss_fn(y, x)
        ce = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x), axis=-1)
        focal_weighted = tf.reduce_sum(focal * upstream)
        ce_weighted = tf.reduce_sum(ce * upstream)
    np.testing.assert_allclose(focal.numpy(), ce.numpy(), rtol=1e-6, atol=1e-6)
    grad_focal = tape.gradient(focal_weighted, x).numpy()
    grad_ce = tape.gradient(ce_weighted, x).numpy()
    assert np.all(np.isfinite(grad_focal))
    np.testing.assert_allclose(grad_focal, grad_ce, rtol=1e-5, atol=1e-7)
    # Analytic check too: d CE / dx = sigmoid(x) - y.
    np.testing.assert_allclose(
        grad_focal,
        (_np_sigmoid(x.numpy()) - y) * upstream.numpy()[..., None],
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("alpha", (0.25, 0.75, None))
@pytest.mark.parametrize("gamma", GAMMAS)
def test_ratio_focal_over_ce_is_alpha_t_times_modulating_factor(alpha, gamma):
    # C = 1: the per-anchor loss is the element-wise loss.
    rng = np.random.default_rng(5)
    x = rng.uniform(-4.0, 4.0, (64, 1)).astype(np.float32)
    y = (rng.random((64, 1)) < 0.5).astype(np.float32)
    focal = FocalLoss(alpha=alpha, gamma=gamma, reduction=None)(y, x).numpy()
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x).numpy()[:, 0]
    p = _np_sigmoid(x[:, 0])
    p_t = np.where(y[:, 0] == 1, p, 1.0 - p)
    alpha_t = 1.0 if alpha is None else np.where(y[:, 0] == 1, alpha, 1.0 - alpha)
    np.testing.assert_allclose(focal / ce, alpha_t * (1.0 - p_t) ** gamma, rtol=2e-4, atol=1e-7)


def test_focal_downweights_easy_examples_more_than_hard():
    # At gamma = 2 an easy positive (p_t = 0.9) is down-weighted 100x relative
    # to CE, a hard one (p_t = 0.1) only 1/0.81 ~ 1.2x: the point of the paper.
    y = np.ones((2, 1), np.float32)
    x = np.log(np.array([[9.0], [1.0 / 9.0]], np.float32))  # p = 0.9, 0.1
    focal = FocalLoss(alpha=None, gamma=2.0, reduction=None)(y, x).numpy()
    ce = FocalLoss(alpha=None, gamma=0.0, reduction=None)(y, x).numpy()
    np.testing.assert_allclose(ce / focal, [100.0, 1.0 / 0.81], rtol=1e-4)


# --------------------------------------------------------------------------- #
# keras_cv.losses.FocalLoss
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("reduction", (None, "sum", "sum_over_batch_size"))
def test_agrees_with_keras_cv_focal_loss(reduction):
    keras_cv = pytest.importorskip("keras_cv")
    # Where the definitions coincide: hard 0/1 targets, moderate logits,
    # alpha given. keras_cv also sums over the last (class) axis, so both give
    # one value per anchor and the Keras reductions then agree. What differs:
    # - keras_cv defaults to from_logits=False (we pass True explicitly);
    # - keras_cv takes sigmoid first and computes CE from probabilities clipped
    #   to [1e-7, 1 - 1e-7], so it saturates for |logit| >~ 16 (ours is
    #   computed stably from logits);
    # - keras_cv picks alpha_t with `y_true == 1`, so with soft targets or
    #   label smoothing every element gets 1 - alpha (ours interpolates);
    # - keras_cv has no alpha=None.
    y, x = _data(seed=6, scale=2.0)
    ours = FocalLoss(alpha=0.25, gamma=2.0, from_logits=True, reduction=reduction)(y, x)
    theirs = keras_cv.losses.FocalLoss(
        alpha=0.25, gamma=2, from_logits=True, reduction=reduction
    )(y, x)
    assert tuple(ours.shape) == tuple(theirs.shape)
    np.testing.assert_allclose(ours.numpy(), np.asarray(theirs), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- #
# Reductions and sample weights (expected values from the unreduced output)
# --------------------------------------------------------------------------- #
def _unreduced(y, x):
    return FocalLoss(reduction=None)(y, x).numpy().astype(np.float64)


def test_reduction_none_shape_is_y_true_shape_without_class_axis():
    for shape in ((7, CLASSES), (BATCH, ANCHORS, CLASSES), (2, 3, ANCHORS, CLASSES)):
        y, x = _data(seed=7, shape=shape)
        got = FocalLoss(reduction=None)(y, x)
        assert tuple(got.shape) == shape[:-1]
        # The class runs XLA-fused maths: equal up to float32 rounding.
        np.testing.assert_allclose(got.numpy(), focal_loss(y, x).numpy(), rtol=1e-6, atol=1e-7)


def test_reduction_sum():
    y, x = _data(seed=8)
    got = FocalLoss(reduction="sum")(y, x)
    assert tuple(got.shape) == ()
    np.testing.assert_allclose(float(got), _unreduced(y, x).sum(), rtol=1e-5)


def test_reduction_sum_over_batch_size():
    y, x = _data(seed=9)
    got = FocalLoss(reduction="sum_over_batch_size")(y, x)
    assert tuple(got.shape) == ()
    # Keras divides by the number of loss values: BATCH * ANCHORS.
    np.testing.assert_allclose(float(got), _unreduced(y, x).sum() / (BATCH * ANCHORS), rtol=1e-5)


def test_reduction_mean():
    y, x = _data(seed=10)
    got = FocalLoss(reduction="mean")(y, x)
    assert tuple(got.shape) == ()
    np.testing.assert_allclose(float(got), _unreduced(y, x).mean(), rtol=1e-5)


def test_reduction_mean_with_sample_weight():
    y, x = _data(seed=11)
    unreduced = _unreduced(y, x)
    sw = np.random.default_rng(12).uniform(0.0, 2.0, (BATCH, ANCHORS)).astype(np.float32)
    got = FocalLoss(reduction="mean_with_sample_weight")(y, x, sample_weight=sw)
    np.testing.assert_allclose(float(got), (unreduced * sw).sum() / sw.sum(), rtol=1e-5)
    # Without weights it is the plain mean.
    got = FocalLoss(reduction="mean_with_sample_weight")(y, x)
    np.testing.assert_allclose(float(got), unreduced.mean(), rtol=1e-5)


def test_invalid_reduction_raises():
    with pytest.raises(ValueError, match="reduction"):
        FocalLoss(reduction="average")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_kind", ("per_example", "per_anchor"))
def test_sample_weight(reduction, weight_kind):
    y, x = _data(seed=13)
    unreduced = _unreduced(y, x)
    rng = np.random.default_rng(14)
    if weight_kind == "per_example":
        # (B, 1): broadcast over the anchors of each image.
        sw = rng.uniform(0.0, 2.0, (BATCH, 1)).astype(np.float32)
    else:
        sw = rng.uniform(0.0, 2.0, (BATCH, ANCHORS)).astype(np.float32)
    weighted = unreduced * sw  # (B, A)
    expected = {
        None: weighted,
        "sum": weighted.sum(),
        "sum_over_batch_size": weighted.sum() / unreduced.size,
        "mean": weighted.sum() / unreduced.size,
        # Keras divides by the sum of the weights as given.
        "mean_with_sample_weight": weighted.sum() / sw.sum(),
    }[reduction]
    got = FocalLoss(reduction=reduction)(y, x, sample_weight=sw).numpy()
    assert got.shape == np.shape(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_zero_sample_weight_masks_anchors():
    y, x = _data(seed=15)
    sw = np.ones((BATCH, ANCHORS), np.float32)
    sw[:, 2:] = 0.0
    got = FocalLoss(reduction="sum")(y, x, sample_weight=sw)
    np.testing.assert_allclose(float(got), _unreduced(y[:, :2], x[:, :2]).sum(), rtol=1e-5)


# --------------------------------------------------------------------------- #
# Label smoothing
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("smoothing", (0.1, 0.5, 0.9))
@pytest.mark.parametrize("alpha", (0.25, None))
@pytest.mark.parametrize("from_logits", (True, False))
def test_label_smoothing_smooths_targets_towards_half(smoothing, alpha, from_logits):
    y, x = _data(seed=16, scale=2.0)
    y_smooth = y * (1.0 - smoothing) + smoothing / 2.0
    pred = x if from_logits else _np_sigmoid(x).astype(np.float32)
    got = FocalLoss(
        alpha=alpha,
        gamma=2.0,
        from_logits=from_logits,
        label_smoothing=smoothing,
        reduction=None,
    )(y, pred).numpy()
    want = np_focal_soft(y_smooth, _np_sigmoid(x), alpha, 2.0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Same as passing the smoothed targets with no smoothing.
    unsmoothed = focal_loss(y_smooth, pred, alpha=alpha, from_logits=from_logits).numpy()
    np.testing.assert_allclose(got, unsmoothed, rtol=1e-5, atol=1e-7)


def test_soft_reference_equals_paper_formula_for_hard_labels():
    # Guards the reference used for label smoothing.
    y, x = _data(seed=17)
    p = _np_sigmoid(x)
    np.testing.assert_allclose(np_focal_soft(y, p, 0.25, 2.0), np_focal_paper(y, p, 0.25, 2.0), rtol=1e-12)


# --------------------------------------------------------------------------- #
# Numerics: saturated logits, mixed precision
# --------------------------------------------------------------------------- #
_BIG = 1e4
# Every combination of target 0/1 and logit sign, plus mid-saturation logits
# where sigmoid underflows to float32 subnormals / zero.
_SAT_LOGITS = np.array(
    [
        [_BIG, -_BIG, _BIG, -_BIG],
        [-100.0, -88.0, -80.0, -20.0],
        [20.0, 80.0, 88.0, 100.0],
        [0.0, 1e-3, -_BIG, _BIG],
    ],
    np.float32,
)
_SAT_TARGETS = np.array(
    [
        [1.0, 0.0, 0.0, 1.0],  # easy, easy, hard, hard
        [0.0, 1.0, 0.0, 1.0],
        [1.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 1.0, 0.0],
    ],
    np.float32,
)


@pytest.mark.parametrize("gamma", (0.0, 0.5, 2.0))
@pytest.mark.parametrize("alpha", (0.25, None))
def test_saturated_logits_give_finite_values_and_gradients(gamma, alpha):
    x = tf.constant(_SAT_LOGITS)
    y = _SAT_TARGETS
    with tf.GradientTape() as tape:
        tape.watch(x)
        per_anchor = FocalLoss(alpha=alpha, gamma=gamma, reduction=None)(y, x)
        total = tf.reduce_sum(per_anchor)
    grad = tape.gradient(total, x).numpy()
    assert np.all(np.isfinite(per_anchor.numpy()))
    assert np.all(np.isfinite(grad)), grad
    want = np_focal_from_logits_stable(y, _SAT_LOGITS, alpha, gamma)
    np.testing.assert_allclose(per_anchor.numpy(), want, rtol=1e-5, atol=1e-6)
    # Row 0: easy elements give 0 loss and 0 gradient; hard ones give
    # alpha_t * 1e4 and gradient alpha_t * (sigmoid(x) - y) = +-alpha_t.
    a_pos = 1.0 if alpha is None else alpha
    a_neg = 1.0 if alpha is None else 1.0 - alpha
    np.testing.assert_allclose(per_anchor.numpy()[0], (a_neg + a_pos) * _BIG, rtol=1e-6)
    np.testing.assert_allclose(grad[0], [0.0, 0.0, a_neg, -a_pos], atol=1e-6)


@pytest.mark.parametrize("gamma", (0.0, 0.5, 2.0))
def test_saturated_probabilities_give_finite_values_and_gradients(gamma):
    # from_logits=False with probabilities exactly 0 and 1.
    p = tf.constant([[1.0, 0.0, 0.0, 1.0]], tf.float32)
    y = np.array([[1.0, 0.0, 1.0, 0.0]], np.float32)
    with tf.GradientTape() as tape:
        tape.watch(p)
        loss = FocalLoss(gamma=gamma, from_logits=False, reduction="sum")(y, p)
    grad = tape.gradient(loss, p).numpy()
    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize(
    "policy, compute_dtype, tol",
    (("mixed_float16", "float16", 1e-3), ("mixed_bfloat16", "bfloat16", 1e-2)),
)
def test_mixed_precision_computes_in_float32(restore_dtype_policy, policy, compute_dtype, tol):
    y, x = _data(seed=18)
    reference = FocalLoss(reduction=None)(y, x).numpy()  # under the float32 policy
    keras.config.set_dtype_policy(policy)
    assert keras.config.dtype_policy().compute_dtype == compute_dtype
    x_low = tf.cast(x, compute_dtype)
    y_low = tf.cast(y, compute_dtype)

    loss = FocalLoss(reduction=None)
    with tf.GradientTape() as tape:
        tape.watch(x_low)
        got = loss(y_low, x_low)
        total = tf.reduce_sum(got)
    assert got.dtype == "float32"
    assert FocalLoss()(y_low, x_low).dtype == "float32"
    assert focal_loss(y_low, x_low).dtype == "float32"
    # Exactly the float32 maths on the rounded inputs ...
    rounded = FocalLoss(reduction=None)(y, tf.cast(x_low, tf.float32).numpy()).numpy()
    np.testing.assert_allclose(got.numpy(), rounded, rtol=1e-6, atol=1e-7)
    # ... and close to the float32 inputs (only input rounding differs).
    np.testing.assert_allclose(got.numpy(), reference, rtol=tol * 20, atol=tol)
    grad = tape.gradient(total, x_low)
    assert grad.dtype == compute_dtype
    assert np.all(np.isfinite(tf.cast(grad, tf.float32).numpy()))

    # Saturated logits are representable in float16 / bfloat16 and stay finite.
    big = tf.cast(_SAT_LOGITS[:1], compute_dtype)
    sat = loss(tf.cast(_SAT_TARGETS[:1], compute_dtype), big)
    assert sat.dtype == "float32"
    # Hard elements cost alpha_t * |x| with x as rounded (bfloat16: 1e4 -> 9984).
    big_rounded = np.abs(tf.cast(big, tf.float32).numpy()[0])
    np.testing.assert_allclose(sat.numpy(), [0.75 * big_rounded[2] + 0.25 * big_rounded[3]], rtol=1e-6)
    np.testing.assert_allclose(sat.numpy(), [(0.75 + 0.25) * _BIG], rtol=tol)


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(alpha=None, gamma=0.5, label_smoothing=0.1), dict(from_logits=False, gamma=1.0)],
    ids=("defaults", "gamma_half_smoothing", "probabilities"),
)
def test_focal_xla_matches_plain_ops_with_gradients(kwargs):
    """The XLA-compiled loss (default) and plain TF ops agree in value and gradient."""
    y, x = _data(seed=23)
    if kwargs.get("from_logits") is False:
        x = _np_sigmoid(x).astype(np.float32)
    x = tf.constant(x)
    upstream = tf.constant(np.random.default_rng(5).uniform(0.5, 2.0, y.shape[:-1]).astype(np.float32))
    results = []
    for jit in (True, False):
        loss = FocalLoss(jit_compile=jit, reduction=None, **kwargs)

        def value_and_gradient(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = loss(y, x)
            return value, tape.gradient(value, x, output_gradients=upstream)

        # Eagerly, and inside a graph as a train step calls it.
        for run in (value_and_gradient, tf.function(value_and_gradient)):
            value, gradient = run(x)
            results.append((value.numpy(), gradient.numpy()))
    v_ref, g_ref = results[-1]  # plain ops, in a graph
    assert np.abs(g_ref).max() > 0  # a gradient that is all zeros would pass trivially
    for value, gradient in results[:-1]:
        np.testing.assert_allclose(value, v_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gradient, g_ref, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- #
# Config and serialization
# --------------------------------------------------------------------------- #
_FOCAL_KWARGS = (
    dict(alpha=0.4, gamma=1.5, from_logits=True, label_smoothing=0.1, reduction="sum", name="fl"),
    dict(
        alpha=None, gamma=0.0, from_logits=False, label_smoothing=0.0, reduction=None, name="ce",
        jit_compile=False,
    ),
    dict(
        alpha=0.25,
        gamma=2.0,
        from_logits=True,
        label_smoothing=0.0,
        reduction="sum_over_batch_size",
        name="focal_loss",
    ),
)


@pytest.mark.parametrize("kwargs", _FOCAL_KWARGS, ids=("custom", "alpha_none", "defaults"))
def test_focal_config_round_trip(kwargs):
    loss = FocalLoss(**kwargs)
    config = loss.get_config()
    assert {k: config[k] for k in kwargs} == kwargs
    restored = FocalLoss.from_config(config)
    assert restored.get_config() == config
    assert restored.alpha == kwargs["alpha"]  # alpha=None stays None
    y, x = _data(seed=19)
    pred = x if kwargs["from_logits"] else _np_sigmoid(x).astype(np.float32)
    np.testing.assert_array_equal(restored(y, pred).numpy(), loss(y, pred).numpy())


@pytest.mark.parametrize("kwargs", _FOCAL_KWARGS, ids=("custom", "alpha_none", "defaults"))
def test_focal_keras_serialize_deserialize(kwargs):
    loss = FocalLoss(**kwargs)
    serialized = keras.losses.serialize(loss)
    assert serialized["registered_name"] == "keras_retina>FocalLoss"
    restored = keras.losses.deserialize(serialized)
    assert type(restored) is FocalLoss
    assert restored.get_config() == loss.get_config()
    y, x = _data(seed=20)
    pred = x if kwargs["from_logits"] else _np_sigmoid(x).astype(np.float32)
    np.testing.assert_array_equal(restored(y, pred).numpy(), loss(y, pred).numpy())


def test_focal_survives_keras_file_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(CLASSES)])
    model.compile(optimizer="sgd", loss=FocalLoss(alpha=0.5, gamma=1.5))
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, FocalLoss)
    assert (loaded.loss.alpha, loaded.loss.gamma) == (0.5, 1.5)
    assert loaded.loss.get_config() == model.loss.get_config()
    features = np.random.default_rng(21).standard_normal((4, 3)).astype(np.float32)
    targets = (np.random.default_rng(22).random((4, CLASSES)) < 0.5).astype(np.float32)
    np.testing.assert_allclose(
        loaded.evaluate(features, targets, verbose=0),
        model.evaluate(features, targets, verbose=0),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "kwargs, argument",
    (
        (dict(alpha=1.5), "alpha"),
        (dict(alpha=-0.1), "alpha"),
        (dict(gamma=-1.0), "gamma"),
        (dict(label_smoothing=1.0), "label_smoothing"),
        (dict(label_smoothing=-0.1), "label_smoothing"),
    ),
)
def test_focal_invalid_arguments_raise_naming_the_argument(kwargs, argument):
    value = next(iter(kwargs.values()))
    with pytest.raises(ValueError, match=rf"{argument}.*{re.escape(repr(value))}"):
        FocalLoss(**kwargs)


# --------------------------------------------------------------------------- #
# Box losses
# --------------------------------------------------------------------------- #
def _box_data(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.standard_normal((BATCH, ANCHORS, 4)).astype(np.float32)
    # Differences on both sides of every tested beta / delta, and exact zeros.
    diff = rng.choice([0.0, 0.01, -0.05, 0.1, -0.2, 0.5, -1.0, 1.5, -3.0], (BATCH, ANCHORS, 4))
    y_pred = (y_true + diff).astype(np.float32)
    return y_true, y_pred


@pytest.mark.parametrize("beta", (0.11, 0.05, 0.5, 1.0))
def test_smooth_l1_matches_numpy_piecewise(beta):
    y_true, y_pred = _box_data(seed=30)
    got = smooth_l1_loss(y_true, y_pred, beta=beta).numpy()
    assert got.shape == (BATCH, ANCHORS)
    np.testing.assert_allclose(got, np_smooth_l1(y_true, y_pred, beta), rtol=1e-5, atol=1e-6)


def test_smooth_l1_default_beta_is_detectron_0_11():
    y_true, y_pred = _box_data(seed=31)
    want = np_smooth_l1(y_true, y_pred, 0.11)
    np.testing.assert_allclose(smooth_l1_loss(y_true, y_pred).numpy(), want, rtol=1e-5, atol=1e-6)
    loss = SmoothL1Loss(reduction=None)
    assert loss.beta == pytest.approx(0.11)
    np.testing.assert_allclose(loss(y_true, y_pred).numpy(), want, rtol=1e-5, atol=1e-6)
    # Docstring example: |d| = 1 > beta -> 1 - 0.055.
    np.testing.assert_allclose(smooth_l1_loss([[0.0] * 4], [[1.0, 0, 0, 0]]).numpy(), [0.945], rtol=1e-6)


def test_smooth_l1_beta0_is_l1():
    y_true, y_pred = _box_data(seed=32)
    l1 = np.abs(y_pred.astype(np.float64) - y_true).sum(-1)
    np.testing.assert_allclose(smooth_l1_loss(y_true, y_pred, beta=0.0).numpy(), l1, rtol=1e-6)
    np.testing.assert_allclose(SmoothL1Loss(beta=0.0, reduction=None)(y_true, y_pred).numpy(), l1, rtol=1e-6)


def test_smooth_l1_is_continuous_at_beta():
    beta = 0.11
    d = np.array([[beta * (1 - 1e-4), 0, 0, 0], [beta * (1 + 1e-4), 0, 0, 0]], np.float32)
    got = smooth_l1_loss(np.zeros_like(d), d, beta=beta).numpy()
    np.testing.assert_allclose(got, [0.5 * beta, 0.5 * beta], rtol=1e-3)


@pytest.mark.parametrize("delta", (0.11, 0.5, 1.0, 2.0))
def test_huber_equals_delta_times_smooth_l1_with_beta_delta(delta):
    y_true, y_pred = _box_data(seed=33)
    got = huber_loss(y_true, y_pred, delta=delta).numpy()
    assert got.shape == (BATCH, ANCHORS)
    np.testing.assert_allclose(
        got, delta * np_smooth_l1(y_true, y_pred, delta), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        got, delta * smooth_l1_loss(y_true, y_pred, beta=delta).numpy(), rtol=1e-5, atol=1e-6
    )
    # keras.losses.Huber averages over the last axis; ours sums over the 4 deltas.
    keras_huber = keras.losses.Huber(delta=delta, reduction=None)(y_true, y_pred).numpy()
    np.testing.assert_allclose(got, 4.0 * keras_huber, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        HuberLoss(delta=delta, reduction=None)(y_true, y_pred).numpy(), got, rtol=0, atol=0
    )


def test_huber_docstring_example():
    got = HuberLoss(delta=1.0, reduction=None)(np.zeros((2, 4)), np.ones((2, 4)))
    np.testing.assert_allclose(got.numpy(), [2.0, 2.0])


@pytest.mark.parametrize(
    "cls, kwargs",
    (
        (SmoothL1Loss, dict(beta=0.2, reduction="sum", name="box")),
        (SmoothL1Loss, dict(beta=0.0, reduction=None, name="l1")),
        (HuberLoss, dict(delta=0.5, reduction="mean", name="hub")),
    ),
)
def test_box_loss_config_round_trip(cls, kwargs):
    loss = cls(**kwargs)
    config = loss.get_config()
    assert {k: config[k] for k in kwargs} == kwargs
    y_true, y_pred = _box_data(seed=34)
    for restored in (
        cls.from_config(config),
        keras.losses.deserialize(keras.losses.serialize(loss)),
    ):
        assert type(restored) is cls
        assert restored.get_config() == config
        np.testing.assert_array_equal(restored(y_true, y_pred).numpy(), loss(y_true, y_pred).numpy())
    assert keras.losses.serialize(loss)["registered_name"] == f"keras_retina>{cls.__name__}"


@pytest.mark.parametrize(
    "cls, kwargs, argument",
    ((SmoothL1Loss, dict(beta=-0.1), "beta"), (HuberLoss, dict(delta=0.0), "delta")),
)
def test_box_loss_invalid_arguments_raise(cls, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)


@pytest.mark.parametrize(
    "identifier, cls, attr, value",
    (
        ("smooth_l1", SmoothL1Loss, "beta", 0.11),
        ("huber", HuberLoss, "delta", 1.0),
        ("l1", SmoothL1Loss, "beta", 0.0),
        (None, SmoothL1Loss, "beta", 0.11),
    ),
)
def test_get_box_loss_by_name(identifier, cls, attr, value):
    loss = get_box_loss(identifier)
    assert type(loss) is cls
    assert getattr(loss, attr) == pytest.approx(value)
    # Per-anchor output for (B, A, 4) deltas.
    y_true, y_pred = _box_data(seed=35)
    assert tuple(loss.call(y_true, y_pred).shape) == (BATCH, ANCHORS)
    # A fresh instance each time: callers may mutate it.
    assert get_box_loss(identifier) is not loss


def test_get_box_loss_passes_instances_through():
    for instance in (HuberLoss(delta=0.3), SmoothL1Loss(beta=0.2), keras.losses.MeanAbsoluteError()):
        assert get_box_loss(instance) is instance


@pytest.mark.parametrize("identifier", ("bogus", "Huber", 3))
def test_get_box_loss_unknown_raises_naming_accepted_names(identifier):
    with pytest.raises(ValueError) as excinfo:
        get_box_loss(identifier)
    message = str(excinfo.value)
    for name in ("smooth_l1", "huber", "l1", repr(identifier)):
        assert name in message


# --------------------------------------------------------------------------- #
# Online hard example mining (the paper's Table 1d baseline)
# --------------------------------------------------------------------------- #
def np_ohem_reference(loss, weights, foreground, batch, fraction):
    """The selection written as a loop over images and a sort, float64."""
    loss, weights, foreground = (np.asarray(a) for a in (loss, weights, foreground))
    chosen = np.zeros(loss.shape, bool)
    for i in range(loss.shape[0]):
        eligible = weights[i] > 0
        fg = np.flatnonzero(eligible & foreground[i])
        bg = np.flatnonzero(eligible & ~foreground[i])

        def hardest(indices, k):
            return indices[np.argsort(-loss[i, indices], kind="stable")[:k]]

        if fraction is None:
            chosen[i, hardest(np.flatnonzero(eligible), batch)] = True
        else:
            k_pos = min(len(fg), int(fraction * batch))
            k_neg = min(batch - k_pos, int(np.floor(k_pos * (1 - fraction) / fraction + 0.5)))
            chosen[i, hardest(fg, k_pos)] = True
            chosen[i, hardest(bg, k_neg)] = True
    return np.where(chosen, weights, 0.0)


def _ohem(loss, weights, foreground, batch, fraction=None):
    return np.asarray(
        kr.model.losses.hard_example_weights(
            np.asarray(loss, np.float32), np.asarray(weights, np.float32), np.asarray(foreground), batch, fraction
        )
    )


def test_ohem_without_ratio_keeps_the_highest_losses_of_each_image():
    loss = [[0.1, 0.7, 0.3, 0.9, 0.2], [5.0, 4.0, 3.0, 2.0, 1.0]]
    weights = [[1, 1, 1, 1, 1], [1, 0, 1, 1, 1]]  # image 2: anchor 1 ignored (weight 0)
    foreground = [[False, False, True, False, False]] * 2
    np.testing.assert_array_equal(_ohem(loss, weights, foreground, 2), [[0, 1, 0, 1, 0], [1, 0, 1, 0, 0]])
    # A batch larger than the eligible anchors keeps all eligible ones, and only them.
    np.testing.assert_array_equal(_ohem(loss, weights, foreground, 10), weights)


def test_ohem_one_to_three_keeps_positives_and_three_negatives_each():
    loss = [[0.1, 0.2, 0.9, 0.5, 0.3, 0.05, 0.8, 0.4, 0.01, 0.02]]
    foreground = [[False, True, False, False, False, False, True, False, False, False]]
    ones = np.ones((1, 10))
    # 2 positives (<= floor(0.25 * 16) = 4): both kept, and the 6 highest of the 8 negatives.
    np.testing.assert_array_equal(_ohem(loss, ones, foreground, 16, 0.25), [[1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])
    # Batch 4: floor(0.25 * 4) = 1 positive (the harder, anchor 6), then 3 negatives.
    np.testing.assert_array_equal(_ohem(loss, ones, foreground, 4, 0.25), [[0, 0, 1, 1, 0, 0, 1, 1, 0, 0]])
    # No positive in the image: as in SSD, no anchor at all.
    none = np.zeros((1, 10), bool)
    np.testing.assert_array_equal(_ohem(loss, ones, none, 16, 0.25), np.zeros((1, 10)))


@pytest.mark.parametrize("fraction", (None, 0.25, 0.5))
@pytest.mark.parametrize("batch", (1, 7, 128))
def test_ohem_matches_a_sorting_reference(batch, fraction):
    rng = np.random.default_rng(batch)
    loss = rng.exponential(size=(4, 300)).astype(np.float32)
    foreground = rng.random((4, 300)) < 0.05
    weights = (rng.random((4, 300)) < 0.9) * rng.choice([0.5, 1.0], size=(4, 300))
    expected = np_ohem_reference(loss, weights, foreground, batch, fraction)
    np.testing.assert_array_equal(_ohem(loss, weights, foreground, batch, fraction), expected)
    if fraction is None:
        assert np.all((expected > 0).sum(-1) == np.minimum(batch, (weights > 0).sum(-1)))


def test_ohem_selection_passes_no_gradient_and_masks_the_rest():
    logits = tf.constant([[2.0, -1.0, 0.5, -3.0]])
    foreground = tf.constant([[True, False, False, False]])
    with tf.GradientTape() as tape:
        tape.watch(logits)
        targets = tf.cast(foreground, "float32")[..., None]  # (1, 4, 1): one class
        per_anchor = focal_loss(targets, logits[..., None], alpha=None, gamma=0.0)  # plain CE
        weights = kr.model.losses.hard_example_weights(per_anchor, tf.ones((1, 4)), foreground, 2)
        total = tf.reduce_sum(per_anchor * weights)
    gradient = tape.gradient(total, logits).numpy()
    chosen = weights.numpy() > 0
    assert chosen.sum() == 2
    assert np.all(gradient[~chosen] == 0) and np.all(gradient[chosen] != 0)


@pytest.mark.parametrize(
    "kwargs, message",
    (
        (dict(batch_size_per_image=0), "batch_size_per_image"),
        (dict(batch_size_per_image=2.5), "batch_size_per_image"),
        (dict(batch_size_per_image=4, positive_fraction=1.0), "positive_fraction"),
        (dict(batch_size_per_image=4, positive_fraction=0.0), "positive_fraction"),
    ),
)
def test_ohem_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kr.model.losses.hard_example_weights(np.ones((1, 3)), np.ones((1, 3)), np.zeros((1, 3), bool), **kwargs)


def test_retinanet_with_ohem_counts_only_the_chosen_anchors_and_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    kwargs = dict(num_classes=2, backbone="tiny", fpn_channels=8, head_channels=8, num_head_convs=1)
    model = kr.RetinaNet(**kwargs, ohem_batch_size=16, ohem_positive_fraction=0.25)
    plain = kr.RetinaNet(**kwargs)
    images = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3)).astype("uint8")
    y = {"boxes": np.array([[[8.0, 8.0, 40.0, 40.0]], [[20.0, 4.0, 60.0, 30.0]]], "float32"),
         "classes": np.array([[0], [1]], "int32")}
    ce = FocalLoss(alpha=None, gamma=0.0, jit_compile=False)
    for m in (model, plain):
        m.compile(optimizer="sgd", classification_loss=ce)
    outputs = model(images)
    targets = model.label_anchors((64, 64), y)
    cls_loss, box_loss, positives = model.loss_terms(targets, outputs)
    plain_cls, plain_box, _ = plain.loss_terms(targets, outputs)

    one_hot = np.asarray(tf.one_hot(np.maximum(targets["cls_targets"], 0), 2)) * np.asarray(targets["foreground"])[..., None]
    per_anchor = np.asarray(ce.call(one_hot, outputs["cls_logits"]))
    weights = np_ohem_reference(per_anchor, np.asarray(targets["cls_weights"]), np.asarray(targets["foreground"]), 16, 0.25)
    assert 0 < (weights > 0).sum() <= 32
    np.testing.assert_allclose(cls_loss, (per_anchor * weights).sum() / float(positives), rtol=1e-5)
    assert float(plain_cls) > float(cls_loss)  # the plain loss sums every anchor
    np.testing.assert_allclose(box_loss, plain_box, rtol=1e-6)  # the box loss is unchanged

    assert {k: model.get_config()[k] for k in ("ohem_batch_size", "ohem_positive_fraction")} == {
        "ohem_batch_size": 16, "ohem_positive_fraction": 0.25}
    model.save(tmp_path / "ohem.keras")
    restored = keras.saving.load_model(tmp_path / "ohem.keras")
    assert (restored.ohem_batch_size, restored.ohem_positive_fraction) == (16, 0.25)
    restored_cls, _, _ = restored.loss_terms(targets, restored(images))
    np.testing.assert_allclose(restored_cls, cls_loss, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    ((dict(ohem_batch_size=0), "ohem_batch_size"), (dict(ohem_positive_fraction=0.25), "ohem_positive_fraction"),
     (dict(ohem_batch_size=8, ohem_positive_fraction=1.5), "ohem_positive_fraction")),
)
def test_retinanet_refuses_bad_ohem_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kr.RetinaNet(num_classes=2, backbone="tiny", **kwargs)
