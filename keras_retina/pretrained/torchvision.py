"""torchvision's COCO RetinaNets (``retinanet_resnet50_fpn`` v1 and v2) as :class:`keras_retina.RetinaNet`.

The conversion is name by name: each torchvision parameter goes to the
Keras variable of the same role, convolution kernels transposed from
PyTorch's ``(out, in, kh, kw)`` to Keras' ``(kh, kw, in, out)``. The
architecture options that make the two models compute the same function
are in :data:`ARCHITECTURES`; each is an option of the existing classes.
"""

from __future__ import annotations

import os
import re
from typing import Mapping

import keras
import numpy as np

from keras_retina.model import RetinaNet
from keras_retina.model.anchors import DEFAULT_ASPECT_RATIOS, DEFAULT_SCALES, AnchorGenerator

#: The versions :func:`from_torchvision` converts.
VERSIONS = ("v1", "v2")

#: torchvision's COCO labels: index ``i`` is the model's class ``i`` and COCO
#: category id ``i`` (0 is torchvision's background slot, never predicted by
#: a sigmoid RetinaNet in practice; "N/A" marks ids COCO left unused).
COCO_CATEGORIES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella",
    "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

#: torchvision's ``AnchorGenerator`` for RetinaNet: sizes 32..512 at P3..P7
#: truncated to whole pixels, 3 scales x 3 ratios in ratio-major order,
#: centres on the cell corners, corners rounded (keyword arguments of
#: :class:`keras_retina.AnchorGenerator` and of ``config.AnchorConfig``).
ANCHORS = dict(
    size_multiplier=4.0,
    scales=DEFAULT_SCALES,
    aspect_ratios=DEFAULT_ASPECT_RATIOS,
    offset=0.0,
    order="ratio_major",
    round_to_pixels=True,
)

_COMMON = dict(
    backbone="torchvision_resnet50",  # stride on the 3x3 conv, no conv biases, BatchNorm eps 1e-5
    fpn_channels=256,
    head_channels=256,
    num_head_convs=4,
    max_level=7,
    fpn_padding="symmetric",  # PyTorch's padding=1 on the stride-2 P6/P7 convs
    box_weights=(1.0, 1.0, 1.0, 1.0),
)
#: ``kr.RetinaNet`` keyword arguments (besides ``num_classes`` and the
#: anchors, :data:`ANCHORS`) of each version: P6 from P5 (v1) or C5 (v2),
#: GroupNorm heads with PyTorch's epsilon (v2).
ARCHITECTURES = {
    "v1": dict(_COMMON, p6_from="p5", use_group_norm=False),
    "v2": dict(_COMMON, p6_from="c5", use_group_norm=True, group_norm_epsilon=1e-5),
}
#: torchvision's post-processing: the top 1000 (anchor, class) pairs per
#: level scoring above 0.05, class-wise NMS at IoU 0.5, 300 detections.
INFERENCE = dict(score_threshold=0.05, pre_nms_topk=1000, nms_iou_threshold=0.5, max_detections=300)

_NUM_ANCHORS = 9


def from_torchvision(checkpoint, version: str | None = None):
    """Builds a :class:`keras_retina.RetinaNet` holding a torchvision RetinaNet's weights.

    The returned model computes what torchvision's ``retinanet_resnet50_fpn``
    (v1) or ``retinanet_resnet50_fpn_v2`` (v2) computes in eval mode for the
    same image: the same raw head outputs per anchor (within float32
    rounding) and the same detections (torchvision's post-processing,
    :data:`INFERENCE`). Inputs are RGB uint8 or [0, 255] floats, as for any
    keras_retina model; torchvision's normalisation is inside the model.
    torchvision also resizes every image to 800-1333 pixels first: resize
    before calling the model to match that exactly.

    Class ``i`` of the model is torchvision's label ``i``: for COCO
    checkpoints 91 classes, named by :data:`COCO_CATEGORIES`, whose COCO
    category id is ``i``.

    Args:
        checkpoint: path to a ``.pth`` file as torchvision publishes it or as
            ``torch.save(model.state_dict(), path)`` writes it (read without
            torch and without running any code from the file, see
            :func:`keras_retina.pretrained.pth.read_pth`), or a mapping of
            torchvision's parameter names to arrays (NumPy, or anything
            ``np.asarray`` accepts). Names from older torchvision releases
            (``conv.0``, ``conv.2``, ... in the heads, ``inner_blocks.0``
            in the FPN) and a ``module.`` prefix are accepted.
        version: ``"v1"`` or ``"v2"``; ``None`` tells them apart by the
            heads' GroupNorm parameters.

    Returns:
        a built ``RetinaNet`` (any input size), ``num_classes`` from the
        checkpoint's classification layer, with the stem, the first stage
        and every BatchNorm frozen for ``fit`` (the paper's rule for trained
        weights).

    Raises:
        ValueError: naming the parameter when one is missing, unexpected or
            of the wrong shape, or when ``version`` disagrees with the
            checkpoint.

    Example:
        >>> from keras_retina.pretrained import torchvision as tv
        >>> model = tv.from_torchvision(tv.random_state_dict("v2", num_classes=3, seed=0))
        >>> model.num_classes, model.max_detections, model.backbone_name
        (3, 300, 'torchvision_resnet50')
    """
    state = _canonical_state(checkpoint)
    detected = "v2" if "head.classification_head.conv.0.1.weight" in state else "v1"
    if version is None:
        version = detected
    if version not in VERSIONS:
        raise ValueError(f"from_torchvision: `version` must be one of {VERSIONS} or None, got {version!r}.")
    if version != detected:
        raise ValueError(
            f"from_torchvision: `version` is {version!r} but the checkpoint is a {detected} RetinaNet "
            f"({'has' if detected == 'v2' else 'lacks'} GroupNorm parameters in the heads)."
        )
    cls_bias = state.get("head.classification_head.cls_logits.bias")
    if cls_bias is None or cls_bias.ndim != 1 or cls_bias.shape[0] % _NUM_ANCHORS:
        raise ValueError(
            "from_torchvision: the checkpoint has no `head.classification_head.cls_logits.bias` of "
            f"{_NUM_ANCHORS} x num_classes values, got "
            f"{None if cls_bias is None else tuple(cls_bias.shape)}."
        )
    model = RetinaNet(
        num_classes=cls_bias.shape[0] // _NUM_ANCHORS,
        anchor_generator=AnchorGenerator(**ANCHORS),
        # Trained weights: the paper's freezing for fit() on them (stem and
        # first stage, every BatchNorm), as torchvision's FrozenBatchNorm2d.
        freeze_at=2,
        freeze_batchnorm=True,
        **ARCHITECTURES[version],
        **INFERENCE,
    )
    model.build((None, None, None, 3))
    assignments = list(_assignments(model, state))
    used = {key for key, _, _ in assignments}
    unexpected = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if unexpected:
        raise ValueError(f"from_torchvision: unexpected parameters in the checkpoint: {unexpected[:10]}.")
    for key, variable, value in assignments:
        variable.assign(value)
    return model


def _canonical_state(checkpoint) -> dict[str, np.ndarray]:
    """The checkpoint as a dict of today's torchvision names to NumPy arrays."""
    if isinstance(checkpoint, (str, os.PathLike)):
        from keras_retina.pretrained.pth import read_pth

        checkpoint = read_pth(checkpoint)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            "from_torchvision: `checkpoint` must be a path to a .pth file or a mapping of names to "
            f"arrays, got {type(checkpoint).__name__}."
        )
    state = {}
    for key, value in checkpoint.items():
        key = str(key)
        if key.startswith("module."):  # saved from a DataParallel wrapper
            key = key[len("module.") :]
        state[key] = np.asarray(value)
    # torchvision >= 0.13 nests the FPN convs and head convs one level deeper
    # (Conv2dNormActivation); its checkpoints from before use the flat names.
    renamed = {}
    for key, value in state.items():
        key = re.sub(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$", r"\1.0.\2", key)
        match = re.match(r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$", key)
        if match:  # Sequential(conv, ReLU, conv, ReLU, ...): conv i at index 2 i
            key = f"{match.group(1)}.{int(match.group(2)) // 2}.0.{match.group(3)}"
        renamed[key] = value
    return renamed


def _conv_kernel(value: np.ndarray) -> np.ndarray:
    return np.transpose(value, (2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)


def _assignments(model, state):
    """Yields ``(torchvision name, Keras variable, value)`` for every variable of ``model``."""

    def take(key, variable, transform=None, default=None):
        if key not in state:
            if default is None:
                raise ValueError(f"from_torchvision: the checkpoint lacks `{key}` (for {variable.path}).")
            value = default
        else:
            value = state[key]
            if transform is not None:
                value = transform(value)
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"from_torchvision: `{key}` has shape {tuple(state[key].shape)}, which does not fit "
                f"{variable.path} of shape {tuple(variable.shape)}."
            )
        return key, variable, value.astype(np.float32)

    def conv(prefix, layer, zero_bias_if_missing=False):
        yield take(f"{prefix}.weight", layer.kernel, _conv_kernel)
        if layer.use_bias:
            zeros = np.zeros(layer.bias.shape, np.float32) if zero_bias_if_missing else None
            yield take(f"{prefix}.bias", layer.bias, default=zeros)

    def batch_norm(prefix, layer):
        for name, variable in (
            ("weight", layer.gamma),
            ("bias", layer.beta),
            ("running_mean", layer.moving_mean),
            ("running_var", layer.moving_variance),
        ):
            yield take(f"{prefix}.{name}", variable)

    body = "backbone.body"
    for layer in model.backbone.layers:
        match = re.match(r"^conv(\d)_block(\d+)_(\d)_(conv|bn)$", layer.name)
        if layer.name in ("conv1_conv", "conv1_bn"):
            prefix = f"{body}.conv1" if layer.name == "conv1_conv" else f"{body}.bn1"
        elif match:
            stage, block, index, kind = match.groups()
            base = f"{body}.layer{int(stage) - 1}.{int(block) - 1}"
            if index == "0":
                prefix = f"{base}.downsample.{0 if kind == 'conv' else 1}"
            else:
                prefix = f"{base}.{kind}{index}"
        elif layer.weights:
            raise ValueError(f"from_torchvision: no torchvision parameter for backbone layer {layer.name}.")
        else:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            yield from batch_norm(prefix, layer)
        else:
            yield from conv(prefix, layer)

    fpn = model.feature_pyramid
    for i, layer in enumerate(fpn.lateral_convs):
        yield from conv(f"backbone.fpn.inner_blocks.{i}.0", layer)
    for i, layer in enumerate(fpn.output_convs):
        yield from conv(f"backbone.fpn.layer_blocks.{i}.0", layer)
    for i, layer in enumerate(fpn.extra_convs):
        yield from conv(f"backbone.fpn.extra_blocks.p{6 + i}", layer)

    for head, prefix, output in (
        (model.classification_head, "head.classification_head", "cls_logits"),
        (model.box_head, "head.regression_head", "bbox_reg"),
    ):
        for i, layer in enumerate(head.convs):
            # v2's convs have no bias (GroupNorm follows): ours stays at 0.
            yield from conv(f"{prefix}.conv.{i}.0", layer, zero_bias_if_missing=bool(head.norms))
            if head.norms:
                norm = head.norms[i]
                yield take(f"{prefix}.conv.{i}.1.weight", norm.gamma)
                yield take(f"{prefix}.conv.{i}.1.bias", norm.beta)
        yield from conv(f"{prefix}.{output}", head.output_conv)


def random_state_dict(version: str = "v2", num_classes: int = 91, seed: int = 0) -> dict[str, np.ndarray]:
    """A state dict with torchvision's names and shapes and seeded random values.

    For tests and examples: what ``torchvision.models.detection.
    retinanet_resnet50_fpn[_v2](num_classes=...).state_dict()`` holds,
    without torch: torchvision's initialisation, except that BatchNorm
    statistics and affine parameters are random (not the identity), with
    small residual branches so that the untrained network's activations stay
    bounded.

    Args:
        version: ``"v1"`` or ``"v2"``.
        num_classes: classes of the classification layer (91 for COCO).
        seed: NumPy seed.

    Returns:
        dict of name to float32 array (``num_batches_tracked`` as int64 0-d
        arrays in v2, as torchvision's ``BatchNorm2d`` saves it).

    Example:
        >>> from keras_retina.pretrained import torchvision as tv
        >>> state = tv.random_state_dict("v1", num_classes=91)
        >>> state["head.classification_head.cls_logits.weight"].shape
        (819, 256, 3, 3)
    """
    if version not in VERSIONS:
        raise ValueError(f"random_state_dict: `version` must be one of {VERSIONS}, got {version!r}.")
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}

    def conv(name, out_channels, in_channels, size, bias, std=None, bias_mean=0.0):
        std = (2.0 / (in_channels * size * size)) ** 0.5 if std is None else std  # He init by default
        state[f"{name}.weight"] = rng.normal(0, std, (out_channels, in_channels, size, size)).astype(np.float32)
        if bias:
            state[f"{name}.bias"] = rng.normal(bias_mean, 0.01, (out_channels,)).astype(np.float32)

    def batch_norm(name, channels, scale=1.0):
        state[f"{name}.weight"] = (scale * rng.uniform(0.5, 1.5, channels)).astype(np.float32)
        state[f"{name}.bias"] = rng.normal(0, 0.1, channels).astype(np.float32)
        state[f"{name}.running_mean"] = rng.normal(0, 0.1, channels).astype(np.float32)
        state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, channels).astype(np.float32)
        if version == "v2":
            state[f"{name}.num_batches_tracked"] = np.array(0, np.int64)

    conv("backbone.body.conv1", 64, 3, 7, bias=False)
    batch_norm("backbone.body.bn1", 64)
    in_channels = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for block in range(blocks):
            base = f"backbone.body.layer{stage}.{block}"
            conv(f"{base}.conv1", width, in_channels, 1, bias=False)
            batch_norm(f"{base}.bn1", width)
            conv(f"{base}.conv2", width, width, 3, bias=False)
            batch_norm(f"{base}.bn2", width)
            conv(f"{base}.conv3", 4 * width, width, 1, bias=False)
            # Small residual branches (as torchvision's zero_init_residual): activations
            # stay bounded through 16 blocks whose BatchNorm statistics are not real ones.
            batch_norm(f"{base}.bn3", 4 * width, scale=0.1)
            if block == 0:
                conv(f"{base}.downsample.0", 4 * width, in_channels, 1, bias=False)
                batch_norm(f"{base}.downsample.1", 4 * width)
            in_channels = 4 * width
    # FPN: torchvision's kaiming_uniform(a=1), std sqrt(1 / fan_in).
    for i, channels in enumerate((512, 1024, 2048)):
        conv(f"backbone.fpn.inner_blocks.{i}.0", 256, channels, 1, bias=True, std=(1 / channels) ** 0.5)
        conv(f"backbone.fpn.layer_blocks.{i}.0", 256, 256, 3, bias=True, std=(1 / 2304) ** 0.5)
    p6_in = 2048 if version == "v2" else 256
    conv("backbone.fpn.extra_blocks.p6", 256, p6_in, 3, bias=True, std=(1 / (9 * p6_in)) ** 0.5)
    conv("backbone.fpn.extra_blocks.p7", 256, 256, 3, bias=True, std=(1 / 2304) ** 0.5)
    for prefix, output, outputs in (
        ("head.classification_head", "cls_logits", num_classes),
        ("head.regression_head", "bbox_reg", 4),
    ):
        # Heads: torchvision's N(0, 0.01) (He in v2's GroupNorm towers) and the prior bias.
        for i in range(4):
            conv(f"{prefix}.conv.{i}.0", 256, 256, 3, bias=version == "v1", std=None if version == "v2" else 0.01)
            if version == "v2":
                state[f"{prefix}.conv.{i}.1.weight"] = rng.uniform(0.5, 1.5, 256).astype(np.float32)
                state[f"{prefix}.conv.{i}.1.bias"] = rng.normal(0, 0.1, 256).astype(np.float32)
        prior_bias = -np.log((1 - 0.01) / 0.01) if output == "cls_logits" else 0.0
        conv(f"{prefix}.{output}", _NUM_ANCHORS * outputs, 256, 3, bias=True, std=0.01, bias_mean=prior_bias)
    return state
