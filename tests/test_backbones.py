"""Backbones: C3–C5 strides, freezing, weights from a file, preprocessing, bad arguments (folding: test_fold_batchnorm.py)."""

import keras
import numpy as np
import pytest

import keras_retina as kr
from keras_retina.model.backbones import preprocessor


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


def test_torchvision_resnet50_layout():
    backbone = kr.build_backbone("torchvision_resnet50", freeze_at=2)
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(convs) == 53 and not any(conv.use_bias for conv in convs)
    assert {norm.epsilon for norm in norms} == {1e-5}
    # The stride of a downsampling block is on its 3x3 conv, after a symmetric pad; the 1x1s keep stride 1.
    block = {layer.name: layer for layer in backbone.layers if layer.name.startswith("conv3_block1_")}
    assert block["conv3_block1_1_conv"].strides == (1, 1) and block["conv3_block1_2_conv"].strides == (2, 2)
    assert block["conv3_block1_2_pad"].padding == ((1, 1), (1, 1))
    assert [tuple(c.shape) for c in backbone(np.zeros((1, 64, 96, 3), "float32"))] == [
        (1, 8, 12, 512), (1, 4, 6, 1024), (1, 2, 3, 2048),
    ]
    assert not backbone.get_layer("conv2_block3_3_conv").trainable and backbone.get_layer("conv3_block1_1_conv").trainable
    with pytest.raises(ValueError, match="no Keras ImageNet weights"):
        kr.build_backbone("torchvision_resnet50", weights="imagenet")
