"""OpenVINO export (keras_retina/deploy/openvino.py): the IR's signature and metadata, parity with
model.predict, int8 AP, the NMS options, the export mode, and a run without TensorFlow.

The fast tests use an untrained small model at 64 px; the others (slow-marked)
train one tiny RetinaNet on 128-px shapes once per module (as tests/test_litert.py
does: confident detections and a COCO AP near 0.1) and export it as float32 and
int8 IRs.
"""

import dataclasses
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

import keras_retina as kr
from keras_retina import recipes, training
from keras_retina.config import override
from keras_retina.deploy import litert, runners
from keras_retina.deploy import openvino as kov

IMAGE_SIZE = 128
TRAIN_STEPS = 350
OUTPUTS = {"detection_boxes": "f32", "detection_scores": "f32", "detection_classes": "i64", "num_detections": "i32"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """An untrained small RetinaNet at 64 px and its float32 IR."""
    model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16, head_channels=16, num_head_convs=1)
    model.build((None, 64, 64, 3))
    path = kov.export_openvino(
        model, str(tmp_path_factory.mktemp("ov_small") / "model.xml"), class_names=["cat", "dog"],
        category_ids=[3, 7], min_size=48, max_size=64,
    )
    return model, path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, data, float AP, config) of a tiny RetinaNet trained on 128-px shapes."""
    root = tmp_path_factory.mktemp("openvino")
    config = override(
        recipes.load("shapes"),
        [
            f"data.shapes_dir={root / 'shapes'}", "shapes_num_train=400", "shapes_num_val=40",
            f"shapes_image_size={IMAGE_SIZE}", f"image_size={IMAGE_SIZE}", "batch_size=8",
            "epochs=1", f"steps_per_epoch={TRAIN_STEPS}", "warmup_steps=50", "learning_rate=2e-3",
            "tensorboard=false", "model.anchors.size_multiplier=2",  # 16-px anchors at P3 for 128-px images
        ],
    )
    config = dataclasses.replace(config, model_dir=str(root / "run"))
    model, _, data, metrics = training.train(config)
    return model, data, metrics, config


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):
    model, data, _, _ = trained
    root = tmp_path_factory.mktemp("ir")
    paths = {}
    for quantization in kov.QUANTIZATIONS:
        representative = None
        if quantization == "int8":
            representative = (images.numpy() for images, _ in data.pipeline("train").take(13))
        paths[quantization] = kov.export_openvino(
            model,
            str(root / f"model{'_' + quantization if quantization else ''}.xml"),
            quantization=quantization,
            representative_data=representative,
            class_names=data.class_names,
            category_ids=data.category_ids,
        )
    return paths


def _val_images(data, count=16):
    images = np.concatenate([x.numpy() for x, _ in data.pipeline("val")])[:count]
    return np.clip(np.round(images), 0, 255).astype(np.uint8)  # (N, S, S, 3)


def _iou(a, b):
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _confident(boxes, scores, classes, count, threshold=0.3):
    keep = scores[:count] >= threshold
    return boxes[:count][keep], scores[:count][keep], classes[:count][keep]


def _assert_matches_predict(model, detector, images, category_ids, margin=0.01) -> int:
    """Every confident (score >= 0.3) detection of predict has a twin in the IR's and back; returns the count."""
    predicted = model.predict(images, verbose=0)
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    compared = 0
    for i, image in enumerate(images):
        out = detector(image)
        count = int(out["num_detections"][0])
        ours = (predicted["boxes"][i], predicted["scores"][i], predicted["classes"][i], predicted["num_detections"][i])
        theirs = (
            out["detection_boxes"][0], out["detection_scores"][0],
            np.array([contiguous[c] for c in out["detection_classes"][0, :count]], np.int64), count,
        )
        for a, b in ((ours, theirs), (theirs, ours)):
            boxes_a, _, classes_a = _confident(*a)
            boxes_b, _, classes_b = _confident(*b, threshold=0.3 - margin)  # a twin may score just under 0.3
            for box, cls in zip(boxes_a, classes_a):
                same = classes_b == cls
                assert same.any() and _iou(box[None], boxes_b[same]).max() >= 0.95, (i, box, cls)
        compared += len(_confident(*ours)[0])
    return compared


def test_ir_signature_and_metadata(small):
    import openvino as ov

    _, path = small
    assert os.path.isfile(path[: -len(".xml")] + ".bin")
    ir = ov.Core().read_model(path)
    (image,) = ir.inputs
    assert image.get_any_name() == "images" and image.get_element_type().to_string() == "u8"
    assert list(image.get_shape()) == [1, 64, 64, 3]
    assert {o.get_any_name(): o.get_element_type().to_string() for o in ir.outputs} == OUTPUTS
    assert "NonMaxSuppression" in {op.get_type_name() for op in ir.get_ops()}  # NMS inside the IR
    # Unstable TopK: the CPU plugin's heap sort, not the O(N·K) bubble sort it runs for a stable one.
    topks = [op for op in ir.get_ops() if op.get_type_name() == "TopK"]
    assert topks and not any(op.get_attributes()["stable"] for op in topks)
    metadata = kov.read_metadata(path)
    assert (metadata["class_names"], metadata["category_ids"]) == (["cat", "dog"], [3, 7])
    assert (metadata["min_size"], metadata["max_size"]) == (48, 64)
    assert metadata["quantization"] is None and metadata["inference_precision"] == "f32"
    detector = runners.open_detector(path)  # the project's one entry point for exported files
    assert isinstance(detector, kov.OpenVINODetector) and isinstance(detector, runners.Detector)
    assert (detector.image_size, detector.min_size, detector.max_size) == (64, 48, 64)
    assert detector.inference_precision == "f32"  # not the plugin's bf16 default on AVX512_BF16/AMX CPUs
    out = detector(np.zeros((64, 64, 3), np.uint8))
    assert out["detection_boxes"].shape == (1, 100, 4) and out["detection_scores"].shape == (1, 100)
    assert out["detection_classes"].dtype == np.int64 and out["num_detections"].dtype == np.int32
    # float32 weights: the .bin holds 4 bytes per parameter (OpenVINO's default save would halve them).
    assert os.path.getsize(path[: -len(".xml")] + ".bin") >= 4 * small[0].count_params()


def test_untrained_detections_match_the_serving_function(small):
    # Every candidate kept (score threshold 0): the IR's detections are the serving function's, in order.
    import tensorflow as tf

    model, _ = small
    model.score_threshold = 0.0
    try:
        path = kov.export_openvino(model, os.path.join(os.path.dirname(small[1]), "all.xml"))
        image = (np.random.default_rng(0).random((1, 64, 64, 3)) * 255).astype(np.uint8)
        expected = litert._LiteRTModule(model, 64, [0, 1]).serve_fn(tf.constant(image))
    finally:
        model.score_threshold = 0.05
    out = kov.OpenVINODetector(path)(image)
    assert int(out["num_detections"][0]) == int(expected["num_detections"][0]) >= 20
    np.testing.assert_allclose(out["detection_scores"], expected["detection_scores"].numpy(), atol=1e-4)
    np.testing.assert_allclose(out["detection_boxes"], expected["detection_boxes"].numpy(), atol=0.05)


def test_ir_runs_where_tensorflow_cannot_be_imported(small):
    _, path = small
    module_file = kov.__file__
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.modules["tensorflow"] = None  # any import of tensorflow now fails
        import numpy as np
        spec = importlib.util.spec_from_file_location("ov_runner", {module_file!r})
        runner = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(runner)
        try:
            import tensorflow  # noqa: F401
            raise SystemExit("tensorflow imported")
        except ImportError:
            pass
        detector = runner.OpenVINODetector({path!r}, num_threads=1)
        out = detector(np.zeros((1, 64, 64, 3), np.uint8))
        assert not [m for m in sys.modules if m.startswith(("keras", "tensorflow")) and sys.modules[m]]
        print("ok", out["detection_boxes"].shape, detector.class_names, detector.category_ids)
        """
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok (1, 100, 4) ['cat', 'dog'] [3, 7]" in result.stdout


def test_bad_arguments(small, tmp_path):
    import openvino as ov

    model, path = small
    with pytest.raises(ValueError, match="quantization"):
        kov.export_openvino(model, str(tmp_path / "m.xml"), quantization="int4")
    with pytest.raises(ValueError, match="representative_data"):
        kov.export_openvino(model, str(tmp_path / "m.xml"), quantization="int8")
    with pytest.raises(ValueError, match=r"\.xml"):
        kov.export_openvino(model, str(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match=r"must be \(64, 64, 3\)"):
        kov.export_openvino(
            model, str(tmp_path / "m.xml"), quantization="int8", representative_data=[np.zeros((32, 32, 3))]
        )
    with pytest.raises(ValueError, match="2 classes but got 3"):
        kov.export_openvino(model, str(tmp_path / "m.xml"), class_names=["a", "b", "c"])
    with pytest.raises(FileNotFoundError, match="no IR file"):
        kov.OpenVINODetector(str(tmp_path / "missing.xml"))
    with pytest.raises(ValueError, match="precision"):
        kov.OpenVINODetector(path, precision="int8")
    detector = kov.OpenVINODetector(path)
    with pytest.raises(ValueError, match=r"takes images \(1, 64, 64, 3\)"):
        detector(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        detector(np.zeros((64, 64, 3), np.float32))
    # An IR without the project's metadata, and one with a malformed field: the file and the field are named.
    ir = ov.Core().read_model(path)
    ir.set_rt_info('"many"', [kov.RT_INFO_SECTION, "max_size"])
    ov.save_model(ir, str(tmp_path / "bad.xml"), compress_to_fp16=False)
    with pytest.raises(ValueError, match=r"bad\.xml: rt_info field 'max_size'"):
        kov.OpenVINODetector(str(tmp_path / "bad.xml"))
    parameter = ov.opset13.parameter([1, 2], ov.Type.f32, name="x")
    ov.save_model(ov.Model([ov.opset13.relu(parameter)], [parameter]), str(tmp_path / "plain.xml"))
    with pytest.raises(ValueError, match=r"plain\.xml: rt_info has no keras_retina/class_names"):
        kov.read_metadata(str(tmp_path / "plain.xml"))


@pytest.mark.slow
def test_float32_detections_match_predict(files, trained):
    model, data, _, _ = trained
    detector = kov.OpenVINODetector(files[None])
    assert detector.inference_precision == "f32"
    assert (detector.class_names, detector.category_ids) == (list(data.class_names), list(data.category_ids))
    compared = _assert_matches_predict(model, detector, _val_images(data), data.category_ids)
    print(f"{compared} confident detections compared")
    assert compared >= 10, f"only {compared} detections scored 0.3 or more: the test model is undertrained"


@pytest.mark.slow
def test_int8_ap_is_within_0_02_of_float(files, trained):
    _, data, metrics, _ = trained
    float_ap = litert.evaluate_litert(kov.OpenVINODetector(files[None]), data.pipeline("val"), data.coco_gt)["AP"]
    int8 = kov.OpenVINODetector(files["int8"])
    int8_ap = litert.evaluate_litert(int8, data.pipeline("val"), data.coco_gt)["AP"]
    print(f"COCO AP: predict {metrics['AP']:.4f}, OpenVINO float32 {float_ap:.4f}, int8 {int8_ap:.4f}")
    assert float_ap > 0.05  # a model worth quantizing
    assert abs(int8_ap - float_ap) <= 0.02
    assert abs(float_ap - metrics["AP"]) <= 0.01
    bin_size = lambda xml: os.path.getsize(xml[: -len(".xml")] + ".bin")
    assert bin_size(files["int8"]) < 0.4 * bin_size(files[None])
    # The network's convolutions run in int8; the post-processing (NMS) stays in float32.
    runtime = int8.compiled.get_runtime_model().get_ops()
    precision = {op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str).lower() for op in runtime}
    kinds = {op.get_friendly_name(): op.get_rt_info()["layerType"].astype(str) for op in runtime}
    convs = [precision[name] for name, kind in kinds.items() if kind == "Convolution"]
    assert convs and sum(p in ("i8", "u8") for p in convs) >= 0.9 * len(convs), convs
    nms = [precision[name] for name, kind in kinds.items() if kind == "NonMaxSuppression"]
    assert nms and all(p in ("f32", "fp32") for p in nms), nms


@pytest.mark.slow
def test_nms_options_survive_the_export(trained, files, tmp_path):
    model, data, _, _ = trained
    model.class_agnostic_nms, model.soft_nms_sigma = True, 0.5
    try:
        path = kov.export_openvino(
            model, str(tmp_path / "soft.xml"), class_names=data.class_names, category_ids=data.category_ids
        )
        detector = kov.OpenVINODetector(path)
        assert detector.inference_settings["class_agnostic_nms"] is True
        assert detector.inference_settings["soft_nms_sigma"] == 0.5
        # The IR's detections are predict's with the same options ...
        compared = _assert_matches_predict(model, detector, _val_images(data), data.category_ids)
        assert compared >= 10
    finally:
        model.class_agnostic_nms, model.soft_nms_sigma = False, 0.0
    # ... and not the default IR's (class-wise hard NMS): the options reached the graph.
    image = _val_images(data, 1)[0]
    soft, hard = detector(image), kov.OpenVINODetector(files[None])(image)
    assert soft["num_detections"][0] != hard["num_detections"][0] or not np.allclose(
        soft["detection_scores"], hard["detection_scores"]
    )


@pytest.mark.slow
def test_export_mode_writes_openvino_files(trained, tmp_path):
    from keras_retina.cli import modes

    _, data, _, config = trained
    path = modes.export(config, {"format": "openvino", "export_dir": str(tmp_path / "export")})
    assert path == str(tmp_path / "export" / "model.xml")
    detector = kov.OpenVINODetector(path)
    assert (detector.class_names, detector.category_ids) == (list(data.class_names), list(data.category_ids))
    assert detector.image_size == IMAGE_SIZE and detector.quantization is None
