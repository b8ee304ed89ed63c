"""keras_retina: RetinaNet and Focal Loss (Lin et al. 2017) for TensorFlow / Keras 3.

The public API is this module's names and those of its subpackages, one per
layer (each imports only the layers listed before it):

* ``kr.model``: anchors, boxes, matching, backbones, FPN and heads, losses, post-processing, ``RetinaNet``;
* ``kr.data``: sources (COCO JSON, TFDS, synthetic shapes), image orientation, the ``tf.data`` pipeline;
* ``kr.evaluation``: the COCO metric, TIDE error analysis, the report, anchor fit;
* ``kr.pretrained``: published checkpoints (torchvision's RetinaNets) without torch;
* ``kr.training``: strategy, optimizer and schedule, callbacks, the run directory, :func:`~keras_retina.training.train`;
* ``kr.deploy``: SavedModel, LiteRT, prediction on files (imported on first use);
* ``kr.recipes``: the configs ``main.py --experiment=`` picks; ``kr.cli``: the ``main.py`` flags and modes.

``kr.config`` (the dataclass configs), ``kr.visualize`` (drawing boxes) and
``kr.compat`` (private Keras attributes) sit beside them. Importing this
module registers every serializable class, the training schedule included,
so ``keras.saving.load_model`` reads any keras_retina ``.keras`` file, a run's
checkpoint too.

Example:
    >>> import keras_retina as kr
    >>> model = kr.RetinaNet(num_classes=80, backbone="resnet50", backbone_weights=None)
    >>> model.compile(optimizer="sgd")       # FocalLoss + smooth L1 by default
"""

__version__ = "0.1.0"

import importlib
import os

# Before TensorFlow is first imported, so that every entry point (main.py, the
# keras-retina command, python -m keras_retina.cli, a user's script) runs the
# same kernels: TensorFlow turns oneDNN on by default only on CPUs with VNNI,
# BF16 or AMX, and on an AVX2-only CPU its Eigen kernels cost 1.12x as much per
# train step (docs/BENCHMARKS.md, kernel paths). Set either variable yourself
# (e.g. TF_ENABLE_ONEDNN_OPTS=0) to choose otherwise; once TensorFlow is
# imported they no longer matter.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info and warning lines

from keras_retina import config, data, evaluation, pretrained, training, visualize
from keras_retina.model import (
    BACKBONES,
    BACKGROUND,
    IGNORE,
    AnchorGenerator,
    BoxCoder,
    BoxHead,
    ClassificationHead,
    FeaturePyramid,
    FocalLoss,
    HuberLoss,
    InferenceSettings,
    RetinaNet,
    SmoothL1Loss,
    assign_targets,
    build_backbone,
    decode_detections,
    focal_loss,
    get_box_loss,
)

# Loaded on first use (PEP 562): deployment needs none of its modules until a model is exported.
_LAZY_MODULES = ("cli", "deploy", "recipes")
_LAZY_NAMES = {"export_saved_model": "keras_retina.deploy.saved_model", "export_litert": "keras_retina.deploy.litert"}


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(_LAZY_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_MODULES) | set(_LAZY_NAMES))


__all__ = [
    "AnchorGenerator",
    "BACKBONES",
    "BACKGROUND",
    "BoxCoder",
    "BoxHead",
    "ClassificationHead",
    "FeaturePyramid",
    "FocalLoss",
    "HuberLoss",
    "IGNORE",
    "InferenceSettings",
    "RetinaNet",
    "SmoothL1Loss",
    "assign_targets",
    "build_backbone",
    "config",
    "data",
    "decode_detections",
    "evaluation",
    "export_litert",
    "export_saved_model",
    "focal_loss",
    "get_box_loss",
    "pretrained",
    "training",
    "visualize",
]
