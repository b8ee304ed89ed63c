"""keras_retina: RetinaNet and Focal Loss (Lin et al. 2017) for TensorFlow / Keras 3."""

__version__ = "0.1.0"

from keras_retina.anchors import AnchorGenerator
from keras_retina.losses import FocalLoss, HuberLoss, SmoothL1Loss, focal_loss
