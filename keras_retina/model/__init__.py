"""The detector: anchors, box maths, label assignment, backbones, FPN and heads, losses, post-processing, RetinaNet.

One module per stage of the network and its training signal; nothing here
reads files, knows a dataset or a config object (layers take plain keyword
arguments):

* :mod:`~keras_retina.model.anchors`: :class:`AnchorGenerator` (P3-P7, 9 per location);
* :mod:`~keras_retina.model.boxes`: box formats, IoU and the :class:`BoxCoder`;
* :mod:`~keras_retina.model.matching`: anchors to targets (:func:`assign_targets`);
* :mod:`~keras_retina.model.backbones`: ResNet, MobileNetV2, tiny; BatchNorm folding;
* :mod:`~keras_retina.model.fpn`, :mod:`~keras_retina.model.heads`: the pyramid and the shared subnets;
* :mod:`~keras_retina.model.losses`: :class:`FocalLoss` and the box losses;
* :mod:`~keras_retina.model.postprocess`: :class:`InferenceSettings`, decoding, NMS (**a new inference option**);
* :mod:`~keras_retina.model.tta`: test-time augmentation (``predict_tta``, ``TestTimeAugmentation``);
* :mod:`~keras_retina.model.slicing`: sliced inference for large images (``predict_sliced``, ``SlicedInference``);
* :mod:`~keras_retina.model.retinanet`: :class:`RetinaNet`, the ``keras.Model`` that joins them.

Example:
    >>> from keras_retina.model import RetinaNet
    >>> RetinaNet(num_classes=3, backbone="tiny").anchor_generator.num_anchors_per_location
    9
"""

from keras_retina.model.anchors import AnchorGenerator
from keras_retina.model.backbones import BACKBONES, build_backbone
from keras_retina.model.boxes import BoxCoder
from keras_retina.model.fpn import FeaturePyramid
from keras_retina.model.heads import BoxHead, ClassificationHead
from keras_retina.model.losses import FocalLoss, HuberLoss, SmoothL1Loss, focal_loss, get_box_loss
from keras_retina.model.matching import BACKGROUND, IGNORE, assign_targets
from keras_retina.model.postprocess import InferenceSettings, decode_detections
from keras_retina.model.retinanet import RetinaNet
from keras_retina.model.slicing import SlicedInference, predict_sliced
from keras_retina.model.tta import TestTimeAugmentation, predict_tta

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
    "SlicedInference",
    "SmoothL1Loss",
    "TestTimeAugmentation",
    "assign_targets",
    "build_backbone",
    "decode_detections",
    "focal_loss",
    "get_box_loss",
    "predict_sliced",
    "predict_tta",
]
