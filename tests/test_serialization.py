"""Every registered keras_retina object survives a round trip: Layers, Models and Losses through a .keras file.

Files written by earlier versions load too: ``tests/data/saved_by_0_1_0.keras``
was saved by keras_retina 0.1.0, whose modules had other paths.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import assert_keras_round_trip, small_model, toy_batch

import keras_retina as kr
from keras_retina import training

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def _pyramid(size=128, channels=16, batch=1):
    rng = np.random.RandomState(0)
    return [rng.randn(batch, size // 2**level, size // 2**level, channels).astype("float32") for level in range(3, 8)]


def _features(size=64, batch=1):
    rng = np.random.RandomState(1)
    return [rng.randn(batch, size // 2**level, size // 2**level, 8 * level).astype("float32") for level in (3, 4, 5)]


def _logits_and_targets(num_classes=3, anchors=50):
    rng = np.random.RandomState(2)
    logits = rng.randn(2, anchors, num_classes).astype("float32")
    targets = (rng.rand(2, anchors, num_classes) > 0.9).astype("float32")
    return logits, targets


def _deltas_and_targets(anchors=50):
    rng = np.random.RandomState(3)
    return rng.randn(2, anchors, 4).astype("float32"), rng.randn(2, anchors, 4).astype("float32")


#: name -> () -> (object, inputs, loss targets or None)
MODELS_LAYERS_LOSSES = {
    "RetinaNet": lambda: (small_model(use_group_norm=True, score_threshold=0.2, max_detections=50), toy_batch(64)[0], None),
    "FeaturePyramid": lambda: (kr.FeaturePyramid(channels=16, p6_from="p5", name="fpn"), _features(), None),
    "ClassificationHead": lambda: (
        kr.ClassificationHead(num_classes=3, num_convs=2, channels=32, use_group_norm=True, prior_probability=0.05, name="cls"),
        _pyramid(),
        None,
    ),
    "BoxHead": lambda: (kr.BoxHead(num_convs=1, channels=16, name="box"), _pyramid(), None),
    "FocalLoss": lambda: (kr.FocalLoss(alpha=0.3, gamma=1.5, label_smoothing=0.1), *_logits_and_targets()),
    "SmoothL1Loss": lambda: (kr.SmoothL1Loss(beta=0.2), *_deltas_and_targets()),
    "HuberLoss": lambda: (kr.HuberLoss(delta=0.5), *_deltas_and_targets()),
}

#: Registered objects that are neither Layer, Model nor Loss: their config round-trips.
OTHERS = {
    "AnchorGenerator": lambda: kr.AnchorGenerator(size_multiplier=2.0, aspect_ratios=(0.25, 1.0, 4.0)),
    "BoxCoder": lambda: kr.model.boxes.BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
    "WarmupStepDecay": lambda: training.WarmupStepDecay(0.02, milestones=(10, 20), warmup_steps=5),
}


def _registered() -> set[str]:
    prefix = "keras_retina>"
    return {name[len(prefix):] for name in keras.saving.get_custom_objects() if name.startswith(prefix)}


def test_every_registered_class_has_a_case():
    assert _registered() == set(MODELS_LAYERS_LOSSES) | set(OTHERS), (
        "a registered keras_retina class without a round-trip case here (or a case for one no longer registered)"
    )


@pytest.mark.parametrize("name", sorted(MODELS_LAYERS_LOSSES))
def test_keras_file_round_trip_gives_identical_outputs(name, tmp_path):
    obj, inputs, targets = MODELS_LAYERS_LOSSES[name]()
    restored = assert_keras_round_trip(obj, inputs, tmp_path, targets=targets)
    assert restored is not obj


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_config_round_trip(name):
    obj = OTHERS[name]()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(restored) is type(obj) and restored.get_config() == obj.get_config()


def test_a_file_saved_by_0_1_0_loads_with_the_same_outputs():
    expected = np.load(os.path.join(DATA, "saved_by_0_1_0.npz"))
    model = keras.saving.load_model(os.path.join(DATA, "saved_by_0_1_0.keras"))
    assert isinstance(model, kr.RetinaNet)
    assert model.anchor_generator.scales == (1.0, 1.5) and model.max_detections == 20
    assert isinstance(model.classification_loss, kr.FocalLoss) and model.classification_loss.alpha == 0.3
    assert isinstance(model.optimizer._learning_rate, training.WarmupStepDecay)  # the schedule object
    assert model.optimizer._learning_rate.milestones == (5, 8) and int(model.optimizer.iterations) == 1
    raw = model(expected["images"])
    np.testing.assert_allclose(np.asarray(raw["cls_logits"]), expected["cls_logits"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(raw["box_deltas"]), expected["box_deltas"], atol=1e-5)
    detections = model.predict(expected["images"], verbose=0)
    for key, value in detections.items():
        np.testing.assert_allclose(np.asarray(value), expected[f"detections_{key}"], atol=1e-4, err_msg=key)


def test_import_keras_retina_alone_lets_keras_load_a_file_with_the_schedule():
    """A fresh process: ``import keras_retina``, then ``keras.saving.load_model``, nothing else imported."""
    code = (
        "import sys, keras, keras_retina\n"
        "model = keras.saving.load_model(sys.argv[1])\n"
        "print(type(model.optimizer._learning_rate).__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, os.path.join(DATA, "saved_by_0_1_0.keras")],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "WarmupStepDecay"
