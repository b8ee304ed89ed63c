"""FeaturePyramid and heads: shapes, sharing across levels, config round trips (backbones: test_backbones.py)."""

import keras
import numpy as np
import pytest

import keras_retina as kr


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


def test_symmetric_padding_pads_every_side_as_pytorch_does():
    # A stride-2 3x3 conv on an even input: PyTorch's padding=1 reads the
    # top-left border, Keras' "same" does not. With a kernel that only reads
    # its top-left tap, P6's first cell sees the zero pad (symmetric) or C5's
    # first pixel ("same").
    features = [np.ones((1, 8, 8, 4), "float32"), np.ones((1, 4, 4, 4), "float32"), np.ones((1, 2, 2, 4), "float32")]
    p6 = {}
    for padding in ("same", "symmetric"):
        fpn = kr.FeaturePyramid(channels=4, max_level=6, padding=padding)
        fpn.build([f.shape for f in features])
        kernel = np.zeros((3, 3, 4, 4), "float32")
        kernel[0, 0] = np.eye(4)
        fpn.extra_convs[0].kernel.assign(kernel)
        fpn.extra_convs[0].bias.assign(np.zeros(4, "float32"))
        outputs = fpn(features)
        assert tuple(outputs[3].shape) == (1, 1, 1, 4)
        p6[padding] = float(outputs[3][0, 0, 0, 0])
    assert p6 == {"same": 1.0, "symmetric": 0.0}
    with pytest.raises(ValueError, match="padding"):
        kr.FeaturePyramid(padding="reflect")


def test_group_norm_epsilon_reaches_the_norms():
    head = kr.ClassificationHead(num_classes=2, channels=32, num_convs=1, use_group_norm=True, group_norm_epsilon=1e-5)
    assert head.norms[0].epsilon == 1e-5


@pytest.mark.parametrize(
    "layer_cls, kwargs",
    [
        (kr.FeaturePyramid, dict(channels=16, max_level=6, p6_from="p5", padding="symmetric")),
        (kr.ClassificationHead, dict(num_classes=7, num_anchors=3, num_convs=2, channels=32, use_group_norm=True, prior_probability=0.05, group_norm_epsilon=1e-5)),
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
