"""Sends images to a RetinaNet served by TF Serving (REST or gRPC) and prints the detections.

The model is a SavedModel written by ``keras_retina.deploy.saved_model.export_saved_model``
(or ``python main.py --mode=export``); its ``serving_default`` signature takes
``images``, a ``tf.string`` tensor of shape ``[None]`` holding encoded
JPEG/PNG/BMP/GIF files, and returns ``detection_boxes`` (xyxy, original
pixels), ``detection_scores``, ``detection_classes`` (dataset category ids)
and ``num_detections``. See ``docs/SERVING.md``.

Usage:
    # REST (port 8501); needs nothing beyond the standard library.
    python examples/serving_client.py --image=photo.jpg
    # gRPC (port 8500); needs ``tensorflow-serving-api`` (and grpcio).
    python examples/serving_client.py --protocol=grpc --image=a.jpg --image=b.png

``build_rest_request`` and ``build_grpc_request`` only build the requests
(no network), so they can be used and tested offline.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.request
from typing import Sequence, Union

#: An image given as a file path or as the encoded file's bytes.
ImageInput = Union[str, os.PathLike, bytes]


def read_images(images: Sequence[ImageInput]) -> list[bytes]:
    """Encoded bytes of each image: file paths are read, bytes are kept as they are."""
    if isinstance(images, (str, bytes, os.PathLike)):
        raise TypeError(f"images must be a sequence of paths or bytes, got a single {type(images).__name__}.")
    encoded = []
    for image in images:
        if isinstance(image, (bytes, bytearray)):
            encoded.append(bytes(image))
        else:
            with open(image, "rb") as f:
                encoded.append(f.read())
    return encoded


def build_rest_request(images: Sequence[ImageInput], signature_name: str = "serving_default") -> dict:
    """The JSON body of a TF Serving REST ``:predict`` request (row format).

    The signature has a single input (``images``, ``tf.string [None]``), so
    each instance is that input's value for one image; binary strings go
    base64-encoded in a ``{"b64": ...}`` object, as TF Serving's REST API
    requires for binary ``DT_STRING`` values.

    Args:
        images: image file paths and/or encoded image bytes.
        signature_name: the SavedModel signature to run.

    Returns:
        ``{"signature_name": ..., "instances": [{"b64": "<base64>"}, ...]}``.

    Example:
        >>> body = build_rest_request([b"\\xff\\xd8\\xff..."])
        >>> json.dumps(body)  # POST to http://host:8501/v1/models/retinanet:predict
    """
    return {
        "signature_name": signature_name,
        "instances": [{"b64": base64.b64encode(data).decode("ascii")} for data in read_images(images)],
    }


def build_grpc_request(
    encoded_images: Sequence[ImageInput],
    model_name: str = "retinanet",
    signature_name: str = "serving_default",
):
    """A ``tensorflow_serving.apis.predict_pb2.PredictRequest`` for the detection signature.

    Args:
        encoded_images: encoded image bytes (or file paths, which are read).
        model_name: the name TF Serving serves the model under (``MODEL_NAME``).
        signature_name: the SavedModel signature to run.

    Returns:
        The request; ``inputs["images"]`` is a ``DT_STRING`` tensor of shape
        ``[len(encoded_images)]``.
    """
    import tensorflow as tf  # noqa: PLC0415 (only gRPC needs it)
    from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415

    data = read_images(encoded_images)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    tensor = tf.make_tensor_proto(data, dtype=tf.string, shape=[len(data)])
    request.inputs["images"].CopyFrom(tensor)
    return request


def detections_from_rest(response: dict) -> list[dict]:
    """Per-image detections from a REST ``:predict`` response in row format."""
    return [_trim(p) for p in response["predictions"]]


def detections_from_grpc(response) -> list[dict]:
    """Per-image detections from a gRPC ``PredictResponse``."""
    import numpy as np  # noqa: PLC0415
    from tensorflow import make_ndarray  # noqa: PLC0415

    outputs = {key: make_ndarray(value) for key, value in response.outputs.items()}
    count = len(outputs["num_detections"])
    return [_trim({key: np.asarray(value[i]).tolist() for key, value in outputs.items()}) for i in range(count)]


def _trim(prediction: dict) -> dict:
    n = int(prediction["num_detections"])
    return {
        "boxes_xyxy": prediction["detection_boxes"][:n],
        "scores": prediction["detection_scores"][:n],
        "category_ids": [int(c) for c in prediction["detection_classes"][:n]],
    }


def predict_rest(images: Sequence[ImageInput], host: str, port: int, model_name: str, timeout: float) -> list[dict]:
    body = json.dumps(build_rest_request(images)).encode("utf-8")
    request = urllib.request.Request(
        f"http://{host}:{port}/v1/models/{model_name}:predict",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return detections_from_rest(json.load(response))


def predict_grpc(images: Sequence[ImageInput], host: str, port: int, model_name: str, timeout: float) -> list[dict]:
    import grpc  # noqa: PLC0415
    from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: PLC0415

    with grpc.insecure_channel(
        f"{host}:{port}", options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(build_grpc_request(images, model_name=model_name), timeout=timeout)
    return detections_from_grpc(response)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", action="append", required=True, help="image file (repeat for a batch)")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=None, help="default 8501 (REST) or 8500 (gRPC)")
    parser.add_argument("--model_name", default="retinanet", help="TF Serving's MODEL_NAME")
    parser.add_argument("--min_score", type=float, default=0.3, help="print detections scoring at least this")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds")
    args = parser.parse_args(argv)

    if args.protocol == "rest":
        results = predict_rest(args.image, args.host, args.port or 8501, args.model_name, args.timeout)
    else:
        results = predict_grpc(args.image, args.host, args.port or 8500, args.model_name, args.timeout)
    for path, result in zip(args.image, results):
        print(f"{path}:")
        for box, score, category in zip(result["boxes_xyxy"], result["scores"], result["category_ids"]):
            if score >= args.min_score:
                x1, y1, x2, y2 = box
                print(f"  category {category:4d}  score {score:.3f}  box xyxy [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
