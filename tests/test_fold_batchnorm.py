"""BatchNorm folding: the folded twin computes what the backbone computes, and shares its weights."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_retina as kr
from keras_retina.model.backbones import build_backbone, fold_batchnorm


def _randomise_batchnorm(model, seed=0):
    """Moving statistics and affine parameters far from the identity, so a wrong fold shows."""
    rng = np.random.default_rng(seed)
    for layer in model.layers if hasattr(model, "layers") else []:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0.0, 0.2, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
            layer.beta.assign(rng.normal(0.0, 0.1, layer.beta.shape))


def test_tiny_backbone_has_nothing_to_fold():
    assert fold_batchnorm(build_backbone("tiny", freeze_at=0, freeze_batchnorm=False)) is None


def test_resnet50_folded_matches_inference_mode_and_shares_weights():
    keras.utils.set_random_seed(0)
    backbone = build_backbone("resnet50", freeze_at=0, freeze_batchnorm=False, input_shape=(64, 64, 3))
    _randomise_batchnorm(backbone)
    folded = fold_batchnorm(backbone)
    folded_convs = [layer for layer in folded.layers if type(layer).__name__ == "_FoldedConv2D"]
    assert len(folded_convs) == 53  # every conv of ResNet-50 is followed by a BatchNorm
    assert folded.weights == []  # nothing of its own: it reads the backbone's variables
    x = np.random.default_rng(1).normal(0, 50, (2, 64, 64, 3)).astype("float32")
    for want, got in zip(backbone(x, training=False), folded(x)):
        scale = float(np.max(np.abs(want)))
        assert scale > 0
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5 * scale)
    # A change to the backbone's variables shows in the twin at once.
    norm = backbone.get_layer("conv5_block3_3_bn")
    norm.beta.assign(norm.beta + 1.0)
    for want, got in zip(backbone(x, training=False), folded(x)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5 * float(np.max(np.abs(want))))


def _model(**kwargs):
    return kr.RetinaNet(
        num_classes=3, backbone="resnet50", fpn_channels=32, head_channels=32, num_head_convs=1, **kwargs
    )


def test_retinanet_uses_the_folded_twin_only_when_batchnorm_uses_moving_statistics():
    trainable_bn = _model(freeze_at=0, freeze_batchnorm=False)
    trainable_bn.build((None, 64, 64, 3))
    assert trainable_bn._backbone_for(True) is trainable_bn.backbone  # batch statistics
    assert trainable_bn._backbone_for(False) is not trainable_bn.backbone
    frozen_bn = _model(freeze_at=2, freeze_batchnorm=True)
    frozen_bn.build((None, 64, 64, 3))
    assert frozen_bn._backbone_for(True) is not frozen_bn.backbone
    unfolded = _model(freeze_at=2, freeze_batchnorm=True, fold_batchnorm=False)
    unfolded.build((None, 64, 64, 3))
    assert unfolded._backbone_for(False) is unfolded.backbone
    assert len(frozen_bn.weights) == len(unfolded.weights)  # the twin adds no weights


def test_folded_training_gives_the_same_gradients(restore_dtype_policy):
    """With frozen BatchNorm, gradients through the fold equal those through the BatchNorm layers.

    float64 so that ReLUs sitting at 0 cannot flip between the two
    float32 computations and make the comparison meaningless.
    """
    keras.config.set_dtype_policy("float64")
    keras.utils.set_random_seed(0)
    models = [_model(freeze_at=2, freeze_batchnorm=True, fold_batchnorm=fold) for fold in (True, False)]
    for model in models:
        model.build((None, 64, 64, 3))
    _randomise_batchnorm(models[0].backbone)
    models[1].set_weights(models[0].get_weights())
    images = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {"boxes": np.array([[[8, 8, 40, 50]], [[20, 10, 60, 30]]], "float32"), "classes": np.array([[1], [2]])}
    gradients = []
    for model in models:
        with tf.GradientTape() as tape:
            loss = model.compute_loss(images, y, model(images, training=True))
        gradients.append(tape.gradient(loss, model.trainable_variables))
    assert models[0]._backbone_for(True) is not models[0].backbone
    assert len(gradients[0]) == len(gradients[1]) > 0
    for folded, plain, variable in zip(*gradients, models[1].trainable_variables):
        assert folded is not None, variable.path
        # The losses compute in float32, which bounds the agreement.
        np.testing.assert_allclose(
            folded.numpy(), plain.numpy(), atol=1e-5 * float(np.max(np.abs(plain.numpy())) + 1e-12),
            err_msg=variable.path,
        )


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_folded_under_mixed_precision_matches_float32(restore_dtype_policy, policy):
    from helpers import skip_if_onednn_cap_hides_bf16

    skip_if_onednn_cap_hides_bf16(policy)
    keras.utils.set_random_seed(0)
    reference = _model(freeze_at=2, freeze_batchnorm=True, fold_batchnorm=False)
    reference.build((None, 64, 64, 3))
    _randomise_batchnorm(reference.backbone)
    keras.config.set_dtype_policy(policy)
    mixed = _model(freeze_at=2, freeze_batchnorm=True)
    mixed.build((None, 64, 64, 3))
    mixed.set_weights(reference.get_weights())
    images = np.random.default_rng(3).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    want = reference(images, training=False)["box_deltas"].numpy()
    got = mixed(images, training=False)["box_deltas"]
    assert got.dtype == keras.config.dtype_policy().compute_dtype
    got = np.asarray(got, "float32")
    assert np.all(np.isfinite(got))
    # bfloat16 keeps 8 bits of mantissa: agreement to a few percent of the range.
    np.testing.assert_allclose(got, want, atol=0.05 * float(np.max(np.abs(want))))


def test_folded_model_round_trips_and_exports(tmp_path):
    """`.keras` and SavedModel copies of a folded ResNet-50 model compute what the model computes."""
    from keras_retina.deploy.saved_model import export_saved_model

    keras.utils.set_random_seed(0)
    model = _model(freeze_at=2, freeze_batchnorm=True, score_threshold=0.0)
    model.build((None, 64, 64, 3))
    _randomise_batchnorm(model.backbone)
    images = np.random.default_rng(4).integers(0, 256, (1, 64, 64, 3)).astype("uint8")
    want = model.predict(images, verbose=0)
    assert model._folded.model is not None  # prediction ran the folded twin

    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert restored.get_config()["fold_batchnorm"] is True
    got = restored.predict(images, verbose=0)
    np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["boxes"], want["boxes"], atol=1e-3)

    path = export_saved_model(model, str(tmp_path / "export"), class_names=["a", "b", "c"], image_size=64)
    served = tf.saved_model.load(path).signatures["serving_images"](images=tf.constant(images))
    count = int(want["num_detections"][0])
    assert count > 0 and int(served["num_detections"][0]) == count
    np.testing.assert_allclose(served["detection_scores"].numpy()[0, :count], want["scores"][0, :count], atol=1e-4)
