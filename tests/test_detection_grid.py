"""The picture of validation predictions (evaluation.detection_grid): ground truth beside detections, titled."""

import numpy as np
import pytest
import tensorflow as tf

from keras_retina.data.pipeline import make_pipeline
from keras_retina.evaluation.detections import (
    DRAW_SCORE_THRESHOLD,
    HEADER_FONT_SIZE,
    PAIR_GAP,
    detection_grid,
    detection_grid_header,
)
from keras_retina.visualize import class_color, text_band

CLASS_NAMES = ("circle", "square", "triangle")
SIZE = 160  # pipeline image size; the raw 80 x 80 images are scaled by 2
GT_BOX_RAW = (4.0, 8.0, 20.0, 24.0)  # class 1, xyxy in the raw image
GT_BOX = (8, 16, 40, 48)  # the same box in the pipeline's 160 x 160 image
HIGH_BOX = (40.0, 4.0, 60.0, 20.0)  # class 2, score 0.9: drawn
LOW_BOX = (4.0, 44.0, 28.0, 60.0)  # class 0, score 0.2: below DRAW_SCORE_THRESHOLD
CAPTION = 20  # text_band of one 12-pixel line: "image 1 ground truth: 1" fits in 160 pixels
HALF_GAP = 4  # between the two halves of a pair


class FixedDetector:
    """Stands in for a RetinaNet: the same detections for every image, a model-level score threshold."""

    def __init__(self, score_threshold=0.05):
        self.score_threshold = score_threshold

    def detect_function(self):
        def detect(images):
            batch = int(images.shape[0])
            boxes = np.array([HIGH_BOX, LOW_BOX, (0, 0, 0, 0)], "float32")
            return {
                "boxes": tf.constant(np.broadcast_to(boxes, (batch, 3, 4))),
                "scores": tf.constant(np.broadcast_to(np.array([0.9, 0.2, 0.0], "float32"), (batch, 3))),
                "classes": tf.constant(np.broadcast_to(np.array([2, 0, -1], "int32"), (batch, 3))),
                "num_detections": tf.constant(np.full(batch, 2, "int32")),
            }

        return detect


def _dataset(num_images=2):
    raw = tf.data.Dataset.from_tensor_slices(
        {
            "image": np.zeros((num_images, 80, 80, 3), "uint8"),
            "boxes": np.array([[GT_BOX_RAW]] * num_images, "float32"),
            "classes": np.ones((num_images, 1), "int32"),
            "image_id": np.arange(1, num_images + 1, dtype="int64"),
        }
    )
    return make_pipeline(raw, image_size=SIZE, batch_size=num_images, training=False, max_boxes=4)


def _header_height(text, width):
    return text_band(text, width, font_size=HEADER_FONT_SIZE).shape[0]


def _halves(grid, header_height):
    """(ground truth, detections) pixels of the first pair."""
    top = header_height + PAIR_GAP + CAPTION
    left = PAIR_GAP
    right = left + SIZE + HALF_GAP
    return grid[top : top + SIZE, left : left + SIZE], grid[top : top + SIZE, right : right + SIZE]


def _has_colour(pixels, colour):
    return bool((pixels == np.array(colour)).all(axis=-1).any())


def test_captions_fit_one_line():
    assert text_band("image 1 ground truth: 1", SIZE).shape[0] == CAPTION


def test_header_states_threshold_images_and_model():
    assert detection_grid_header(0.3, 8, "runs/shapes") == (
        "detections with score >= 0.30 (right) vs ground truth (left); 8 images; model: runs/shapes"
    )
    assert detection_grid_header(0.55, 1, ground_truth=False) == "detections with score >= 0.55; 1 image"


def test_ground_truth_left_detections_above_threshold_right():
    grid = detection_grid(FixedDetector(), _dataset(), CLASS_NAMES, model_name="runs/x")
    header = detection_grid_header(DRAW_SCORE_THRESHOLD, 2, "runs/x")
    pair_width = 2 * SIZE + HALF_GAP
    assert grid.shape == (
        _header_height(header, grid.shape[1]) + PAIR_GAP + CAPTION + SIZE + PAIR_GAP,
        2 * pair_width + 3 * PAIR_GAP,
        3,
    )
    gt, det = _halves(grid, _header_height(header, grid.shape[1]))
    x0, y0, x1, y1 = GT_BOX
    gt_colour = class_color(1)
    # The ground truth box, scaled with the image: its edges in the class colour, its inside the image.
    np.testing.assert_array_equal(gt[y0 + 20, x0], gt_colour)
    np.testing.assert_array_equal(gt[y0 + 20, x1 - 1], gt_colour)
    np.testing.assert_array_equal(gt[y1 - 1, x0 + 20], gt_colour)
    np.testing.assert_array_equal(gt[y0 + 20, x0 + 16], 0)
    assert not _has_colour(det, gt_colour)  # not among the detections
    # The detection above the threshold on the right only; the one below it nowhere.
    high = class_color(2)
    np.testing.assert_array_equal(det[10, int(HIGH_BOX[0])], high)
    assert not _has_colour(gt, high)
    assert not _has_colour(grid, class_color(0))


def test_a_lower_threshold_draws_more_and_the_title_says_so():
    grid = detection_grid(FixedDetector(), _dataset(), CLASS_NAMES, score_threshold=0.1)
    header_height = _header_height(detection_grid_header(0.1, 2), grid.shape[1])
    _, det = _halves(grid, header_height)
    np.testing.assert_array_equal(det[50, int(LOW_BOX[0])], class_color(0))


def test_title_band_is_above_the_grid_with_text():
    grid = detection_grid(FixedDetector(), _dataset(), CLASS_NAMES)
    header_height = _header_height(detection_grid_header(DRAW_SCORE_THRESHOLD, 2), grid.shape[1])
    assert header_height >= HEADER_FONT_SIZE
    band = grid[:header_height]
    assert (band < 100).all(axis=-1).sum() > 50  # black text on white
    assert (band[:, -40:] == 255).all()  # a short line: the right end stays white
    np.testing.assert_array_equal(grid[header_height : header_height + PAIR_GAP], 255)  # then the grid's margin


def test_model_threshold_above_the_drawing_threshold_is_the_one_named():
    grid = detection_grid(FixedDetector(score_threshold=0.95), _dataset(), CLASS_NAMES)
    assert not _has_colour(grid, class_color(2))  # 0.9 < 0.95: nothing drawn
    low_title = text_band(detection_grid_header(DRAW_SCORE_THRESHOLD, 2), grid.shape[1], font_size=HEADER_FONT_SIZE)
    high_title = text_band(detection_grid_header(0.95, 2), grid.shape[1], font_size=HEADER_FONT_SIZE)
    np.testing.assert_array_equal(grid[: high_title.shape[0]], high_title)
    assert (grid[: low_title.shape[0]] != low_title).any()


def test_max_images_and_detections_only():
    grid = detection_grid(FixedDetector(), _dataset(3), CLASS_NAMES, max_images=1, ground_truth=False)
    header_height = _header_height(detection_grid_header(DRAW_SCORE_THRESHOLD, 1, ground_truth=False), grid.shape[1])
    assert grid.shape == (header_height + SIZE + 8, SIZE + 8, 3)  # one image, 4-pixel margins
    cell = grid[header_height + 4 : header_height + 4 + SIZE, 4 : 4 + SIZE]
    assert _has_colour(cell, class_color(2))
    assert not _has_colour(cell, class_color(1))  # no ground truth


@pytest.mark.parametrize("ground_truth", [True, False])
def test_backward_compatible_call(ground_truth):
    grid = detection_grid(FixedDetector(), _dataset(), list(CLASS_NAMES), 2, ground_truth=ground_truth)
    assert grid.dtype == np.uint8 and grid.ndim == 3
