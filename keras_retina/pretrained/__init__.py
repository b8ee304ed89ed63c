"""Published checkpoints converted to keras_retina models, and fine-tuning from them.

* :func:`from_torchvision`: a torchvision RetinaNet ``.pth`` (v1 or v2) or
  state dict → :class:`keras_retina.RetinaNet` with the same outputs.
* :func:`load`: torchvision's published COCO RetinaNets by name, downloaded
  only when called, hash-checked, converted once and cached.
* :func:`read_pth`: reads a ``.pth`` file without torch and without running
  any code from it.
* :mod:`keras_retina.training.transfer`: what ``main.py --init_weights``
  does (the source's architecture, its weights, class rows by name).

Example:
    >>> import keras_retina as kr
    >>> kr.pretrained.COCO_CATEGORIES[:3]
    ('__background__', 'person', 'bicycle')
"""

from keras_retina.pretrained.pth import CheckpointError, UnsafeCheckpointError, read_pth, write_pth
from keras_retina.pretrained.published import CHECKPOINTS, WeightsUnavailableError, load
from keras_retina.pretrained.torchvision import COCO_CATEGORIES, from_torchvision

__all__ = [
    "CHECKPOINTS",
    "COCO_CATEGORIES",
    "CheckpointError",
    "UnsafeCheckpointError",
    "WeightsUnavailableError",
    "from_torchvision",
    "load",
    "read_pth",
    "write_pth",
]
