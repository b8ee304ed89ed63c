"""SavedModel export for TF Serving (keras_retina/export.py).

One small model, trained for a few steps on the toy batch so that its scores
differ from image to image, is exported once per module with
``score_threshold=0`` (every image gets 100 detections) and category ids
[1, 5, 9]; most tests run that SavedModel, loaded with ``tf.saved_model.load``.
"""

import io
import json
import logging
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging
from helpers import small_model, toy_batch
from PIL import Image

import keras_retina as kr
from keras_retina import predict as predict_lib
from keras_retina.export import (
    CLASS_NAMES_ASSET,
    decode_image,
    export_saved_model,
    next_version,
    read_class_names,
    write_warmup_requests,
)

IMAGE_SIZE = 128
CLASS_NAMES = ("red box", "green", "blue")  # a space in a name survives the TSV asset
CATEGORY_IDS = (1, 5, 9)
MAX_DETECTIONS = 100
OUTPUT_KEYS = {"detection_boxes", "detection_scores", "detection_classes", "num_detections"}


def _picture(height=100, width=150):
    """A blocky RGB picture (two coloured rectangles on a flat background)."""
    image = np.full((height, width, 3), 30, np.uint8)
    image[height // 5 : 3 * height // 5, width // 5 : 8 * width // 15] = (255, 30, 30)
    image[height // 2 : 9 * height // 10, 3 * width // 5 : 14 * width // 15] = (30, 30, 255)
    return image


def _jpeg(image, quality=95):
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def _png(image):
    return tf.io.encode_png(image).numpy()


def _pil_bytes(image, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _numpy(outputs):
    return {key: value.numpy() for key, value in outputs.items()}


def _assert_valid_detections(out, image_shapes):
    """Shapes, dtypes, category ids and bounds of a detection signature's outputs."""
    batch = len(image_shapes)
    assert set(out) == OUTPUT_KEYS
    assert out["detection_boxes"].shape == (batch, MAX_DETECTIONS, 4)
    assert out["detection_boxes"].dtype == np.float32
    assert out["detection_scores"].shape == (batch, MAX_DETECTIONS)
    assert out["detection_scores"].dtype == np.float32
    assert out["detection_classes"].shape == (batch, MAX_DETECTIONS)
    assert out["detection_classes"].dtype == np.int64
    assert out["num_detections"].shape == (batch,)
    assert out["num_detections"].dtype == np.int32
    for b, (height, width) in enumerate(image_shapes):
        n = out["num_detections"][b]
        boxes = out["detection_boxes"][b, :n]
        assert set(out["detection_classes"][b, :n].tolist()) <= set(CATEGORY_IDS)
        np.testing.assert_array_equal(out["detection_classes"][b, n:], -1)
        assert np.all(boxes >= 0.0)
        assert np.all(boxes[:, [0, 2]] <= width + 1e-3), (b, boxes[:, [0, 2]].max(), width)
        assert np.all(boxes[:, [1, 3]] <= height + 1e-3), (b, boxes[:, [1, 3]].max(), height)
        assert np.all(boxes[:, 2:] >= boxes[:, :2])


def _assert_same_detections(expected, actual, atol):
    """Each row of ``expected`` has its own row of ``actual`` within ``atol`` (order-free).

    Rows are ``[category_id, score, box...]``; an order-free match keeps the
    test stable where two detections have (nearly) equal scores.
    """
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    assert expected.shape == actual.shape, (expected.shape, actual.shape)
    unused = np.ones(len(actual), bool)
    for row in expected:
        diff = np.abs(actual - row).max(axis=1)
        diff[~unused] = np.inf
        j = int(np.argmin(diff))
        assert diff[j] <= atol, f"no match within {atol} for {row}: nearest {actual[j]} (diff {diff[j]})"
        unused[j] = False


@pytest.fixture(scope="module")
def trained_model():
    keras.utils.set_random_seed(0)
    images, y = toy_batch(IMAGE_SIZE)
    model = small_model(score_threshold=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=False)
    model.fit(images, y, batch_size=2, epochs=8, verbose=0)
    return model


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory):
    export_dir = str(tmp_path_factory.mktemp("export"))
    path = export_saved_model(
        trained_model, export_dir, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS, image_size=IMAGE_SIZE
    )
    return export_dir, path


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1])


# ------------------------------------------------------------------ layout
def test_export_writes_numbered_versions(trained_model, exported):
    export_dir, path = exported
    assert path == os.path.join(export_dir, "1")
    assert {"saved_model.pb", "variables", "assets", "assets.extra"} <= set(os.listdir(path))
    assert next_version(export_dir) == 2
    second = export_saved_model(trained_model, export_dir, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS)
    assert second == os.path.join(export_dir, "2")
    assert os.path.exists(os.path.join(second, "saved_model.pb"))
    with pytest.raises(FileExistsError, match=r"already exists") as error:
        export_saved_model(trained_model, export_dir, version=1)
    assert os.path.join(export_dir, "1") in str(error.value)
    assert sorted(os.listdir(export_dir)) == ["1", "2"]


def test_export_logs_no_long_lines(trained_model, tmp_path, caplog, capfd):
    """No ~3,000-character INFO line about renaming captured inputs (``cond_input_1`` …)."""
    capfd.readouterr()
    # absl's verbosity, not the "absl" logger's level: tf.saved_model.save
    # sets that logger back to absl's verbosity (WARNING by default).
    verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    try:
        with caplog.at_level(logging.INFO):
            export_saved_model(trained_model, str(tmp_path), class_names=CLASS_NAMES, image_size=IMAGE_SIZE)
    finally:
        absl_logging.set_verbosity(verbosity)
    messages = [record.getMessage() for record in caplog.records]
    # tf.saved_model.save's own INFO records arrive: the check below can see them.
    assert any("fingerprint" in message for message in messages), messages
    assert [m[:200] for m in messages if len(m) > 500 or "will be renamed" in m] == []
    stderr_lines = capfd.readouterr().err.splitlines()
    assert [line[:200] for line in stderr_lines if len(line) > 500] == []


def test_next_version_ignores_non_integer_entries(tmp_path):
    assert next_version(str(tmp_path / "missing")) == 1
    for name in ("3", "10", "tmp", "7.bak"):
        (tmp_path / name).mkdir()
    assert next_version(str(tmp_path)) == 11


def test_export_rejects_class_lists_of_the_wrong_length(trained_model, tmp_path):
    with pytest.raises(ValueError, match=r"3 classes but got 2 class_names and 3 category_ids"):
        export_saved_model(trained_model, str(tmp_path), class_names=["a", "b"], category_ids=CATEGORY_IDS)
    assert not os.path.exists(tmp_path / "1")


def test_explicit_version_and_classes_past_num_detections(trained_model, loaded, tmp_path):
    """version=7 writes 7/; with a score threshold images get < 100 detections, class -1 after them."""
    images = tf.constant([_jpeg(_picture()), _png(_picture(90, 120))])
    unthresholded = _numpy(loaded.signatures["serving_default"](images=images))["detection_scores"]
    # Halfway between the first image's 10th and 11th scores: 10 detections are left.
    threshold = float((unthresholded[0, 9] + unthresholded[0, 10]) / 2)
    probe = kr.RetinaNet.from_config({**trained_model.get_config(), "score_threshold": threshold})
    probe(np.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), "float32"))
    probe.set_weights(trained_model.get_weights())
    path = export_saved_model(
        probe, str(tmp_path), version=7, class_names=CLASS_NAMES, category_ids=CATEGORY_IDS, image_size=IMAGE_SIZE
    )
    assert path == os.path.join(str(tmp_path), "7")
    assert next_version(str(tmp_path)) == 8
    out = _numpy(tf.saved_model.load(path).signatures["serving_default"](images=images))
    _assert_valid_detections(out, [(100, 150), (90, 120)])
    assert out["num_detections"][0] == 10
    assert out["num_detections"][1] == np.sum(unthresholded[1] > threshold)
    for b in range(2):
        n = out["num_detections"][b]
        assert np.all(out["detection_scores"][b, :n] > threshold)
        np.testing.assert_array_equal(out["detection_scores"][b, n:], 0.0)
        np.testing.assert_array_equal(out["detection_boxes"][b, n:], 0.0)


# -------------------------------------------------------------- signatures
def test_signatures_inputs_and_outputs(loaded):
    signatures = loaded.signatures
    assert {"serving_default", "serving_images", "metadata"} <= set(signatures)
    expected_inputs = {
        "serving_default": tf.TensorSpec([None], tf.string, name="images"),
        "serving_images": tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
    }
    for name, spec in expected_inputs.items():
        args, kwargs = signatures[name].structured_input_signature
        assert args == ()
        assert kwargs == {"images": spec}
        outputs = signatures[name].structured_outputs
        assert set(outputs) == OUTPUT_KEYS
        assert outputs["detection_boxes"].dtype == tf.float32
        assert outputs["detection_boxes"].shape.as_list() == [None, MAX_DETECTIONS, 4]
        assert outputs["detection_scores"].dtype == tf.float32
        assert outputs["detection_scores"].shape.as_list() == [None, MAX_DETECTIONS]
        assert outputs["detection_classes"].dtype == tf.int64
        assert outputs["detection_classes"].shape.as_list() == [None, MAX_DETECTIONS]
        assert outputs["num_detections"].dtype == tf.int32
        assert outputs["num_detections"].shape.as_list() == [None]
    assert signatures["metadata"].structured_input_signature == ((), {})
    metadata_outputs = signatures["metadata"].structured_outputs
    assert metadata_outputs["class_names"].dtype == tf.string
    assert metadata_outputs["category_ids"].dtype == tf.int64
    assert metadata_outputs["class_names_file"].dtype == tf.string


def test_serving_default_returns_category_ids(loaded):
    images = [_jpeg(_picture()), _png(_picture(64, 64)), _jpeg(_picture(200, 90))]
    out = _numpy(loaded.signatures["serving_default"](images=tf.constant(images)))
    _assert_valid_detections(out, [(100, 150), (64, 64), (200, 90)])
    np.testing.assert_array_equal(out["num_detections"], MAX_DETECTIONS)  # score_threshold=0
    # Scores are sorted and the ids are the dataset's (more than one id used).
    assert np.all(np.diff(out["detection_scores"], axis=1) <= 0)
    assert len(set(out["detection_classes"].ravel().tolist())) >= 2


def test_serving_images_matches_serving_default(loaded):
    pictures = [_picture(90, 120), _picture(90, 120)[::-1].copy()]
    encoded = _numpy(loaded.signatures["serving_default"](images=tf.constant([_png(p) for p in pictures])))
    raw = _numpy(loaded.signatures["serving_images"](images=tf.constant(np.stack(pictures))))
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(raw[key], encoded[key], atol=1e-4, err_msg=key)


def test_metadata_signature_and_class_names_asset(loaded, exported):
    metadata = _numpy(loaded.signatures["metadata"]())
    assert [name.decode() for name in metadata["class_names"]] == list(CLASS_NAMES)
    np.testing.assert_array_equal(metadata["category_ids"], CATEGORY_IDS)
    asset = metadata["class_names_file"].decode()
    assert asset == os.path.join(exported[1], "assets", CLASS_NAMES_ASSET)
    with open(asset) as f:
        assert f.read() == "1\tred box\n5\tgreen\n9\tblue\n"
    assert read_class_names(exported[1]) == (list(CLASS_NAMES), list(CATEGORY_IDS))


def test_warmup_requests_are_prediction_logs(loaded, exported, tmp_path):
    from tensorflow_serving.apis import prediction_log_pb2

    filename = os.path.join(exported[1], "assets.extra", "tf_serving_warmup_requests")
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(filename)]
    assert len(records) == 1
    request = records[0].predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    assert list(request.inputs) == ["images"]
    assert request.inputs["images"].dtype == tf.string.as_datatype_enum
    images = tf.make_ndarray(request.inputs["images"])
    assert images.shape == (1,)
    # TF Serving replays the request at load: it must run on the signature.
    out = _numpy(loaded.signatures["serving_default"](images=tf.constant(images)))
    _assert_valid_detections(out, [(64, 64)])

    # Explicit warm-up images: one request holding all of them.
    own = [_jpeg(_picture()), _png(_picture(32, 48))]
    written = write_warmup_requests(str(tmp_path), own, model_name="detector")
    (record,) = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(written)]
    assert record.predict_log.request.model_spec.name == "detector"
    assert list(tf.make_ndarray(record.predict_log.request.inputs["images"])) == own


# ------------------------------------------------------- without keras
_NO_KERAS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["keras"] = None          # `import keras` now raises ImportError
    sys.modules["keras_retina"] = None
    import tensorflow as tf
    try:
        import keras  # noqa: F401
        blocked = False
    except ImportError:
        blocked = True
    model = tf.saved_model.load(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        out = model.signatures["serving_default"](images=tf.constant([f.read()]))
    loaded_modules = sorted(
        name for name, module in sys.modules.items()
        if module is not None and name.split(".")[0] in ("keras", "keras_retina", "tf_keras")
    )
    print(json.dumps({
        "blocked": blocked,
        "loaded_modules": loaded_modules,
        "num_detections": out["num_detections"].numpy().tolist(),
        "boxes": out["detection_boxes"].numpy().tolist(),
        "classes": out["detection_classes"].numpy().tolist(),
        "names": [n.decode() for n in model.signatures["metadata"]()["class_names"].numpy()],
    }))
    """
)


def test_saved_model_runs_without_keras_or_keras_retina(loaded, exported, tmp_path):
    script = tmp_path / "serve.py"
    script.write_text(_NO_KERAS_SCRIPT)
    image = tmp_path / "picture.jpg"
    image.write_bytes(_jpeg(_picture()))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, str(script), exported[1], str(image)],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["blocked"] is True
    assert report["loaded_modules"] == []
    assert report["names"] == list(CLASS_NAMES)
    assert report["num_detections"] == [MAX_DETECTIONS]
    expected = _numpy(loaded.signatures["serving_default"](images=tf.constant([image.read_bytes()])))
    np.testing.assert_allclose(report["boxes"], expected["detection_boxes"], atol=1e-3)
    np.testing.assert_array_equal(report["classes"], expected["detection_classes"])


# ------------------------------------------------------- geometry, parity
def test_boxes_are_in_original_image_pixels(loaded):
    """The same picture at 100x150 and 3x larger: boxes scale by 3 and stay inside each image."""
    small = _picture(100, 150)
    large = np.repeat(np.repeat(small, 3, axis=0), 3, axis=1)  # 300x450
    out = _numpy(loaded.signatures["serving_default"](images=tf.constant([_jpeg(small), _jpeg(large)])))
    _assert_valid_detections(out, [(100, 150), (300, 450)])
    small_boxes, large_boxes = out["detection_boxes"][0], out["detection_boxes"][1]
    # Both are resized to the same 85x128 model input, so the model sees
    # almost the same image (JPEG artefacts differ): the top detections of the
    # small one come back from the large one at 3x the coordinates.
    top = small_boxes[:20]
    nearest = np.abs(top[:, None, :] - large_boxes[None, :, :] / 3.0).max(axis=-1).min(axis=1)
    assert np.sum(nearest <= 1.0) >= 17, nearest
    assert np.median(nearest) <= 0.25, nearest
    # Scaled by 2 or 4 instead, almost nothing would match.
    for wrong in (2.0, 4.0):
        off = np.abs(top[:, None, :] - large_boxes[None, :, :] / wrong).max(axis=-1).min(axis=1)
        assert np.sum(off <= 1.0) <= 5, (wrong, off)
    # Not the model's 128-pixel frame: boxes reach beyond it in the large image.
    assert large_boxes[:, [0, 2]].max() > 300


def _detections_by_image(paths, out):
    """SavedModel outputs → {stem: rows [category_id, score, x, y, w, h]}."""
    rows = {}
    for b, path in enumerate(paths):
        n = out["num_detections"][b]
        boxes = out["detection_boxes"][b, :n].astype(np.float64)
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        rows[os.path.splitext(os.path.basename(path))[0]] = np.column_stack(
            [out["detection_classes"][b, :n], out["detection_scores"][b, :n], xywh]
        )
    return rows


def test_predict_files_and_saved_model_agree(trained_model, loaded, tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    (image_dir / "wide.jpg").write_bytes(_jpeg(_picture(100, 150)))
    (image_dir / "tall.png").write_bytes(_png(_picture(120, 90)))
    (image_dir / "square.bmp").write_bytes(_pil_bytes(_picture(64, 64), "BMP"))
    json_path = predict_lib.predict_files(
        trained_model,
        [str(image_dir)],
        str(tmp_path / "out"),
        image_size=IMAGE_SIZE,
        class_names=CLASS_NAMES,
        category_ids=CATEGORY_IDS,
    )
    with open(json_path) as f:
        results = json.load(f)
    paths = predict_lib.list_images([str(image_dir)])
    contents = [open(p, "rb").read() for p in paths]
    served = _detections_by_image(paths, _numpy(loaded.signatures["serving_default"](images=tf.constant(contents))))
    assert set(served) == {"wide", "tall", "square"}
    assert {r["image_id"] for r in results} == set(served)
    for stem, expected in served.items():
        mine = np.array([[r["category_id"], r["score"], *r["bbox"]] for r in results if r["image_id"] == stem])
        assert len(mine) == MAX_DETECTIONS
        _assert_same_detections(mine, expected, atol=1e-3)


# ------------------------------------------------------------- bad input
def test_decode_image_makes_rgb_from_any_format():
    rgb = _picture(20, 30)
    gray = (np.arange(20 * 30).reshape(20, 30, 1) % 256).astype(np.uint8)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 77, np.uint8)], axis=-1)
    cases = {
        "grayscale png": (tf.io.encode_png(gray).numpy(), np.repeat(gray, 3, axis=-1)),
        "rgba png": (tf.io.encode_png(rgba).numpy(), rgb),
        "bmp": (_pil_bytes(rgb, "BMP"), rgb),
        "gif": (_pil_bytes(rgb, "GIF"), rgb),  # 3 colours: exact in a GIF palette
        "webp": (_pil_bytes(rgb, "WEBP", lossless=True), rgb),
    }
    for name, (contents, expected) in cases.items():
        image = decode_image(tf.constant(contents)).numpy()
        assert image.dtype == np.uint8 and image.shape == (20, 30, 3), name
        np.testing.assert_array_equal(image, expected, err_msg=name)


def test_serving_accepts_grayscale_rgba_bmp_and_gif(loaded):
    rgb = _picture(60, 80)
    gray = rgb[..., :1]
    rgba = np.concatenate([rgb, np.full((60, 80, 1), 200, np.uint8)], axis=-1)
    images = [
        tf.io.encode_png(gray).numpy(),
        tf.io.encode_png(rgba).numpy(),
        _pil_bytes(rgb, "BMP"),
        _pil_bytes(rgb, "GIF"),
        tf.io.encode_jpeg(gray).numpy(),  # one-channel JPEG
    ]
    out = _numpy(loaded.signatures["serving_default"](images=tf.constant(images)))
    _assert_valid_detections(out, [(60, 80)] * len(images))
    np.testing.assert_array_equal(out["num_detections"], MAX_DETECTIONS)
    # RGBA, BMP and GIF decode to the same RGB pixels, hence the same detections.
    for b in (2, 3):
        np.testing.assert_allclose(out["detection_scores"][b], out["detection_scores"][1], atol=1e-5)


def test_bytes_that_are_not_an_image_are_an_invalid_argument(loaded):
    serve = loaded.signatures["serving_default"]
    good = _jpeg(_picture())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not a JPEG, PNG, GIF, BMP or WebP") as error:
        serve(images=tf.constant([good, b"these bytes are no image"]))
    assert "request image 1" in error.value.message
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not a JPEG, PNG, GIF, BMP or WebP"):
        serve(images=tf.constant([b""]))
    # A truncated JPEG has the right magic bytes; the decoder rejects it.
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(images=tf.constant([good[: len(good) // 3]]))
    # The model still serves afterwards.
    out = _numpy(serve(images=tf.constant([good])))
    assert out["num_detections"].tolist() == [MAX_DETECTIONS]


def test_empty_batch_returns_empty_outputs(loaded):
    expected = {
        "detection_boxes": (0, MAX_DETECTIONS, 4),
        "detection_scores": (0, MAX_DETECTIONS),
        "detection_classes": (0, MAX_DETECTIONS),
        "num_detections": (0,),
    }
    for name, images in (
        ("serving_default", tf.constant([], tf.string)),
        ("serving_images", tf.zeros((0, 32, 48, 3), tf.uint8)),
    ):
        out = _numpy(loaded.signatures[name](images=images))
        assert {key: value.shape for key, value in out.items()} == expected, name
        assert out["detection_classes"].dtype == np.int64


def test_very_large_image(loaded):
    height, width = 6000, 8000
    image = np.empty((height, width, 3), np.uint8)
    image[..., 0] = (np.arange(width) * 255 // width)[None, :]
    image[..., 1] = (np.arange(height) * 255 // height)[:, None]
    image[..., 2] = 128
    image[1000:4000, 2000:6000] = (250, 20, 20)
    contents = tf.io.encode_jpeg(image, quality=10).numpy()
    del image
    out = _numpy(loaded.signatures["serving_default"](images=tf.constant([contents])))
    _assert_valid_detections(out, [(height, width)])
    assert out["num_detections"].tolist() == [MAX_DETECTIONS]
    # Boxes are in the 8000x6000 frame, not the 128-pixel model input.
    assert out["detection_boxes"][0].max() > 1000


# ------------------------------------------------------------ AP parity
@pytest.mark.slow
def test_exported_ap_equals_in_process_ap(tmp_path):
    from keras_retina import evaluation
    from keras_retina.data import CocoJsonSource, make_pipeline, make_shapes_splits
    from pycocotools.coco import COCO

    splits = make_shapes_splits(
        str(tmp_path / "shapes"), num_train=64, num_val=16, seed=0, image_size=(128, 128), verbose=False
    )
    train_source = CocoJsonSource(splits["train"].annotation_file, splits["train"].image_dir)
    val_source = CocoJsonSource(splits["val"].annotation_file, splits["val"].image_dir)
    keras.utils.set_random_seed(0)
    model = kr.RetinaNet(
        num_classes=len(val_source.class_names),
        backbone="tiny",
        fpn_channels=32,
        head_channels=32,
        num_head_convs=2,
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3), jit_compile=False)
    train = make_pipeline(
        train_source.dataset(shuffle=True, seed=0).repeat(), image_size=128, batch_size=8, training=True, seed=0
    )
    model.fit(train, steps_per_epoch=60, epochs=1, verbose=0, shuffle=False)
    category_ids = [int(c) for c in val_source.category_ids]
    coco_gt = COCO(splits["val"].annotation_file)
    val = make_pipeline(val_source.dataset(), image_size=128, batch_size=8, training=False)
    in_process = evaluation.evaluate_model(model, val, coco_gt, category_ids, verbose=False)

    path = export_saved_model(
        model,
        str(tmp_path / "export"),
        class_names=val_source.class_names,
        category_ids=category_ids,
        image_size=128,
    )
    serve = tf.saved_model.load(path).signatures["serving_default"]
    with open(splits["val"].annotation_file) as f:
        images = json.load(f)["images"]
    results = []
    for start in range(0, len(images), 8):
        chunk = images[start : start + 8]
        contents = [open(os.path.join(splits["val"].image_dir, im["file_name"]), "rb").read() for im in chunk]
        out = _numpy(serve(images=tf.constant(contents)))
        # detection_classes are category ids already: map them to themselves.
        index = {c: i for i, c in enumerate(category_ids)}
        classes = np.vectorize(lambda c: index.get(int(c), -1))(out["detection_classes"])
        results += evaluation.detections_to_coco(
            out["detection_boxes"],
            out["detection_scores"],
            classes,
            out["num_detections"],
            [im["id"] for im in chunk],
            category_ids,
        )
    exported_metrics = evaluation.coco_evaluate(coco_gt, results, verbose=False)
    print(f"in-process AP {in_process['AP']:.4f}, exported AP {exported_metrics['AP']:.4f}")
    assert in_process["AP"] > 0.0
    assert abs(exported_metrics["AP"] - in_process["AP"]) <= 0.005
    assert abs(exported_metrics["AP50"] - in_process["AP50"]) <= 0.005
