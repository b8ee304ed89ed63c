"""OpenVINO export with NMS inside the IR: float32 and int8 (NNCF), and a detector that needs no TensorFlow.

:func:`export_openvino` writes an OpenVINO IR (``model.xml`` + ``model.bin``,
or ``model_int8.xml`` + ``.bin``) with the LiteRT file's signature: uint8
images ``images`` ``(1, S, S, 3)`` in; ``detection_boxes`` float32 ``(1, D,
4)`` xyxy in input pixels, ``detection_scores`` float32 ``(1, D)``,
``detection_classes`` int64 ``(1, D)`` dataset category ids (-1 past the
detections) and ``num_detections`` int32 ``(1,)`` out. The graph is the
LiteRT export's serving function (decoding, class-wise or class-agnostic,
hard or soft NMS with the model's inference settings), converted by
``openvino.convert_model``; TensorFlow's ``NonMaxSuppressionV5`` becomes
OpenVINO's ``NonMaxSuppression`` (opset 9, soft-NMS included).

The class names, category ids, resize rule and inference settings travel in
the IR's ``rt_info`` (``<rt_info><keras_retina>`` in the ``.xml``, each
value a JSON string, :func:`read_metadata` reads them) with
``inference_precision``, the CPU plugin's ``INFERENCE_PRECISION_HINT`` the
file was measured at (``"f32"``): the plugin's own default is bf16 on CPUs
with AVX512_BF16 or AMX, which :class:`OpenVINODetector` overrides with it.

This module imports TensorFlow, Keras and NNCF only inside
:func:`export_openvino`: :class:`OpenVINODetector` and :func:`read_metadata`
need NumPy and the OpenVINO runtime alone, so the file can be loaded where
TensorFlow is not installed.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np

#: Quantization modes of :func:`export_openvino`.
QUANTIZATIONS = (None, "int8")
#: The ``rt_info`` section holding this project's metadata (``<rt_info><keras_retina>`` in the ``.xml``).
RT_INFO_SECTION = "keras_retina"
#: Metadata fields in :data:`RT_INFO_SECTION`, each a JSON string.
METADATA_FIELDS = (
    "class_names", "category_ids", "min_size", "max_size", "inference_settings", "quantization",
    "inference_precision",
)
#: Precisions :class:`OpenVINODetector` accepts: the CPU plugin's ``INFERENCE_PRECISION_HINT`` values, or
#: ``"default"`` (the plugin's own choice: bf16 on AVX512_BF16/AMX CPUs, else f32).
PRECISIONS = ("f32", "bf16", "f16", "default")
#: Name scope of the post-processing ops in the serving function (kept in float32 by int8 quantization).
POSTPROCESS_SCOPE = "keras_retina_postprocess"


def export_openvino(
    model,
    path: str,
    quantization: str | None = None,
    representative_data: Iterable | None = None,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    image_size: int | None = None,
    num_calibration_images: int = 100,
    min_size: int | None = None,
    max_size: int | None = None,
) -> str:
    """Writes ``model`` as an OpenVINO IR (``.xml`` + ``.bin``) with decoding and NMS inside.

    The graph is :func:`keras_retina.deploy.litert.export_litert`'s serving
    function (uint8 images → the model → per level the ``pre_nms_topk`` best
    (anchor, class) pairs, decoded and clipped → NMS with the model's
    inference settings → category ids), traced once and converted by
    ``openvino.convert_model`` from its concrete function (a SavedModel of
    it fails to convert on its ``VarHandleOp`` variables; the concrete
    function's variables are frozen into constants); its ``TopK`` nodes are
    made unstable (:func:`_unstable_topk`: 200x faster on OpenVINO's CPU
    plugin). Weights are stored in
    float32 (``save_model(compress_to_fp16=False)``: OpenVINO's default
    would halve them to float16).

    Quantization:

    * ``None``: float32 weights and activations.
    * ``"int8"``: NNCF post-training quantization (``nncf.quantize``,
      the default ``PERFORMANCE`` preset: symmetric int8 weights per
      channel, activations per tensor) calibrated on ``representative_data``;
      the post-processing (decoding, NMS, category ids: every node at or
      after the first op of the serving function's post-processing scope)
      is an NNCF ignored scope and stays float32, as in the LiteRT int8
      file.

    Args:
        model: a built :class:`keras_retina.RetinaNet`.
        path: the ``.xml`` file to write (its ``.bin`` goes beside it).
        quantization: one of :data:`QUANTIZATIONS`.
        representative_data: for ``"int8"``, images the model will see
            (uint8 ``(S, S, 3)`` or batches ``(B, S, S, 3)``); the first
            ``num_calibration_images`` are used.
        class_names, category_ids: per contiguous class (default
            ``"class_<i>"`` and ``0..C-1``).
        image_size: ``S`` (default: the size the model was built at).
        num_calibration_images: images drawn from ``representative_data``.
        min_size, max_size: the resize rule callers apply before the square
            input (see :func:`keras_retina.deploy.litert.export_litert`),
            recorded in the IR; None fits ``S``.

    Returns:
        ``path``.

    Example:
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=32, head_channels=32,
        ...                      num_head_convs=1)
        >>> model.build((None, 64, 64, 3))
        >>> import tempfile
        >>> path = export_openvino(model, os.path.join(tempfile.mkdtemp(), "model.xml"),
        ...                        class_names=["cat", "dog"])
        >>> detector = OpenVINODetector(path)
        >>> detector.class_names, detector(np.zeros((64, 64, 3), np.uint8))["detection_boxes"].shape
        (['cat', 'dog'], (1, 100, 4))
    """
    # TensorFlow, Keras and the project's model code only here: the detector below runs without them.
    import tensorflow as tf

    from keras_retina import compat
    from keras_retina.data.pipeline import check_resize_rule
    from keras_retina.deploy.class_names import resolve_classes
    from keras_retina.deploy.litert import _LiteRTModule

    ov = _import_openvino()
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"export_openvino: `quantization` must be one of {QUANTIZATIONS}, got {quantization!r}.")
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "export_openvino: int8 quantization needs `representative_data` (images the model will see) "
            "to calibrate its ranges."
        )
    if not str(path).endswith(".xml"):
        raise ValueError(f"export_openvino: `path` must name the IR's .xml file, got {path!r}.")
    image_size = image_size or compat.built_image_size(model)
    if not image_size:
        raise ValueError(
            "export_openvino: `image_size` is needed (the model was not built at a square size), got None."
        )
    image_size = int(image_size)
    check_resize_rule(min_size, max_size, image_size)
    class_names, category_ids = resolve_classes("export_openvino", model.num_classes, class_names, category_ids)
    calibration = None
    if quantization == "int8":  # read (and checked) before the slow conversion
        calibration = _calibration_images(representative_data, image_size, num_calibration_images)

    module = _LiteRTModule(model, image_size, category_ids)  # the LiteRT file's serving function, shared
    function = tf.function(module.serve_fn, input_signature=[module.input_spec], autograph=False)
    ov_model = ov.convert_model(function.get_concrete_function())
    _unstable_topk(ov_model)
    if quantization == "int8":
        ov_model = _quantize_int8(ov_model, calibration)
    metadata = {
        "class_names": list(class_names),
        "category_ids": [int(c) for c in category_ids],
        "min_size": min_size,
        "max_size": max_size,
        "inference_settings": model.inference_settings.as_dict(),  # what the IR's NMS was built with
        "quantization": quantization,
        # The precision the file was validated at: the CPU plugin's default is bf16 on AVX512_BF16 / AMX CPUs.
        "inference_precision": "f32",
    }
    for field in METADATA_FIELDS:
        ov_model.set_rt_info(json.dumps(metadata[field]), [RT_INFO_SECTION, field])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ov.save_model(ov_model, path, compress_to_fp16=False)
    return path


def _unstable_topk(ov_model) -> int:
    """Makes the graph's stable ``TopK`` nodes unstable, in place; returns how many changed.

    TensorFlow's ``TopKV2`` converts to a *stable* ``TopK`` (ties in the
    order of their indices), and for a stable ``TopK`` OpenVINO's CPU plugin
    takes its O(N·K) bubble sort (``nodes/topk.cpp``: "bubble sort ... the
    only stable ones"): the per-level top 1000 of 46,080 (anchor, class)
    scores took 670 ms of an 800 ms call on the 256-px default model. An
    unstable ``TopK`` takes the heap sort, 3 ms. Only the order of exactly
    equal scores may change; a check of the IR against ``predict`` found the
    same detections.
    """
    from openvino import opset11

    changed = 0
    for node in ov_model.get_ordered_ops():
        if node.get_type_name() != "TopK" or not node.get_attributes().get("stable"):
            continue
        attributes = node.get_attributes()
        replacement = opset11.topk(
            node.input_value(0), node.input_value(1), attributes["axis"], attributes["mode"], attributes["sort"],
            attributes["index_element_type"], stable=False,
        )
        replacement.set_friendly_name(node.get_friendly_name())  # keeps it in the post-processing scope
        for index in range(node.get_output_size()):
            node.output(index).replace(replacement.output(index))
        changed += 1
    ov_model.validate_nodes_and_infer_types()
    return changed


def _quantize_int8(ov_model, images: list):
    """``ov_model`` with its network quantized to int8 by NNCF, its post-processing left in float32."""
    try:
        import nncf
    except ImportError as error:
        raise ImportError(
            "int8 OpenVINO export needs NNCF: pip install 'keras_retina[openvino]' (openvino, nncf)."
        ) from error
    ignored = postprocess_node_names(ov_model)
    if not ignored:
        raise RuntimeError(
            f"export_openvino: no node of the converted graph is in the {POSTPROCESS_SCOPE!r} scope; "
            "int8 would quantize decoding and NMS."
        )
    dataset = nncf.Dataset(images, lambda image: image[None])  # (1, S, S, 3) uint8 per sample
    level = nncf.nncf_logger.level
    nncf.set_log_level(logging.WARNING)  # NNCF logs every node it leaves unquantized at INFO
    try:
        return nncf.quantize(
            ov_model,
            dataset,
            subset_size=len(images),
            ignored_scope=nncf.IgnoredScope(names=sorted(ignored), validate=False),
        )
    finally:
        nncf.set_log_level(level)


def postprocess_node_names(ov_model) -> set[str]:
    """Friendly names of the post-processing nodes of a converted serving graph.

    Every node named in :data:`POSTPROCESS_SCOPE` and every node that
    depends on one (the frontend gives some nodes it creates, such as
    ``NonMaxSuppression``, names of their own): the post-processing is the
    graph's tail, so its descendants are post-processing too.
    """
    consumers: dict[str, list] = {}
    for node in ov_model.get_ordered_ops():
        for value in node.input_values():
            consumers.setdefault(value.get_node().get_friendly_name(), []).append(node)
    stack = [node for node in ov_model.get_ordered_ops() if POSTPROCESS_SCOPE in node.get_friendly_name()]
    names = set()
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in names:
            continue
        names.add(name)
        stack.extend(consumers.get(name, []))
    return names


def _calibration_images(representative_data, image_size: int, count: int) -> list:
    """Up to ``count`` uint8 ``(S, S, 3)`` images from ``representative_data`` (images or batches)."""
    images = []
    for item in representative_data:
        item = np.asarray(item)
        for image in item[None] if item.ndim == 3 else item:
            if image.shape != (image_size, image_size, 3):
                raise ValueError(
                    f"export_openvino: `representative_data` images must be ({image_size}, {image_size}, 3), "
                    f"got {image.shape}."
                )
            images.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
            if len(images) >= count:
                return images
    if not images:
        raise ValueError("export_openvino: `representative_data` yielded no image.")
    return images


def _import_openvino():
    try:
        import openvino
    except ImportError as error:
        raise ImportError(
            "OpenVINO export and inference need OpenVINO: pip install 'keras_retina[openvino]' (openvino, nncf)."
        ) from error
    return openvino


def read_metadata(path: str, ov_model=None) -> dict:
    """The metadata :func:`export_openvino` recorded in an IR's ``rt_info``, checked.

    Args:
        path: the ``.xml`` file.
        ov_model: the ``openvino.Model`` already read from ``path`` (else it is read).

    Returns:
        dict of :data:`METADATA_FIELDS`: ``class_names`` list of str,
        ``category_ids`` list of int, ``min_size``/``max_size`` int or None,
        ``inference_settings`` dict, ``quantization`` None or ``"int8"``,
        ``inference_precision`` str.

    Raises:
        ValueError: naming the file and the field when a field is missing or malformed.

    Example:
        >>> read_metadata(path)["class_names"]  # doctest: +SKIP
        ['circle', 'cross', 'diamond', 'square', 'triangle']
    """
    if ov_model is None:
        ov_model = _import_openvino().Core().read_model(path)
    metadata = {}
    for field in METADATA_FIELDS:
        if not ov_model.has_rt_info([RT_INFO_SECTION, field]):
            raise ValueError(
                f"{path}: rt_info has no {RT_INFO_SECTION}/{field}; was the IR written by export_openvino?"
            )
        try:
            metadata[field] = json.loads(ov_model.get_rt_info([RT_INFO_SECTION, field]).astype(str))
        except (json.JSONDecodeError, RuntimeError) as error:
            raise ValueError(f"{path}: rt_info field {RT_INFO_SECTION}/{field} is not JSON ({error}).") from None
    names, ids = metadata["class_names"], metadata["category_ids"]
    if (
        not isinstance(names, list) or not isinstance(ids, list) or len(names) != len(ids)
        or not all(isinstance(n, str) for n in names) or not all(type(i) is int for i in ids)
    ):
        raise ValueError(
            f"{path}: rt_info fields class_names and category_ids must be lists of strings and integers "
            f"of one length, got {names!r} and {ids!r}."
        )
    for field in ("min_size", "max_size"):
        value = metadata[field]
        if value is not None and (type(value) is not int or not 0 < value < 1 << 16):
            raise ValueError(f"{path}: rt_info field {field!r} must be null or a size in pixels, got {value!r}.")
    if metadata["inference_precision"] not in PRECISIONS:
        raise ValueError(
            f"{path}: rt_info field 'inference_precision' must be one of {PRECISIONS}, "
            f"got {metadata['inference_precision']!r}."
        )
    return metadata


class OpenVINODetector:
    """Runs an IR from :func:`export_openvino` on the CPU with the OpenVINO runtime alone (no TensorFlow).

    Args:
        path: the ``.xml`` file (its ``.bin`` beside it).
        num_threads: CPU threads (``INFERENCE_NUM_THREADS``).
        precision: the CPU plugin's ``INFERENCE_PRECISION_HINT``: None uses
            the one the file records (``"f32"``: float32's accuracy, on every
            CPU); ``"default"`` leaves the plugin's own (bf16 on AVX512_BF16
            or AMX CPUs); or one of ``"f32"``, ``"bf16"``, ``"f16"``.

    Attributes:
        path, image_size (``S``), class_names, category_ids, min_size,
        max_size (the resize rule, or None), inference_settings (dict),
        quantization (None or ``"int8"``), inference_precision (what the
        compiled model runs its float ops at, read back from the plugin).

    Call args:
        image: uint8 ``(S, S, 3)`` or ``(1, S, S, 3)``.

    Returns:
        dict of NumPy arrays: ``detection_boxes`` float32 ``(1, D, 4)`` xyxy
        input pixels, ``detection_scores`` float32 ``(1, D)``,
        ``detection_classes`` int64 ``(1, D)`` category ids (-1 past the
        detections), ``num_detections`` int32 ``(1,)``.

    Example:
        >>> detector = OpenVINODetector("export/model.xml")  # doctest: +SKIP
        >>> detector(np.zeros((detector.image_size, detector.image_size, 3), np.uint8))["num_detections"]  # doctest: +SKIP
        array([0], dtype=int32)
    """

    def __init__(self, path: str, num_threads: int = 2, precision: str | None = None):
        ov = _import_openvino()
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"OpenVINODetector: `precision` must be None or one of {PRECISIONS}, got {precision!r}.")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"OpenVINODetector: no IR file {path!r}.")
        self.path = path
        core = ov.Core()
        ov_model = core.read_model(path)
        metadata = read_metadata(path, ov_model)
        self.class_names, self.category_ids = metadata["class_names"], metadata["category_ids"]
        # How a caller resizes an image onto the file's square input (prepare_image's min_size, max_size).
        self.min_size, self.max_size = metadata["min_size"], metadata["max_size"]
        self.inference_settings = metadata["inference_settings"]
        self.quantization = metadata["quantization"]
        (parameter,) = ov_model.inputs
        self.input_shape = tuple(int(d) for d in parameter.get_shape())
        self.image_size = int(self.input_shape[1])
        config = {"INFERENCE_NUM_THREADS": int(num_threads)}
        precision = precision or metadata["inference_precision"]
        if precision != "default":
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(ov_model, "CPU", config)
        self.inference_precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "f32", "bf16"
        self.request = self.compiled.create_infer_request()
        self.output_names = [output.get_any_name() for output in self.compiled.outputs]

    def __call__(self, image) -> dict:
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"OpenVINODetector: {self.path} takes uint8 images, got {image.dtype}.")
        if image.ndim == 3:
            image = image[None]
        if image.shape != self.input_shape:
            raise ValueError(f"OpenVINODetector: {self.path} takes images {self.input_shape}, got {image.shape}.")
        results = self.request.infer({0: image})
        return {name: np.array(results[i]) for i, name in enumerate(self.output_names)}

    def op_types(self) -> list[str]:
        """The type names of the compiled graph's nodes as the plugin runs them (e.g. ``Convolution``)."""
        return [op.get_rt_info()["layerType"].astype(str) for op in self.compiled.get_runtime_model().get_ops()]
