"""ONNX export (keras_retina/deploy/onnx.py): the file's interface, parity with model.predict, NMS options, no TensorFlow.

The model is untrained but confident: its head kernels are drawn wide
(N(0, 0.1)) so that, on noise images, dozens of boxes per image score over
0.3 and NMS has work to do; no training, so the module stays fast.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

import onnx  # noqa: E402

import keras_retina as kr  # noqa: E402
from keras_retina.deploy import onnx as onnx_export  # noqa: E402

IMAGE_SIZE = 96
CATEGORY_IDS = [1, 5, 7]
CLASS_NAMES = ["circle", "red box", "dog"]


def confident_model(seed=0, num_classes=3, **settings):
    """A tiny RetinaNet built at 96 px whose heads give many confident, varied detections."""
    keras.utils.set_random_seed(seed)  # the same backbone and FPN weights every run
    model = kr.RetinaNet(
        num_classes=num_classes, backbone="tiny", fpn_channels=16, head_channels=16, num_head_convs=1,
        backbone_weights=None, prior_probability=0.01,
    )
    model.build((None, IMAGE_SIZE, IMAGE_SIZE, 3))
    rng = np.random.RandomState(seed)
    for variable in model.weights:
        if variable.path.endswith("kernel") and "head" in variable.path:
            std = 0.02 if "box_head" in variable.path else 0.1  # box deltas moderate: boxes of a sensible size
            variable.assign(rng.normal(0, std, variable.shape).astype("float32"))
    model.pre_nms_topk = 200  # fewer candidates: the soft-NMS comparison stays fast
    for name, value in settings.items():
        setattr(model, name, value)
    return model


def noise_images(count=4, seed=1):
    rng = np.random.RandomState(seed)
    return np.clip(rng.normal(128, 60, (count, IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 255).astype(np.uint8)


def iou(a, b):
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    overlap = inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)
    same = np.abs(a[:, None, :] - b[None, :, :]).max(-1) < 1e-3  # a box clipped flat matches itself
    return np.where(same, 1.0, overlap)


def assert_same_detections(model, detector, images, category_ids=CATEGORY_IDS, threshold=0.3, margin=0.01):
    """Every detection scoring >= threshold of predict and of the detector has a twin (same class, IoU >= 0.95).

    Returns how many confident detections of ``predict`` were compared.
    """
    predicted = model.predict(images, verbose=0)
    contiguous = {cid: i for i, cid in enumerate(category_ids)}
    compared = 0
    for i, image in enumerate(images):
        out = detector(image)
        count = int(out["num_detections"][0])
        ours = (predicted["boxes"][i][: predicted["num_detections"][i]],
                predicted["scores"][i][: predicted["num_detections"][i]],
                predicted["classes"][i][: predicted["num_detections"][i]])
        theirs = (out["detection_boxes"][0, :count], out["detection_scores"][0, :count],
                  np.array([contiguous[int(c)] for c in out["detection_classes"][0, :count]], np.int64))
        for a, b in ((ours, theirs), (theirs, ours)):
            keep_a, keep_b = a[1] >= threshold, b[1] >= threshold - margin
            for box, cls in zip(a[0][keep_a], a[2][keep_a]):
                same = b[2][keep_b] == cls
                assert same.any() and iou(box[None], b[0][keep_b][same]).max() >= 0.95, (i, box, cls)
        compared += int((ours[1] >= threshold).sum())
    return compared


@pytest.fixture(scope="module")
def model():
    return confident_model()


@pytest.fixture(scope="module")
def path(model, tmp_path_factory):
    return onnx_export.export_onnx(
        model, str(tmp_path_factory.mktemp("onnx") / "model.onnx"), class_names=CLASS_NAMES,
        category_ids=CATEGORY_IDS,
    )


def test_file_interface_and_metadata(path, model):
    proto = onnx.load(path)
    assert proto.opset_import[0].version >= 17
    (graph_input,) = proto.graph.input
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, IMAGE_SIZE, IMAGE_SIZE, 3]
    outputs = {o.name: o.type.tensor_type for o in proto.graph.output}
    expected = {
        "detection_boxes": (onnx.TensorProto.FLOAT, [1, 100, 4]),
        "detection_scores": (onnx.TensorProto.FLOAT, [1, 100]),
        "detection_classes": (onnx.TensorProto.INT64, [1, 100]),
        "num_detections": (onnx.TensorProto.INT32, [1]),
    }
    assert {name: (t.elem_type, [d.dim_value for d in t.shape.dim]) for name, t in outputs.items()} == expected
    assert {op.op_type for op in proto.graph.node} >= {"NonMaxSuppression", "Conv"}  # post-processing inside
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["class_names"] == "1\tcircle\n5\tred box\n7\tdog\n"
    assert json.loads(meta["resize"]) == {"min_size": None, "max_size": None}
    assert json.loads(meta["inference_settings"]) == model.inference_settings.as_dict()
    detector = onnx_export.OnnxDetector(path)
    assert (detector.image_size, detector.class_names, detector.category_ids) == (IMAGE_SIZE, CLASS_NAMES, CATEGORY_IDS)
    assert (detector.min_size, detector.max_size) == (None, None)
    out = detector(noise_images(1)[0])
    assert out["detection_boxes"].dtype == np.float32 and out["detection_classes"].dtype == np.int64
    count = int(out["num_detections"][0])
    assert 0 < count <= 100 and set(out["detection_classes"][0, :count]) <= set(CATEGORY_IDS)
    assert (out["detection_classes"][0, count:] == -1).all() and not out["detection_scores"][0, count:].any()
    boxes = out["detection_boxes"][0, :count]
    assert (boxes >= 0).all() and (boxes <= IMAGE_SIZE).all() and (boxes[:, 2:] >= boxes[:, :2]).all()


def test_detections_match_predict(path, model):
    compared = assert_same_detections(model, onnx_export.OnnxDetector(path), noise_images())
    assert compared >= 20, f"only {compared} detections scored 0.3 or more"


@pytest.mark.slow  # an export and a predict each: about 15 s
@pytest.mark.parametrize("settings", [{"class_agnostic_nms": True}, {"soft_nms_sigma": 0.5}], ids=str)
def test_nms_options_survive_the_export(settings, path, tmp_path):
    model = confident_model(**settings)
    optioned = onnx_export.OnnxDetector(
        onnx_export.export_onnx(model, str(tmp_path / "model.onnx"), category_ids=CATEGORY_IDS)
    )
    assert all(optioned.inference_settings[name] == value for name, value in settings.items())
    images = noise_images()
    # Every detection over 0.1 (class-agnostic NMS leaves few over 0.3 of these overlapping boxes).
    compared = assert_same_detections(model, optioned, images, threshold=0.1)
    assert compared >= 10, f"only {compared} detections scored 0.1 or more"
    # The same weights exported with the default NMS detect otherwise: the option is in the file.
    default = onnx_export.OnnxDetector(path)
    assert any(
        not np.array_equal(default(image)["detection_scores"], optioned(image)["detection_scores"]) for image in images
    )


def test_int8_file_quantizes_the_convolutions_only(path, model, tmp_path):
    quantized = onnx_export.export_onnx(
        model, str(tmp_path / "model_int8.onnx"), class_names=CLASS_NAMES, category_ids=CATEGORY_IDS,
        quantization="int8", representative_data=noise_images(8, seed=5),
    )
    proto = onnx.load(quantized)
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("DequantizeLinear") >= ops.count("Conv") > 0  # every convolution's weights and input
    assert "NonMaxSuppression" in ops
    nms_inputs = {name for node in proto.graph.node if node.op_type == "NonMaxSuppression" for name in node.input}
    assert not any(node.op_type == "DequantizeLinear" and set(node.output) & nms_inputs for node in proto.graph.node)
    assert os.path.getsize(quantized) < 0.5 * os.path.getsize(path)
    detector = onnx_export.OnnxDetector(quantized)
    assert (detector.class_names, detector.category_ids) == (CLASS_NAMES, CATEGORY_IDS)  # metadata kept
    image = noise_images(1)[0]
    ours, theirs = onnx_export.OnnxDetector(path)(image), detector(image)
    # int8 moves this random model's scores and boxes (its accuracy on a trained model: test_litert.py's AP
    # check): its three best detections are objects of the float file, same class, IoU >= 0.5.
    count = int(ours["num_detections"][0])
    for box, category in zip(theirs["detection_boxes"][0, :3], theirs["detection_classes"][0, :3]):
        same = ours["detection_classes"][0, :count] == category
        assert same.any() and iou(box[None], ours["detection_boxes"][0, :count][same]).max() >= 0.5
    with pytest.raises(ValueError, match="quantization"):
        onnx_export.export_onnx(model, str(tmp_path / "m.onnx"), quantization="int4")
    with pytest.raises(ValueError, match="representative_data"):
        onnx_export.export_onnx(model, str(tmp_path / "m.onnx"), quantization="int8")


def test_soft_nms_loop_equals_tensorflows_soft_nms():
    from keras_retina.model import postprocess

    rng = np.random.RandomState(3)
    corners = rng.uniform(0, 60, (200, 2)).astype("float32")
    boxes = np.concatenate([corners, corners + rng.uniform(5, 30, (200, 2)).astype("float32")], axis=1)
    scores, classes = rng.uniform(0, 1, 200).astype("float32"), rng.randint(0, 3, 200)
    for agnostic in (False, True):
        options = dict(score_threshold=0.05, nms_iou_threshold=0.5, max_detections=50, class_agnostic_nms=agnostic,
                       soft_nms_sigma=0.5)
        ours = [np.asarray(v) for v in onnx_export.soft_nms_loop(boxes, scores, classes, **options)]
        theirs = [np.asarray(v) for v in postprocess.single_image_nms(boxes, scores, classes, **options)]
        assert int(ours[2]) == int(theirs[2]) > 10
        np.testing.assert_array_equal(ours[0], theirs[0])
        np.testing.assert_allclose(ours[1], theirs[1], atol=1e-5)


def test_file_runs_where_tensorflow_cannot_be_imported(path):
    module_file = onnx_export.__file__
    script = textwrap.dedent(
        f"""
        import importlib.util, sys
        sys.modules["tensorflow"] = None  # any import of tensorflow now fails
        try:
            import tensorflow  # noqa: F401
            raise SystemExit("tensorflow imported")
        except ImportError:
            pass
        import numpy as np
        # The module alone, without the keras_retina package (whose __init__ imports TensorFlow).
        spec = importlib.util.spec_from_file_location("retina_onnx", {module_file!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        detector = module.OnnxDetector({path!r})
        out = detector(np.zeros(({IMAGE_SIZE}, {IMAGE_SIZE}, 3), np.uint8))
        print("ok", out["detection_boxes"].shape, detector.class_names, sorted(m for m in sys.modules if "tensorflow" in m and sys.modules[m] is not None))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok (1, 100, 4) ['circle', 'red box', 'dog'] []" in result.stdout


def test_bad_arguments_are_refused_clearly(path, model, tmp_path):
    detector = onnx_export.OnnxDetector(path)
    with pytest.raises(ValueError, match=r"takes uint8 images \(1, 96, 96, 3\).*got float32"):
        detector(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.float32))
    with pytest.raises(ValueError, match=r"model.onnx takes uint8 images.*got uint8 \(64, 64, 3\)"):
        detector(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"got uint8 \(2, 96, 96, 3\)"):
        detector(np.zeros((2, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        onnx_export.OnnxDetector(str(tmp_path / "missing.onnx"))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.onnx is not a readable ONNX model"):
        onnx_export.OnnxDetector(str(garbage))
    with pytest.raises(ValueError, match="export_onnx: the model has 3 classes but got 2 class_names"):
        onnx_export.export_onnx(model, str(tmp_path / "m.onnx"), class_names=["a", "b"])
    with pytest.raises(ValueError, match="max_size"):
        onnx_export.export_onnx(model, str(tmp_path / "m.onnx"), min_size=80, max_size=200)
    assert not os.path.exists(tmp_path / "m.onnx")
