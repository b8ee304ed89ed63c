"""Exports of one trained model: LiteRT (parity with model.predict, int8 AP, built-in ops only, no TensorFlow
needed), and the ONNX and OpenVINO files' AP, parity and export modes, which need the same trained model.

One small model is trained once per module on the shapes data at 128 px
(350 steps, anchors halved for the small images: confident detections and a
COCO AP near 0.1), then
exported as float32, float16 and int8 files; the files run in
``ai_edge_litert``'s interpreter.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")

from keras_retina import recipes, training  # noqa: E402
from keras_retina.cli import modes  # noqa: E402
from keras_retina.config import override  # noqa: E402
from keras_retina.deploy import litert  # noqa: E402
from keras_retina.deploy.class_names import read_class_names  # noqa: E402
from keras_retina.training import rundir  # noqa: E402

IMAGE_SIZE = 128
TRAIN_STEPS = 350


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(model, data, float AP) of a tiny RetinaNet trained on 128-px shapes."""
    root = tmp_path_factory.mktemp("litert")
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


def _export_every_quantization(trained, root, export, quantizations, file_name):
    """``{quantization: path}``: the trained model exported once per quantization (int8 calibrated on 13 batches)."""
    model, data, _, _ = trained
    paths = {}
    for quantization in quantizations:
        representative = None
        if quantization == "int8":
            representative = (images.numpy() for images, _ in data.pipeline("train").take(13))
        paths[quantization] = export(
            model,
            str(root / file_name(quantization)),
            quantization=quantization,
            representative_data=representative,
            class_names=data.class_names,
            category_ids=data.category_ids,
        )
    return paths


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):
    return _export_every_quantization(
        trained, tmp_path_factory.mktemp("tflite"), litert.export_litert, litert.QUANTIZATIONS,
        lambda quantization: f"model_{quantization}.tflite",
    )


def _val_images(data, count=16):
    images = np.concatenate([x.numpy() for x, _ in data.pipeline("val")])[:count]
    return np.clip(np.round(images), 0, 255).astype(np.uint8)  # (N, S, S, 3)


def _iou(a, b):
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def _confident(boxes, scores, classes, count, threshold=0.3):
    keep = scores[:count] >= threshold
    return boxes[:count][keep], scores[:count][keep], classes[:count][keep]


def test_signature_and_outputs(files, trained):
    _, data, _, _ = trained
    detector = litert.LiteRTDetector(files[None])
    signatures = detector.interpreter.get_signature_list()
    assert list(signatures) == ["serving_default"]
    assert signatures["serving_default"]["inputs"] == ["images"]
    assert set(signatures["serving_default"]["outputs"]) == {
        "detection_boxes", "detection_scores", "detection_classes", "num_detections",
    }
    assert detector.input_shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    out = detector(_val_images(data, 1)[0])
    assert out["detection_boxes"].shape == (1, 100, 4) and out["detection_boxes"].dtype == np.float32
    assert out["detection_classes"].dtype == np.int64 and out["num_detections"].dtype == np.int32
    count = int(out["num_detections"][0])
    assert set(out["detection_classes"][0, :count]) <= set(data.category_ids)  # dataset ids, not indices
    assert (out["detection_classes"][0, count:] == -1).all() and not out["detection_scores"][0, count:].any()
    boxes = out["detection_boxes"][0, :count]
    assert (boxes >= 0).all() and (boxes <= IMAGE_SIZE).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
    assert (detector.class_names, detector.category_ids) == (list(data.class_names), list(data.category_ids))


@pytest.mark.parametrize("quantization", [None, "float16"])
def test_float_detections_match_predict(files, trained, quantization):
    model, data, _, _ = trained
    detector = litert.LiteRTDetector(files[quantization])
    images = _val_images(data)
    predicted = model.predict(images, verbose=0)
    contiguous = {cid: i for i, cid in enumerate(data.category_ids)}
    # A twin may score a little under the 0.3 cut (float16 weights move scores by a few hundredths).
    margin = 0.01 if quantization is None else 0.05
    compared = 0
    for i, image in enumerate(images):
        out = detector(image)
        ours_all = (predicted["boxes"][i], predicted["scores"][i], predicted["classes"][i], predicted["num_detections"][i])
        theirs_all = (
            out["detection_boxes"][0], out["detection_scores"][0],
            np.array([contiguous[c] for c in out["detection_classes"][0, : out["num_detections"][0]]], np.int64),
            out["num_detections"][0],
        )
        # Every confident detection of either has a twin in the other: same class, IoU >= 0.95.
        for a, b in ((ours_all, theirs_all), (theirs_all, ours_all)):
            boxes_a, _, classes_a = _confident(*a)
            boxes_b, _, classes_b = _confident(*b, threshold=0.3 - margin)
            for box, cls in zip(boxes_a, classes_a):
                same = classes_b == cls
                assert same.any() and _iou(box[None], boxes_b[same]).max() >= 0.95, (i, box, cls)
        compared += len(_confident(*ours_all)[0])
    print(f"{compared} confident detections compared")
    assert compared >= 10, f"only {compared} detections scored 0.3 or more: the test model is undertrained"


def test_int8_ap_is_within_0_02_of_float(files, trained):
    _, data, metrics, _ = trained
    float_ap = litert.evaluate_litert(litert.LiteRTDetector(files[None]), data.pipeline("val"), data.coco_gt)["AP"]
    int8_ap = litert.evaluate_litert(litert.LiteRTDetector(files["int8"]), data.pipeline("val"), data.coco_gt)["AP"]
    print(f"COCO AP: predict {metrics['AP']:.4f}, LiteRT float32 {float_ap:.4f}, int8 {int8_ap:.4f}")
    assert float_ap > 0.05  # a model worth quantizing
    assert abs(int8_ap - float_ap) <= 0.02
    assert os.path.getsize(files["int8"]) < 0.4 * os.path.getsize(files[None])


@pytest.mark.slow  # two ONNX exports, one calibrated, and two evaluations: about 30 s
def test_onnx_int8_ap_is_within_0_02_of_float(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from keras_retina.deploy import onnx as onnx_export
    from keras_retina.deploy.runners import evaluate_detector

    model, data, _, _ = trained
    classes = dict(class_names=data.class_names, category_ids=data.category_ids)
    float_path = onnx_export.export_onnx(model, str(tmp_path / "model.onnx"), **classes)
    representative = (images.numpy() for images, _ in data.pipeline("train").take(13))
    int8_path = onnx_export.export_onnx(
        model, str(tmp_path / "model_int8.onnx"), quantization="int8", representative_data=representative, **classes
    )
    float_ap = evaluate_detector(onnx_export.OnnxDetector(float_path), data.pipeline("val"), data.coco_gt)["AP"]
    int8_ap = evaluate_detector(onnx_export.OnnxDetector(int8_path), data.pipeline("val"), data.coco_gt)["AP"]
    print(f"COCO AP: ONNX float32 {float_ap:.4f}, int8 {int8_ap:.4f}")
    assert float_ap > 0.05
    assert abs(int8_ap - float_ap) <= 0.02


def test_export_and_evaluate_modes_with_onnx(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    _, _, metrics, config = trained
    path = modes.export(config, {"format": "onnx", "export_dir": str(tmp_path)})
    assert path == str(tmp_path / "model.onnx")
    evaluated = modes.evaluate(config, {"model": path})
    assert evaluated["AP"] == pytest.approx(metrics["AP"], abs=0.005)  # the Keras model's AP after training
    with open(path + ".metrics.json") as f:
        assert json.load(f)["AP"] == evaluated["AP"]
    assert f"AP      {evaluated['AP']:.4f}" in capsys.readouterr().out
    with pytest.raises(ValueError, match="float16"):
        modes.export(config, {"format": "onnx", "quantization": "float16", "export_dir": str(tmp_path)})


def test_only_builtin_ops(files):
    for path in files.values():
        ops = set(litert.LiteRTDetector(path).op_names())
        assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], ops
        assert op_is_builtin(ops) and "NON_MAX_SUPPRESSION_V5" in ops  # NMS on the device
        with open(path, "rb") as f:
            assert b"Flex" not in f.read()


def op_is_builtin(ops):
    """Every op name is a LiteRT builtin (upper-case BuiltinOperator names; custom ops keep their own names)."""
    return all(op.isupper() or op == "DELEGATE" for op in ops)


def test_detections_do_not_depend_on_the_thread_count(files, trained):
    # LiteRT's TFLite_Detection_PostProcess drops classes with > 1 thread; our NMS must not.
    _, data, _, _ = trained
    image = _val_images(data, 1)[0]
    outputs = [litert.LiteRTDetector(files[None], num_threads=n)(image) for n in (1, 2, 4)]
    for out in outputs[1:]:
        for key in ("detection_classes", "num_detections"):
            np.testing.assert_array_equal(out[key], outputs[0][key])
        np.testing.assert_allclose(out["detection_scores"], outputs[0]["detection_scores"], atol=1e-5)


def test_int8_file_computes_the_network_in_int8(files):
    detector = litert.LiteRTDetector(files["int8"])
    details = detector.interpreter.get_tensor_details()
    kinds = {d["dtype"].__name__ for d in details}
    assert "int8" in kinds
    convs = [op for op in detector.interpreter._get_ops_details() if op["op_name"] == "CONV_2D"]
    by_index = {d["index"]: d for d in details}
    assert convs and all(by_index[op["inputs"][1]]["dtype"] == np.int8 for op in convs)  # int8 kernels


def test_file_runs_where_tensorflow_cannot_be_imported(files, tmp_path):
    script = textwrap.dedent(
        f"""
        import sys, zipfile
        sys.modules["tensorflow"] = None  # any import of tensorflow now fails
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter
        try:
            import tensorflow  # noqa: F401
            raise SystemExit("tensorflow imported")
        except ImportError:
            pass
        path = {files["int8"]!r}
        runner = Interpreter(model_path=path, num_threads=2).get_signature_runner("serving_default")
        out = runner(images=np.zeros((1, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), np.uint8))
        names = zipfile.ZipFile(path).read("class_names.tsv").decode().split()
        print("ok", out["detection_boxes"].shape, names[:2])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok (1, 100, 4) ['1', 'circle']" in result.stdout


def test_export_and_predict_modes_with_litert(trained, tmp_path):
    model, data, _, config = trained
    from PIL import Image

    flags = {"format": "litert", "export_dir": str(tmp_path / "export")}  # int8 calibration: the `files` fixture
    path = modes.export(config, flags)
    assert path == str(tmp_path / "export" / "model.tflite")
    image_dir = tmp_path / "photos"
    os.makedirs(image_dir)
    Image.fromarray(_val_images(data, 1)[0]).save(image_dir / "shapes.png")
    detections = modes.predict(config, {"model": path, "image": [str(image_dir)], "output_dir": str(tmp_path / "out")})
    results = json.load(open(detections))
    assert results and {r["category_id"] for r in results} <= set(data.category_ids)
    assert (tmp_path / "out" / "shapes.png").exists()
    with pytest.raises(ValueError, match=r"latest\.keras is not a model this project exports; accepted:"):
        modes.predict(config, {"model": os.path.join(config.resolved_model_dir(), rundir.LATEST_CHECKPOINT)})


def test_bad_arguments(trained, tmp_path):
    model = trained[0]
    with pytest.raises(ValueError, match="quantization"):
        litert.export_litert(model, str(tmp_path / "m.tflite"), quantization="int4")
    with pytest.raises(ValueError, match="representative_data"):
        litert.export_litert(model, str(tmp_path / "m.tflite"), quantization="int8")
    with pytest.raises(ValueError, match="no class_names.tsv"):
        read_class_names(__file__)


# --- OpenVINO IRs of the same trained model (keras_retina/deploy/openvino.py) -------------------------------------


def _kov():
    """keras_retina.deploy.openvino, or the test skipped where OpenVINO and NNCF are not installed."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from keras_retina.deploy import openvino  # noqa: PLC0415

    return openvino


@pytest.fixture(scope="module")
def openvino_files(trained, tmp_path_factory):
    """The trained model as OpenVINO float32 and int8 IRs."""
    kov = _kov()
    return _export_every_quantization(
        trained, tmp_path_factory.mktemp("ir"), kov.export_openvino, kov.QUANTIZATIONS,
        lambda quantization: f"model{'_' + quantization if quantization else ''}.xml",
    )


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


@pytest.mark.slow
def test_openvino_float32_detections_match_predict(openvino_files, trained):
    kov = _kov()
    model, data, _, _ = trained
    detector = kov.OpenVINODetector(openvino_files[None])
    assert detector.inference_precision == "f32"
    assert (detector.class_names, detector.category_ids) == (list(data.class_names), list(data.category_ids))
    compared = _assert_matches_predict(model, detector, _val_images(data), data.category_ids)
    print(f"{compared} confident detections compared")
    assert compared >= 10, f"only {compared} detections scored 0.3 or more: the test model is undertrained"


@pytest.mark.slow
def test_openvino_int8_ap_is_within_0_02_of_float(openvino_files, trained):
    kov = _kov()
    _, data, metrics, _ = trained
    float_ap = litert.evaluate_litert(kov.OpenVINODetector(openvino_files[None]), data.pipeline("val"), data.coco_gt)["AP"]
    int8 = kov.OpenVINODetector(openvino_files["int8"])
    int8_ap = litert.evaluate_litert(int8, data.pipeline("val"), data.coco_gt)["AP"]
    print(f"COCO AP: predict {metrics['AP']:.4f}, OpenVINO float32 {float_ap:.4f}, int8 {int8_ap:.4f}")
    assert float_ap > 0.05  # a model worth quantizing
    assert abs(int8_ap - float_ap) <= 0.02
    assert abs(float_ap - metrics["AP"]) <= 0.01
    bin_size = lambda xml: os.path.getsize(xml[: -len(".xml")] + ".bin")
    assert bin_size(openvino_files["int8"]) < 0.4 * bin_size(openvino_files[None])
    # The network's convolutions run in int8; the post-processing (NMS) stays in float32.
    runtime = int8.compiled.get_runtime_model().get_ops()
    precision = {op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str).lower() for op in runtime}
    kinds = {op.get_friendly_name(): op.get_rt_info()["layerType"].astype(str) for op in runtime}
    convs = [precision[name] for name, kind in kinds.items() if kind == "Convolution"]
    assert convs and sum(p in ("i8", "u8") for p in convs) >= 0.9 * len(convs), convs
    nms = [precision[name] for name, kind in kinds.items() if kind == "NonMaxSuppression"]
    assert nms and all(p in ("f32", "fp32") for p in nms), nms


@pytest.mark.slow
def test_openvino_nms_options_survive_the_export(trained, openvino_files, tmp_path):
    kov = _kov()
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
    soft, hard = detector(image), kov.OpenVINODetector(openvino_files[None])(image)
    assert soft["num_detections"][0] != hard["num_detections"][0] or not np.allclose(
        soft["detection_scores"], hard["detection_scores"]
    )


@pytest.mark.slow
def test_export_mode_writes_openvino_files(trained, tmp_path):
    kov = _kov()
    _, data, _, config = trained
    path = modes.export(config, {"format": "openvino", "export_dir": str(tmp_path / "export")})
    assert path == str(tmp_path / "export" / "model.xml")
    detector = kov.OpenVINODetector(path)
    assert (detector.class_names, detector.category_ids) == (list(data.class_names), list(data.category_ids))
    assert detector.image_size == IMAGE_SIZE and detector.quantization is None
