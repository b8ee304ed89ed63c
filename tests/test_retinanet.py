"""RetinaNet: outputs, initialisation, losses in fit, prediction, serialisation, distribution."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import SMALL_MODEL_KWARGS, small_model, toy_batch

import keras_retina as kr
from keras_retina.model import boxes as box_ops


def test_output_shapes_match_anchor_count_for_odd_sizes():
    model = small_model()
    images = np.zeros((2, 100, 160, 3), "uint8")
    out = model(images)
    num_anchors = len(model.anchors((100, 160)))
    assert tuple(out["cls_logits"].shape) == (2, num_anchors, 3)
    assert tuple(out["box_deltas"].shape) == (2, num_anchors, 4)


def test_initialisation_follows_paper():
    model = small_model()
    model(np.zeros((1, 64, 64, 3), "float32"))
    cls_bias = model.classification_head.output_conv.bias.numpy()
    np.testing.assert_allclose(cls_bias, -math.log(99.0), rtol=1e-6)
    np.testing.assert_array_equal(model.box_head.output_conv.bias.numpy(), 0.0)
    for conv in model.classification_head.convs + model.box_head.convs + [model.box_head.output_conv]:
        kernel = conv.kernel.numpy()
        assert abs(kernel.std() - 0.01) < 0.002
        np.testing.assert_array_equal(conv.bias.numpy(), 0.0)
    probs = tf.sigmoid(model(np.zeros((1, 64, 64, 3)))["cls_logits"]).numpy()
    assert abs(probs.mean() - 0.01) < 0.002


def test_fit_logs_losses_and_positives_on_dataset():
    images, y = toy_batch()
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    dataset = tf.data.Dataset.from_tensor_slices((images, y)).batch(2).repeat(2)
    history = model.fit(dataset, epochs=1, verbose=0).history
    assert {"loss", "cls_loss", "box_loss", "num_positives"} <= set(history)
    assert len(model.metrics_names) == len(set(model.metrics_names))  # each tracker once
    assert history["num_positives"][0] > 3
    np.testing.assert_allclose(history["loss"][0], history["cls_loss"][0] + history["box_loss"][0], rtol=1e-5)


def test_fit_on_arrays_logs_every_metric_then_predict_keeps_every_candidate():
    """One epoch on two 64 x 64 arrays (the second image has one box and a padding row), then detections."""
    keras.utils.set_random_seed(0)
    model = kr.RetinaNet(num_classes=3, backbone="tiny", fpn_channels=16, head_channels=16, num_head_convs=1)
    images = np.zeros((2, 64, 64, 3), "uint8")
    y = {
        "boxes": np.array([[[8, 8, 40, 40], [30, 20, 60, 50]], [[0, 0, 32, 64], [0, 0, 0, 0]]], "float32"),
        "classes": np.array([[0, 2], [1, -1]], "int32"),
    }
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    history = model.fit(images, y, epochs=1, verbose=0).history
    assert sorted(history) == ["box_loss", "cls_loss", "dropped_boxes", "loss", "num_positives", "truncated_boxes"]
    assert history["dropped_boxes"] == [0.0] and history["truncated_boxes"] == [0.0]  # no counts in y: none
    model.score_threshold = 0.0  # keep every candidate
    detections = model.predict(images, verbose=0)
    assert detections["boxes"].shape == (2, 100, 4)
    assert detections["num_detections"].tolist() == [100, 100]


def test_initial_classification_loss_matches_prior():
    """At init every anchor says p = 0.01: the focal loss per positive is 0.25 * 0.99**2 * -log(0.01)."""
    images, y = toy_batch()
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(0.0))
    history = model.fit(images, y, batch_size=2, epochs=1, verbose=0).history
    positives = history["num_positives"][0]
    num_anchors = len(model.anchors((128, 128)))
    # The logits are not exactly the bias (random N(0, 0.01) kernels): allow a few percent.
    per_positive = 0.25 * 0.99**2 * -math.log(0.01)
    background = 0.75 * 0.01**2 * -math.log(0.99) * (2 * num_anchors * 3) / positives
    np.testing.assert_allclose(history["cls_loss"][0], per_positive + background, rtol=0.05)


def test_fit_on_numpy_and_on_batches_without_boxes():
    images, _ = toy_batch()
    empty = {"boxes": np.zeros((2, 3, 4), "float32"), "classes": np.full((2, 3), -1, "int32")}
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    history = model.fit(images, empty, batch_size=2, epochs=2, verbose=0).history
    assert history["num_positives"] == [0.0, 0.0]
    assert history["box_loss"] == [0.0, 0.0]
    assert all(np.isfinite(history["cls_loss"])) and history["cls_loss"][0] > 0


def test_sample_weight_zero_removes_an_image():
    """An image of weight 0 counts as absent: in the losses and in the normaliser."""
    images, y = toy_batch()
    model = small_model()
    y_pred = model(images)
    full = float(model.compute_loss(images, y, y_pred))
    only_first = float(model.compute_loss(images, y, y_pred, sample_weight=np.array([1.0, 0.0])))
    first = float(model.compute_loss(images[:1], {k: v[:1] for k, v in y.items()}, model(images[:1])))
    assert only_first != pytest.approx(full, rel=1e-3)
    assert only_first == pytest.approx(first, rel=1e-5)


def test_bounding_box_format_converts_targets():
    images, y = toy_batch()
    model_xyxy = small_model()
    model_xywh = small_model(bounding_box_format="xywh")
    model_xyxy(images)
    model_xywh(images)
    model_xywh.set_weights(model_xyxy.get_weights())
    boxes_xywh = np.asarray(box_ops.convert_format(y["boxes"], "xyxy", "xywh"))
    y_pred = model_xyxy(images)
    a = float(model_xyxy.compute_loss(images, y, y_pred))
    b = float(model_xywh.compute_loss(images, {"boxes": boxes_xywh, "classes": y["classes"]}, y_pred))
    assert a == pytest.approx(b, rel=1e-5)


def test_compute_loss_is_the_sum_of_its_stages():
    images, y = toy_batch()
    model = small_model(box_weights=(10.0, 10.0, 5.0, 5.0))
    model.compile(optimizer="sgd", box_loss_weight=2.0)
    y_pred = model(images)
    targets = model.label_anchors((128, 128), y)
    expected = kr.assign_targets(model.anchors((128, 128)), y["boxes"], y["classes"], box_weights=(10, 10, 5, 5))
    for key in expected:
        np.testing.assert_array_equal(targets[key], expected[key], err_msg=key)
    cls_loss, box_loss, num_positives = model.loss_terms(targets, y_pred)
    assert float(num_positives) == float(np.sum(targets["foreground"]))
    assert float(cls_loss) > 0 and float(box_loss) > 0
    loss = float(model.compute_loss(images, y, y_pred))
    assert loss == pytest.approx(float(cls_loss) + float(box_loss), rel=1e-6)
    model.update_metrics(cls_loss, box_loss, num_positives, {"num_dropped_boxes": np.array([2, 1])})
    assert float(model.dropped_boxes_tracker.result()) == 3.0


def test_one_box_coder_for_matching_and_decoding():
    model = small_model(box_weights=(10.0, 10.0, 5.0, 5.0))
    assert model.box_coder == box_ops.BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert model.box_weights == (10.0, 10.0, 5.0, 5.0)
    _, y = toy_batch()
    targets = model.label_anchors((128, 128), y)
    foreground = np.asarray(targets["foreground"])[0]
    decoded = np.asarray(model.box_coder.decode(model.anchors((128, 128)), targets["box_targets"][0]))[foreground]
    matched = np.asarray(box_ops.pairwise_iou(decoded, y["boxes"][0])).max(axis=1)
    np.testing.assert_allclose(matched, 1.0, atol=1e-4)  # each target decodes back to its box


def test_bad_targets_and_compile_arguments():
    model = small_model()
    images, _ = toy_batch()
    with pytest.raises(ValueError, match="`y` must be a dict .*'boxes'.*, got ndarray."):
        model.compute_loss(images, np.zeros((2, 4)), model(images))
    with pytest.raises(ValueError, match="`loss` must be None .*classification_loss.*, got 'mse'."):
        model.compile(loss="mse")
    with pytest.raises(ValueError, match="box_loss"):
        model.compile(box_loss="bogus")


def test_predict_returns_padded_detections_inside_image():
    images, _ = toy_batch()
    model = small_model(score_threshold=0.0, max_detections=50)  # keep every candidate
    detections = model.predict(images, verbose=0)
    assert detections["boxes"].shape == (2, 50, 4)
    assert detections["scores"].shape == (2, 50)
    assert detections["classes"].dtype == np.int32
    assert detections["num_detections"].tolist() == [50, 50]
    assert detections["boxes"].min() >= 0 and detections["boxes"].max() <= 128
    assert np.all(np.diff(detections["scores"], axis=1) <= 1e-7)  # sorted by score


def test_untrained_model_keeps_no_detection_below_threshold():
    images, _ = toy_batch()
    detections = small_model().predict(images, verbose=0)  # scores start near 0.01 < 0.05
    assert detections["num_detections"].tolist() == [0, 0]
    assert (detections["classes"] == -1).all()


def _half_sure_model(**overrides):
    """A small model whose class scores are all about 0.5 (class-head bias 0), built at 128 x 128."""
    model = small_model(**overrides)
    model(np.zeros((1, 128, 128, 3), "float32"))
    model.classification_head.output_conv.bias.assign(np.zeros_like(model.classification_head.output_conv.bias))
    return model


def _same_class_max_iou(detections, b):
    n = detections["num_detections"][b]
    boxes, classes = np.asarray(detections["boxes"][b, :n]), np.asarray(detections["classes"][b, :n])
    iou = np.asarray(box_ops.pairwise_iou(boxes, boxes))
    same = (classes[:, None] == classes[None, :]) & ~np.eye(n, dtype=bool)
    return iou[same].max()


def test_changed_score_threshold_takes_effect_after_predict():
    images, _ = toy_batch()
    model = _half_sure_model()
    scores = np.asarray(model.predict(images, verbose=0)["scores"])
    assert model.predict(images, verbose=0)["num_detections"].tolist() == [100, 100]
    assert 0.4 < scores[:, 0].min() and scores.max() < 0.6
    detect = model.detect_function()
    assert detect(images)["num_detections"].numpy().tolist() == [100, 100]
    model.score_threshold = 0.9
    assert model.score_threshold == 0.9 and model.inference_settings.score_threshold == 0.9
    assert model.predict(images, verbose=0)["num_detections"].tolist() == [0, 0]
    assert model.detect_function() is not detect  # rebuilt with the new setting
    assert model.detect_function()(images)["num_detections"].numpy().tolist() == [0, 0]
    assert model.detect_function() is model.detect_function()  # cached until the next change
    assert model.detect(images)["num_detections"].numpy().tolist() == [0, 0]


def test_changed_max_detections_changes_the_output_shape():
    images, _ = toy_batch()
    model = _half_sure_model()
    assert model.predict(images, verbose=0)["boxes"].shape == (2, 100, 4)
    assert model.detect_function()(images)["scores"].shape == (2, 100)
    model.max_detections = 7
    detections = model.predict(images, verbose=0)
    assert detections["boxes"].shape == (2, 7, 4)
    assert detections["num_detections"].tolist() == [7, 7]
    assert model.detect_function()(images)["scores"].shape == (2, 7)


def test_changed_nms_iou_threshold_and_pre_nms_topk_take_effect():
    images, _ = toy_batch()
    model = _half_sure_model()
    assert _same_class_max_iou(model.predict(images, verbose=0), 0) > 0.2
    model.nms_iou_threshold = 0.2
    for detections in (model.predict(images, verbose=0), model.detect_function()(images)):
        detections = {key: np.asarray(value) for key, value in detections.items()}
        assert _same_class_max_iou(detections, 0) <= 0.2 + 1e-6
    model.pre_nms_topk = 1  # one (anchor, class) pair per level: at most 5 candidates
    num_levels = len(model.anchor_generator.anchors_per_level((128, 128)))
    assert model.predict(images, verbose=0)["num_detections"].max() <= num_levels
    assert np.asarray(model.detect_function()(images)["num_detections"]).max() <= num_levels


def test_inference_settings_are_validated_and_saved(tmp_path):
    model = small_model()
    model.inference_settings = kr.model.postprocess.InferenceSettings(score_threshold=0.2, max_detections=9)
    model.pre_nms_topk = 300
    model.nms_iou_threshold = 0.7
    for name, bad, message in (
        ("score_threshold", 1.5, "`score_threshold` must be a number in [0, 1], got 1.5."),
        ("nms_iou_threshold", -0.1, "`nms_iou_threshold` must be a number in [0, 1], got -0.1."),
        ("pre_nms_topk", 0, "`pre_nms_topk` must be an integer >= 1, got 0."),
        ("max_detections", 2.5, "`max_detections` must be an integer >= 1, got 2.5."),
    ):
        with pytest.raises(ValueError) as error:
            setattr(model, name, bad)
        assert str(error.value) == message
    with pytest.raises(ValueError, match="`inference_settings` must be a keras_retina.model.postprocess.InferenceSettings"):
        model.inference_settings = {"score_threshold": 0.2}
    expected = dict(score_threshold=0.2, pre_nms_topk=300, nms_iou_threshold=0.7, max_detections=9)
    assert model.inference_settings == kr.model.postprocess.InferenceSettings(**expected)  # failed sets changed nothing
    config = model.get_config()
    assert {key: config[key] for key in expected} == expected
    model(np.zeros((1, 64, 64, 3), "float32"))
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert restored.inference_settings == model.inference_settings
    assert restored.detect(np.zeros((1, 64, 64, 3), "uint8"))["boxes"].shape == (1, 9, 4)


def test_get_config_matches_constructor_arguments():
    kwargs = dict(
        SMALL_MODEL_KWARGS,
        use_group_norm=True,
        p6_from="p5",
        prior_probability=0.02,
        foreground_iou=0.6,
        background_iou=0.3,
        allow_low_quality_matches=False,
        box_weights=(10.0, 10.0, 5.0, 5.0),
        score_threshold=0.1,
        pre_nms_topk=500,
        nms_iou_threshold=0.6,
        max_detections=20,
    )
    config = kr.RetinaNet(**kwargs).get_config()
    for key, value in kwargs.items():
        assert config[key] == value, key
    assert config["anchor_generator"]["config"] == kr.AnchorGenerator().get_config()


def test_keras_round_trip_gives_identical_outputs(tmp_path):
    images, y = toy_batch()
    model = small_model(use_group_norm=True, max_detections=10, score_threshold=0.0)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        classification_loss=kr.FocalLoss(alpha=0.5, gamma=1.0),
        box_loss="huber",
    )
    model.fit(images, y, batch_size=2, epochs=1, verbose=0)
    path = tmp_path / "retinanet.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, kr.RetinaNet)
    assert restored.get_config() == model.get_config()
    for key in ("cls_logits", "box_deltas"):
        np.testing.assert_array_equal(restored(images)[key], model(images)[key])
    a, b = model.predict(images, verbose=0), restored.predict(images, verbose=0)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert restored.classification_loss.alpha == 0.5 and restored.classification_loss.gamma == 1.0
    assert isinstance(restored.box_loss, kr.HuberLoss)
    restored.fit(images, y, batch_size=2, epochs=1, verbose=0)  # compiled state restored


def test_predict_works_after_xla_training():
    images, y = toy_batch()
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=True)
    model.fit(images, y, batch_size=2, epochs=1, verbose=0)
    assert model.jit_compile
    assert model.predict(images, verbose=0)["boxes"].shape == (2, 100, 4)


def _one_sgd_step(strategy, images, y):
    keras.utils.set_random_seed(3)
    with strategy.scope():
        model = small_model()
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    dataset = tf.data.Dataset.from_tensor_slices((images, y)).batch(len(images))
    history = model.fit(dataset, epochs=1, verbose=0).history
    return model.get_weights(), history


def test_mirrored_strategy_normalises_by_global_positives():
    """Two replicas, different positive counts: same weights and losses as one device."""
    images, y = toy_batch()  # image 0 has 2 boxes, image 1 has 1: replicas see different counts
    from helpers import two_replica_strategy

    mirrored, single = two_replica_strategy()  # the process's one MirroredStrategy
    assert mirrored.num_replicas_in_sync == 2
    w_mirrored, h_mirrored = _one_sgd_step(mirrored, images, y)
    w_single, h_single = _one_sgd_step(single, images, y)
    for key in ("loss", "cls_loss", "box_loss", "num_positives"):
        np.testing.assert_allclose(h_mirrored[key], h_single[key], rtol=1e-5, err_msg=key)
    for a, b in zip(w_mirrored, w_single):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert any(not np.allclose(a, b) for a, b in zip(w_single, _initial_weights()))


def _initial_weights():
    keras.utils.set_random_seed(3)
    model = small_model()
    model(np.zeros((1, 128, 128, 3)))
    return model.get_weights()


def _best_match(detections, b, box):
    n = detections["num_detections"][b]
    iou = np.asarray(box_ops.pairwise_iou(box[None], detections["boxes"][b, :n]))[0]
    return iou, detections["scores"][b, :n], detections["classes"][b, :n]


@pytest.mark.slow
def test_overfits_two_images():
    """Trained on two images, the model finds their boxes (IoU >= 0.9) with the right classes."""
    keras.utils.set_random_seed(0)
    images, y = toy_batch()
    model = small_model(fpn_channels=64, head_channels=64, num_head_convs=4)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    model.fit(images, y, batch_size=2, epochs=300, verbose=0)
    detections = model.predict(images, verbose=0)
    for b in range(2):
        for box, cls in zip(y["boxes"][b], y["classes"][b]):
            if cls < 0:
                continue
            iou, scores, classes = _best_match(detections, b, box)
            # The highest-scoring detection that overlaps this object is the object itself.
            overlapping = np.flatnonzero(iou >= 0.5)
            assert len(overlapping), f"no detection for image {b} box {box}"
            top = overlapping[np.argmax(scores[overlapping])]
            assert classes[top] == cls
            assert iou[top] >= 0.9, (b, box, detections["boxes"][b, top])
