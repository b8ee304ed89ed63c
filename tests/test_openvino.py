"""OpenVINO export (keras_retina/deploy/openvino.py): the IR's signature and metadata, a run without
TensorFlow, bad arguments, on an untrained small model at 64 px.

Parity with model.predict, int8 AP, the NMS options and the export mode on a
trained model are in tests/test_litert.py, whose module trains that model
once for every export format.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

import keras_retina as kr
from keras_retina.deploy import litert, runners
from keras_retina.deploy import openvino as kov

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
