"""SavedModel export for TF Serving (keras_retina/deploy/saved_model.py), and the request limits it serves
with (keras_retina/deploy/requests.py).

One small model, trained for a few steps on the toy batch so that its scores
differ from image to image, is exported once per module with
``score_threshold=0`` (every image gets 100 detections) and category ids
[1, 5, 9]; most tests run that SavedModel, loaded with ``tf.saved_model.load``.
"""

import io
import json
import logging
import os
import re
import struct
import subprocess
import sys
import textwrap

import bomb_files
import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging
from helpers import encode_jpeg, encode_png, pil_bytes, small_model, toy_batch
from PIL import Image

import keras_retina as kr
from keras_retina.data.image_headers import GIF_MAX_BLOCKS
from keras_retina.deploy import predict as predict_lib
from keras_retina.deploy.class_names import CLASS_NAMES_FILE, read_class_names
from keras_retina.deploy.requests import decode_image
from keras_retina.deploy.saved_model import export_saved_model, next_version, write_warmup_requests

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
    images = tf.constant([encode_jpeg(_picture()), encode_png(_picture(90, 120))])
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
    images = [encode_jpeg(_picture()), encode_png(_picture(64, 64)), encode_jpeg(_picture(200, 90))]
    out = _numpy(loaded.signatures["serving_default"](images=tf.constant(images)))
    _assert_valid_detections(out, [(100, 150), (64, 64), (200, 90)])
    np.testing.assert_array_equal(out["num_detections"], MAX_DETECTIONS)  # score_threshold=0
    # Scores are sorted and the ids are the dataset's (more than one id used).
    assert np.all(np.diff(out["detection_scores"], axis=1) <= 0)
    assert len(set(out["detection_classes"].ravel().tolist())) >= 2


def test_serving_images_matches_serving_default(loaded):
    pictures = [_picture(90, 120), _picture(90, 120)[::-1].copy()]
    encoded = _numpy(loaded.signatures["serving_default"](images=tf.constant([encode_png(p) for p in pictures])))
    raw = _numpy(loaded.signatures["serving_images"](images=tf.constant(np.stack(pictures))))
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(raw[key], encoded[key], atol=1e-4, err_msg=key)


def test_metadata_signature_and_class_names_asset(loaded, exported):
    metadata = _numpy(loaded.signatures["metadata"]())
    assert [name.decode() for name in metadata["class_names"]] == list(CLASS_NAMES)
    np.testing.assert_array_equal(metadata["category_ids"], CATEGORY_IDS)
    asset = metadata["class_names_file"].decode()
    assert asset == os.path.join(exported[1], "assets", CLASS_NAMES_FILE)
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
    own = [encode_jpeg(_picture()), encode_png(_picture(32, 48))]
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
    image.write_bytes(encode_jpeg(_picture()))
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
    out = _numpy(loaded.signatures["serving_default"](images=tf.constant([encode_jpeg(small), encode_jpeg(large)])))
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
    (image_dir / "wide.jpg").write_bytes(encode_jpeg(_picture(100, 150)))
    (image_dir / "tall.png").write_bytes(encode_png(_picture(120, 90)))
    (image_dir / "square.bmp").write_bytes(pil_bytes(_picture(64, 64), "BMP"))
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
        "bmp": (pil_bytes(rgb, "BMP"), rgb),
        "gif": (pil_bytes(rgb, "GIF"), rgb),  # 3 colours: exact in a GIF palette
        "webp": (pil_bytes(rgb, "WEBP", lossless=True), rgb),
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
        pil_bytes(rgb, "BMP"),
        pil_bytes(rgb, "GIF"),
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
    good = encode_jpeg(_picture())
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
    """35 MP, just under the default max_pixels of 40 MP: served, boxes in its own frame."""
    height, width = 5000, 7000
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
    # Boxes are in the 7000x5000 frame, not the 128-pixel model input.
    assert out["detection_boxes"][0].max() > 1000


# -------------------------------------------- limits: decompression bombs
def _refusal(error):
    """The refusal's own text: "request ... refused before decoding" (graph errors add node lines)."""
    found = re.search(r"request.*refused before decoding", error.value.message)
    assert found, error.value.message
    return found[0]


def _over_max_pixels(index, name, width, height, max_pixels=40_000_000):
    return (
        f"request image {index} ({name}, {width} x {height} pixels) is over the limit of "
        f"max_pixels={max_pixels} pixels (width x height); refused before decoding"
    )


def _animated_gif(frames, **options):
    buffer = io.BytesIO()
    first, *rest = [Image.fromarray(frame) for frame in frames]
    first.save(buffer, format="GIF", save_all=True, append_images=rest, duration=40, loop=0, **options)
    return buffer.getvalue()


BOMBS = {
    # name: (builder, format, width, height); built small, announcing hundreds of megapixels.
    "png 18000x18000 (39 KB)": (lambda: bomb_files.png(18000, 18000), "PNG", 18000, 18000),
    "jpeg 13000x13000 baseline": (lambda: bomb_files.jpeg(13000, 13000), "JPEG", 13000, 13000),
    "jpeg 13000x13000 progressive": (lambda: bomb_files.jpeg(13000, 13000, progressive=True), "JPEG", 13000, 13000),
    "gif 18000x18000": (lambda: bomb_files.gif((18000, 18000), [(18000, 18000)]), "GIF", 18000, 18000),
    "gif frame over a 1x1 screen": (lambda: bomb_files.gif((1, 1), [(10, 10), (18000, 9000)]), "GIF", 18000, 9000),
    "bmp 18000x18000 bottom-up": (lambda: bomb_files.bmp(18000, 18000), "BMP", 18000, 18000),
    "bmp 18000x18000 top-down": (lambda: bomb_files.bmp(18000, -18000), "BMP", 18000, 18000),
    "webp lossy 16383x16383": (lambda: bomb_files.webp_lossy(16383, 16383), "WebP", 16383, 16383),
    "webp lossless 16384x16384": (lambda: bomb_files.webp_lossless(16384, 16384), "WebP", 16384, 16384),
    "webp extended 18000x18000": (lambda: bomb_files.webp_extended(18000, 18000), "WebP", 18000, 18000),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_bombs_are_refused_before_decoding(loaded, name):
    build, image_format, width, height = BOMBS[name]
    bomb = build()
    assert len(bomb) < 40_000, len(bomb)
    serve = loaded.signatures["serving_default"]
    good = encode_jpeg(_picture())
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        serve(images=tf.constant([good, bomb]))
    # The header's error, not the decoder's: all but the PNG are truncated
    # past their headers, so a decoder that ran would say something else.
    assert _refusal(error) == _over_max_pixels(1, image_format, width, height)
    out = _numpy(serve(images=tf.constant([good])))  # the same model serves on
    assert out["num_detections"].tolist() == [MAX_DETECTIONS]


def test_a_valid_48_megapixel_png_is_refused(loaded):
    """A real, decodable 8000 x 6000 PNG (6 KB): over 40 MP, refused; one of 7000 x 5000 is served."""
    big = bomb_files.png(8000, 6000)
    assert tf.io.decode_png(big, channels=1).shape == (6000, 8000, 1)  # decodable
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        serve(images=tf.constant([big]))
    assert _refusal(error) == _over_max_pixels(0, "PNG", 8000, 6000)
    out = _numpy(serve(images=tf.constant([bomb_files.png(7000, 5000)])))
    _assert_valid_detections(out, [(5000, 7000)])


def test_gif_frames_are_limited_together_and_a_huge_screen_alone_is_harmless(loaded):
    serve = loaded.signatures["serving_default"]
    # Four 36 MP frames, each under 40 MP: giflib would hold all four (144 MP).
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        serve(images=tf.constant([bomb_files.gif((6000, 6000), [(6000, 6000)] * 4)]))
    assert _refusal(error) == (
        "request image 0 (GIF, 6000 x 6000 pixels) has frames of 144000000 pixels in all, over the limit of "
        "3 x max_pixels=120000000 pixels for all frames of a GIF (the decoder keeps every frame); "
        "refused before decoding"
    )
    # Sub-blocks of changing sizes, 40,000 of them: more steps than a GIF may take.
    crafted = bomb_files.gif((10, 10), [(10, 10)], sub_block_sizes=(1, 2) * 20_000)
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        serve(images=tf.constant([crafted]))
    assert _refusal(error) == (
        f"request image 0 (GIF): more than {GIF_MAX_BLOCKS} GIF blocks (records or runs of sub-blocks) to read; "
        "refused before decoding"
    )
    # An 18000 x 18000 logical screen around a 60 x 80 frame: decoded at 60 x 80, served.
    picture = _picture(60, 80)
    contents = bytearray(pil_bytes(picture, "GIF"))
    contents[6:10] = struct.pack("<HH", 18000, 18000)
    out = _numpy(serve(images=tf.constant([bytes(contents), _animated_gif([picture, picture[::-1].copy()])])))
    _assert_valid_detections(out, [(60, 80), (60, 80)])


def _patched(contents: bytes, offset: int, replacement: bytes) -> bytes:
    return contents[:offset] + replacement + contents[offset + len(replacement) :]


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MALFORMED = {
    # name: (bytes, the refusal after "request image 1 ")
    "png truncated": (
        _PNG_SIGNATURE + b"\0\0\0\x0dIHDR\0\0",
        "(PNG): truncated PNG header: 18 bytes, fewer than the 24 that hold its IHDR width and height",
    ),
    "png without IHDR": (
        _PNG_SIGNATURE + b"\0\0\0\x0dIDAT" + b"\0" * 30,
        "(PNG): the first PNG chunk is not IHDR",
    ),
    "png zero width": (
        _patched(bomb_files.png(1, 1), 16, b"\0" * 4),
        "(PNG): the PNG header gives a zero width or height",
    ),
    "gif truncated": (
        b"GIF89a\x10\x00",
        "(GIF): truncated GIF header: 8 bytes, fewer than the 13 that hold its logical screen descriptor",
    ),
    "bmp truncated": (
        bomb_files.bmp(10, 10)[:20],
        "(BMP): truncated BMP header: 20 bytes, fewer than the 32 that the TensorFlow BMP decoder reads",
    ),
    "bmp zero height": (bomb_files.bmp(10, 0), "(BMP): the BMP header gives width 10 and height 0"),
    "webp truncated": (
        b"RIFF\x20\0\0\0WEBPVP8",
        "(WebP): truncated WebP header: 15 bytes, fewer than the 16 that hold its first chunk header",
    ),
    "webp unknown chunk": (
        b"RIFF\x20\0\0\0WEBPABCD" + b"\0" * 20,
        "(WebP): the first WebP chunk is none of VP8, VP8L and VP8X",
    ),
    "webp lossy truncated": (
        bomb_files.webp_lossy(10, 10)[:28],
        "(WebP): truncated WebP header: 28 bytes, fewer than the 30 that hold a VP8 frame header",
    ),
    "webp lossy no start code": (
        _patched(bomb_files.webp_lossy(10, 10), 23, b"xyz"),
        "(WebP): no VP8 start code (9d 01 2a) in the WebP VP8 chunk",
    ),
    "webp lossless truncated": (
        bomb_files.webp_lossless(10, 10)[:24],
        "(WebP): truncated WebP header: 24 bytes, fewer than the 25 that hold a VP8L header",
    ),
    "webp lossless no signature": (
        _patched(bomb_files.webp_lossless(10, 10), 20, b"\0"),
        "(WebP): no signature byte 0x2f in the WebP VP8L chunk",
    ),
    "webp extended truncated": (
        bomb_files.webp_extended(10, 10)[:29],
        "(WebP): truncated WebP header: 29 bytes, fewer than the 30 that hold a VP8X chunk",
    ),
    "webp extended wrong size": (
        _patched(bomb_files.webp_extended(10, 10), 16, b"\x0b"),
        "(WebP): the WebP VP8X chunk size is not 10",
    ),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_headers_are_a_clear_invalid_argument(loaded, name):
    contents, message = MALFORMED[name]
    serve = loaded.signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        serve(images=tf.constant([encode_jpeg(_picture()), contents]))
    assert _refusal(error) == f"request image 1 {message}; refused before decoding"


def test_unknown_formats_keep_their_errors(loaded):
    serve = loaded.signatures["serving_default"]
    not_an_image = r"not a JPEG, PNG, GIF, BMP or WebP image \(request image 1\)"
    with pytest.raises(tf.errors.InvalidArgumentError, match=not_an_image):
        serve(images=tf.constant([encode_jpeg(_picture()), b"these bytes are no image"]))
    # The magic check's 4 bytes of PNG's 8, and a RIFF file that is no WebP:
    # TensorFlow's decoder calls them unknown, as before the limits.
    for contents in (b"\x89PNG but no more", b"RIFF\x24\0\0\0WAVEfmt " + b"\0" * 28):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"Unknown image file format"):
            serve(images=tf.constant([contents]))
    # A JPEG whose header libjpeg cannot read fails at the header, with libjpeg's message.
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Invalid JPEG data, size 20"):
        serve(images=tf.constant([encode_jpeg(_picture())[:20]]))


def test_batches_over_max_batch_are_refused_before_decoding(loaded):
    tiny = encode_png(_picture(8, 8))
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        loaded.signatures["serving_default"](images=tf.constant([tiny] * 64 + [bomb_files.png(18000, 18000)]))
    assert _refusal(error) == (
        "request of 65 images is over the limit of max_batch=64 images a request; refused before decoding"
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"request of 65 images is over the limit of max_batch=64"):
        loaded.signatures["serving_images"](images=tf.zeros((65, 8, 8, 3), tf.uint8))


def test_limits_round_trip_through_the_export(trained_model, loaded, tmp_path):
    metadata = _numpy(loaded.signatures["metadata"]())
    assert (metadata["max_pixels"], metadata["max_batch"]) == (40_000_000, 64)
    assert metadata["max_pixels"].dtype == np.int64

    path = export_saved_model(
        trained_model,
        str(tmp_path),
        class_names=CLASS_NAMES,
        category_ids=CATEGORY_IDS,
        image_size=IMAGE_SIZE,
        warmup_images=[encode_png(_picture(30, 40))],
        max_pixels=1200,
        max_batch=2,
    )
    small = tf.saved_model.load(path)
    metadata = _numpy(small.signatures["metadata"]())
    assert (metadata["max_pixels"], metadata["max_batch"]) == (1200, 2)
    serve, raw = small.signatures["serving_default"], small.signatures["serving_images"]
    fits, over = _picture(30, 40), _picture(30, 41)  # 1200 and 1230 pixels
    out = _numpy(serve(images=tf.constant([encode_png(fits), encode_jpeg(fits)])))
    _assert_valid_detections(out, [(30, 40), (30, 40)])
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        serve(images=tf.constant([encode_png(fits), encode_jpeg(over)]))
    assert _refusal(error) == _over_max_pixels(1, "JPEG", 41, 30, max_pixels=1200)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"request of 3 images is over the limit of max_batch=2"):
        serve(images=tf.constant([encode_png(fits)] * 3))
    _assert_valid_detections(_numpy(raw(images=tf.constant(fits[None]))), [(30, 40)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images of 41 x 30 pixels are over .* max_pixels=1200"):
        raw(images=tf.constant(over[None]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"request of 3 images is over the limit of max_batch=2"):
        raw(images=tf.constant(np.stack([fits] * 3)))


def test_export_rejects_bad_limits_and_warmup_images_over_them(trained_model, tmp_path):
    bad = (("max_pixels", 0), ("max_pixels", 2**31), ("max_batch", -1), ("max_batch", 2.5), ("max_pixels", True))
    for name, value in bad:
        with pytest.raises(ValueError, match=rf"{name} must be an integer from 1 to {2**31 - 1}; got {value!r}"):
            export_saved_model(trained_model, str(tmp_path), **{name: value})
    with pytest.raises(ValueError, match=r"warmup_images would be refused by .*: request image 0 \(JPEG, 64 x 64"):
        export_saved_model(trained_model, str(tmp_path), max_pixels=1000)  # the default warm-up image: 64 x 64
    with pytest.raises(ValueError, match=r"request of 2 images is over the limit of max_batch=1"):
        export_saved_model(trained_model, str(tmp_path), warmup_images=[encode_jpeg(_picture())] * 2, max_batch=1)
    assert os.listdir(tmp_path) == []


_PEAK_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import tensorflow as tf
    model = tf.saved_model.load(sys.argv[1])
    serve = model.signatures["serving_default"]
    with open(sys.argv[2], "rb") as f:
        contents = f.read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        serve(images=tf.constant([contents]))
        refused = False
    except tf.errors.InvalidArgumentError:
        refused = True
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"refused": refused, "before_kib": before, "peak_kib": peak}))
    """
)


def test_a_png_bomb_leaves_peak_memory_where_an_ordinary_request_puts_it(exported, tmp_path):
    """Two server processes, one sent an ordinary JPEG, one the 39 KB 18000 x 18000 PNG: same peak RSS."""
    script = tmp_path / "serve_one.py"
    script.write_text(_PEAK_MEMORY_SCRIPT)
    (tmp_path / "ordinary.jpg").write_bytes(encode_jpeg(_picture()))
    (tmp_path / "bomb.png").write_bytes(bomb_files.png(18000, 18000))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": "", "CUDA_VISIBLE_DEVICES": ""}
    children = {
        name: subprocess.Popen(
            [sys.executable, str(script), exported[1], str(tmp_path / name)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(tmp_path),
            env=env,
        )
        for name in ("ordinary.jpg", "bomb.png")
    }
    reports = {}
    for name, child in children.items():
        stdout, stderr = child.communicate(timeout=300)
        assert child.returncode == 0, stderr[-3000:]
        reports[name] = json.loads(stdout.strip().splitlines()[-1])
    ordinary, bomb = reports["ordinary.jpg"], reports["bomb.png"]
    print(f"peak RSS KiB: ordinary request {ordinary['peak_kib']}, PNG bomb {bomb['peak_kib']}")
    assert (ordinary["refused"], bomb["refused"]) == (False, True)
    # Decoded, the bomb alone would add 972 MB (18000 x 18000 x 3 bytes).
    assert bomb["peak_kib"] - ordinary["peak_kib"] <= 200 * 1024, reports
    assert bomb["peak_kib"] - bomb["before_kib"] <= 100 * 1024, reports


# ------------------------------------------------------------ AP parity
@pytest.mark.slow
def test_exported_ap_equals_in_process_ap(tmp_path):
    from pycocotools.coco import COCO

    from keras_retina import evaluation
    from keras_retina.data import CocoJsonSource, make_pipeline, make_shapes_splits

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
