"""Tests for keras_retina.visualize: boxes land where they should, PNG written."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_retina.data.pipeline import make_pipeline
from keras_retina.visualize import (
    add_header,
    class_color,
    draw_boxes,
    draw_ground_truth_and_detections,
    save_batch_png,
    text_band,
    tile_images,
)


def test_box_edges_have_class_colour_and_inside_is_untouched():
    image = np.zeros((128, 128, 3), np.uint8)
    canvas = draw_boxes(image, [[30.0, 60.0, 100.0, 110.0]], [2], line_width=2, show_labels=False)
    color = np.array(class_color(2))
    # Box covers columns 30..99 and rows 60..109; the outline is on those pixels.
    for y, x in ((80, 30), (80, 31), (80, 99), (80, 98), (60, 65), (109, 65)):
        np.testing.assert_array_equal(canvas[y, x], color, err_msg=f"pixel (y={y}, x={x})")
    for y, x in ((85, 65), (80, 29), (80, 100), (59, 65), (110, 65), (5, 5)):
        np.testing.assert_array_equal(canvas[y, x], 0, err_msg=f"pixel (y={y}, x={x})")
    assert image.sum() == 0  # The input is not modified.


def test_padding_rows_are_not_drawn_and_labels_sit_above_the_box():
    image = np.full((64, 64, 3), 50, np.uint8)
    canvas = draw_boxes(image, [[10.0, 10.0, 50.0, 50.0], [0.0, 0.0, 0.0, 0.0]], [-1, -1])
    np.testing.assert_array_equal(canvas, image)
    canvas = draw_boxes(
        np.zeros((100, 100, 3), np.uint8),
        [[20.0, 40.0, 90.0, 90.0]],
        [1],
        class_names=["a", "b"],
        scores=[0.9],
    )
    label_region = canvas[25:40, 20:40]  # Label background just above the box.
    assert (label_region == np.array(class_color(1))).all(axis=-1).sum() > 20


def test_float_images_and_mismatched_rows_error():
    canvas = draw_boxes(np.full((8, 8, 3), 254.6, np.float32), np.zeros((0, 4)), np.zeros((0,)))
    assert canvas.dtype == np.uint8 and (canvas == 255).all()
    with pytest.raises(
        ValueError, match=r"same number of rows.*boxes shape \(2, 4\).*classes shape \(1,\)"
    ):
        draw_boxes(np.zeros((8, 8, 3), np.uint8), np.zeros((2, 4)), [0])


def test_save_batch_png_writes_grid_with_boxes_in_place(tmp_path):
    # A pipeline batch (eval: no augmentation) of two 64 x 64 images.
    examples = [
        {
            "image": np.zeros((32, 32, 3), np.uint8),
            "boxes": np.array([[4.0, 8.0, 20.0, 24.0]], np.float32),
            "classes": np.array([0], np.int32),
            "is_crowd": np.zeros(1, bool),
            "image_id": np.int64(i),
        }
        for i in range(2)
    ]
    signature = {
        "image": tf.TensorSpec((None, None, 3), tf.uint8),
        "boxes": tf.TensorSpec((None, 4), tf.float32),
        "classes": tf.TensorSpec((None,), tf.int32),
        "is_crowd": tf.TensorSpec((None,), tf.bool),
        "image_id": tf.TensorSpec((), tf.int64),
    }
    raw = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)
    images, y = next(
        iter(make_pipeline(raw, image_size=64, batch_size=2, training=False, max_boxes=3))
    )
    path = save_batch_png(
        images, y, tmp_path / "sub" / "batch.png", class_names=["square"], columns=2
    )
    assert path.endswith("batch.png")
    grid = np.asarray(Image.open(path).convert("RGB"))
    gap = 4
    assert grid.shape == (64 + 2 * gap, 2 * 64 + 3 * gap, 3)
    # Box scaled by 2: [8, 16, 40, 48]; left edge column 8 of the second cell, row 30.
    left = gap + 64 + gap
    np.testing.assert_array_equal(grid[gap + 30, left + 8], class_color(0))
    np.testing.assert_array_equal(grid[gap + 30, left + 39], class_color(0))
    np.testing.assert_array_equal(grid[gap + 30, left + 24], 0)  # Inside the box.
    np.testing.assert_array_equal(grid[0, 0], 255)  # Grid background.


def test_save_batch_png_rejects_bad_input(tmp_path):
    with pytest.raises(
        ValueError, match=r"`y` must have keys 'boxes' and 'classes', got keys \['boxes'\] \(missing \['classes'\]\)\."
    ):
        save_batch_png(np.zeros((1, 8, 8, 3)), {"boxes": np.zeros((1, 1, 4))}, tmp_path / "x.png")
    with pytest.raises(
        ValueError, match=r"`images` must have shape \(B, H, W, 3\), got shape \(8, 8, 3\)\."
    ):
        save_batch_png(np.zeros((8, 8, 3)), {"boxes": 0, "classes": 0}, tmp_path / "x.png")


def test_text_band_wraps_long_lines_and_has_dark_text():
    one = text_band("3 detections with score >= 0.30", width=400)
    assert one.shape == (20, 400, 3)
    assert (one < 100).all(axis=-1).sum() > 30  # black text
    assert (one[:, -100:] == 255).all()  # short: the right end stays white
    wrapped = text_band("3 detections with score >= 0.30", width=60)
    assert wrapped.shape[0] > one.shape[0]  # more lines
    with pytest.raises(ValueError, match=r"`width` must be >= 1, got 0\."):
        text_band("x", width=0)


def test_add_header_puts_a_band_above_an_unchanged_image():
    image = np.full((30, 200, 3), 7, np.uint8)
    picture = add_header(image, ["first line", "second line"], font_size=10)
    band = text_band(["first line", "second line"], 200, font_size=10)
    assert picture.shape == (band.shape[0] + 30, 200, 3)
    np.testing.assert_array_equal(picture[: band.shape[0]], band)
    np.testing.assert_array_equal(picture[band.shape[0] :], image)


def test_ground_truth_and_detections_side_by_side_in_class_colours():
    image = np.zeros((100, 100, 3), np.uint8)
    pair = draw_ground_truth_and_detections(
        image,
        {"boxes": [[10.0, 30.0, 50.0, 70.0], [0, 0, 0, 0]], "classes": [1, -1]},
        {"boxes": [[60.0, 30.0, 90.0, 70.0]], "classes": [3], "scores": [0.8]},
        class_names=["a", "b", "c", "d"],
    )
    caption = text_band("1 GT", 100).shape[0]
    assert pair.shape == (caption + 100, 204, 3)
    left, right = pair[caption:, :100], pair[caption:, 104:]
    np.testing.assert_array_equal(left[50, 10], class_color(1))  # GT's left edge
    np.testing.assert_array_equal(right[50, 60], class_color(3))  # detection's left edge
    np.testing.assert_array_equal(left[50, 60], 0)  # no detection on the left
    np.testing.assert_array_equal(right[50, 10], 0)  # no GT on the right
    np.testing.assert_array_equal(pair[caption:, 100:104], 255)  # white gap
    # Default captions count the boxes drawn (padding not counted).
    np.testing.assert_array_equal(pair[:caption, :100], text_band("1 GT", 100))
    np.testing.assert_array_equal(pair[:caption, 104:], text_band("1 det", 100))


def test_tile_images_gap():
    cells = [np.zeros((10, 20, 3), np.uint8)] * 2
    grid = tile_images(cells, columns=2, gap=6)
    assert grid.shape == (22, 58, 3)
    np.testing.assert_array_equal(grid[6:16, 6:26], 0)
    np.testing.assert_array_equal(grid[6:16, 26:32], 255)
    assert tile_images(cells, columns=1, gap=0).shape == (20, 20, 3)
    with pytest.raises(ValueError, match=r"`gap` must be >= 0, got -1\."):
        tile_images(cells, gap=-1)
