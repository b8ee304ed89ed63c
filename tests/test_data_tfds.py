"""Tests for keras_retina.data.tfds_source on TFDS mock data (no download).

``tfds.testing.mock_data`` patches ``tfds.load``: with the default AUTO policy
and no metadata files shipped for coco/voc in tensorflow-datasets 4.9.10 it
falls back to USE_CODE (features from the builder's code, random examples)
and patches every GCS access, so nothing is downloaded. Its random examples
are not valid detections: every dynamic dimension is drawn independently (5 to
49), so ``objects/bbox``, ``objects/label`` and ``objects/is_crowd`` have
different lengths, and bbox coordinates are unordered. ``as_dataset_fn``
replaces them with hand-made examples where a test needs valid ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_retina.data.pipeline import make_pipeline
from keras_retina.data.tfds_source import tfds_class_names, tfds_dataset

RAW_KEYS = {"image", "boxes", "classes", "is_crowd", "image_id"}


def rel_yxyx_to_xyxy(bbox, height, width):
    """NumPy reference: normalised [ymin, xmin, ymax, xmax] -> xyxy pixels."""
    bbox = np.asarray(bbox, np.float64).reshape(-1, 4)
    return np.stack(
        [bbox[:, 1] * width, bbox[:, 0] * height, bbox[:, 3] * width, bbox[:, 2] * height], -1
    )


def test_coco_mock_converts_boxes_labels_crowd_and_ids(tmp_path):
    with tfds.testing.mock_data(num_examples=4):
        reference = list(
            tfds.load("coco/2017", split="validation", data_dir=str(tmp_path)).as_numpy_iterator()
        )
        raw, info = tfds_dataset(
            "coco/2017", split="validation", data_dir=str(tmp_path), with_info=True
        )
        examples = list(raw.as_numpy_iterator())
    assert info.features["objects"]["label"].num_classes == 80
    assert set(raw.element_spec) == RAW_KEYS
    assert raw.element_spec["boxes"].shape.as_list() == [None, 4]
    assert raw.element_spec["classes"].dtype == tf.int32
    assert len(examples) == 4
    for ref, ex in zip(reference, examples):
        height, width = ref["image"].shape[:2]
        assert ex["image"].dtype == np.uint8 and ex["image"].shape == (height, width, 3)
        np.testing.assert_allclose(
            ex["boxes"], rel_yxyx_to_xyxy(ref["objects"]["bbox"], height, width), rtol=1e-5
        )
        np.testing.assert_array_equal(ex["classes"], ref["objects"]["label"])
        np.testing.assert_array_equal(ex["is_crowd"], ref["objects"]["is_crowd"])
        assert ex["image_id"] == ref["image/id"]


def test_voc_mock_has_no_crowd_and_hashes_non_numeric_filenames(tmp_path):
    with tfds.testing.mock_data(num_examples=3):
        reference = list(
            tfds.load("voc/2007", split="test", data_dir=str(tmp_path)).as_numpy_iterator()
        )
        examples = list(
            tfds_dataset("voc/2007", split="test", data_dir=str(tmp_path)).as_numpy_iterator()
        )
    for ref, ex in zip(reference, examples):
        assert (
            ex["is_crowd"].shape == (ref["objects"]["bbox"].shape[0],) and not ex["is_crowd"].any()
        )
        # Mock filenames are random words, so the id is the FarmHash fingerprint.
        expected_id = tf.strings.to_hash_bucket_fast(ref["image/filename"], 2**63 - 1).numpy()
        assert ex["image_id"] == expected_id


def _voc_as_dataset(self, *args, **kwargs):
    """Two hand-made VOC examples with known boxes (replaces TFDS' reader)."""
    del args, kwargs
    examples = [
        {
            "image": np.full((100, 200, 3), 9, np.uint8),
            "image/filename": "2008_000002.jpg",
            "objects": {
                "label": np.array([14, 0], np.int64),
                "bbox": np.array([[0.1, 0.2, 0.5, 1.0], [0.0, 0.0, 1.0, 0.5]], np.float32),
                "pose": np.zeros(2, np.int64),
                "is_truncated": np.zeros(2, bool),
                "is_difficult": np.zeros(2, bool),
            },
            "labels": np.array([0, 14], np.int64),
            "labels_no_difficult": np.array([0, 14], np.int64),
        },
        {
            "image": np.zeros((30, 40, 3), np.uint8),
            "image/filename": "000005.jpg",
            "objects": {
                "label": np.zeros(0, np.int64),
                "bbox": np.zeros((0, 4), np.float32),
                "pose": np.zeros(0, np.int64),
                "is_truncated": np.zeros(0, bool),
                "is_difficult": np.zeros(0, bool),
            },
            "labels": np.zeros(0, np.int64),
            "labels_no_difficult": np.zeros(0, np.int64),
        },
    ]
    return tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature=self.info.features.get_tensor_spec()
    )


def test_voc_hand_made_examples_hand_computed_pixels_and_numeric_ids(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=_voc_as_dataset):
        examples = list(
            tfds_dataset("voc/2007", split="train", data_dir=str(tmp_path)).as_numpy_iterator()
        )
    first, second = examples
    # [ymin, xmin, ymax, xmax] = [0.1, 0.2, 0.5, 1.0] on 100 x 200 -> [40, 10, 200, 50].
    np.testing.assert_allclose(first["boxes"], [[40, 10, 200, 50], [0, 0, 100, 100]])
    np.testing.assert_array_equal(first["classes"], [14, 0])
    assert first["image_id"] == 2008000002  # "2008_000002.jpg": its digits.
    assert second["image_id"] == 5  # "000005.jpg"
    assert second["boxes"].shape == (0, 4) and second["classes"].shape == (0,)


def _coco_as_dataset(self, *args, **kwargs):
    """Five valid random COCO examples (equal object counts, ordered boxes)."""
    del args, kwargs
    rng = np.random.default_rng(0)
    examples = []
    for i in range(5):
        n = int(rng.integers(0, 6))
        corners = rng.uniform(0, 1, (n, 2, 2)).astype(np.float32)
        bbox = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)  # (n, 4) yxyx
        if i == 1 and n:
            bbox[0, 2] = bbox[0, 0]  # Zero height: dropped by the pipeline.
        examples.append(
            {
                "image": rng.integers(
                    0,
                    255,
                    (int(rng.integers(20, 60)), int(rng.integers(20, 60)), 3),
                    dtype=np.uint8,
                ),
                "image/filename": f"{i:012d}.jpg",
                "image/id": np.int64(1000 + i),
                "objects": {
                    "id": np.arange(n, dtype=np.int64),
                    "area": np.ones(n, np.int64),
                    "bbox": bbox,
                    "label": rng.integers(0, 80, n).astype(np.int64),
                    "is_crowd": rng.random(n) < 0.3,
                },
            }
        )
    return tf.data.Dataset.from_generator(
        lambda: iter(examples), output_signature=self.info.features.get_tensor_spec()
    )


def test_coco_examples_flow_through_pipeline_and_every_box_is_counted(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=_coco_as_dataset):
        raw = tfds_dataset("coco/2017", split="validation", data_dir=str(tmp_path))
        num_input_boxes = sum(int(ex["boxes"].shape[0]) for ex in raw.as_numpy_iterator())
        batches = list(make_pipeline(raw, image_size=64, batch_size=2, training=False, max_boxes=8))
    images, y = batches[0]
    assert images.shape == (2, 64, 64, 3)
    assert [int(i) for b in batches for i in b[1]["image_id"].numpy()] == [
        1000,
        1001,
        1002,
        1003,
        1004,
    ]
    kept = sum(int((b[1]["classes"].numpy() >= 0).sum()) for b in batches)
    dropped = sum(int(b[1]["num_dropped_boxes"].numpy().sum()) for b in batches)
    assert dropped == 1
    assert kept + dropped == num_input_boxes


def test_random_mock_objects_of_unequal_length_fail_clearly_in_pipeline(tmp_path):
    with tfds.testing.mock_data(num_examples=1):
        raw = tfds_dataset("coco/2017", split="validation", data_dir=str(tmp_path))
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=r"image_id=110: fields boxes, classes, is_crowd have \d+, \d+, \d+ rows; expected the same",
        ):
            list(make_pipeline(raw, image_size=32, batch_size=1, training=False))


def test_class_names_from_builder_info(tmp_path):
    voc_names = tfds_class_names("voc/2007", data_dir=str(tmp_path))
    assert len(voc_names) == 20 and voc_names[:3] == ("aeroplane", "bicycle", "bird")
    with tfds.testing.mock_data(num_examples=1):
        # Unprepared COCO: TFDS knows only the count until the JSON is read.
        assert len(tfds_class_names("coco/2017", data_dir=str(tmp_path))) == 80


@pytest.mark.parametrize("name, missing", [("mnist", "objects/bbox"), ("kitti", "objects/label")])
def test_non_detection_dataset_error_names_dataset_and_feature(tmp_path, name, missing):
    with tfds.testing.mock_data(num_examples=1):
        with pytest.raises(ValueError, match=rf"name='{name}'.*no feature '{missing}'"):
            tfds_dataset(name, split="train", data_dir=str(tmp_path))


def _write_tfds_files(data_dir, shard_ids):
    """A prepared TFDS dataset ``tiny_detection`` (no builder code): one record file per entry of ``shard_ids``."""
    import os

    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/id": np.int64,
            "objects": tfds.features.Sequence(
                {"bbox": tfds.features.BBoxFeature(), "label": tfds.features.ClassLabel(names=["a", "b"])}
            ),
        }
    )
    out = os.path.join(data_dir, "tiny_detection", "1.0.0")
    os.makedirs(out)
    paths = []
    for shard, ids in enumerate(shard_ids):
        paths.append(os.path.join(out, f"tiny_detection-validation.tfrecord-{shard:05d}-of-{len(shard_ids):05d}"))
        with tf.io.TFRecordWriter(paths[-1]) as writer:
            for image_id in ids:
                example = {
                    "image": np.full((16, 24, 3), image_id % 256, np.uint8),
                    "image/id": image_id,
                    "objects": {"bbox": np.array([[0.1, 0.2, 0.5, 0.6]], np.float32), "label": np.array([image_id % 2])},
                }
                writer.write(features.serialize_example(example))
    splits = [tfds.core.SplitInfo(name="validation", shard_lengths=[len(ids) for ids in shard_ids], num_bytes=0)]
    tfds.folder_dataset.write_metadata(data_dir=out, features=features, split_infos=splits, filename_template=None)
    return paths


def test_input_pipelines_read_disjoint_shares_of_the_files(tmp_path):
    paths = _write_tfds_files(tmp_path, [range(100, 104), range(104, 108)])
    contexts = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i) for i in range(2)]

    def ids(context):
        raw = tfds_dataset("tiny_detection", "validation", data_dir=str(tmp_path), download=False, input_context=context)
        return [int(example["image_id"]) for example in raw]

    everything = ids(None)
    shares = [ids(context) for context in contexts]
    assert sorted(everything) == list(range(100, 108))
    assert set(shares[0]).isdisjoint(shares[1]) and sorted(shares[0] + shares[1]) == everything
    assert [len(share) for share in shares] == [4, 4]
    # Each pipeline opens only its own record file: without the first file, pipeline 1 still reads its share.
    import os

    os.remove(paths[0])
    assert ids(contexts[1]) == shares[1]
    with pytest.raises(tf.errors.NotFoundError):
        ids(contexts[0])
