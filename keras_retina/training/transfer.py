"""Fine-tuning: a trained detector's weights into a model for other classes.

``main.py --init_weights=...`` takes a published name
(:data:`keras_retina.pretrained.CHECKPOINTS`), a torchvision ``.pth`` file
or a keras_retina ``.keras`` file. The run's model gets the source's
architecture (:func:`finetune_model_config`), then its weights
(:func:`transfer_weights`): backbone, FPN and box head whole, and the rows of
the classification layer for the classes whose names the source knows.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import keras
import numpy as np
from absl import logging

from keras_retina import config as config_lib
from keras_retina.model import RetinaNet
from keras_retina.pretrained import published
from keras_retina.pretrained import torchvision as tv
from keras_retina.training import rundir

# ModelConfig fields that define the network's layout (the weights' shapes
# and meaning): they come from the source. Matching, losses and inference
# stay the run's own.
_ARCHITECTURE_FIELDS = (
    "backbone",
    "fpn_channels",
    "head_channels",
    "num_head_convs",
    "use_group_norm",
    "group_norm_epsilon",
    "p6_from",
    "fpn_padding",
    "max_level",
    "box_weights",
)
# Labels that name no object class: never matched to a user's class.
_PLACEHOLDER_NAMES = {"n/a", "__background__", "background"}


@dataclasses.dataclass(frozen=True)
class InitSource:
    """An opened ``--init_weights`` source.

    Attributes:
        model: the source ``RetinaNet``.
        class_names: its class names (``None`` when unknown: a ``.keras``
            file without ``classes.json`` beside it).
        description: what was opened, for logs.
        category_ids: dataset category id per class (torchvision's COCO
            labels: ``0..90``, the COCO ids), ``None`` when unknown.
        resize: the source's test-time resize ``(min_size, max_size)``
            (shorter side, longer side at most; torchvision's:
            :data:`TORCHVISION_RESIZE`), ``None`` when unknown.
    """

    model: RetinaNet
    class_names: tuple[str, ...] | None
    description: str
    category_ids: tuple[int, ...] | None = None
    resize: tuple[int, int] | None = None


#: torchvision's detection models resize the shorter side to 800 and the longer to at most 1333 (``min_size``, ``max_size``).
TORCHVISION_RESIZE = (800, 1333)


def open_source(init_weights: str, cache_dir: str | None = None) -> InitSource:
    """Opens ``init_weights``: a published name, a ``.pth`` path or a ``.keras`` path.

    Args:
        init_weights: ``"torchvision_v1_coco"`` / ``"torchvision_v2_coco"``
            (downloaded on first use, see :func:`keras_retina.pretrained.load`),
            a torchvision RetinaNet ``.pth`` file, or a ``.keras`` file saved
            by keras_retina (its class names are read from the
            ``classes.json`` of its run directory when there is one).
        cache_dir: for published names (default
            :func:`keras_retina.pretrained.published.default_cache_dir`).

    Returns:
        an :class:`InitSource`.

    Example:
        >>> open_source("imagenet")
        Traceback (most recent call last):
        ...
        ValueError: --init_weights must be one of ['torchvision_v1_coco', 'torchvision_v2_coco'], a .pth file or a .keras file, got 'imagenet'.
    """
    coco_ids = tuple(range(len(tv.COCO_CATEGORIES)))
    if init_weights in published.CHECKPOINTS:
        model = published.load(init_weights, cache_dir)
        return InitSource(model, tv.COCO_CATEGORIES, init_weights, coco_ids, TORCHVISION_RESIZE)
    if init_weights.endswith((".pth", ".pt")):
        model = tv.from_torchvision(init_weights)
        if model.num_classes == len(tv.COCO_CATEGORIES):
            return InitSource(model, tv.COCO_CATEGORIES, init_weights, coco_ids, TORCHVISION_RESIZE)
        return InitSource(model, None, init_weights, resize=TORCHVISION_RESIZE)
    if init_weights.endswith(".keras"):
        model = keras.saving.load_model(init_weights, compile=False)
        if not isinstance(model, RetinaNet):
            raise ValueError(f"--init_weights: {init_weights} holds a {type(model).__name__}, not a RetinaNet.")
        names = ids = None
        for directory in (os.path.dirname(init_weights), os.path.dirname(os.path.dirname(init_weights))):
            if os.path.exists(os.path.join(directory, rundir.CLASSES_FILE)):
                names, ids = rundir.read_classes(directory)  # checkpoints/x.keras in a run directory
                break
        return InitSource(model, names, init_weights, ids)
    raise ValueError(
        f"--init_weights must be one of {sorted(published.CHECKPOINTS)}, a .pth file or a .keras file, "
        f"got {init_weights!r}."
    )


def finetune_model_config(model_config: config_lib.ModelConfig, source: RetinaNet) -> config_lib.ModelConfig:
    """``model_config`` with ``source``'s architecture, and the paper's freezing for pretrained weights.

    The layout fields (backbone, pyramid, heads, anchors, box weights) are
    ``source``'s; ``backbone_weights`` is ``None`` (the weights come from
    ``source``). ``freeze_at`` and ``freeze_batchnorm`` left at ``None``
    become 2 (stem and first stage frozen) and ``True`` (frozen
    BatchNorm), the paper's rules for a pretrained backbone; values given
    explicitly are kept. Matching, losses and inference settings stay
    ``model_config``'s.

    Example:
        >>> from keras_retina.pretrained import torchvision as tv
        >>> source = tv.from_torchvision(tv.random_state_dict("v1", num_classes=2))
        >>> config = finetune_model_config(config_lib.ModelConfig(backbone="tiny"), source)
        >>> config.backbone, config.p6_from, config.anchors.order, config.freeze_at
        ('torchvision_resnet50', 'p5', 'ratio_major', 2)
    """
    source_config = source.get_config()
    anchors = source.anchor_generator.get_config()
    changes = {name: source_config[name] for name in _ARCHITECTURE_FIELDS}
    changes["box_weights"] = tuple(changes["box_weights"])
    changes["anchors"] = config_lib.AnchorConfig(
        **{f.name: anchors[f.name] for f in dataclasses.fields(config_lib.AnchorConfig)}
    )
    changes["backbone_weights"] = None
    changes["freeze_at"] = 2 if model_config.freeze_at is None else model_config.freeze_at
    changes["freeze_batchnorm"] = True if model_config.freeze_batchnorm is None else model_config.freeze_batchnorm
    return dataclasses.replace(model_config, **changes)


def normalize_name(name: str) -> str:
    """A class name compared case-, space-, ``_``- and ``-``-insensitively ("Traffic_Light" = "traffic light")."""
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def match_classes(
    target_names: Sequence[str], source_names: Sequence[str] | None
) -> dict[int, int]:
    """``{target class index: source class index}`` for target classes the source names too.

    Example:
        >>> match_classes(["Person", "widget", "traffic_light"], ["__background__", "person", "traffic light"])
        {0: 1, 2: 2}
    """
    if source_names is None:
        return {}
    by_name = {}
    for index, name in enumerate(source_names):
        key = normalize_name(name)
        if key not in _PLACEHOLDER_NAMES:
            by_name.setdefault(key, index)
    return {i: by_name[normalize_name(n)] for i, n in enumerate(target_names) if normalize_name(n) in by_name}


def transfer_weights(
    source: RetinaNet,
    target: RetinaNet,
    target_class_names: Sequence[str],
    source_class_names: Sequence[str] | None,
) -> dict:
    """Copies ``source``'s weights into ``target`` (same architecture, other classes).

    The backbone, the FPN, the box head and the classification head's tower
    are copied whole. In the classification layer (``K`` anchors x ``C``
    classes outputs), a target class whose name matches a source class (see
    :func:`normalize_name`) gets that class's kernel and bias for every
    anchor; the other classes keep ``target``'s initialisation: kernel
    N(0, 0.01) and the prior-probability bias ``-log((1 - pi) / pi)``.

    Args:
        source, target: built ``RetinaNet`` models with the same layout.
        target_class_names: ``target``'s ``C`` class names.
        source_class_names: ``source``'s names, or ``None`` (no row is kept).

    Returns:
        ``{"matched": {target name: source name}, "new": [target names]}``.

    Raises:
        ValueError: naming the first variable whose shape differs.
    """
    if len(target_class_names) != target.num_classes:
        raise ValueError(
            f"transfer_weights: `target_class_names` has {len(target_class_names)} names for a model of "
            f"{target.num_classes} classes."
        )
    pairs = [
        (source.backbone, target.backbone),
        (source.feature_pyramid, target.feature_pyramid),
        (source.box_head, target.box_head),
        *zip(source.classification_head.convs, target.classification_head.convs),
        *zip(source.classification_head.norms, target.classification_head.norms),
    ]
    for source_layer, target_layer in pairs:
        source_weights, target_weights = source_layer.weights, target_layer.weights
        if len(source_weights) != len(target_weights):
            raise ValueError(
                f"transfer_weights: {target_layer.name} has {len(target_weights)} variables, the source "
                f"{len(source_weights)}: the architectures differ."
            )
        for source_variable, target_variable in zip(source_weights, target_weights):
            if tuple(source_variable.shape) != tuple(target_variable.shape):
                raise ValueError(
                    f"transfer_weights: {target_variable.path} has shape {tuple(target_variable.shape)}, the "
                    f"source's {source_variable.path} {tuple(source_variable.shape)}: the architectures differ."
                )
            target_variable.assign(source_variable)

    matches = match_classes(target_class_names, source_class_names)
    num_anchors = target.anchor_generator.num_anchors_per_location
    source_conv, target_conv = source.classification_head.output_conv, target.classification_head.output_conv
    kernel_shape = tuple(source_conv.kernel.shape[:3])
    source_kernel = np.asarray(source_conv.kernel).reshape(kernel_shape + (num_anchors, source.num_classes))
    kernel = np.asarray(target_conv.kernel).reshape(kernel_shape + (num_anchors, target.num_classes))
    source_bias = np.asarray(source_conv.bias).reshape(num_anchors, source.num_classes)
    bias = np.asarray(target_conv.bias).reshape(num_anchors, target.num_classes)
    for target_index, source_index in matches.items():
        kernel[..., target_index] = source_kernel[..., source_index]  # (kh, kw, in, K)
        bias[:, target_index] = source_bias[:, source_index]  # (K,)
    # (kh, kw, in, K, C) -> (kh, kw, in, K * C): channel a * C + c, the heads' order.
    target_conv.kernel.assign(kernel.reshape(tuple(target_conv.kernel.shape)))
    target_conv.bias.assign(bias.reshape(-1))
    report = {
        "matched": {target_class_names[t]: source_class_names[s] for t, s in matches.items()},
        "new": [name for i, name in enumerate(target_class_names) if i not in matches],
    }
    logging.info(
        "Initialised from a pretrained model: %d classes keep its rows (%s), %d start anew (%s).",
        len(report["matched"]),
        ", ".join(report["matched"]) or "none",
        len(report["new"]),
        ", ".join(report["new"]) or "none",
    )
    return report
