"""examples/serving_client.py: the REST and gRPC requests it builds, offline (no server, no network)."""

import base64
import importlib.util
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import types_pb2

_CLIENT_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "serving_client.py")


@pytest.fixture(scope="module")
def client():
    spec = importlib.util.spec_from_file_location("serving_client", _CLIENT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def encoded():
    rng = np.random.RandomState(0)
    jpeg = tf.io.encode_jpeg(rng.randint(0, 256, (20, 30, 3)).astype("uint8")).numpy()
    png = tf.io.encode_png(rng.randint(0, 256, (10, 12, 1)).astype("uint8")).numpy()
    return [jpeg, png]


def test_rest_request_b64_round_trips_bytes_and_paths(client, encoded, tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(encoded[0])
    body = client.build_rest_request([str(path), encoded[1]])
    assert set(body) == {"signature_name", "instances"}
    assert body["signature_name"] == "serving_default"
    assert len(body["instances"]) == 2
    for instance, original in zip(body["instances"], encoded):
        assert list(instance) == ["b64"]
        assert base64.b64decode(instance["b64"]) == original
    # The body is plain JSON (what gets POSTed).
    assert json.loads(json.dumps(body)) == body


def test_rest_request_signature_name_and_single_value_is_rejected(client, encoded):
    body = client.build_rest_request(encoded[:1], signature_name="serving_images")
    assert body["signature_name"] == "serving_images"
    with pytest.raises(TypeError, match="sequence of paths or bytes"):
        client.build_rest_request(encoded[0])


def test_grpc_request_holds_the_bytes_as_a_string_tensor(client, encoded):
    request = client.build_grpc_request(encoded, model_name="detector", signature_name="serving_default")
    assert request.model_spec.name == "detector"
    assert request.model_spec.signature_name == "serving_default"
    assert list(request.inputs) == ["images"]
    tensor = request.inputs["images"]
    assert tensor.dtype == types_pb2.DT_STRING
    assert [d.size for d in tensor.tensor_shape.dim] == [2]
    assert list(tf.make_ndarray(tensor)) == encoded
    # What a server would decode: the first image is the 20x30 JPEG.
    image = tf.io.decode_image(tf.make_ndarray(tensor)[0], channels=3)
    assert image.shape == (20, 30, 3)


def test_grpc_request_defaults_and_serialization(client, encoded, tmp_path):
    from tensorflow_serving.apis import predict_pb2

    path = tmp_path / "b.png"
    path.write_bytes(encoded[1])
    request = client.build_grpc_request([str(path)])
    assert request.model_spec.name == "retinanet"
    assert request.model_spec.signature_name == "serving_default"
    parsed = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    assert list(tf.make_ndarray(parsed.inputs["images"])) == [encoded[1]]


def test_detections_from_rest_trims_to_num_detections(client):
    response = {
        "predictions": [
            {
                "detection_boxes": [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [0.0, 0.0, 0.0, 0.0]],
                "detection_scores": [0.9, 0.4, 0.0],
                "detection_classes": [5, 9, -1],
                "num_detections": 2,
            }
        ]
    }
    (result,) = client.detections_from_rest(response)
    assert result == {
        "boxes_xyxy": [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]],
        "scores": [0.9, 0.4],
        "category_ids": [5, 9],
    }


def test_detections_from_grpc_reads_the_output_tensors(client):
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    outputs = {
        "detection_boxes": np.array([[[1, 2, 3, 4], [0, 0, 0, 0]]], np.float32),
        "detection_scores": np.array([[0.75, 0.0]], np.float32),
        "detection_classes": np.array([[9, -1]], np.int64),
        "num_detections": np.array([1], np.int32),
    }
    for key, value in outputs.items():
        response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
    (result,) = client.detections_from_grpc(response)
    assert result == {"boxes_xyxy": [[1.0, 2.0, 3.0, 4.0]], "scores": [0.75], "category_ids": [9]}
