"""Tests for the synthetic shapes dataset writer (keras_retina/data/shapes.py)."""

import hashlib
import json
import math
import os

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from keras_retina.data import shapes


def _write(directory, num_images, **kwargs):
    kwargs.setdefault("verbose", False)
    return shapes.make_shapes_dataset(directory, num_images, **kwargs)


def _load(files):
    with open(files.annotation_file) as f:
        return json.load(f)


def _all_bytes(directory):
    """{relative path: bytes} of every file under ``directory``."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, directory)] = f.read()
    return found


@pytest.fixture(scope="module")
def fifty(tmp_path_factory):
    """50 images with seed 0, shared by the read-only tests below."""
    files = _write(tmp_path_factory.mktemp("shapes50"), 50, seed=0)
    return files, _load(files)


def test_same_seed_gives_byte_identical_files(tmp_path):
    first = _all_bytes(_write(tmp_path / "a", 12, seed=3).annotation_file.rsplit(os.sep, 1)[0])
    second = _all_bytes(_write(tmp_path / "b", 12, seed=3).annotation_file.rsplit(os.sep, 1)[0])
    other = _all_bytes(_write(tmp_path / "c", 12, seed=4).annotation_file.rsplit(os.sep, 1)[0])

    assert len(first) == 13  # 12 JPEGs and the JSON
    assert first == second
    assert other["annotations.json"] != first["annotations.json"]
    assert other[os.path.join("images", "000001.jpg")] != first[os.path.join("images", "000001.jpg")]


def test_first_images_do_not_depend_on_num_images(tmp_path):
    small = _write(tmp_path / "small", 3, seed=1)
    large = _write(tmp_path / "large", 6, seed=1)
    for name in ("000001.jpg", "000003.jpg"):
        with open(os.path.join(small.image_dir, name), "rb") as a, open(
            os.path.join(large.image_dir, name), "rb"
        ) as b:
            assert a.read() == b.read()
    small_anns = _load(small)["annotations"]
    assert small_anns == _load(large)["annotations"][: len(small_anns)]


def test_json_is_coco_instances_readable_by_pycocotools(fifty):
    files, coco_json = fifty
    coco = COCO(files.annotation_file)

    assert files.num_images == 50 == len(coco.getImgIds())
    assert files.num_annotations == len(coco.getAnnIds()) > 50
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(shapes.SHAPE_CLASSES)
    assert coco.getCatIds() == [1, 2, 3, 4, 5]
    ann_ids = [a["id"] for a in coco_json["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for ann in coco_json["annotations"]:
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 256 and y + h <= 256
        assert ann["iscrowd"] == 0
        assert 0 < ann["area"] <= w * h
    image = coco.loadImgs([1])[0]
    assert (image["height"], image["width"], image["file_name"]) == (256, 256, "000001.jpg")


def test_every_class_and_size_bucket_present(fifty):
    _, coco_json = fifty
    areas = np.array([a["area"] for a in coco_json["annotations"]])
    bbox = np.array([a["bbox"] for a in coco_json["annotations"]])

    # COCO's area buckets: small < 32², medium 32²..96², large > 96².
    assert np.sum(areas < 32**2) >= 10
    assert np.sum((areas >= 32**2) & (areas <= 96**2)) >= 10
    assert np.sum(areas > 96**2) >= 5
    assert set(a["category_id"] for a in coco_json["annotations"]) == {1, 2, 3, 4, 5}
    # Small enough for P3's 32-pixel anchors to match: short side ≥ 16 px mostly.
    short_side = bbox[:, 2:].min(axis=1)
    assert np.mean(short_side >= 16) > 0.9
    assert short_side.min() >= 8


def test_some_images_are_empty(fifty):
    _, coco_json = fifty
    with_boxes = {a["image_id"] for a in coco_json["annotations"]}
    empty = [im["id"] for im in coco_json["images"] if im["id"] not in with_boxes]

    assert 1 <= len(empty) <= 10  # empty_fraction=0.08 of 50 images


def test_boxes_are_tight_around_the_visible_pixels(fifty):
    files, coco_json = fifty
    by_image = {}
    for ann in coco_json["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    checked = 0
    for index in range(20):
        image_id = index + 1
        # Redraw image ``index`` exactly as make_shapes_dataset did (its seed is (0, index)).
        pixels, objects, label_map = shapes._draw_image(
            np.random.default_rng((0, index)), 256, 256, max_objects=8, empty_fraction=0.08
        )
        anns = by_image.get(image_id, [])
        assert len(anns) == len(objects)
        for ann, obj in zip(anns, objects):
            own = label_map == obj["instance"]
            x, y, w, h = (int(v) for v in ann["bbox"])
            inside = np.zeros_like(own)
            inside[y : y + h, x : x + w] = True
            assert not np.any(own & ~inside), "visible pixels outside the box"
            # Tight: each edge row / column of the box holds a pixel of the shape.
            assert own[y, x : x + w].any() and own[y + h - 1, x : x + w].any()
            assert own[y : y + h, x].any() and own[y : y + h, x + w - 1].any()
            assert ann["area"] == own.sum()
            assert ann["category_id"] == obj["class_index"] + 1
            # Overlaps are bounded: most of each shape stays visible.
            assert own.sum() >= shapes.MIN_VISIBLE_FRACTION * obj["full_area"]
            checked += 1
        # The JPEG on disk is that drawing, up to compression (which removes
        # the pixel noise, so compare means over 8 x 8 blocks).
        decoded = np.asarray(Image.open(os.path.join(files.image_dir, f"{image_id:06d}.jpg")))
        assert decoded.shape == (256, 256, 3)
        difference = decoded.astype(np.float32) - pixels  # (256, 256, 3)
        block_means = difference.reshape(32, 8, 32, 8, 3).mean(axis=(1, 3))
        assert np.mean(np.abs(block_means)) < 1.5
    assert checked > 40


def test_objects_stand_out_from_their_surroundings():
    contrasts = []
    for index in range(20):
        pixels, objects, label_map = shapes._draw_image(
            np.random.default_rng((0, index)), 256, 256, max_objects=8, empty_fraction=0.08
        )
        background = label_map == 0
        for obj in objects:
            x_min, y_min, x_max, y_max = obj["box_xyxy"]
            # Background pixels within 4 px of the box.
            ring = np.zeros_like(background)
            ring[max(y_min - 4, 0) : y_max + 4, max(x_min - 4, 0) : x_max + 4] = True
            ring &= background
            if ring.any():
                own = label_map == obj["instance"]
                contrasts.append(np.linalg.norm(pixels[own].mean(axis=0) - pixels[ring].mean(axis=0)))
    assert len(contrasts) > 30
    assert min(contrasts) > 50.0  # mean RGB distance, 0..255 scale


def test_non_square_image_size(tmp_path):
    files = _write(tmp_path, 4, seed=0, image_size=(96, 160))
    coco_json = _load(files)

    assert {(im["height"], im["width"]) for im in coco_json["images"]} == {(96, 160)}
    assert np.asarray(Image.open(os.path.join(files.image_dir, "000002.jpg"))).shape == (96, 160, 3)
    for ann in coco_json["annotations"]:
        x, y, w, h = ann["bbox"]
        assert x + w <= 160 and y + h <= 96


def test_existing_dataset_is_reused_unless_arguments_change(tmp_path):
    files = _write(tmp_path, 5, seed=0)
    mtime = os.stat(files.annotation_file).st_mtime_ns
    image_mtime = os.stat(os.path.join(files.image_dir, "000001.jpg")).st_mtime_ns

    again = _write(tmp_path, 5, seed=0)
    assert again == files
    assert os.stat(files.annotation_file).st_mtime_ns == mtime
    assert os.stat(os.path.join(files.image_dir, "000001.jpg")).st_mtime_ns == image_mtime

    changed = _write(tmp_path, 5, seed=1)
    assert _load(changed)["info"]["keras_retina_shapes"]["seed"] == [1]
    os.remove(os.path.join(files.image_dir, "000003.jpg"))  # incomplete: redrawn
    _write(tmp_path, 5, seed=1)
    assert os.path.isfile(os.path.join(files.image_dir, "000003.jpg"))


def _corrupt(coco_text):
    coco = json.loads(coco_text)
    return {
        "not_json": "{not json",
        "results_list": json.dumps(coco["annotations"]),
        "info_not_an_object": json.dumps({**coco, "info": "shapes"}),
        "no_categories": json.dumps({k: v for k, v in coco.items() if k != "categories"}),
        "image_without_file_name": json.dumps({**coco, "images": [{"id": 1}] + coco["images"][1:]}),
        "not_utf8": b"\xff\xfe".decode("latin-1"),
    }


@pytest.mark.parametrize(
    "corruption",
    ["not_json", "results_list", "info_not_an_object", "no_categories", "image_without_file_name", "not_utf8"],
)
def test_an_annotation_file_that_is_not_a_written_dataset_is_redrawn(tmp_path, corruption):
    files = _write(tmp_path, 3, seed=0)
    with open(files.annotation_file, encoding="ascii") as f:
        written = f.read()
    with open(files.annotation_file, "w", encoding="latin-1") as f:
        f.write(_corrupt(written)[corruption])
    assert shapes._load_if_matching(files.annotation_file, files.image_dir, json.loads(written)["info"]["keras_retina_shapes"]) is None

    again = _write(tmp_path, 3, seed=0)
    assert again == files
    with open(files.annotation_file, encoding="ascii") as f:
        assert f.read() == written


def test_the_cache_check_reads_the_file_with_the_coco_reader(tmp_path, monkeypatch):
    files = _write(tmp_path, 2, seed=0)
    read = []
    monkeypatch.setattr(shapes, "load_coco_json", lambda path: read.append(path) or {"images": [], "annotations": []})
    assert shapes._load_if_matching(files.annotation_file, files.image_dir, {"seed": [0]}) is None
    assert read == [files.annotation_file]


def test_splits_have_independent_images(tmp_path):
    splits = shapes.make_shapes_splits(tmp_path, num_train=6, num_val=4, seed=0, verbose=False)

    assert set(splits) == {"train", "val"}
    assert splits["train"].annotation_file == str(tmp_path / "train" / "annotations.json")
    assert splits["val"].image_dir == str(tmp_path / "val" / "images")
    assert (splits["train"].num_images, splits["val"].num_images) == (6, 4)
    with open(os.path.join(splits["train"].image_dir, "000001.jpg"), "rb") as a, open(
        os.path.join(splits["val"].image_dir, "000001.jpg"), "rb"
    ) as b:
        assert a.read() != b.read()


def test_progress_bar_is_shown(tmp_path, capsys):
    shapes.make_shapes_dataset(tmp_path, 3, verbose=True)
    assert "3/3" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_images": 0}, "`num_images` must be an int >= 1, got 0."),
        ({"image_size": (32, 256)}, "`image_size` must be (height, width) with both sides >= 64 pixels, got (32, 256)."),
        ({"max_objects": 0}, "`max_objects` must be an int >= 1, got 0."),
        ({"empty_fraction": 1.5}, "`empty_fraction` must be in [0, 1], got 1.5."),
        ({"jpeg_quality": 100}, "`jpeg_quality` must be in [1, 95], got 100."),
        ({"seed": -1}, "`seed` must be a non-negative int or a sequence of them, got -1."),
        ({"aspect_range": (2.0, 0.5)}, "`aspect_range` must be (low, high) with 0 < low <= high (width / height), got (2.0, 0.5)."),
        ({"aspect_range": (0.0, 1.0)}, "`aspect_range` must be (low, high) with 0 < low <= high"),
        ({"aspect_range": 3.0}, "`aspect_range` must be (low, high) with 0 < low <= high (width / height), got 3.0."),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    arguments = {"num_images": 2, **kwargs}
    with pytest.raises(ValueError) as error:
        shapes.make_shapes_dataset(tmp_path, verbose=False, **arguments)
    assert message in str(error.value)


def test_the_aspect_option_leaves_existing_settings_byte_identical(tmp_path):
    """Digests of the annotation JSON written before ``aspect_range`` existed: its
    default draws exactly as the fixed 0.7-1/0.7 range did, so cached data and kept runs stay valid."""
    def digest(directory, **kwargs):
        files = _write(directory, 6, seed=0, **kwargs)
        with open(files.annotation_file, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]

    assert digest(tmp_path / "default", image_size=(96, 96)) == "ad1fcb00be2334b7"
    assert digest(tmp_path / "dense", **shapes.SMALL_OBJECTS_IN_CLUTTER) == "e57efc9ae7ec3fc5"


def test_wide_setting_draws_elongated_and_medium_objects_and_records_its_range(tmp_path):
    files = _write(tmp_path, 40, seed=0, **shapes.WIDE_OBJECTS_IN_CLUTTER)
    coco = _load(files)
    assert coco["info"]["keras_retina_shapes"]["setting"]["aspect_range"] == [1 / 3, 3.0]
    widths, heights = np.array([a["bbox"][2:] for a in coco["annotations"]]).T
    aspect, side = widths / heights, np.sqrt(widths * heights)
    # The default range keeps every object within 0.7-1.43 (before occlusion trims a box); here
    # both tails are wide, and half the objects come from the 36-92 px bucket.
    assert aspect.min() < 0.5 and aspect.max() > 2.0
    assert np.mean(side > 34) > 0.2 and side.max() < 0.75 * 192 * math.sqrt(3)
    near_square = _load(_write(tmp_path / "square", 40, seed=0, **shapes.SMALL_OBJECTS_IN_CLUTTER))
    assert "aspect_range" not in near_square["info"]["keras_retina_shapes"]["setting"]
