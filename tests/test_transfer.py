"""Fine-tuning from a trained detector (kr.training.transfer) and published checkpoints by name (published)."""

import json
import math
import os

import keras
import numpy as np
import pytest

import keras_retina as kr
from keras_retina import training
from keras_retina.config import AnchorConfig, ExperimentConfig, ModelConfig, override
from keras_retina.pretrained import published
from keras_retina.training import transfer
from keras_retina.pretrained import torchvision as tv
from keras_retina.training import rundir


def _small(num_classes, **kwargs):
    model = kr.RetinaNet(
        num_classes=num_classes, backbone="tiny", fpn_channels=16, head_channels=32, num_head_convs=1,
        use_group_norm=True, **kwargs,
    )
    model.build((None, 64, 64, 3))
    return model


def _head_rows(model):
    """Classification layer as (kernel (kh, kw, in, K, C), bias (K, C))."""
    conv = model.classification_head.output_conv
    k = model.anchor_generator.num_anchors_per_location
    kernel = np.asarray(conv.kernel)
    return kernel.reshape(kernel.shape[:3] + (k, model.num_classes)), np.asarray(conv.bias).reshape(k, -1)


def test_transfer_keeps_matched_rows_and_initialises_the_rest():
    keras.utils.set_random_seed(0)
    source = _small(4)
    for variable in source.weights:  # a "trained" source: nothing at its initial value
        variable.assign(np.random.default_rng(1).normal(size=variable.shape).astype("float32"))
    target = _small(3)
    report = transfer.transfer_weights(
        source, target, ["Traffic_Light", "widget", "person"], ["__background__", "person", "car", "traffic light"]
    )
    assert report == {"matched": {"Traffic_Light": "traffic light", "person": "person"}, "new": ["widget"]}
    for source_variable, target_variable in zip(source.backbone.weights, target.backbone.weights):
        np.testing.assert_array_equal(source_variable, target_variable)
    for a, b in zip(source.box_head.weights, target.box_head.weights):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(source.classification_head.convs[0].kernel, target.classification_head.convs[0].kernel)
    source_kernel, source_bias = _head_rows(source)
    kernel, bias = _head_rows(target)
    np.testing.assert_array_equal(kernel[..., 0], source_kernel[..., 3])  # traffic light
    np.testing.assert_array_equal(kernel[..., 2], source_kernel[..., 1])  # person
    np.testing.assert_array_equal(bias[:, 2], source_bias[:, 1])
    # The new class: N(0, 0.01) kernel and the prior-probability bias.
    np.testing.assert_allclose(bias[:, 1], -math.log(0.99 / 0.01), rtol=1e-6)
    assert 0.005 < kernel[..., 1].std() < 0.02


def test_transfer_refuses_a_different_architecture():
    with pytest.raises(ValueError, match="architectures differ"):
        transfer.transfer_weights(_small(2), _small(2, max_level=6), ["a", "b"], ["a", "b"])


def test_finetune_config_takes_the_sources_layout_and_freezes_as_the_paper():
    source = tv.from_torchvision(tv.random_state_dict("v2", num_classes=91))
    config = transfer.finetune_model_config(ModelConfig(backbone="tiny", max_detections=50, freeze_at=1), source)
    assert (config.backbone, config.p6_from, config.use_group_norm, config.group_norm_epsilon) == (
        "torchvision_resnet50", "c5", True, 1e-5,
    )
    assert config.anchors == AnchorConfig(**tv.ANCHORS)
    assert config.max_detections == 50  # the run's own inference settings
    assert config.freeze_at == 1 and config.freeze_batchnorm is True  # explicit kept; None -> frozen BatchNorm
    model = training.build_model(config, num_classes=3)
    assert model.anchor_generator == source.anchor_generator


def test_open_source_reads_a_keras_run_with_its_classes(tmp_path):
    model = _small(2)
    run = tmp_path / "run"
    os.makedirs(run / "checkpoints")
    model.save(run / "checkpoints" / "best.keras")
    rundir.write_classes(str(run), ["cat", "dog"], [1, 2])
    source = transfer.open_source(str(run / "checkpoints" / "best.keras"))
    assert source.class_names == ("cat", "dog") and source.model.num_classes == 2
    with pytest.raises(ValueError, match="must be one of"):
        transfer.open_source("resnet50_imagenet")


def _coco_named_shapes(tmp_path):
    """The shapes data as a user's COCO-format folder whose classes carry COCO names (two of five)."""
    from keras_retina.data import make_shapes_splits

    splits = make_shapes_splits(tmp_path / "data", num_train=8, num_val=4, seed=5, image_size=(128, 128))
    renames = {"circle": "sports ball", "square": "tv"}
    for split in splits.values():
        annotations = json.loads(open(split.annotation_file).read())
        for category in annotations["categories"]:
            category["name"] = renames.get(category["name"], category["name"])
        with open(split.annotation_file, "w") as f:
            json.dump(annotations, f)
    return splits


def test_finetuning_from_a_torchvision_pth_keeps_coco_rows_and_trains(tmp_path):
    state = tv.random_state_dict("v1", num_classes=91, seed=3)
    kr.pretrained.write_pth(tmp_path / "retinanet.pth", state)
    splits = _coco_named_shapes(tmp_path)
    config = override(
        ExperimentConfig(name="finetune", model_dir=str(tmp_path / "run")),
        [
            "dataset=coco_json",
            f"train_annotations={splits['train'].annotation_file}",
            f"train_images={splits['train'].image_dir}",
            f"val_annotations={splits['val'].annotation_file}",
            f"val_images={splits['val'].image_dir}",
            "image_size=128", "batch_size=2", "epochs=1", "steps_per_epoch=2", "warmup_steps=1",
            "tensorboard=false", "max_detections=10",
            f"init_weights={tmp_path / 'retinanet.pth'}",
        ],
    )
    seen = {}

    class Capture(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["rows"] = _head_rows(self.model)
            seen["conv1"] = np.asarray(self.model.backbone.get_layer("conv1_conv").kernel)

    model, history, data, metrics = training.train(config, callbacks=[Capture()])
    assert data.class_names == ("sports ball", "tv", "triangle", "diamond", "cross")
    kernel, bias = seen["rows"]
    # torchvision's COCO label 37 is "sports ball", 72 "tv": their rows, per anchor.
    source = state["head.classification_head.cls_logits.weight"].reshape(9, 91, 256, 3, 3)
    np.testing.assert_array_equal(kernel[..., 0], source[:, 37].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(kernel[..., 1], source[:, 72].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(bias[:, 1], state["head.classification_head.cls_logits.bias"].reshape(9, 91)[:, 72])
    np.testing.assert_allclose(bias[:, 2:], -math.log(0.99 / 0.01), rtol=1e-6)  # new classes: the prior
    np.testing.assert_array_equal(seen["conv1"], state["backbone.body.conv1.weight"].transpose(2, 3, 1, 0))
    # It trained: finite losses; the frozen stem did not move, the class layer did.
    assert all(np.isfinite(history.history["loss"]))
    np.testing.assert_array_equal(np.asarray(model.backbone.get_layer("conv1_conv").kernel), seen["conv1"])
    assert not np.array_equal(_head_rows(model)[1], bias)
    written = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert written["backbone"] == "torchvision_resnet50" and written["p6_from"] == "p5"
    assert written["freeze_at"] == 2 and written["freeze_batchnorm"] is True
    assert 0.0 <= metrics["AP"] <= 1.0


# ---------------------------------------------------------------- published
def _fake_published(tmp_path, monkeypatch, corrupt=False):
    path = tmp_path / "served" / "retinanet_fake.pth"
    os.makedirs(path.parent)
    kr.pretrained.write_pth(path, tv.random_state_dict("v1", num_classes=91, seed=4))
    prefix = published.sha256(str(path))[:8]
    if corrupt:
        prefix = "00000000" if prefix != "00000000" else "11111111"
    checkpoint = published.Checkpoint(url=path.as_uri(), version="v1", sha256_prefix=prefix, coco_ap=0.0)
    monkeypatch.setitem(published.CHECKPOINTS, "fake_coco", checkpoint)
    return path


def test_load_downloads_checks_converts_and_caches(tmp_path, monkeypatch):
    served = _fake_published(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    model = kr.pretrained.load("fake_coco", cache_dir=str(cache))
    assert model.num_classes == 91 and model.max_detections == 300
    assert (cache / "retinanet_fake.pth").exists() and (cache / "fake_coco.keras").exists()
    os.remove(served)  # the second call needs neither the origin nor the .pth
    os.remove(cache / "retinanet_fake.pth")
    again = kr.pretrained.load("fake_coco", cache_dir=str(cache))
    images = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(again(images)["cls_logits"], model(images)["cls_logits"], rtol=1e-5, atol=1e-5)


def test_load_refuses_a_file_whose_hash_differs(tmp_path, monkeypatch):
    _fake_published(tmp_path, monkeypatch, corrupt=True)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="does not start with"):
        kr.pretrained.load("fake_coco", cache_dir=str(cache))
    assert not (cache / "retinanet_fake.pth").exists() and not (cache / "fake_coco.keras").exists()
    with pytest.raises(ValueError, match="Unknown published checkpoint"):
        kr.pretrained.load("yolo_coco")


def test_convert_mode_then_export_serves_coco_category_ids(tmp_path):
    """--mode=convert writes a run directory from a checkpoint; --mode=export serves it with COCO's names."""
    import tensorflow as tf

    from keras_retina.cli import modes
    from keras_retina.cli.flags import config_from_flags
    from keras_retina.deploy.class_names import read_class_names
    from keras_retina.deploy.saved_model import _sample_jpeg

    state = tv.random_state_dict("v2", num_classes=91, seed=5)
    state["head.classification_head.cls_logits.bias"] += 4.0  # scores near 0.4 rather than the prior's 0.01
    kr.pretrained.write_pth(tmp_path / "coco.pth", state)
    flags = {"experiment": "shapes", "model_dir": str(tmp_path / "run"), "init_weights": str(tmp_path / "coco.pth"),
             "image_size": 128, "export_dir": str(tmp_path / "export")}
    config = config_from_flags(flags)
    modes.run("convert", config, flags)
    written = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert written["backbone"] == "torchvision_resnet50" and written["max_detections"] == 300
    assert rundir.read_classes(str(tmp_path / "run"))[1] == tuple(range(91))
    path = modes.export(config_from_flags(dict(flags, init_weights=None)), flags)
    names, ids = read_class_names(path)
    assert names[:3] == ["__background__", "person", "bicycle"] and names[12] == "N/A" and ids[90] == 90
    served = tf.saved_model.load(path).signatures["serving_default"](images=tf.constant([_sample_jpeg()]))
    classes = served["detection_classes"].numpy()
    count = int(served["num_detections"].numpy()[0])
    assert served["detection_boxes"].shape[1] == 300 and count > 0
    assert set(classes[0, :count].astype(int)) <= set(range(91))
