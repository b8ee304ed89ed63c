"""FeaturePyramid, heads and backbones: shapes, sharing across levels, config round trips."""

import keras
import numpy as np
import pytest

import keras_retina as kr
from keras_retina.backbones import preprocessor


def _features(batch=2, size=64):
    rng = np.random.default_rng(0)
    return [
        rng.normal(size=(batch, size // s, size // s, c)).astype("float32")
        for s, c in ((8, 16), (16, 24), (32, 32))
    ]


@pytest.mark.parametrize("p6_from", ["c5", "p5"])
def test_feature_pyramid_levels(p6_from):
    fpn = kr.FeaturePyramid(channels=8, p6_from=p6_from)
    outputs = fpn(_features(size=128))
    assert [tuple(o.shape) for o in outputs] == [(2, 16 // 2**i * 1, 16 // 2**i, 8) for i in range(5)]
    assert fpn.extra_convs[0].kernel.shape[2] == (32 if p6_from == "c5" else 8)


def test_feature_pyramid_odd_sizes_crop_upsampled_levels():
    fpn = kr.FeaturePyramid(channels=8)
    feats = [np.zeros((1, 13, 20, 4), "float32"), np.zeros((1, 7, 10, 4), "float32"), np.zeros((1, 4, 5, 4), "float32")]
    shapes = [tuple(o.shape[1:3]) for o in fpn(feats)]
    assert shapes == [(13, 20), (7, 10), (4, 5), (2, 3), (1, 2)]
    assert [s[1:3] for s in fpn.compute_output_shape([f.shape for f in feats])] == shapes


def test_heads_share_weights_across_levels():
    head = kr.ClassificationHead(num_classes=5, num_anchors=9, channels=16, num_convs=2)
    level = np.random.default_rng(1).normal(size=(1, 4, 4, 16)).astype("float32")
    both = head([level, level]).numpy()
    assert both.shape == (1, 2 * 4 * 4 * 9, 5)
    np.testing.assert_array_equal(both[:, :144], both[:, 144:])  # same map, same weights
    assert len(head.trainable_weights) == 2 * 2 + 2  # two tower convs + output conv


def test_group_norm_option():
    head = kr.BoxHead(channels=32, num_convs=2, use_group_norm=True)
    head([np.ones((1, 4, 4, 32), "float32")])
    assert len(head.norms) == 2 and all(isinstance(n, keras.layers.GroupNormalization) for n in head.norms)


@pytest.mark.parametrize(
    "layer_cls, kwargs",
    [
        (kr.FeaturePyramid, dict(channels=16, max_level=6, p6_from="p5")),
        (kr.ClassificationHead, dict(num_classes=7, num_anchors=3, num_convs=2, channels=32, use_group_norm=True, prior_probability=0.05)),
        (kr.BoxHead, dict(num_anchors=3, num_convs=1, channels=32, use_group_norm=False)),
    ],
)
def test_layer_config_round_trip(layer_cls, kwargs):
    layer = layer_cls(**kwargs)
    config = layer.get_config()
    for key, value in kwargs.items():
        assert config[key] == value, key
    feats = _features(size=64) if layer_cls is kr.FeaturePyramid else [np.ones((1, 4, 4, 32), "float32")]
    out = layer(feats)
    clone = layer_cls.from_config(config)
    clone(feats)
    clone.set_weights(layer.get_weights())
    for a, b in zip(keras.tree.flatten(out), keras.tree.flatten(clone(feats))):
        np.testing.assert_array_equal(a, b)
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is layer_cls and restored.get_config() == config


@pytest.mark.parametrize(
    "name, channels",
    [("tiny", (64, 128, 256)), ("resnet50", (512, 1024, 2048)), ("mobilenet_v2", (192, 576, 1280))],
)
def test_backbones_return_strides_8_16_32(name, channels):
    backbone = kr.build_backbone(name, weights=None)
    outputs = backbone(np.zeros((1, 96, 160, 3), "float32"))
    assert [tuple(o.shape) for o in outputs] == [(1, 12, 20, channels[0]), (1, 6, 10, channels[1]), (1, 3, 5, channels[2])]


def test_resnet101_c4_is_deeper():
    resnet50, resnet101 = kr.build_backbone("resnet50"), kr.build_backbone("resnet101")
    assert resnet101.get_layer("conv4_block23_out").output is resnet101.outputs[1]
    assert len(resnet101.layers) > len(resnet50.layers) + 100


def test_freeze_at_and_frozen_batchnorm():
    backbone = kr.build_backbone("resnet50", freeze_at=2, freeze_batchnorm=True)
    by_name = {layer.name: layer for layer in backbone.layers}
    assert not by_name["conv1_conv"].trainable
    assert not by_name["conv2_block3_3_conv"].trainable
    assert by_name["conv3_block1_1_conv"].trainable
    assert all(not l.trainable for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization))
    open_backbone = kr.build_backbone("resnet50", freeze_at=0, freeze_batchnorm=False)
    assert all(l.trainable for l in open_backbone.layers)
    assert len(open_backbone.trainable_weights) > len(backbone.trainable_weights)


def test_model_freeze_defaults_depend_on_pretraining():
    scratch = kr.RetinaNet(num_classes=2, backbone="resnet50")
    assert scratch.backbone.get_layer("conv1_conv").trainable
    assert scratch.backbone.get_layer("conv1_bn").trainable


def test_weights_from_file(tmp_path):
    source = kr.build_backbone("tiny")
    path = str(tmp_path / "tiny.weights.h5")
    keras.Model(source.inputs, source.outputs[-1]).save_weights(path)
    loaded = kr.build_backbone("tiny", weights=path)
    for a, b in zip(source.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_preprocessing_lives_in_the_model():
    np.testing.assert_allclose(np.asarray(preprocessor("tiny")(np.full((1, 1, 1, 3), 255.0, "float32"))), 1.0)
    caffe = np.asarray(preprocessor("resnet50")(np.array([[[[255.0, 0.0, 0.0]]]], "float32")))
    np.testing.assert_allclose(caffe[0, 0, 0], [-103.939, -116.779, 255.0 - 123.68], rtol=1e-5)


def test_bad_backbone_arguments():
    with pytest.raises(ValueError, match=r"Unknown backbone: `name` must be one of \(.*\), got 'vgg'\."):
        kr.build_backbone("vgg")
    with pytest.raises(ValueError, match="tiny"):
        kr.build_backbone("tiny", weights="imagenet")
    with pytest.raises(ValueError, match="freeze_at"):
        kr.build_backbone("tiny", freeze_at=9)
