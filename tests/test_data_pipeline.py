"""Tests for keras_retina.data.pipeline: geometry, padding, counts, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from keras_retina.data.pipeline import (
    make_pipeline,
    output_image_size,
    summarize_box_counts,
    to_original_pixels,
    transform_example,
)

RAW_SIGNATURE = {
    "image": tf.TensorSpec((None, None, 3), tf.uint8),
    "boxes": tf.TensorSpec((None, 4), tf.float32),
    "classes": tf.TensorSpec((None,), tf.int32),
    "is_crowd": tf.TensorSpec((None,), tf.bool),
    "image_id": tf.TensorSpec((), tf.int64),
}


def make_example(height, width, boxes=(), classes=None, image_id=0, fill=0, is_crowd=None):
    """A raw example as NumPy arrays."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    n = boxes.shape[0]
    return {
        "image": np.full((height, width, 3), fill, np.uint8),
        "boxes": boxes,
        "classes": (
            np.arange(n, dtype=np.int32) if classes is None else np.asarray(classes, np.int32)
        ),
        "is_crowd": np.zeros(n, bool) if is_crowd is None else np.asarray(is_crowd, bool),
        "image_id": np.int64(image_id),
    }


def raw_dataset(examples):
    """tf.data.Dataset of raw examples from a list of NumPy examples."""
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=RAW_SIGNATURE)


def square_example(height, width, box, image_id=0):
    """Black image with a white filled rectangle where ``box`` (xyxy) is."""
    example = make_example(height, width, [box], image_id=image_id)
    x0, y0, x1, y1 = (int(v) for v in box)
    example["image"][y0:y1, x0:x1] = 255
    return example


# ----------------------------------------------------------- transform_example


def test_eval_resize_and_pad_scales_boxes_and_pads_bottom_right():
    example = make_example(100, 200, [[20.0, 10.0, 60.0, 50.0]], classes=[3], image_id=42, fill=7)
    image, y = transform_example(example, image_size=400, max_boxes=2)
    assert image.shape == (400, 400, 3) and image.dtype == tf.float32
    # Scale 2 (long side 200 -> 400): resized 200 x 400, zero padding below.
    np.testing.assert_allclose(image[:200].numpy(), 7.0)
    np.testing.assert_array_equal(image[200:].numpy(), 0.0)
    np.testing.assert_allclose(y["boxes"].numpy(), [[40, 20, 120, 100], [0, 0, 0, 0]])
    np.testing.assert_array_equal(y["classes"].numpy(), [3, -1])
    np.testing.assert_array_equal(y["is_crowd"].numpy(), [False, False])
    np.testing.assert_allclose(y["scale"].numpy(), [2.0, 2.0])
    np.testing.assert_array_equal(y["image_shape"].numpy(), [100, 200])
    assert int(y["image_id"]) == 42
    assert int(y["num_dropped_boxes"]) == 0 and int(y["num_truncated_boxes"]) == 0


def test_rounded_size_gives_per_axis_scale_and_maps_back():
    # 427 x 640 -> long side 512: scale 0.8, height round(341.6) = 342.
    example = make_example(427, 640, [[100.0, 100.0, 200.0, 300.0]])
    image, y = transform_example(example, image_size=512)
    scale_y, scale_x = 342 / 427, 0.8
    np.testing.assert_allclose(y["scale"].numpy(), [scale_y, scale_x], rtol=1e-6)
    np.testing.assert_allclose(
        y["boxes"].numpy()[0],
        [100 * scale_x, 100 * scale_y, 200 * scale_x, 300 * scale_y],
        rtol=1e-5,
    )
    assert image.shape == (512, 512, 3)
    back = to_original_pixels(y["boxes"][None], y["scale"][None], y["image_shape"][None])
    np.testing.assert_allclose(back.numpy()[0, 0], [100, 100, 200, 300], rtol=1e-5)


def test_flip_mirrors_boxes_and_pixels():
    example = make_example(100, 200, [[20.0, 10.0, 60.0, 50.0]])
    example["image"][:, :100] = (255, 0, 0)  # Left half red, right half blue.
    example["image"][:, 100:] = (0, 0, 255)
    image, y = transform_example(example, image_size=400, flip=True)
    # Flipped in the original: x -> 200 - x, so [140, 10, 180, 50]; times 2.
    np.testing.assert_allclose(y["boxes"].numpy()[0], [280, 20, 360, 100])
    np.testing.assert_allclose(image[10, 10].numpy(), [0, 0, 255])
    np.testing.assert_allclose(image[10, 390].numpy(), [255, 0, 0])


def test_jitter_crop_shifts_clips_and_counts_dropped_boxes():
    boxes = [[20.0, 10.0, 60.0, 50.0], [10.0, 10.0, 40.0, 40.0], [150.0, 20.0, 190.0, 90.0]]
    example = make_example(100, 200, boxes, classes=[4, 5, 6])
    # Fit scale 1 (200 x 200 target), jitter 2 -> 200 x 400; crop x offset 100.
    image, y = transform_example(
        example, image_size=200, max_boxes=4, jitter=2.0, crop_fraction=(1.0, 0.5)
    )
    assert image.shape == (200, 200, 3)
    # Box 0: [40, 20, 120, 100] - 100 -> clipped [0, 20, 20, 100].
    # Box 1: [20, 20, 80, 80] - 100 -> entirely left of the window: dropped.
    # Box 2: [300, 40, 380, 180] - 100 -> clipped to [200, 40, 200, 180]: dropped.
    np.testing.assert_allclose(y["boxes"].numpy()[0], [0, 20, 20, 100])
    np.testing.assert_array_equal(y["classes"].numpy(), [4, -1, -1, -1])
    assert int(y["num_dropped_boxes"]) == 2


def test_boxes_outside_or_inverted_are_dropped_and_counted():
    boxes = [
        [250.0, 10.0, 300.0, 50.0],
        [60.0, 10.0, 20.0, 50.0],
        [10.0, 10.0, 30.0, 30.0],
        [190.0, 90.0, 260.0, 130.0],
    ]
    image, y = transform_example(make_example(100, 200, boxes), image_size=200, max_boxes=4)
    np.testing.assert_array_equal(y["classes"].numpy(), [2, 3, -1, -1])
    # The last box is clipped to the image, not dropped.
    np.testing.assert_allclose(y["boxes"].numpy()[1], [190, 90, 200, 100])
    assert int(y["num_dropped_boxes"]) == 2


def test_pads_with_minus_one_and_truncates_with_count():
    boxes = [[i * 10.0, 0.0, i * 10.0 + 5.0, 5.0] for i in range(5)]
    example = make_example(50, 50, boxes, classes=[0, 1, 2, 3, 4], is_crowd=[0, 1, 0, 0, 0])
    _, y = transform_example(example, image_size=50, max_boxes=3)
    np.testing.assert_array_equal(y["classes"].numpy(), [0, 1, 2])
    np.testing.assert_array_equal(y["is_crowd"].numpy(), [False, True, False])
    assert int(y["num_truncated_boxes"]) == 2
    _, y = transform_example(example, image_size=50, max_boxes=7)
    np.testing.assert_array_equal(y["classes"].numpy(), [0, 1, 2, 3, 4, -1, -1])
    np.testing.assert_array_equal(y["boxes"].numpy()[5:], 0.0)
    assert int(y["num_truncated_boxes"]) == 0


def test_output_image_size_pad_to_multiple_and_rectangles():
    assert output_image_size(512) == (512, 512)
    assert output_image_size(600, pad_to_multiple=128) == (640, 640)
    assert output_image_size((300, 500), pad_to_multiple=128) == (384, 512)
    with pytest.raises(ValueError, match=r"`image_size` must be positive, got 0\."):
        output_image_size(0)
    with pytest.raises(ValueError, match=r"`pad_to_multiple` must be None or a positive int, got -8\."):
        output_image_size(512, pad_to_multiple=-8)


# ---------------------------------------------------------------- make_pipeline


def test_training_batches_have_static_shapes():
    examples = [square_example(60, 80, (10, 10, 40, 30), image_id=i) for i in range(4)]
    dataset = make_pipeline(raw_dataset(examples), image_size=64, batch_size=2, max_boxes=5, seed=0)
    images_spec, y_spec = dataset.element_spec
    assert images_spec.shape == (2, 64, 64, 3) and images_spec.dtype == tf.float32
    assert y_spec["boxes"].shape == (2, 5, 4)
    assert y_spec["classes"].shape == (2, 5) and y_spec["classes"].dtype == tf.int32
    assert y_spec["is_crowd"].shape == (2, 5) and y_spec["is_crowd"].dtype == tf.bool
    assert y_spec["num_dropped_boxes"].shape == (2,)
    assert set(y_spec) == {
        "boxes",
        "classes",
        "is_crowd",
        "num_dropped_boxes",
        "num_truncated_boxes",
    }
    assert len(list(dataset)) == 2


def test_eval_keeps_partial_batch_and_carries_metadata():
    examples = [
        make_example(100, 200, [[20.0, 10.0, 60.0, 50.0]], image_id=11),
        make_example(50, 25, [[0.0, 0.0, 25.0, 50.0]], image_id=12),
        make_example(40, 40, image_id=13),
    ]
    dataset = make_pipeline(
        raw_dataset(examples), image_size=100, batch_size=2, training=False, max_boxes=3
    )
    images_spec, y_spec = dataset.element_spec
    assert images_spec.shape.as_list() == [None, 100, 100, 3]
    batches = list(dataset)
    assert [int(b[0].shape[0]) for b in batches] == [2, 1]
    y = {k: np.concatenate([b[1][k].numpy() for b in batches]) for k in batches[0][1]}
    np.testing.assert_array_equal(y["image_id"], [11, 12, 13])
    np.testing.assert_allclose(y["scale"], [[0.5, 0.5], [2.0, 2.0], [2.5, 2.5]])
    np.testing.assert_array_equal(y["image_shape"], [[100, 200], [50, 25], [40, 40]])
    np.testing.assert_allclose(y["boxes"][0, 0], [10, 5, 30, 25])
    np.testing.assert_allclose(y["boxes"][1, 0], [0, 0, 50, 100])
    back = to_original_pixels(y["boxes"], y["scale"], y["image_shape"]).numpy()
    np.testing.assert_allclose(back[0, 0], [20, 10, 60, 50], rtol=1e-6)
    np.testing.assert_allclose(back[1, 0], [0, 0, 25, 50], rtol=1e-6)


def test_empty_images_pass_through():
    examples = [make_example(30, 40, image_id=i) for i in range(3)] + [
        square_example(30, 40, (5, 5, 20, 20))
    ]
    for training in (True, False):
        dataset = make_pipeline(
            raw_dataset(examples),
            image_size=32,
            batch_size=4,
            training=training,
            max_boxes=4,
            seed=1,
        )
        images, y = next(iter(dataset))
        assert images.shape == (4, 32, 32, 3)
        classes = y["classes"].numpy()
        assert (classes == -1).all(axis=1).sum() == 3  # The three empty images.
        assert (classes >= 0).sum() == 1
        assert int(tf.reduce_sum(y["num_dropped_boxes"])) == 0


def test_augmented_boxes_stay_on_the_object():
    # A white rectangle on grey (30): after any jitter / crop / flip the box
    # must still frame white pixels, with no white just outside it.
    examples = []
    for i in range(16):
        example = square_example(120, 160, (80, 40, 120, 80), image_id=i)
        example["image"][example["image"] == 0] = 30
        examples.append(example)
    dataset = make_pipeline(
        raw_dataset(examples),
        image_size=96,
        batch_size=16,
        max_boxes=2,
        seed=3,
        scale_jitter=(0.6, 1.3),
    )
    images, y = next(iter(dataset))
    images, boxes = images.numpy(), y["boxes"].numpy()
    np.testing.assert_array_equal(y["classes"].numpy()[:, 0], 0)
    box_widths, flipped = [], 0
    for image, (x0, y0, x1, y1) in zip(images, boxes[:, 0]):
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        np.testing.assert_allclose(image[cy, cx], 255.0, atol=1)
        # Two pixels outside every edge (where inside the canvas) is not white.
        for px, py in (
            (int(x0) - 2, cy),
            (int(np.ceil(x1)) + 1, cy),
            (cx, int(y0) - 2),
            (cx, int(np.ceil(y1)) + 1),
        ):
            if 0 <= px < 96 and 0 <= py < 96:
                assert image[py, px].max() < 100, (px, py, image[py, px])
        box_widths.append(x1 - x0)
        # Unflipped the object is right of the centre (x 80-120 of 160), flipped left;
        # the visible width is where the grey background is (padding is 0).
        visible_width = int((image[0, :, 0] > 0).sum())
        flipped += cx < visible_width / 2
    assert np.ptp(box_widths) > 5  # Scale jitter happened.
    assert 0 < flipped < 16  # Some examples flipped, some not.


def test_same_seed_same_batches_new_epoch_new_augmentation():
    examples = [square_example(50 + 5 * i, 70, (10, 10, 40, 30), image_id=i) for i in range(8)]

    def epochs(seed, shuffle_buffer=8):
        dataset = make_pipeline(
            raw_dataset(examples), image_size=48, batch_size=4, seed=seed, max_boxes=2,
            shuffle_buffer=shuffle_buffer,
        )
        return [[(b[0].numpy(), b[1]["boxes"].numpy()) for b in dataset] for _ in range(2)]

    first, second = epochs(7), epochs(7)
    for epoch_a, epoch_b in zip(first, second):
        for (images_a, boxes_a), (images_b, boxes_b) in zip(epoch_a, epoch_b):
            np.testing.assert_array_equal(images_a, images_b)
            np.testing.assert_array_equal(boxes_a, boxes_b)
    assert not np.array_equal(first[0][0][1], epochs(8)[0][0][1])  # Seed matters.
    # Without shuffling the examples come in the same order each epoch, yet the
    # second epoch draws new augmentations.
    unshuffled = epochs(7, shuffle_buffer=0)
    assert not np.array_equal(unshuffled[0][0][1], unshuffled[1][0][1])


def test_eval_mode_has_no_augmentation_and_keeps_order():
    examples = [square_example(40, 80, (10, 10, 30, 30), image_id=i) for i in range(5)]
    dataset = make_pipeline(
        raw_dataset(examples), image_size=80, batch_size=5, training=False, max_boxes=1
    )
    _, y = next(iter(dataset))
    np.testing.assert_array_equal(y["image_id"].numpy(), [0, 1, 2, 3, 4])
    np.testing.assert_allclose(y["boxes"].numpy()[:, 0], [[10, 10, 30, 30]] * 5)


def test_summarize_box_counts_adds_up():
    examples = [
        make_example(50, 50, [[0, 0, 10, 10], [60, 60, 70, 70], [5, 5, 10, 10]]),  # 1 dropped
        make_example(50, 50, [[0, 0, 10, 10]] * 4),  # 1 truncated at max_boxes=3
    ]
    dataset = make_pipeline(
        raw_dataset(examples), image_size=50, batch_size=1, training=False, max_boxes=3
    )
    assert summarize_box_counts(dataset) == {
        "examples": 2,
        "boxes": 5,
        "dropped_boxes": 1,
        "truncated_boxes": 1,
    }
    assert summarize_box_counts(dataset, max_batches=1)["examples"] == 1


def test_missing_is_crowd_defaults_to_false():
    signature = {k: v for k, v in RAW_SIGNATURE.items() if k != "is_crowd"}
    example = {k: v for k, v in make_example(20, 20, [[1, 1, 5, 5]]).items() if k != "is_crowd"}
    raw = tf.data.Dataset.from_generator(lambda: iter([example]), output_signature=signature)
    _, y = next(iter(make_pipeline(raw, image_size=20, batch_size=1, training=False, max_boxes=2)))
    np.testing.assert_array_equal(y["is_crowd"].numpy(), [[False, False]])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_size=0), r"`image_size` must be positive, got 0\."),
        (dict(batch_size=0), r"`batch_size` must be an int >= 1, got 0\."),
        (dict(max_boxes=0), r"`max_boxes` must be an int >= 1, got 0\."),
        (dict(scale_jitter=(1.2, 0.8)), r"`scale_jitter` must be None or .*, got \(1.2, 0.8\)\."),
        (dict(shuffle_buffer=-1), r"`shuffle_buffer` must be an int >= 0, got -1\."),
    ],
)
def test_bad_arguments_name_argument_and_value(kwargs, message):
    raw = raw_dataset([make_example(20, 20)])
    with pytest.raises(ValueError, match=message):
        make_pipeline(raw, **kwargs)


def test_raw_without_image_id_fails_for_evaluation():
    signature = {k: v for k, v in RAW_SIGNATURE.items() if k != "image_id"}
    raw = tf.data.Dataset.from_generator(lambda: iter([]), output_signature=signature)
    make_pipeline(raw, training=True)  # Training does not need it.
    with pytest.raises(ValueError, match=r"missing \['image_id'\]"):
        make_pipeline(raw, training=False)
    with pytest.raises(ValueError, match=r"`raw` must be a tf.data.Dataset of raw examples, got a list\."):
        make_pipeline([make_example(20, 20)])
