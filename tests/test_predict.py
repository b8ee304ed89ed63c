"""Prediction on image files (keras_retina/deploy/predict.py): detections.json and drawn PNGs."""

import io
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import small_model
from PIL import Image

from keras_retina.deploy.predict import draw_header, header_font_size, list_images, predict_files
from keras_retina.visualize import text_band

IMAGE_SIZE = 128
CLASS_NAMES = ("circle", "square", "triangle")
CATEGORY_IDS = (1, 5, 9)
#: file name → (height, width)
IMAGES = {"wide.jpg": (100, 150), "tall.png": (120, 90), "small.BMP": (48, 64)}


def _picture(height, width, seed):
    rng = np.random.RandomState(seed)
    image = np.full((height, width, 3), 40, np.uint8)
    y0, x0 = rng.randint(0, height // 2), rng.randint(0, width // 2)
    image[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.randint(100, 256, 3)
    return image


def _header(num_drawn, threshold, width):
    """The band of text predict_files writes above a drawn picture."""
    return text_band(draw_header(num_drawn, threshold), width, font_size=header_font_size(width))


def _encode(image, name):
    fmt = {".jpg": "JPEG", ".png": "PNG", ".bmp": "BMP"}[os.path.splitext(name)[1].lower()]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    model = small_model(score_threshold=0.0)  # untrained: 100 detections per image
    model(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), "float32"))
    return model


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    for seed, (name, (height, width)) in enumerate(IMAGES.items()):
        (directory / name).write_bytes(_encode(_picture(height, width, seed), name))
    (directory / "notes.txt").write_text("not an image; skipped when listing the directory")
    return directory


@pytest.fixture(scope="module")
def directory_run(model, image_dir, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("predictions") / "out"  # created by predict_files
    json_path = predict_files(
        model,
        [str(image_dir)],
        str(output_dir),
        image_size=IMAGE_SIZE,
        class_names=CLASS_NAMES,
        category_ids=CATEGORY_IDS,
        draw_score_threshold=0.0,  # untrained scores are ~0.01: draw them all
    )
    with open(json_path) as f:
        return json_path, output_dir, json.load(f)


def test_directory_writes_coco_results(directory_run):
    json_path, output_dir, results = directory_run
    assert json_path == os.path.join(str(output_dir), "detections.json")
    assert isinstance(results, list)
    stems = {os.path.splitext(name)[0]: shape for name, shape in IMAGES.items()}
    assert {r["image_id"] for r in results} == set(stems)
    for stem, (height, width) in stems.items():
        rows = [r for r in results if r["image_id"] == stem]
        assert len(rows) == 100  # score_threshold=0: max_detections per image
        scores = [r["score"] for r in rows]
        assert scores == sorted(scores, reverse=True)
        for r in rows:
            assert set(r) == {"image_id", "category_id", "bbox", "score"}
            assert r["category_id"] in CATEGORY_IDS
            assert 0.0 < r["score"] <= 1.0
            x, y, w, h = r["bbox"]
            assert x >= 0 and y >= 0 and w >= 0 and h >= 0, r
            assert x + w <= width + 1e-3 and y + h <= height + 1e-3, (stem, r, (height, width))
        # Boxes use the whole original frame, not the 128-pixel model input.
        assert max(r["bbox"][0] + r["bbox"][2] for r in rows) > 0.5 * width


def test_directory_writes_one_drawn_png_per_image(directory_run, image_dir):
    _, output_dir, _ = directory_run
    assert sorted(os.listdir(output_dir)) == ["detections.json", "small.png", "tall.png", "wide.png"]
    for name, (height, width) in IMAGES.items():
        drawn = tf.io.decode_png(tf.io.read_file(str(output_dir / (os.path.splitext(name)[0] + ".png")))).numpy()
        header = _header(100, 0.0, width)  # score_threshold=0: all 100 detections drawn
        assert drawn.shape == (header.shape[0] + height, width, 3)
        np.testing.assert_array_equal(drawn[: header.shape[0]], header)  # the count and threshold written above
        drawn = drawn[header.shape[0] :]
        original = tf.io.decode_image((image_dir / name).read_bytes(), channels=3).numpy()
        changed = np.any(drawn != original, axis=-1).mean()
        assert changed > 0.01, (name, changed)  # boxes drawn over the picture


def test_explicit_files_in_the_given_order(model, image_dir, tmp_path):
    files = [str(image_dir / "tall.png"), str(image_dir / "wide.jpg")]
    json_path = predict_files(
        model,
        files,
        str(tmp_path),
        image_size=IMAGE_SIZE,
        class_names=CLASS_NAMES,
        category_ids=CATEGORY_IDS,
        draw_score_threshold=1.1,  # nothing drawn
    )
    with open(json_path) as f:
        results = json.load(f)
    image_ids = [r["image_id"] for r in results]
    assert image_ids == ["tall"] * 100 + ["wide"] * 100
    assert sorted(os.listdir(tmp_path)) == ["detections.json", "tall.png", "wide.png"]
    # With nothing drawn the PNG is the original picture, at its original size, under its header.
    drawn = tf.io.decode_png(tf.io.read_file(str(tmp_path / "tall.png"))).numpy()
    original = tf.io.decode_png((image_dir / "tall.png").read_bytes()).numpy()
    header = _header(0, 1.1, original.shape[1])
    np.testing.assert_array_equal(drawn[: header.shape[0]], header)
    np.testing.assert_array_equal(drawn[header.shape[0] :], original)


def test_header_names_count_and_threshold():
    assert draw_header(0, 1.1) == "0 detections with score >= 1.10"
    assert draw_header(1, 0.3) == "1 detection with score >= 0.30"
    assert header_font_size(90) == 12 and header_font_size(1200) == 20
    # Different counts or thresholds write different bands.
    assert (_header(0, 1.1, 90) != _header(3, 1.1, 90)).any()


def test_explicit_files_match_the_directory_run(model, image_dir, directory_run, tmp_path):
    json_path = predict_files(
        model,
        [str(image_dir / "wide.jpg")],
        str(tmp_path),
        image_size=IMAGE_SIZE,
        class_names=CLASS_NAMES,
        category_ids=CATEGORY_IDS,
    )
    with open(json_path) as f:
        single = json.load(f)
    assert single == [r for r in directory_run[2] if r["image_id"] == "wide"]


def test_list_images_expands_directories_sorted_and_filtered(image_dir):
    found = list_images([str(image_dir)])
    assert [os.path.basename(p) for p in found] == ["small.BMP", "tall.png", "wide.jpg"]
    explicit = str(image_dir / "notes.txt")
    assert list_images([explicit, str(image_dir / "wide.jpg")]) == [explicit, str(image_dir / "wide.jpg")]


def test_list_images_missing_path(image_dir, tmp_path):
    missing = str(tmp_path / "nowhere" / "photo.jpg")
    with pytest.raises(FileNotFoundError, match="no such file or directory") as error:
        list_images([str(image_dir), missing])
    assert missing in str(error.value)


def test_list_images_directory_without_images(tmp_path):
    (tmp_path / "readme.md").write_text("no pictures here")
    with pytest.raises(ValueError, match=r"no images .* found") as error:
        list_images([str(tmp_path)])
    assert str(tmp_path) in str(error.value)
    with pytest.raises(ValueError, match=r"no images"):
        list_images([])


def test_a_non_image_file_names_the_file(model, image_dir, tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"this is text with a .jpg name")
    with pytest.raises(ValueError, match="cannot decode the image") as error:
        predict_files(
            model,
            [str(image_dir / "wide.jpg"), str(bad)],
            str(tmp_path / "out"),
            image_size=IMAGE_SIZE,
            class_names=CLASS_NAMES,
            category_ids=CATEGORY_IDS,
        )
    message = str(error.value)
    assert str(bad) in message
    assert "not a JPEG, PNG, GIF, BMP or WebP" in message


def test_a_truncated_image_names_the_file_and_the_decoder_error(model, image_dir, tmp_path):
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes((image_dir / "wide.jpg").read_bytes()[:300])
    with pytest.raises(ValueError, match="cannot decode the image") as error:
        predict_files(
            model,
            [str(truncated)],
            str(tmp_path / "out"),
            image_size=IMAGE_SIZE,
            class_names=CLASS_NAMES,
            category_ids=CATEGORY_IDS,
        )
    message = str(error.value)
    assert str(truncated) in message
    assert "Graph execution error" not in message  # the decoder's own reason instead
    assert "jpeg" in message.lower()


def test_list_images_rejects_two_files_with_the_same_name(tmp_path):
    for name in ("a.jpg", "a.png"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ValueError, match="share the name 'a'"):
        list_images([str(tmp_path)])
