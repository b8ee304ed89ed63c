"""keras_retina.data.run_data.RunData: the configured dataset, chosen once, each part built once."""

import json

import pytest
import tensorflow_datasets as tfds

from keras_retina.config import DataConfig
from keras_retina.data import make_shapes_splits, run_data


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shapes")
    make_shapes_splits(directory, num_train=6, num_val=4, seed=0, image_size=(64, 64), verbose=False)
    return directory


def _shapes_config(directory, **changes):
    return DataConfig(
        shapes_dir=str(directory), shapes_num_train=6, shapes_num_val=4, shapes_image_size=64,
        image_size=64, batch_size=2, **changes,
    )


def test_shapes_pipelines_classes_and_ground_truth(shapes):
    data = run_data.RunData(_shapes_config(shapes))
    assert data.class_names == ("circle", "square", "triangle", "diamond", "cross")
    assert data.category_ids == (1, 2, 3, 4, 5)
    assert data.num_train_images == 6
    images, y = next(iter(data.pipeline("train")))
    assert images.shape == (2, 64, 64, 3) and y["boxes"].shape[-1] == 4
    images, y = next(iter(data.pipeline("val")))
    assert images.shape == (2, 64, 64, 3)
    assert {"boxes", "classes", "image_id", "scale", "image_shape"} <= set(y)  # evaluation's metadata
    ids = [int(i) for _, y in data.pipeline("val") for i in y["image_id"].numpy()]
    assert sorted(ids) == sorted(data.coco_gt.getImgIds()) and len(ids) == 4
    assert data.pipeline("val") is data.pipeline("val")  # built once


def test_distributed_pipeline_gives_each_replica_its_share_of_the_global_batch(shapes):
    from helpers import two_replica_strategy

    mirrored, _ = two_replica_strategy()
    batches = run_data.RunData(_shapes_config(shapes)).distributed_pipeline("val", mirrored)
    shapes_per_step, ids = [], []
    for images, y in batches:
        shapes_per_step.append([tuple(x.shape) for x in mirrored.experimental_local_results(images)])
        ids.extend(int(i) for part in mirrored.experimental_local_results(y["image_id"]) for i in part.numpy())
    assert shapes_per_step == [[(1, 64, 64, 3), (1, 64, 64, 3)]] * 2  # batch_size 2: one image per replica
    assert sorted(ids) == [1, 2, 3, 4]  # every validation image once


def test_each_split_is_opened_once_and_only_when_needed(shapes, monkeypatch):
    opened = []
    real = run_data._open_split
    monkeypatch.setattr(run_data, "_open_split", lambda *a: opened.append(a[1]) or real(*a))
    data = run_data.RunData(_shapes_config(shapes))
    data.class_names, data.category_ids, data.coco_gt, data.pipeline("val"), data.raw("val")
    assert opened == ["val"]  # evaluation never reads the training annotations
    data.pipeline("train"), data.num_train_images
    assert opened == ["val", "train"]


def test_coco_json_splits_with_different_categories_are_refused(shapes, tmp_path):
    train = json.loads((shapes / "train" / "annotations.json").read_text())
    train["categories"] = train["categories"][:4]
    train["annotations"] = [a for a in train["annotations"] if a["category_id"] <= 4]
    (tmp_path / "train.json").write_text(json.dumps(train))
    config = DataConfig(
        dataset="coco_json",
        train_annotations=str(tmp_path / "train.json"), train_images=str(shapes / "train" / "images"),
        val_annotations=str(shapes / "val" / "annotations.json"), val_images=str(shapes / "val" / "images"),
    )
    data = run_data.RunData(config)
    data.class_names  # the validation split alone is fine
    for _ in range(2):  # refused again on a second try, not kept after the first
        with pytest.raises(ValueError, match=r"Training categories \(1, 2, 3, 4\) .*train.json.* differ from validation"):
            data.pipeline("train")


def test_unknown_split_is_named():
    with pytest.raises(ValueError, match="split must be one of"):
        run_data.RunData(DataConfig()).split("test")


def test_tfds_coco_uses_official_category_ids(tmp_path):
    # (mock_data's random objects have fields of different lengths, so only
    # the raw examples and the ground truth are checked here, not batches.)
    with tfds.testing.mock_data(num_examples=3):
        data = run_data.RunData(DataConfig(dataset="tfds:coco/2017", tfds_data_dir=str(tmp_path)))
        assert len(data.class_names) == 80 and data.category_ids[:3] == (1, 2, 3) and data.category_ids[-1] == 90
        assert data.num_train_images is None
        ids = [int(example["image_id"]) for example in data.raw("val").as_numpy_iterator()]
        assert len(ids) == 3 and sorted(data.coco_gt.getImgIds()) == sorted(ids)
        used = {a["category_id"] for a in data.coco_gt.dataset["annotations"]}
        assert used and used <= set(data.category_ids)
