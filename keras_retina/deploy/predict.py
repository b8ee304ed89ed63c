"""Prediction on image files: COCO-format detections.json and one drawn PNG per image."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_retina import visualize
from keras_retina.data import to_original_pixels
from keras_retina.data.orientation import decode_upright
from keras_retina.deploy.class_names import CLASS_NAMES_FILE, write_class_names
from keras_retina.deploy.exported_model import ExportedModel
from keras_retina.deploy.requests import check_encoded_images, decode_image, prepare_image
from keras_retina.deploy.runners import Detector, SavedModelDetector
from keras_retina.deploy.saved_model import InferenceModule
from keras_retina.model.slicing import SlicedInference

#: File extensions read from a directory given as ``--image``.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def list_images(paths: Sequence[str]) -> list[str]:
    """Expands files and directories (their images, sorted) into a list of image paths.

    Raises:
        FileNotFoundError: naming a path that does not exist.
        ValueError: when no image is found.
    """
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(
                os.path.join(path, name)
                for name in os.listdir(path)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"--image: no such file or directory: {path}")
    if not found:
        raise ValueError(f"--image: no images ({', '.join(IMAGE_EXTENSIONS)}) found in {list(paths)}.")
    stems = {}
    for path in found:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise ValueError(
                f"--image: {stems[stem]} and {path} share the name {stem!r}, which is the image_id "
                "in detections.json and the PNG's name; rename one."
            )
        stems[stem] = path
    return found


def predict_files(
    model,
    paths: Sequence[str],
    output_dir: str,
    *,
    image_size: int,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    draw_score_threshold: float = 0.3,
    min_size: int | None = None,
    max_size: int | None = None,
) -> str:
    """Detects objects in image files and writes the results.

    Runs the same graph as the exported SavedModel's ``serving_default``
    (:class:`keras_retina.deploy.saved_model.InferenceModule`), one image at a time.

    Writes ``output_dir/detections.json`` (COCO results: ``image_id`` = file
    name without extension, ``category_id`` = the dataset's id, ``bbox`` =
    ``[x, y, w, h]`` original pixels, ``score``) and ``output_dir/<name>.png``
    per image with detections scoring at least ``draw_score_threshold``,
    under a line of text that gives their number and the threshold
    (:func:`draw_header`): the picture is that band's height taller than
    the image.

    Args:
        model: a :class:`keras_retina.RetinaNet`, or an exported file's
            :class:`keras_retina.deploy.runners.Detector` (``.tflite``,
            ``.onnx``, OpenVINO: the same decoding and resizing, then its
            runtime; a SavedModel: its ``serving_default`` on the file's bytes).
        paths: image files and/or directories of images.
        output_dir: created if missing.
        image_size: the model's square input size.
        class_names, category_ids: per contiguous class.
        draw_score_threshold: lowest score drawn (all go to the JSON).
        min_size, max_size: the model's shorter-side resize rule, if it has
            one (an exported file brings its own).

    Returns:
        the path of ``detections.json``.

    Example:
        >>> import json, tempfile
        >>> photos, out = tempfile.mkdtemp(), tempfile.mkdtemp()
        >>> keras.utils.save_img(os.path.join(photos, "street.jpg"), np.zeros((60, 80, 3)), scale=False)
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16,
        ...                      head_channels=16, num_head_convs=1)
        >>> keras.config.disable_interactive_logging()   # no progress bar in this example
        >>> path = predict_files(model, [photos], out, image_size=128,
        ...                      class_names=["cat", "dog"], category_ids=[17, 18])
        >>> keras.config.enable_interactive_logging()
        >>> os.path.relpath(path, out), sorted(os.listdir(out))
        ('detections.json', ['detections.json', 'street.png'])
        >>> with open(path) as f:   # an untrained model: no detection above its score threshold
        ...     json.load(f)
        []
    """
    files = list_images(paths)
    os.makedirs(output_dir, exist_ok=True)
    names_by_id = dict(zip((int(c) for c in category_ids), class_names))
    with tempfile.TemporaryDirectory() as scratch:
        if isinstance(model, SavedModelDetector):  # the file's own serving_default, as TF Serving runs it
            serve = lambda encoded: {k: tf.constant(v) for k, v in model.detect_encoded(encoded).items()}  # noqa: E731
        elif isinstance(model, Detector):  # .tflite, .onnx, OpenVINO: the SavedModel's decoding and resizing first
            serve = _detector_serve(model)
        elif _runs_eagerly(model):  # sliced inference (each image at its own resolution), or an exported file's TTA
            serve = _eager_serve(model, category_ids, image_size, min_size, max_size)
        else:
            asset = write_class_names(os.path.join(scratch, CLASS_NAMES_FILE), class_names, category_ids)
            module = InferenceModule(
                model, image_size, class_names, category_ids, asset, min_size=min_size, max_size=max_size
            )
            serve = tf.function(module.serve_encoded, input_signature=[tf.TensorSpec([None], tf.string)])
        results = []
        progress = keras.utils.Progbar(len(files), unit_name="image")
        for path in files:
            with open(path, "rb") as f:
                contents = f.read()
            try:
                out = {k: v.numpy()[0] for k, v in serve(tf.constant([contents])).items()}
            except tf.errors.InvalidArgumentError as error:
                raise ValueError(f"{path}: cannot decode the image ({_reason(error.message)}).") from None
            stem = os.path.splitext(os.path.basename(path))[0]
            n = int(out["num_detections"])
            boxes, scores, classes = out["detection_boxes"][:n], out["detection_scores"][:n], out["detection_classes"][:n]
            for box, score, category in zip(boxes, scores, classes):
                x1, y1, x2, y2 = (float(v) for v in box)
                results.append(
                    {
                        "image_id": stem,
                        "category_id": int(category),
                        # 4 decimals: the file matches the served model's boxes within 1e-3.
                        "bbox": [round(x1, 4), round(y1, 4), round(x2 - x1, 4), round(y2 - y1, 4)],
                        "score": round(float(score), 5),
                    }
                )
            shown = scores >= draw_score_threshold
            image = decode_upright(contents).numpy()  # as displayed: the boxes are in its pixels
            drawn = visualize.draw_boxes(image, boxes[shown], classes[shown], names_by_id, scores[shown])
            drawn = visualize.add_header(
                drawn, draw_header(int(shown.sum()), draw_score_threshold), font_size=header_font_size(image.shape[1])
            )
            # scale=False: save_img would otherwise stretch the pixel range to 0-255.
            keras.utils.save_img(os.path.join(output_dir, f"{stem}.png"), drawn, scale=False)
            progress.add(1)
    json_path = os.path.join(output_dir, "detections.json")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    return json_path


def draw_header(num_drawn: int, score_threshold: float) -> str:
    """The line of text above a drawn prediction: how many detections, at which threshold.

    Example:
        >>> draw_header(3, 0.3)
        '3 detections with score >= 0.30'
        >>> draw_header(1, 0.5)
        '1 detection with score >= 0.50'
    """
    return f"{num_drawn} detection{'' if num_drawn == 1 else 's'} with score >= {score_threshold:.2f}"


def header_font_size(width: int) -> int:
    """Font size (pixels) of the header of a drawn prediction ``width`` pixels wide: legible when shown shrunk.

    Example:
        >>> header_font_size(256), header_font_size(4000)
        (12, 66)
    """
    return max(visualize.CAPTION_FONT_SIZE, int(width) // 60)


def _detector_serve(detector):
    """``serve_encoded``'s contract for an exported file: the SavedModel's decoding and resizing, then its runtime."""

    def serve(encoded):  # (1,) tf.string
        encoded = check_encoded_images(encoded)  # decompression bombs refused before decoding, as served
        image, scale, image_shape = prepare_image(
            decode_image(encoded[0], tf.constant(0)), detector.image_size, detector.min_size, detector.max_size
        )
        out = detector(np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8))
        boxes = to_original_pixels(out["detection_boxes"], scale[None], image_shape[None])
        return {**{key: tf.constant(value) for key, value in out.items()}, "detection_boxes": boxes}

    return serve


def _runs_eagerly(model) -> bool:
    """Sliced inference, and anything wrapping an exported file, run outside a traced graph."""
    while model is not None:
        if isinstance(model, (SlicedInference, ExportedModel)):
            return True
        model = vars(model).get("model") if hasattr(model, "__dict__") else None  # a wrapper's wrapped model
    return False


def _eager_serve(model, category_ids: Sequence[int], image_size: int, min_size, max_size):
    """``serve_encoded``'s contract, run eagerly: the request checks and decoding, then sliced inference on the
    image as it is, or ``model.detect`` on it resized and padded as the SavedModel does."""
    ids = tf.constant([int(c) for c in category_ids], tf.int64)

    def serve(encoded):  # (1,) tf.string
        encoded = check_encoded_images(encoded)  # decompression bombs refused before decoding, as served
        image = decode_image(encoded[0], tf.constant(0))
        if isinstance(model, SlicedInference):
            out = model.detect(tf.cast(image, tf.float32)[None])
            boxes = out["boxes"]
        else:
            prepared, scale, image_shape = prepare_image(image, image_size, min_size, max_size)
            out = model.detect(prepared[None])
            boxes = to_original_pixels(out["boxes"], scale[None], image_shape[None])
        return {
            "detection_boxes": boxes,
            "detection_scores": out["scores"],
            "detection_classes": tf.gather(ids, tf.maximum(out["classes"], 0)),
            "num_detections": out["num_detections"],
        }

    return serve


def _reason(message: str) -> str:
    """The informative line of a graph-execution error (its first line is only "Graph execution error:")."""
    for line in message.splitlines():
        line = line.strip()
        if line.startswith("assertion failed: [") and line.endswith("]"):
            return line[len("assertion failed: [") : -1]
        if line and not line.startswith(("Graph execution error", "Detected at node", "<stack traces", "File ", "[[")):
            return line
    return message.strip()
