"""The shorter-side resize rule of published COCO weights: pipeline, any-size detection, exports, convert."""

import numpy as np
import pytest
import tensorflow as tf

import keras_retina as kr
from keras_retina.data.pipeline import make_pipeline, shorter_side_size, transform_example
from keras_retina.deploy.class_names import read_resize_rule
from keras_retina.deploy.saved_model import SIZE_DIVISIBLE
from tests.helpers import encode_png, small_model


@pytest.mark.parametrize(
    "height, width, expected",
    [(480, 640, (800, 1066)), (640, 480, (1066, 800)), (300, 2000, (199, 1333)), (800, 800, (800, 800)), (1, 1, (800, 800))],
)
def test_shorter_side_size_is_torchvisions_arithmetic(height, width, expected):
    scale = min(800 / min(height, width), 1333 / max(height, width))  # torchvision's, in Python floats
    assert (int(height * scale), int(width * scale)) == expected
    assert tuple(int(v) for v in shorter_side_size(height, width, 800, 1333)) == expected


def test_pipeline_resizes_by_the_shorter_side_on_its_canvas():
    example = {"image": tf.zeros((60, 120, 3), tf.uint8), "boxes": [[12.0, 6.0, 60.0, 30.0]], "classes": [1]}
    image, y = transform_example(example, image_size=128, max_boxes=2, min_size=40, max_size=100)
    assert tuple(image.shape) == (128, 128, 3)
    np.testing.assert_allclose(y["scale"], [40 / 60, 80 / 120], rtol=1e-6)  # shorter side 40: 40 x 80
    np.testing.assert_allclose(y["boxes"][0], [8.0, 4.0, 40.0, 20.0], rtol=1e-5)
    with pytest.raises(ValueError, match="at most the canvas"):
        make_pipeline(tf.data.Dataset.from_tensors({**example, "image_id": tf.constant(1, tf.int64)}),
                      image_size=64, min_size=40, max_size=100, training=False)


def test_detection_traced_for_any_size_equals_the_static_one():
    model = small_model(num_classes=3, score_threshold=0.0, anchor_generator=kr.AnchorGenerator(
        offset=0.0, order="ratio_major", round_to_pixels=True))
    detect = tf.function(model.detect, input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
    for shape in ((96, 160), (200, 104)):  # P6, P7 cells that do not divide the side: torchvision's strides
        images = np.random.default_rng(0).uniform(0, 255, (1, *shape, 3)).astype("float32")
        static, traced = model.detect(images), detect(images)
        for key in ("classes", "num_detections"):
            np.testing.assert_array_equal(np.asarray(static[key]), np.asarray(traced[key]), err_msg=key)
        for key in ("boxes", "scores"):  # a traced graph fuses float ops differently: last-bit rounding
            np.testing.assert_allclose(np.asarray(static[key]), np.asarray(traced[key]), rtol=1e-5, atol=1e-4)


def test_torchvision_anchor_strides_are_image_size_over_feature_size():
    gen = kr.AnchorGenerator(offset=0.0, order="ratio_major", round_to_pixels=True, min_level=6, max_level=6)
    anchors = gen((800, 800)).reshape(13, 13, 9, 4)
    centers_y = (anchors[:, 0, 0, 1] + anchors[:, 0, 0, 3]) / 2
    np.testing.assert_array_equal(np.diff(centers_y), 61.0)  # 800 // 13, not 64
    paper = kr.AnchorGenerator(min_level=6, max_level=6)((800, 800)).reshape(13, 13, 9, 4)
    np.testing.assert_allclose(np.diff((paper[:, 0, 0, 1] + paper[:, 0, 0, 3]) / 2), 64.0)


def test_saved_model_with_the_rule_runs_each_request_on_its_own_canvas(tmp_path):
    model = small_model(num_classes=2, score_threshold=0.0, max_detections=20)
    path = kr.export_saved_model(model, str(tmp_path), image_size=160, min_size=64, max_size=150)
    served = tf.saved_model.load(path)
    metadata = served.signatures["metadata"]()
    assert (int(metadata["min_size"]), int(metadata["max_size"]), int(metadata["image_size"])) == (64, 150, 160)
    image = np.random.default_rng(1).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    out = served.signatures["serving_default"](images=tf.constant([encode_png(image)]))
    # The same detections as the model on torchvision's canvas: 64 x 85 resized, padded to 64 x 96 with the
    # pixel the backbone normalises to 0, boxes clipped to the resized image and mapped back.
    resized = tf.image.resize(image.astype("float32"), (64, 85))
    canvas = np.tile(np.asarray(kr.model.backbones.zero_pixel("tiny"), "float32"), (64, 96, 1))
    canvas[:, :85] = resized.numpy()
    assert 96 % SIZE_DIVISIBLE == 0
    expected = model.detect(canvas[None], valid_shapes=np.array([[64, 85]]))
    count = int(out["num_detections"][0])
    assert count == int(expected["num_detections"][0]) > 0
    np.testing.assert_allclose(out["detection_scores"][0, :count], expected["scores"][0, :count], atol=1e-5)
    np.testing.assert_allclose(
        out["detection_boxes"][0, :count], expected["boxes"][0, :count] * [120 / 85, 90 / 64, 120 / 85, 90 / 64],
        rtol=1e-4, atol=1e-3,
    )
    plain = tf.saved_model.load(kr.export_saved_model(model, str(tmp_path / "plain"), image_size=128))
    assert (int(plain.signatures["metadata"]()["min_size"]), int(plain.signatures["metadata"]()["max_size"])) == (0, 0)


def test_litert_file_records_the_rule(tmp_path):
    pytest.importorskip("ai_edge_litert")
    model = small_model(num_classes=2)
    model(np.zeros((1, 128, 128, 3), "float32"))  # built at the file's input size
    path = kr.export_litert(model, str(tmp_path / "m.tflite"), image_size=128, min_size=64, max_size=120)
    assert read_resize_rule(path) == (64, 120)
    from keras_retina.deploy.litert import LiteRTDetector

    detector = LiteRTDetector(path)
    assert (detector.image_size, detector.min_size, detector.max_size) == (128, 64, 120)
    plain = kr.export_litert(model, str(tmp_path / "plain.tflite"), image_size=128)
    assert read_resize_rule(plain) == (None, None)
    with pytest.raises(ValueError, match="at most the canvas"):
        kr.export_litert(model, str(tmp_path / "bad.tflite"), image_size=128, min_size=64, max_size=200)
