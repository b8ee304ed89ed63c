"""Experiment configs: overrides, validation, JSON round trip, experiment files."""

import dataclasses
import json

import pytest

import keras_retina as kr
from keras_retina import config as config_lib
from keras_retina import recipes
from keras_retina.config import AnchorConfig, ExperimentConfig, ModelConfig


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
    config = config_lib.override(recipes.load("shapes"), ["scale_jitter=[0.7, 1.3]"])
    path = tmp_path / "config.json"
    config_lib.write_json(config, str(path))
    import json

    assert config_lib.from_dict(json.loads(path.read_text())) == config


@pytest.mark.parametrize("name", ["shapes", "coco_r50_1x", "voc_r50"])
def test_experiment_files_are_valid(name):
    config = config_lib.validate(recipes.load(name))
    assert config.name == name
    assert dataclasses.is_dataclass(config)


def test_coco_recipe_is_the_papers():
    config = recipes.load("coco_r50_1x")
    assert config.data.batch_size == 16
    assert config.train.epochs * config.train.steps_per_epoch == 90000
    milestones = [round(f * 90000) for f in config.train.decay_fractions]
    assert milestones == [60000, 80000]
    assert config.train.learning_rate == 0.01 and config.train.momentum == 0.9 and config.train.weight_decay == 1e-4
    assert config.model.backbone == "resnet50" and config.model.backbone_weights == "imagenet"


def test_unknown_experiment():
    with pytest.raises(ValueError, match="no file keras_retina/recipes/nope.py"):
        recipes.load("nope")


def test_a_dotted_experiment_is_a_module_outside_the_package(tmp_path, monkeypatch):
    """``--experiment=pkg.module`` loads that module's ``config()`` (the paper study's ``experiments.paper_dense``)."""
    (tmp_path / "my_research").mkdir()
    (tmp_path / "my_research" / "__init__.py").write_text("")
    (tmp_path / "my_research" / "wide.py").write_text(
        "from keras_retina import recipes\n"
        "def config():\n"
        "    return __import__('dataclasses').replace(recipes.load('shapes'), name='wide')\n"
    )
    (tmp_path / "my_research" / "empty.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert recipes.load("my_research.wide").name == "wide"
    with pytest.raises(ValueError, match="no module my_research.nope"):
        recipes.load("my_research.nope")
    with pytest.raises(ValueError, match="has no config"):
        recipes.load("my_research.empty")


def test_every_retinanet_argument_is_reachable_from_the_model_config():
    import inspect

    from keras_retina import RetinaNet

    arguments = set(inspect.signature(RetinaNet.__init__).parameters) - {"self", "kwargs", "num_classes"}
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    compile_only = {"focal_alpha", "focal_gamma", "box_loss"}
    as_sections = {"anchor_generator": "anchors"}
    assert {as_sections.get(a, a) for a in arguments} == fields - compile_only, (
        "RetinaNet's constructor and ModelConfig disagree: every argument needs a config field"
    )
    anchor_arguments = set(inspect.signature(kr.AnchorGenerator.__init__).parameters) - {"self"}
    # Levels come from the pyramid: P3 to model.max_level.
    assert anchor_arguments - {"min_level", "max_level"} == {f.name for f in dataclasses.fields(AnchorConfig)}


def test_the_config_builds_the_model_it_describes():
    from keras_retina import training

    config = config_lib.override(
        ExperimentConfig(),
        ["backbone=tiny", "fpn_channels=32", "head_channels=32", "max_level=6", "p6_from=p5",
         "model.anchors.size_multiplier=2", "model.anchors.aspect_ratios=(0.25,0.5,1.0,2.0)",
         "model.anchors.scales=[1.0]", "box_weights=[10,10,5,5]", "fold_batchnorm=false",
         "allow_low_quality_matches=false", "freeze_batchnorm=true"],
    )
    model = training.build_model(config.model, num_classes=2)
    generator = model.anchor_generator
    assert (generator.min_level, generator.max_level) == (3, 6)
    assert generator.size_multiplier == 2.0 and generator.scales == (1.0,)
    assert generator.aspect_ratios == (0.25, 0.5, 1.0, 2.0) and generator.num_anchors_per_location == 4
    assert model.max_level == 6 and model.p6_from == "p5" and model.box_weights == (10.0, 10.0, 5.0, 5.0)
    assert not model.fold_batchnorm and not model.allow_low_quality_matches and model.freeze_batchnorm is True


def test_nested_overrides_round_trip_through_json(tmp_path):
    config = config_lib.override(ExperimentConfig(), ["model.anchors.size_multiplier=3"])
    path = tmp_path / "config.json"
    config_lib.write_json(config, str(path))
    assert json.loads(path.read_text())["model"]["anchors"]["size_multiplier"] == 3.0
    assert config_lib.from_dict(json.loads(path.read_text())) == config
    with pytest.raises(ValueError, match="unknown field 'model.anchors.sizes'"):
        config_lib.override(config, ["model.anchors.sizes=2"])
    with pytest.raises(ValueError, match="'model.anchors' is a section"):
        config_lib.override(config, ["model.anchors=2"])
    with pytest.raises(ValueError, match="model.anchors.scales expects a list"):
        config_lib.override(config, ["model.anchors.scales=2"])
