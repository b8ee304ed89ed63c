"""Experiment configs: overrides, validation, JSON round trip, experiment files."""

import dataclasses

import pytest

from keras_retina import experiments
from keras_retina import config as config_lib
from keras_retina.config import ExperimentConfig


def test_override_parses_types_and_sections():
    config = config_lib.override(
        ExperimentConfig(),
        [
            "train.learning_rate=0.02",
            "backbone=tiny",
            "epochs=3",
            "jit_compile=true",
            "scale_jitter=[0.5, 2]",
            "backbone_weights=null",
            "data.train_images=/tmp/x",
        ],
    )
    assert config.train.learning_rate == 0.02
    assert config.model.backbone == "tiny"
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.train.jit_compile is True
    assert config.data.scale_jitter == (0.5, 2.0)
    assert config.model.backbone_weights is None
    assert config.data.train_images == "/tmp/x"


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("nonsense=1", "unknown"),
        ("train.bogus=1", "unknown field 'train.bogus'"),
        ("epochs=two", "expects an integer"),
        ("jit_compile=1", "expects true or false"),
        ("learning_rate", "field=value"),
        ("epochs=null", "cannot be null"),
    ],
)
def test_override_errors_name_the_field(assignment, message):
    with pytest.raises(ValueError, match=message):
        config_lib.override(ExperimentConfig(), [assignment])


def test_validate_rejects_bad_values():
    with pytest.raises(ValueError, match="train.strategy"):
        config_lib.validate(config_lib.replace(ExperimentConfig(), "train", strategy="gpu"))
    with pytest.raises(ValueError, match="data.train_annotations"):
        config_lib.validate(config_lib.replace(ExperimentConfig(), "data", dataset="coco_json"))
    with pytest.raises(ValueError, match="data.dataset"):
        config_lib.validate(config_lib.replace(ExperimentConfig(), "data", dataset="voc"))
    assert config_lib.validate(config_lib.replace(ExperimentConfig(), "data", dataset="tfds:voc/2007"))


def test_json_round_trip(tmp_path):
    config = config_lib.override(experiments.load("shapes"), ["scale_jitter=[0.7, 1.3]"])
    path = tmp_path / "config.json"
    config_lib.write_json(config, str(path))
    import json

    assert config_lib.from_dict(json.loads(path.read_text())) == config


@pytest.mark.parametrize("name", ["shapes", "coco_r50_1x", "voc_r50"])
def test_experiment_files_are_valid(name):
    config = config_lib.validate(experiments.load(name))
    assert config.name == name
    assert dataclasses.is_dataclass(config)


def test_coco_recipe_is_the_papers():
    config = experiments.load("coco_r50_1x")
    assert config.data.batch_size == 16
    assert config.train.epochs * config.train.steps_per_epoch == 90000
    milestones = [round(f * 90000) for f in config.train.decay_fractions]
    assert milestones == [60000, 80000]
    assert config.train.learning_rate == 0.01 and config.train.momentum == 0.9 and config.train.weight_decay == 1e-4
    assert config.model.backbone == "resnet50" and config.model.backbone_weights == "imagenet"


def test_unknown_experiment():
    with pytest.raises(ValueError, match="no file keras_retina/experiments/nope.py"):
        experiments.load("nope")
