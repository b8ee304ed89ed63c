"""Tests for COCO-format JSON sources (keras_retina/data/coco_json.py)."""

import io
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_retina.data import coco_json, shapes
from keras_retina.data.coco_json import CocoFormatError, CocoJsonSource, coco_json_dataset

HEIGHT, WIDTH = 24, 32

#: Non-contiguous, unsorted category ids: classes follow ascending id order.
CATEGORIES = [
    {"id": 7, "name": "dog"},
    {"id": 3, "name": "cat"},
    {"id": 5, "name": "bird"},
]


def _pixels(seed=0, height=HEIGHT, width=WIDTH):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _jpeg_bytes(pixels, mode="RGB"):
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_dataset(tmp_path, files=None, annotations=None, images=None, categories=None):
    """Writes images and a COCO JSON; returns (annotation_file, image_dir).

    By default: image 1 with two boxes (one crowd), image 2 with one, image 3
    with none; all images HEIGHT x WIDTH PNGs.
    """
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    if files is None:
        files = {f"{i}.png": None for i in (1, 2, 3)}
    for name, content in files.items():
        if content is None:
            Image.fromarray(_pixels(len(name))).save(image_dir / name)
        else:
            (image_dir / name).write_bytes(content)
    if images is None:
        images = [
            {"id": i, "file_name": f"{i}.png", "height": HEIGHT, "width": WIDTH} for i in (1, 2, 3)
        ]
    if annotations is None:
        annotations = [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [1.0, 2.0, 10.0, 5.0], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 32, 24], "iscrowd": 1},
            {"id": 12, "image_id": 2, "category_id": 5, "bbox": [4.5, 6.5, 3.0, 2.0]},
        ]
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": annotations,
                "categories": CATEGORIES if categories is None else categories,
            }
        )
    )
    return str(annotation_file), str(image_dir)


def _examples(dataset):
    return [{k: v.numpy() for k, v in example.items()} for example in dataset]


# ------------------------------------------------------------------ good input


def test_raw_examples_have_the_documented_structure(tmp_path):
    annotation_file, image_dir = _write_dataset(tmp_path)
    examples = _examples(coco_json_dataset(annotation_file, image_dir))

    assert [e["image_id"] for e in examples] == [1, 2, 3]
    first = examples[0]
    assert first["image"].shape == (HEIGHT, WIDTH, 3) and first["image"].dtype == np.uint8
    np.testing.assert_array_equal(first["image"], _pixels(len("1.png")))
    np.testing.assert_allclose(first["boxes"], [[1, 2, 11, 7], [0, 0, 32, 24]])
    assert first["boxes"].dtype == np.float32
    np.testing.assert_array_equal(first["classes"], [2, 0])  # ids 7 and 3 -> classes 2 and 0
    assert first["classes"].dtype == np.int32
    np.testing.assert_array_equal(first["is_crowd"], [False, True])
    np.testing.assert_allclose(examples[1]["boxes"], [[4.5, 6.5, 7.5, 8.5]])
    np.testing.assert_array_equal(examples[1]["classes"], [1])


def test_element_spec_is_dense_and_typed(tmp_path):
    dataset = coco_json_dataset(*_write_dataset(tmp_path))

    assert dataset.element_spec == {
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "boxes": tf.TensorSpec((None, 4), tf.float32),
        "classes": tf.TensorSpec((None,), tf.int32),
        "is_crowd": tf.TensorSpec((None,), tf.bool),
        "image_id": tf.TensorSpec((), tf.int64),
    }


def test_cardinality_is_known_unless_skipping(tmp_path):
    paths = _write_dataset(tmp_path)

    assert int(coco_json_dataset(*paths).cardinality()) == 3
    assert int(coco_json_dataset(*paths, shuffle=True, seed=0).cardinality()) == 3
    assert int(coco_json_dataset(*paths, skip_invalid=True).cardinality()) == tf.data.UNKNOWN_CARDINALITY


def test_images_without_annotations_are_kept(tmp_path):
    annotation_file, image_dir = _write_dataset(tmp_path)
    third = _examples(coco_json_dataset(annotation_file, image_dir))[2]

    assert third["image_id"] == 3
    assert third["boxes"].shape == (0, 4)
    assert third["classes"].shape == (0,) and third["is_crowd"].shape == (0,)
    assert third["image"].shape == (HEIGHT, WIDTH, 3)


def test_class_mapping_follows_ascending_category_ids(tmp_path):
    source = CocoJsonSource(*_write_dataset(tmp_path))

    assert source.category_ids == (3, 5, 7)
    assert source.class_names == ("cat", "bird", "dog")
    assert source.num_classes == 3
    np.testing.assert_array_equal(source.class_to_category_id([[2, 0], [1, 1]]), [[7, 3], [5, 5]])
    np.testing.assert_array_equal(source.category_id_to_class([7, 3, 5]), [2, 0, 1])
    assert source.category_id_to_class([]).shape == (0,)
    with pytest.raises(ValueError, match=r"classes must be in \[0, 3\), got values from 0 to 3"):
        source.class_to_category_id([0, 3])
    with pytest.raises(ValueError, match=r"category_ids \[4\] are not in the categories"):
        source.category_id_to_class([3, 4])


def test_image_records_and_ids(tmp_path):
    annotation_file, image_dir = _write_dataset(tmp_path)
    source = CocoJsonSource(annotation_file, image_dir)
    record = source.image_record(1)

    assert source.image_ids == (1, 2, 3) and source.num_images == 3
    assert record.path == os.path.join(image_dir, "1.png")
    assert (record.height, record.width, record.file_name) == (HEIGHT, WIDTH, "1.png")
    np.testing.assert_array_equal(record.annotation_ids, [10, 11])
    with pytest.raises(KeyError, match="image_id=99 is not an example"):
        source.image_record(99)


def test_shapes_dataset_round_trip(tmp_path):
    files = shapes.make_shapes_dataset(tmp_path, 12, seed=5, verbose=False)
    with open(files.annotation_file) as f:
        coco = json.load(f)
    source = CocoJsonSource(files.annotation_file, files.image_dir)
    examples = _examples(source.dataset())

    assert source.class_names == shapes.SHAPE_CLASSES
    assert [e["image_id"] for e in examples] == [im["id"] for im in coco["images"]]
    total = 0
    for example in examples:
        anns = [a for a in coco["annotations"] if a["image_id"] == example["image_id"]]
        expected_xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        np.testing.assert_allclose(example["boxes"], expected_xyxy.reshape(-1, 4))
        np.testing.assert_array_equal(
            source.class_to_category_id(example["classes"]), [a["category_id"] for a in anns]
        )
        assert example["image"].shape == (256, 256, 3)
        total += len(anns)
    assert total == files.num_annotations
    reference = np.asarray(Image.open(os.path.join(files.image_dir, "000001.jpg")))
    assert np.mean(np.abs(examples[0]["image"].astype(np.float32) - reference)) < 2.5


def test_shuffle_is_seeded_and_a_permutation(tmp_path):
    files = shapes.make_shapes_dataset(tmp_path, 10, seed=0, verbose=False, max_objects=1)
    ids = lambda seed: [  # noqa: E731
        int(e["image_id"])
        for e in coco_json_dataset(files.annotation_file, files.image_dir, shuffle=True, seed=seed)
    ]

    assert ids(1) == ids(1)
    assert sorted(ids(1)) == list(range(1, 11))
    assert ids(1) != list(range(1, 11)) or ids(2) != list(range(1, 11))


def test_box_within_tolerance_is_clipped(tmp_path):
    annotations = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [-0.5, 0, 32.8, 24.4]}]
    source = CocoJsonSource(*_write_dataset(tmp_path, annotations=annotations))

    np.testing.assert_allclose(source.image_record(1).boxes, [[0, 0, WIDTH, HEIGHT]])


@pytest.mark.parametrize(
    "mode, fmt",
    [("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("L", "JPEG"), ("CMYK", "JPEG")],
)
def test_grayscale_alpha_palette_and_cmyk_images_become_rgb(tmp_path, mode, fmt):
    pixels = _pixels(1)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    name = f"1.{fmt.lower()}"
    images = [{"id": 1, "file_name": name, "height": HEIGHT, "width": WIDTH}]
    dataset = coco_json_dataset(
        *_write_dataset(tmp_path, files={name: buffer.getvalue()}, images=images, annotations=[])
    )
    (example,) = _examples(dataset)
    reference = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.float32)

    assert example["image"].shape == (HEIGHT, WIDTH, 3) and example["image"].dtype == np.uint8
    # TF's JPEG IDCT differs from PIL's by a few levels; an inverted CMYK or a
    # wrong channel order would be off by ~85 on average.
    assert np.mean(np.abs(example["image"] - reference)) < 2.5
    if mode in ("L", "LA"):
        assert np.all(example["image"][..., 0] == example["image"][..., 2])


# ----------------------------------------------------------- malformed JSON file


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ("[]", "holds a JSON list (a list looks like a detection results file)"),
        ('{"images": [], "annotations": []}', "has no field 'categories'"),
        ('{"images": {}, "annotations": [], "categories": []}', "field 'images' is a dict; expected a list"),
        (
            '{"images": [{"id": 1, "height": 2, "width": 2}], "annotations": [], '
            '"categories": [{"id": 1, "name": "a"}]}',
            "images[0] (id 1) has no field 'file_name'",
        ),
        (
            '{"images": [], "annotations": [{"id": 4, "image_id": 1, "category_id": 1}], '
            '"categories": [{"id": 1, "name": "a"}]}',
            "annotations[0] (id 4) has no field 'bbox'",
        ),
        ('{"images": [], "annotations": [], "categories": [{"name": "a"}]}', "categories[0] has no field 'id'"),
        ('{"images": [], "annotations": [], "categories": []}', "field 'categories' is empty"),
        (
            '{"images": [{"id": 1, "file_name": "a.jpg", "height": Infinity, "width": 2}], "annotations": [], '
            '"categories": [{"id": 1, "name": "a"}]}',
            "image_id 1 field 'height' is inf; expected an integer",
        ),
        ('{"images": [], "annotations": [], "categories": [{"id": NaN, "name": "a"}]}', "field 'id' is nan; expected an integer"),
    ],
)
def test_not_coco_instances_json_is_named(tmp_path, content, message):
    annotation_file = tmp_path / "bad.json"
    annotation_file.write_text(content)

    with pytest.raises(CocoFormatError) as error:
        CocoJsonSource(annotation_file, tmp_path)
    assert message in str(error.value)
    assert str(annotation_file) in str(error.value)


def test_missing_annotation_file_and_image_dir_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation_file=.*nothing.json' does not exist"):
        CocoJsonSource(tmp_path / "nothing.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="image_dir=.*no_dir' is not a directory"):
        CocoJsonSource(tmp_path / "nothing.json", tmp_path / "no_dir")


# ---------------------------------------------------------- invalid annotations

INVALID_ANNOTATIONS = {
    "negative width": (
        {"id": 21, "image_id": 2, "category_id": 3, "bbox": [1, 1, -3, 4]},
        "field 'bbox' = [1, 1, -3, 4] has width -3.0 and height 4.0; expected both > 0",
    ),
    "zero height": (
        {"id": 21, "image_id": 2, "category_id": 3, "bbox": [1, 1, 3, 0]},
        "field 'bbox' = [1, 1, 3, 0] has width 3.0 and height 0.0; expected both > 0",
    ),
    "wrong length": (
        {"id": 21, "image_id": 2, "category_id": 3, "bbox": [1, 1, 3]},
        "field 'bbox' = [1, 1, 3]; expected 4 finite numbers [x, y, width, height]",
    ),
    "not finite": (
        {"id": 21, "image_id": 2, "category_id": 3, "bbox": [1, 1, float("nan"), 3]},
        "field 'bbox' = [1, 1, nan, 3]; expected 4 finite numbers",
    ),
    "unknown category": (
        {"id": 21, "image_id": 2, "category_id": 4, "bbox": [1, 1, 3, 3]},
        "field 'category_id' = 4 is not an id in 'categories' [3, 5, 7]",
    ),
    "outside the image": (
        {"id": 21, "image_id": 2, "category_id": 3, "bbox": [20, 1, 14, 3]},
        "lies outside the image of width 32 and height 24 by more than 1.0 pixel(s)",
    ),
    "bad iscrowd": (
        {"id": 21, "image_id": 2, "category_id": 3, "bbox": [1, 1, 3, 3], "iscrowd": 2},
        "field 'iscrowd' = 2; expected 0 or 1",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_ANNOTATIONS))
def test_invalid_annotation_error_names_file_image_annotation_and_field(tmp_path, case):
    annotation, message = INVALID_ANNOTATIONS[case]
    annotation_file, image_dir = _write_dataset(tmp_path, annotations=[annotation])

    with pytest.raises(CocoFormatError) as error:
        CocoJsonSource(annotation_file, image_dir)
    text = str(error.value)
    assert message in text
    assert annotation_file in text
    assert "annotation id 21 (image_id 2, file " + os.path.join(image_dir, "2.png") in text
    assert "skip_invalid=True" in text


@pytest.mark.parametrize("case", sorted(INVALID_ANNOTATIONS))
def test_invalid_annotation_skips_its_image_and_is_counted(tmp_path, case):
    annotation, message = INVALID_ANNOTATIONS[case]
    valid = {"id": 20, "image_id": 1, "category_id": 5, "bbox": [1, 1, 3, 3]}
    source = CocoJsonSource(
        *_write_dataset(tmp_path, annotations=[valid, annotation]), skip_invalid=True
    )

    assert source.image_ids == (1, 3)
    assert [int(e["image_id"]) for e in source.dataset()] == [1, 3]
    assert source.stats.invalid_annotations == 1
    assert source.stats.images_skipped_at_load == 1
    assert source.stats.images_skipped == 1
    assert any(message in reason for reason in source.stats.reasons)


def test_annotation_of_unknown_image_is_named_or_counted(tmp_path):
    annotations = [{"id": 30, "image_id": 9, "category_id": 3, "bbox": [1, 1, 3, 3]}]
    paths = _write_dataset(tmp_path, annotations=annotations)

    with pytest.raises(CocoFormatError) as error:
        CocoJsonSource(*paths)
    assert "annotation id 30 (image_id 9): field 'image_id' = 9 is not an id in 'images'" in str(error.value)
    assert paths[0] in str(error.value)

    source = CocoJsonSource(*paths, skip_invalid=True)
    assert source.image_ids == (1, 2, 3)
    assert (source.stats.invalid_annotations, source.stats.images_skipped_at_load) == (1, 0)


# --------------------------------------------------------------- invalid images


def test_missing_image_file_is_named_or_counted(tmp_path):
    images = [
        {"id": 1, "file_name": "1.png", "height": HEIGHT, "width": WIDTH},
        {"id": 2, "file_name": "gone.png", "height": HEIGHT, "width": WIDTH},
    ]
    paths = _write_dataset(tmp_path, files={"1.png": None}, images=images, annotations=[])

    with pytest.raises(FileNotFoundError) as error:
        CocoJsonSource(*paths)
    assert os.path.join(paths[1], "gone.png") + " (image_id 2, field 'file_name'" in str(error.value)
    assert paths[0] in str(error.value)

    source = CocoJsonSource(*paths, skip_invalid=True)
    assert [int(e["image_id"]) for e in source.dataset()] == [1]
    assert source.stats.images_skipped_at_load == 1
    assert "gone.png" in source.stats.reasons[0]


def _truncated_png():
    buffer = io.BytesIO()
    Image.fromarray(_pixels(2)).save(buffer, format="PNG")
    return buffer.getvalue()[:200]


BAD_IMAGE_FILES = {
    "empty file": (b"", "the file is empty"),
    "non-image bytes": (b"hello, this is text\n" * 5, "not an image: the bytes are not JPEG, PNG"),
    "truncated JPEG": (_jpeg_bytes(_pixels(3))[:300], "corrupt or truncated JPEG data"),
    "truncated PNG": (_truncated_png(), "corrupt or truncated PNG data"),
    "wrong size": (
        _jpeg_bytes(_pixels(4, height=HEIGHT + 1)),
        f"field height x width: the JSON says {HEIGHT}x{WIDTH} but the image decodes to {HEIGHT + 1}x{WIDTH}",
    ),
}


def _bad_image_dataset(tmp_path, content):
    files = {"1.png": None, "bad.jpg": content, "3.png": None}
    images = [
        {"id": 1, "file_name": "1.png", "height": HEIGHT, "width": WIDTH},
        {"id": 2, "file_name": "bad.jpg", "height": HEIGHT, "width": WIDTH},
        {"id": 3, "file_name": "3.png", "height": HEIGHT, "width": WIDTH},
    ]
    annotations = [{"id": 5, "image_id": 2, "category_id": 3, "bbox": [1, 1, 3, 3]}]
    return _write_dataset(tmp_path, files=files, images=images, annotations=annotations)


@pytest.mark.parametrize("case", sorted(BAD_IMAGE_FILES))
def test_unreadable_image_error_names_file_image_id_and_reason(tmp_path, case):
    content, reason = BAD_IMAGE_FILES[case]
    annotation_file, image_dir = _bad_image_dataset(tmp_path, content)
    dataset = coco_json_dataset(annotation_file, image_dir)

    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        _examples(dataset)
    text = str(error.value)
    assert f"Image file {os.path.join(image_dir, 'bad.jpg')} (image_id 2, listed in {annotation_file})" in text
    assert reason in text
    assert "skip_invalid=True" in text


@pytest.mark.parametrize("case", sorted(BAD_IMAGE_FILES))
def test_unreadable_image_is_skipped_counted_and_logged(tmp_path, case, caplog):
    content, reason = BAD_IMAGE_FILES[case]
    source = CocoJsonSource(*_bad_image_dataset(tmp_path, content), skip_invalid=True)

    with caplog.at_level(logging.INFO, logger="absl"):
        ids = [int(e["image_id"]) for e in source.dataset().repeat(2)]
    assert ids == [1, 3, 1, 3]
    assert source.stats.images_skipped_at_read == 1  # one image, counted once over two passes
    assert source.stats.images_skipped == 1
    assert len(source.stats.reasons) == 1 and reason in source.stats.reasons[0]
    assert "image_id 2" in source.stats.reasons[0]
    pass_reports = [r.getMessage() for r in caplog.records if "Finished a pass" in r.getMessage()]
    assert len(pass_reports) == 2
    assert "2 of 3 images yielded, 1 skipped while reading in this pass" in pass_reports[0]
    assert any("Skipping an image" in r.getMessage() and "bad.jpg" in r.getMessage() for r in caplog.records)


def test_pass_report_logged_without_skips(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="absl"):
        source = CocoJsonSource(*_write_dataset(tmp_path), skip_invalid=True)
        assert len(_examples(source.dataset())) == 3
    reports = [r.getMessage() for r in caplog.records if "Finished a pass" in r.getMessage()]
    assert len(reports) == 1 and "3 of 3 images yielded, 0 skipped" in reports[0]
    assert source.stats.images_skipped == 0


def test_parallel_reads_keep_order_by_default(tmp_path):
    files = {f"{i}.png": None for i in range(1, 13)}
    images = [{"id": i, "file_name": f"{i}.png", "height": HEIGHT, "width": WIDTH} for i in range(1, 13)]
    dataset = coco_json_dataset(
        *_write_dataset(tmp_path, files=files, images=images, annotations=[]), num_parallel_calls=4
    )

    assert [int(e["image_id"]) for e in dataset] == list(range(1, 13))


@pytest.mark.parametrize("skip_invalid", [False, True])
def test_file_without_images_gives_an_empty_dataset(tmp_path, skip_invalid):
    source = CocoJsonSource(
        *_write_dataset(tmp_path, files={}, images=[], annotations=[]), skip_invalid=skip_invalid
    )

    assert source.image_ids == () and source.num_classes == 3
    assert _examples(source.dataset(shuffle=True, seed=0)) == []


def test_module_exposes_the_documented_names():
    assert coco_json.coco_json_dataset is coco_json_dataset
    assert issubclass(coco_json.CocoFormatError, ValueError)


def test_input_pipelines_read_disjoint_shares_that_cover_every_image_and_only_their_files(tmp_path):
    files = shapes.make_shapes_dataset(tmp_path / "data", num_images=7, image_size=(64, 64), verbose=False)
    source = CocoJsonSource(files.annotation_file, files.image_dir)
    contexts = [tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=i) for i in range(2)]
    shares = [
        [int(e["image_id"]) for e in source.dataset(shuffle=True, seed=1, input_context=context)]
        for context in contexts
    ]
    assert set(shares[0]).isdisjoint(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(source.image_ids)
    assert [len(share) for share in shares] == [source.share_size(c) for c in contexts] == [4, 3]
    assert [int(source.dataset(input_context=c).cardinality()) for c in contexts] == [4, 3]
    # Pipeline 1 opens only its own files: with pipeline 0's images deleted (after the annotations were
    # loaded) it still reads all of its share, while pipeline 0 now fails.
    for image_id in shares[0]:
        os.remove(source.image_record(image_id).path)
    assert sorted(int(e["image_id"]) for e in source.dataset(input_context=contexts[1])) == sorted(shares[1])
    with pytest.raises(tf.errors.NotFoundError, match="No such file"):
        list(source.dataset(input_context=contexts[0]))


def test_input_context_must_be_an_input_context(tmp_path):
    files = shapes.make_shapes_dataset(tmp_path / "data", num_images=2, image_size=(64, 64), verbose=False)
    with pytest.raises(TypeError, match="`input_context` must be a tf.distribute.InputContext"):
        coco_json_dataset(files.annotation_file, files.image_dir, input_context=2)
