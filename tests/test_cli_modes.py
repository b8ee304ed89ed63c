"""keras_retina.cli.modes: flags to a config, and the dispatch of modes (the modes themselves: test_training.py)."""

import pytest

from keras_retina.cli import modes
from keras_retina.cli.flags import config_from_flags
from keras_retina.config import override
from keras_retina.training import rundir


def test_flags_pick_the_experiment_and_set_fields():
    config = config_from_flags(
        {"experiment": "coco_r50_1x", "image_size": 640, "batch_size": 4, "backbone_weights": "none",
         "override": ["train.learning_rate=0.02"]}
    )
    assert config.name == "coco_r50_1x" and config.model.backbone == "resnet50"
    assert config.data.image_size == 640 and config.data.batch_size == 4
    assert config.model.backbone_weights is None  # --backbone_weights=none: from scratch
    assert config.train.learning_rate == 0.02


def test_unset_flags_keep_the_experiments_values():
    config = config_from_flags({"experiment": "shapes", "image_size": None, "mode": "train"})
    assert config.data.image_size == 256 and config.model.backbone == "tiny"


def test_modes_after_training_start_from_the_written_config(tmp_path):
    trained = override(config_from_flags({"experiment": "shapes"}), ["data.image_size=192"])
    rundir.write_config(str(tmp_path), trained)
    for mode in ("evaluate", "export", "predict", "analyze"):
        config = config_from_flags({"experiment": "shapes", "model_dir": str(tmp_path), "mode": mode})
        assert config.data.image_size == 192, mode
        assert config.model_dir == str(tmp_path)
    fresh = config_from_flags({"experiment": "shapes", "model_dir": str(tmp_path), "mode": "train"})
    assert fresh.data.image_size == 256  # training starts from the experiment, not an old run


def test_flag_values_are_validated():
    with pytest.raises(ValueError, match="data.image_size must be > 0, got -1"):
        config_from_flags({"image_size": -1})


def test_unknown_mode_is_named():
    with pytest.raises(ValueError, match="Unknown mode 'fly'"):
        modes.run("fly", config_from_flags({}), {})
