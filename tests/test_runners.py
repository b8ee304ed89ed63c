"""One detector interface (keras_retina/deploy/runners.py): open_detector, every runtime alike, --model in the CLI.

One confident untrained model (see test_onnx.py) on the shapes classes is
exported once as a SavedModel, a .tflite and a .onnx file (slow: about 45 s
on a 2-core machine); each runs through :func:`open_detector`, and
``--mode=evaluate`` / ``--mode=predict`` run each with ``--model``.
"""

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")
pytest.importorskip("ai_edge_litert")

from test_onnx import IMAGE_SIZE, assert_same_detections, confident_model, noise_images  # noqa: E402

from keras_retina import recipes  # noqa: E402
from keras_retina.cli import modes  # noqa: E402
from keras_retina.config import override  # noqa: E402
from keras_retina.data import RunData  # noqa: E402
from keras_retina.deploy import runners  # noqa: E402
from keras_retina.deploy.litert import LiteRTDetector, export_litert  # noqa: E402
from keras_retina.deploy.onnx import OnnxDetector, export_onnx  # noqa: E402
from keras_retina.deploy.saved_model import export_saved_model  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, data, model, {kind: path}) for the shapes data at 96 px."""
    root = tmp_path_factory.mktemp("runners")
    config = override(
        recipes.load("shapes"),
        [f"data.shapes_dir={root / 'shapes'}", "shapes_num_train=8", "shapes_num_val=6",
         f"shapes_image_size={IMAGE_SIZE}", f"image_size={IMAGE_SIZE}", "batch_size=2", "tensorboard=false"],
    )
    config = dataclasses.replace(config, model_dir=str(root / "run"))
    data = RunData(config.data)
    model = confident_model(num_classes=len(data.class_names))
    classes = dict(class_names=data.class_names, category_ids=data.category_ids, image_size=IMAGE_SIZE)
    paths = {
        "saved_model": export_saved_model(model, str(root / "saved_model"), **classes),
        "tflite": export_litert(model, str(root / "model.tflite"), **classes),
        "onnx": export_onnx(model, str(root / "model.onnx"), **classes),
    }
    return config, data, model, paths


EXPECTED = {"saved_model": runners.SavedModelDetector, "tflite": LiteRTDetector, "onnx": OnnxDetector}


@pytest.mark.slow  # the module's exports take about 45 s on a 2-core machine
def test_open_detector_picks_the_runtime_and_follows_the_interface(setup):
    _, data, model, paths = setup
    images = noise_images(2)
    for kind, path in paths.items():
        detector = runners.open_detector(path)
        assert type(detector) is EXPECTED[kind] and isinstance(detector, runners.Detector), kind
        assert detector.path == path and detector.image_size == IMAGE_SIZE
        assert (list(detector.class_names), list(detector.category_ids)) == (
            list(data.class_names), list(data.category_ids)
        )
        assert (detector.min_size, detector.max_size) == (None, None)
        out = detector(images[0])
        assert {name: (value.shape, value.dtype.name) for name, value in out.items()} == {
            "detection_boxes": ((1, 100, 4), "float32"), "detection_scores": ((1, 100), "float32"),
            "detection_classes": ((1, 100), "int64"), "num_detections": ((1,), "int32"),
        }, kind
        np.testing.assert_array_equal(detector(images[0][None])["num_detections"], out["num_detections"])
        compared = assert_same_detections(model, detector, images, category_ids=list(data.category_ids))
        assert compared >= 5, (kind, compared)


def test_bad_paths_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"model\.pt is not a model this project exports; accepted: .*\.onnx"):
        runners.open_detector(str(tmp_path / "model.pt"))
    with pytest.raises(ValueError, match="is not a model this project exports"):
        runners.open_detector(str(tmp_path))  # a directory without saved_model.pb
    for name in ("missing.onnx", "missing.tflite", "missing.xml"):
        with pytest.raises(FileNotFoundError, match=name):
            runners.open_detector(str(tmp_path / name))


@pytest.mark.slow
def test_bad_images_are_refused_clearly(setup):
    for path in setup[3].values():
        detector = runners.open_detector(path)
        with pytest.raises(ValueError, match=rf"{type(detector).__name__}: .* takes uint8 images .*got float32"):
            detector(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32))
        with pytest.raises(ValueError, match=r"got uint8 \(50, 60, 3\)"):
            detector(np.zeros((50, 60, 3), np.uint8))


def test_a_ragged_image_is_refused_naming_the_file():
    from keras_retina.deploy.litert import check_image

    with pytest.raises(ValueError, match=r"LiteRTDetector: m\.tflite takes uint8 images \(1, 4, 4, 3\); got no array"):
        check_image([[1, 2], [3]], (1, 4, 4, 3), "m.tflite", "LiteRTDetector")


@pytest.mark.slow  # the module's exports take about 45 s on a 2-core machine
def test_evaluate_mode_with_each_exported_file(setup, capsys):
    config, data, _, paths = setup
    results = {}
    for kind, path in paths.items():
        metrics = modes.evaluate(config, {"model": path})
        written = os.path.join(path, "metrics.json") if kind == "saved_model" else path + ".metrics.json"
        with open(written) as f:
            assert json.load(f)["AP"] == pytest.approx(metrics["AP"])
        printed = capsys.readouterr().out
        assert "metric  value" in printed and f"AP      {metrics['AP']:.4f}" in printed and written in printed
        results[kind] = metrics
    # The same weights in three runtimes: the same COCO metrics.
    for kind in ("tflite", "onnx"):
        for name in ("AP", "AP50", "AR100"):
            assert results[kind][name] == pytest.approx(results["saved_model"][name], abs=2e-3), (kind, name)
    assert results["onnx"] == runners.evaluate_detector(OnnxDetector(paths["onnx"]), data.pipeline("val"), data.coco_gt)


@pytest.mark.slow
def test_saved_model_with_a_resize_rule_takes_images_at_their_own_size(setup, tmp_path, capsys):
    config, data, model, _ = setup
    path = export_saved_model(
        model, str(tmp_path / "rule"), class_names=data.class_names, category_ids=data.category_ids,
        image_size=IMAGE_SIZE, min_size=64, max_size=IMAGE_SIZE,
    )
    detector = runners.open_detector(path)
    assert detector.resizes_itself and (detector.min_size, detector.max_size) == (64, IMAGE_SIZE)
    image = noise_images(1)[0][:60, :80]  # 80 x 60: resized by the rule to 85 x 64 inside the SavedModel
    out = detector(image)
    count = int(out["num_detections"][0])
    boxes = out["detection_boxes"][0, :count]
    assert count > 0 and (boxes[:, [0, 2]] <= 80).all() and (boxes[:, [1, 3]] <= 60).all()  # the image's pixels
    with pytest.raises(ValueError, match=r"takes one uint8 image \(H, W, 3\).*got float32"):
        detector(image.astype(np.float32))
    metrics = modes.evaluate(config, {"model": path})
    assert os.path.exists(os.path.join(path, "metrics.json")) and 0.0 <= metrics["AP"] <= 1.0
    assert f"AP      {metrics['AP']:.4f}" in capsys.readouterr().out


@pytest.mark.slow  # the module's exports take about 45 s on a 2-core machine
def test_predict_mode_with_each_exported_file(setup, tmp_path):
    config, data, _, paths = setup
    image_dir = tmp_path / "photos"
    os.makedirs(image_dir)
    Image.fromarray(noise_images(1)[0][:80]).save(image_dir / "noise.png")  # 80 x 96: resized onto the input
    found = {}
    for kind, path in paths.items():
        out = tmp_path / kind
        with open(modes.predict(config, {"model": path, "image": [str(image_dir)], "output_dir": str(out)})) as f:
            found[kind] = json.load(f)
        assert found[kind] and {r["category_id"] for r in found[kind]} <= set(data.category_ids), kind
        assert (out / "noise.png").exists()
    for kind in ("tflite", "onnx"):  # the same boxes as the SavedModel's own serving_default, in original pixels
        assert len(found[kind]) == len(found["saved_model"]), kind
        best = max(found["saved_model"], key=lambda r: r["score"])
        twin = max(found[kind], key=lambda r: r["score"])
        assert twin["category_id"] == best["category_id"]
        np.testing.assert_allclose(twin["bbox"], best["bbox"], atol=0.5)
