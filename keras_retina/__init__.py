"""keras_retina: RetinaNet and Focal Loss (Lin et al. 2017) for TensorFlow / Keras 3.

Example:
    >>> import keras_retina as kr
    >>> model = kr.RetinaNet(num_classes=80, backbone="resnet50", backbone_weights=None)
    >>> model.compile(optimizer="sgd")       # FocalLoss + smooth L1 by default
"""

__version__ = "0.1.0"

from keras_retina import data, visualize
from keras_retina.anchors import AnchorGenerator
from keras_retina.boxes import BoxCoder
from keras_retina.backbones import BACKBONES, build_backbone
from keras_retina.export import export_saved_model
from keras_retina.litert import export_litert
from keras_retina.layers import BoxHead, ClassificationHead, FeaturePyramid
from keras_retina.losses import FocalLoss, HuberLoss, SmoothL1Loss, focal_loss, get_box_loss
from keras_retina.matching import BACKGROUND, IGNORE, assign_targets
from keras_retina.model import RetinaNet
from keras_retina.postprocess import InferenceSettings, decode_detections
from keras_retina import evaluation, pretrained  # after model: they use RetinaNets

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
    "data",
    "evaluation",
    "pretrained",
    "visualize",
    "build_backbone",
    "decode_detections",
    "export_litert",
    "export_saved_model",
    "focal_loss",
    "get_box_loss",
]
