"""Tests for the study's stand-in for ImageNet (``experiments.paper_pretrain``): crops of other images, the weights load."""

import json
import os

import numpy as np

from experiments import paper_dense, paper_pretrain
from keras_retina.data import shapes


def test_pretraining_crops_hold_their_object_or_none_and_the_weights_load(tmp_path):
    from keras_retina.model.backbones import build_backbone
    from keras_retina.training import backbone_pretraining

    split = paper_pretrain.write_data(str(tmp_path / "data"), num_train=6, num_val=1, verbose=False)["train"]
    found = backbone_pretraining.crops(split.annotation_file, split.image_dir, seed=3)
    images, labels, names = found["images"], found["labels"], found["class_names"]
    with open(split.annotation_file) as f:
        coco = json.load(f)
    assert names == tuple(shapes.SHAPE_CLASSES) + ("background",)
    assert images.shape == (len(labels), 64, 64, 3)
    objects = sorted(a["category_id"] - 1 for a in coco["annotations"])
    assert sorted(labels[labels < 5].tolist()) == objects and (labels == 5).sum() == 2 * 6
    assert found["background_skipped"] == 0
    # The study's data is seed 0; the pre-training images are others.
    assert paper_pretrain.DATA_SEED != paper_dense.DATA_SEED
    weights = str(tmp_path / "w.weights.h5")
    result = paper_pretrain.pretrain(str(tmp_path / "data"), weights, steps=3, batch_size=8, num_train=6, num_val=1, verbose=0)
    assert result["train_crops"] == len(labels) and os.path.exists(weights + ".json")
    loaded, again, fresh = build_backbone("tiny", weights=weights), build_backbone("tiny", weights=weights), build_backbone("tiny")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(loaded(x)[-1], again(x)[-1])  # the file's weights, not each build's random init
    assert not np.allclose(loaded(x)[-1], fresh(x)[-1])
    assert paper_dense.config().model.backbone_weights == paper_pretrain.WEIGHTS_PATH
