"""Recipes chosen by the situation: the demo on shapes, fine-tuning from COCO on a user's data, cpu_small."""

import dataclasses
import os

import pytest

import keras_retina as kr
from keras_retina import recipes
from keras_retina.cli import modes
from keras_retina.cli.flags import config_from_flags
from keras_retina.pretrained import published
from keras_retina.recipes import shapes_pretrain
from keras_retina.training import optimizer as optimizer_lib
from keras_retina.training.train import steps_per_epoch

OWN_DATA = {
    "train_annotations": "train.json",
    "train_images": "train",
    "val_annotations": "val.json",
    "val_images": "val",
}


def test_no_experiment_on_shapes_is_the_demo_unchanged():
    assert config_from_flags({}) == recipes.load("shapes")
    assert config_from_flags({"dataset": "shapes"}) == recipes.load("shapes")


@pytest.mark.parametrize("dataset", ["coco_json", "tfds:voc/2007"])
def test_no_experiment_on_own_data_fine_tunes_from_coco_with_the_papers_recipe(dataset):
    config = config_from_flags({"dataset": dataset, **(OWN_DATA if dataset == "coco_json" else {})})
    train = config.train
    assert config.name == "finetune_coco" and config.data.dataset == dataset
    assert train.init_weights == "torchvision_v2_coco" and train.init_weights in kr.pretrained.CHECKPOINTS
    assert (train.optimizer, train.momentum, train.weight_decay, train.clipnorm) == ("sgd", 0.9, 1e-4, None)
    assert train.learning_rate == 0.01 and train.reference_batch_size == 16  # the paper's rate at batch 16
    assert train.steps_per_epoch is None  # an epoch is one pass over the user's images
    assert [round(f * 90) for f in train.decay_fractions] == [60, 80]
    assert config.data.horizontal_flip and config.data.scale_jitter is None
    assert config.data.image_size == 800


def test_fine_tuning_rate_follows_the_global_batch_and_an_epoch_is_one_pass():
    config = config_from_flags({"dataset": "coco_json", **OWN_DATA, "batch_size": 4})
    optimizer = optimizer_lib.build_optimizer(config.train, total_steps=12_000, batch_size=config.data.batch_size)
    assert optimizer_lib.scaled_for_batch(config.train, 4).learning_rate == pytest.approx(0.0025)  # 0.01 * 4 / 16
    assert float(optimizer.learning_rate) == pytest.approx(0.0025 / 3)  # step 0: warming up from a third
    assert type(optimizer).__name__ == "SGD" and optimizer.momentum == 0.9
    assert steps_per_epoch(config, num_train_images=1003) == 250  # 1003 images at batch 4


def test_explicit_experiment_wins_over_the_dataset_default():
    config = config_from_flags({"dataset": "coco_json", **OWN_DATA, "experiment": "cpu_small"})
    assert config.name == "cpu_small" and config.data.dataset == "coco_json"


def test_cpu_small_trains_offline_from_the_shipped_backbone():
    config = kr.config.validate(recipes.load("cpu_small"))
    demo = recipes.load("shapes")
    assert config.model == demo.model  # the demo's network
    assert config.model.backbone_weights == shapes_pretrain.WEIGHTS_PATH and os.path.exists(shapes_pretrain.WEIGHTS_PATH)
    assert config.train.init_weights is None  # nothing to download
    assert config.train.steps_per_epoch is None and config.data.max_boxes >= 100


def test_init_weights_none_clears_the_recipes_default():
    config = config_from_flags({"dataset": "coco_json", **OWN_DATA, "init_weights": "none", "backbone_weights": "none"})
    assert config.train.init_weights is None and config.model.backbone_weights is None


def test_every_recipe_is_valid_once_its_data_is_given():
    for name in recipes.names():
        config = recipes.load(name)
        if config.data.dataset == "coco_json":
            config = dataclasses.replace(config, data=dataclasses.replace(config.data, **OWN_DATA))
        assert kr.config.validate(config).name == name


def test_unreachable_weights_fail_fast_naming_the_offline_flags_and_write_nothing(tmp_path, monkeypatch):
    """Offline: a clear error naming --init_weights=PATH and --backbone_weights=none; no run directory content."""
    unreachable = published.Checkpoint(
        url="http://127.0.0.1:9/retinanet_offline.pth", version="v2", sha256_prefix="00000000", coco_ap=0.0
    )
    monkeypatch.setitem(published.CHECKPOINTS, "torchvision_v2_coco", unreachable)
    monkeypatch.setenv("KERAS_RETINA_CACHE", str(tmp_path / "cache"))
    kr.data.make_shapes_dataset(tmp_path / "train", 4, seed=0, image_size=(64, 64), verbose=False)
    kr.data.make_shapes_dataset(tmp_path / "val", 2, seed=1, image_size=(64, 64), verbose=False)
    flags = {
        "dataset": "coco_json",
        "train_annotations": str(tmp_path / "train" / "annotations.json"),
        "train_images": str(tmp_path / "train" / "images"),
        "val_annotations": str(tmp_path / "val" / "annotations.json"),
        "val_images": str(tmp_path / "val" / "images"),
        "model_dir": str(tmp_path / "run"),
    }
    config = config_from_flags(flags)
    with pytest.raises(published.WeightsUnavailableError) as error:
        modes.run("train_and_evaluate", config, flags)
    message = str(error.value)
    assert "--init_weights=PATH" in message and "--backbone_weights=none" in message
    assert "retinanet_offline.pth" in message
    assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_the_command_line_says_so_without_a_traceback(tmp_path):
    """main.py with a user's data and no way to fetch the weights: one clear message, exit status 1, nothing written."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    kr.data.make_shapes_dataset(tmp_path / "train", 4, seed=0, image_size=(64, 64), verbose=False)
    kr.data.make_shapes_dataset(tmp_path / "val", 2, seed=1, image_size=(64, 64), verbose=False)
    closed = "http://127.0.0.1:9"  # every download goes through a proxy that refuses: offline, even with a network
    env = dict(os.environ, KERAS_RETINA_CACHE=str(tmp_path / "cache"), HTTPS_PROXY=closed, https_proxy=closed,
               HTTP_PROXY=closed, http_proxy=closed)
    result = subprocess.run(
        [sys.executable, os.path.join(root, "main.py"), "--dataset=coco_json",
         f"--train_annotations={tmp_path / 'train' / 'annotations.json'}", f"--train_images={tmp_path / 'train' / 'images'}",
         f"--val_annotations={tmp_path / 'val' / 'annotations.json'}", f"--val_images={tmp_path / 'val' / 'images'}",
         f"--model_dir={tmp_path / 'run'}"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    assert "keras_retina: Could not download torchvision_v2_coco" in result.stderr
    assert "--init_weights=PATH" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
