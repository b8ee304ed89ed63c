"""Backbones that return the C3, C4, C5 feature maps (strides 8, 16, 32)."""

from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf
from keras import ops

from keras_retina import compat

#: Backbone names accepted by :func:`build_backbone`.
BACKBONES = ("resnet50", "resnet101", "mobilenet_v2", "tiny", "torchvision_resnet50")

#: torchvision's input normalisation of RGB in [0, 1] (ImageNet mean and std).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)

# For each backbone: the layer names of C3, C4, C5, and for freeze_at = k the
# name of the first layer of stage k + 1 (everything before it is frozen).
# Stage 1 is the stem, stage 2 the stride-4 stage (Detectron's res2).
_RESNET_STAGE_STARTS = ("conv2_block1_1_conv", "conv3_block1_1_conv", "conv4_block1_1_conv", "conv5_block1_1_conv")
_SPECS = {
    "resnet50": {
        "outputs": ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
        "stage_starts": _RESNET_STAGE_STARTS,
    },
    "resnet101": {
        "outputs": ("conv3_block4_out", "conv4_block23_out", "conv5_block3_out"),
        "stage_starts": _RESNET_STAGE_STARTS,
    },
    "mobilenet_v2": {
        "outputs": ("block_6_expand_relu", "block_13_expand_relu", "out_relu"),
        "stage_starts": ("block_1_expand", "block_3_expand", "block_6_expand", "block_13_expand"),
    },
    "torchvision_resnet50": {
        "outputs": ("conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
        "stage_starts": _RESNET_STAGE_STARTS,
    },
    "tiny": {
        "outputs": ("stage3_out", "stage4_out", "stage5_out"),
        "stage_starts": ("stage2_down", "stage3_down", "stage4_down", "stage5_down"),
    },
}


def preprocessor(name: str) -> Callable:
    """Returns the input normalisation of backbone ``name``.

    The returned function maps float32 RGB images in [0, 255], ``(B, H, W, 3)``,
    to what the backbone was trained on: Caffe-style BGR mean subtraction for
    the Keras ResNets, [-1, 1] for MobileNetV2 and the tiny backbone, and
    torchvision's ``(RGB / 255 - mean) / std`` (:data:`TORCHVISION_MEAN`,
    :data:`TORCHVISION_STD`) for ``"torchvision_resnet50"``.

    Example:
        >>> np.unique(preprocessor("tiny")(ops.full((1, 2, 2, 3), 255.0)))
        array([1.], dtype=float32)
        >>> ops.convert_to_numpy(preprocessor("torchvision_resnet50")(ops.full((1, 1, 1, 3), 255.0))).round(3)
        array([[[[2.249, 2.429, 2.64 ]]]], dtype=float32)
    """
    _check_name(name)
    if name.startswith("torchvision_"):
        mean = ops.convert_to_tensor(TORCHVISION_MEAN, "float32")
        std = ops.convert_to_tensor(TORCHVISION_STD, "float32")
        return lambda images: (images / 255.0 - mean) / std
    if name.startswith("resnet"):
        return keras.applications.resnet.preprocess_input
    return lambda images: images / 127.5 - 1.0


def zero_pixel(name: str) -> tuple[float, float, float]:
    """The RGB pixel in [0, 255] that backbone ``name``'s normalisation (:func:`preprocessor`) maps to 0.

    torchvision pads a batch with zeros after normalising it; padding with
    this pixel before the model's own normalisation gives the same input.

    Example:
        >>> [round(v, 3) for v in zero_pixel("torchvision_resnet50")]
        [123.675, 116.28, 103.53]
        >>> zero_pixel("tiny")
        (127.5, 127.5, 127.5)
    """
    _check_name(name)
    if name.startswith("torchvision_"):
        return tuple(255.0 * m for m in TORCHVISION_MEAN)
    if name.startswith("resnet"):
        return (123.68, 116.779, 103.939)  # Caffe's BGR means, as RGB
    return (127.5, 127.5, 127.5)


def build_backbone(
    name: str = "resnet50",
    weights: str | None = None,
    freeze_at: int = 2,
    freeze_batchnorm: bool = True,
    input_shape: tuple = (None, None, 3),
) -> keras.Model:
    """Builds a backbone ``keras.Model`` mapping images to ``[C3, C4, C5]``.

    Args:
        name: one of :data:`BACKBONES`. ``"tiny"`` is a 10-conv network
            (16–256 channels, GroupNorm) sized for CPUs, tests and the
            default demo. ``"torchvision_resnet50"`` is torchvision's
            ResNet-50 layout (see :func:`torchvision_resnet50`), for its
            published detectors (:mod:`keras_retina.pretrained`).
        weights: ``"imagenet"`` (downloads Keras' ImageNet weights; not for
            ``"tiny"`` or ``"torchvision_resnet50"``), ``None`` (random
            init) or a path to a weights file.
        freeze_at: freeze the stem (1) and stages up to ``freeze_at``
            (2 = also the stride-4 stage, Detectron's default); 0 freezes
            nothing.
        freeze_batchnorm: run every BatchNorm in inference mode with frozen
            statistics and affine parameters, as in the paper (detection
            batches are too small for batch statistics).
        input_shape: ``(H, W, 3)``; ``None`` sizes accept any image.

    Returns:
        ``keras.Model`` taking preprocessed float images ``(B, H, W, 3)``
        (see :func:`preprocessor`) and returning ``[C3, C4, C5]`` of strides
        8, 16 and 32, spatial sizes ``ceil(H / stride)``.

    Example:
        >>> backbone = build_backbone("tiny")
        >>> [tuple(c.shape) for c in backbone(ops.zeros((1, 64, 64, 3)))]
        [(1, 8, 8, 64), (1, 4, 4, 128), (1, 2, 2, 256)]
    """
    _check_name(name)
    if not 0 <= freeze_at <= 5:
        raise ValueError(f"build_backbone: `freeze_at` must be in 0..5, got {freeze_at!r}.")
    is_path = weights not in (None, "imagenet")
    if name in ("tiny", "torchvision_resnet50"):
        if weights == "imagenet":
            raise ValueError(
                f"build_backbone: `weights` must be None or a weights file for the {name!r} backbone "
                "(it has no Keras ImageNet weights; torchvision's detectors come through "
                "keras_retina.pretrained), got 'imagenet'."
            )
        base = _tiny_backbone(input_shape) if name == "tiny" else torchvision_resnet50(input_shape)
    else:
        constructor = {
            "resnet50": keras.applications.ResNet50,
            "resnet101": keras.applications.ResNet101,
            "mobilenet_v2": keras.applications.MobileNetV2,
        }[name]
        base = constructor(
            include_top=False, weights=None if is_path else weights, input_shape=input_shape
        )
    if is_path:
        base.load_weights(weights)
    spec = _SPECS[name]
    outputs = [base.get_layer(layer_name).output for layer_name in spec["outputs"]]
    backbone = keras.Model(base.inputs, outputs, name=f"{name}_backbone")
    _freeze(backbone, spec["stage_starts"], freeze_at, freeze_batchnorm)
    return backbone


def _check_name(name: str) -> None:
    if name not in _SPECS:
        raise ValueError(f"Unknown backbone: `name` must be one of {BACKBONES}, got {name!r}.")


def _freeze(model: keras.Model, stage_starts, freeze_at: int, freeze_batchnorm: bool) -> None:
    first_trainable = None
    if 1 <= freeze_at <= len(stage_starts):
        first_trainable = stage_starts[freeze_at - 1]
    frozen = freeze_at > len(stage_starts)  # freeze_at beyond the last stage: all
    freezing = freeze_at >= 1
    for layer in model.layers:
        if first_trainable is not None and layer.name == first_trainable:
            freezing = False
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if frozen or freezing:
            layer.trainable = False
        elif freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def _tiny_backbone(input_shape) -> keras.Model:
    """Five stride-2 stages of (3x3 conv, GroupNorm, ReLU) x 2: 16, 32, 64, 128, 256 channels.

    GroupNorm rather than BatchNorm: this backbone trains from scratch on
    small batches, where BatchNorm's moving statistics lag its batch
    statistics and a model that fits its training set predicts poorly.
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for stage, channels in enumerate((16, 32, 64, 128, 256), start=1):
        x = keras.layers.Conv2D(channels, 3, strides=2, padding="same", use_bias=False, name=f"stage{stage}_down")(x)
        x = keras.layers.GroupNormalization(groups=8, name=f"stage{stage}_gn1")(x)
        x = keras.layers.ReLU(name=f"stage{stage}_relu1")(x)
        x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"stage{stage}_conv")(x)
        x = keras.layers.GroupNormalization(groups=8, name=f"stage{stage}_gn2")(x)
        x = keras.layers.ReLU(name=f"stage{stage}_out")(x)
    return keras.Model(inputs, x, name="tiny")


def torchvision_resnet50(input_shape=(None, None, 3)) -> keras.Model:
    """torchvision's ResNet-50 ("v1.5") as a Keras model, ImageNet-classifier head removed.

    It differs from ``keras.applications.ResNet50`` where torchvision's
    weights need it: the stride of each downsampling bottleneck sits on its
    3x3 conv (Keras: on the first 1x1 conv), no conv has a bias, BatchNorm's
    epsilon is 1e-5, and every strided 3x3 conv pads one pixel on each side
    (PyTorch's ``padding=1``; Keras' ``"same"`` pads only bottom and right on
    even inputs). Layer names are Keras' (``conv2_block1_1_conv``, ...), so
    stage outputs, freezing and BatchNorm folding work as for ``"resnet50"``.

    Written here rather than taken from keras-hub's ``ResNetBackbone``
    (which has this layout): keras-hub is not a dependency, it would bring
    its own preset machinery for one 40-line network, and our freezing and
    folding key on Keras' layer names.

    Args:
        input_shape: ``(H, W, 3)``; ``None`` sizes accept any image.

    Returns:
        ``keras.Model`` from normalised images (:func:`preprocessor`) to C5,
        ``(B, ceil(H / 32), ceil(W / 32), 2048)``; C3 and C4 are the layers
        ``conv3_block4_out`` and ``conv4_block6_out``.

    Example:
        >>> net = torchvision_resnet50()
        >>> tuple(net(ops.zeros((1, 64, 64, 3))).shape), net.count_params()
        ((1, 2, 2, 2048), 23561152)
    """
    layers = keras.layers
    epsilon = 1e-5
    inputs = keras.Input(input_shape)
    x = layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 7, strides=2, use_bias=False, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=epsilon, name="conv1_bn")(x)
    x = layers.ReLU(name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=2):
        for block in range(1, blocks + 1):
            name = f"conv{stage}_block{block}"
            stride = 2 if block == 1 and stage > 2 else 1
            shortcut = x
            y = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_1_conv")(x)
            y = layers.BatchNormalization(epsilon=epsilon, name=f"{name}_1_bn")(y)
            y = layers.ReLU(name=f"{name}_1_relu")(y)
            if stride == 2:
                y = layers.ZeroPadding2D(1, name=f"{name}_2_pad")(y)
            y = layers.Conv2D(
                width, 3, strides=stride, padding="valid" if stride == 2 else "same", use_bias=False,
                name=f"{name}_2_conv",
            )(y)
            y = layers.BatchNormalization(epsilon=epsilon, name=f"{name}_2_bn")(y)
            y = layers.ReLU(name=f"{name}_2_relu")(y)
            y = layers.Conv2D(4 * width, 1, use_bias=False, name=f"{name}_3_conv")(y)
            y = layers.BatchNormalization(epsilon=epsilon, name=f"{name}_3_bn")(y)
            if block == 1:
                shortcut = layers.Conv2D(4 * width, 1, strides=stride, use_bias=False, name=f"{name}_0_conv")(x)
                shortcut = layers.BatchNormalization(epsilon=epsilon, name=f"{name}_0_bn")(shortcut)
            x = layers.Add(name=f"{name}_add")([shortcut, y])
            x = layers.ReLU(name=f"{name}_out")(x)
    return keras.Model(inputs, x, name="torchvision_resnet50")


def fold_batchnorm(backbone: keras.Model) -> keras.Model | None:
    """A twin of ``backbone`` with every BatchNorm folded into the conv before it.

    A BatchNorm that uses its moving statistics is an affine map per
    channel, ``y = x * s + t`` with ``s = gamma / sqrt(var + eps)`` and
    ``t = beta - mean * s``; applied after a convolution it equals one
    convolution with kernel ``W * s`` and bias ``b * s + t``. The twin does
    that fold at every call from the live variables (it shares them with
    ``backbone``: no copy to keep in sync), so it computes the same function
    as ``backbone`` in inference mode, or in training when every BatchNorm is
    frozen, with one pass over each activation instead of three. Gradients
    reach the conv kernels through the fold; frozen layers get none.

    Hand-written because Keras has no BatchNorm folding, and TensorFlow's
    graph optimiser fuses a conv with its bias, a residual Add and a ReLU,
    but not with a Keras BatchNorm. Measured on ResNet-50 at 512x512, batch
    2, 2 CPU cores: the backbone's forward pass took 391 ms folded against
    424 ms unfolded; ``python -m benchmarks.run`` reports the effect on
    whole prediction and training steps.

    Args:
        backbone: a functional ``keras.Model`` (from :func:`build_backbone`).

    Returns:
        A functional ``keras.Model`` with the same inputs and outputs, or
        ``None`` when ``backbone`` has no Conv2D → BatchNorm pair (``"tiny"``).

    Example:
        >>> backbone = build_backbone("resnet50")   # random weights: no download
        >>> folded = fold_batchnorm(backbone)
        >>> x = ops.ones((1, 64, 64, 3))
        >>> [bool(ops.max(ops.abs(a - b)) < 1e-5) for a, b in zip(backbone(x), folded(x))]
        [True, True, True]
        >>> fold_batchnorm(build_backbone("tiny")) is None   # GroupNorm: nothing to fold
        True
    """
    pairs = {}  # conv name -> its BatchNorm
    for layer in backbone.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(compat.inbound_nodes(layer)) != 1:
            continue
        parents = compat.inbound_nodes(layer)[0].parent_nodes
        conv = parents[0].operation if len(parents) == 1 else None
        if (
            type(conv) is keras.layers.Conv2D
            and conv.groups == 1
            and conv.data_format == "channels_last"
            and layer.axis in (-1, 3, [3], [-1])
            and len(compat.outbound_nodes(conv)) == 1
            and len(compat.inbound_nodes(conv)) == 1
        ):
            pairs[conv.name] = layer
    if not pairs:
        return None
    folded_norms = {norm.name for norm in pairs.values()}

    def clone(layer):
        if layer.name in pairs:
            return _FoldedConv2D(layer, pairs[layer.name], name=f"{layer.name}_folded")
        if layer.name in folded_norms:
            return _PassThrough(name=f"{layer.name}_folded")
        if not layer.weights:  # stateless (ReLU, Add, padding, pooling): a fresh copy
            return layer.__class__.from_config(layer.get_config())
        return layer  # any other layer with weights is shared as it is

    return keras.models.clone_model(backbone, clone_function=clone)


class _FoldedConv2D(keras.layers.Layer):
    """Conv2D followed by an inference-mode BatchNorm, as one convolution.

    Holds references to the two original layers (not tracked: their
    variables belong to the backbone) and folds them at every call.
    """

    def __init__(self, conv: keras.layers.Conv2D, norm: keras.layers.BatchNormalization, **kwargs):
        super().__init__(dtype=conv.dtype_policy, **kwargs)
        object.__setattr__(self, "_conv", conv)  # untracked on purpose
        object.__setattr__(self, "_norm", norm)
        self.built = True

    def call(self, inputs, **kwargs):
        conv, norm = self._conv, self._norm
        scale = ops.rsqrt(ops.cast(norm.moving_variance, "float32") + norm.epsilon)
        if norm.scale:
            scale = scale * ops.cast(norm.gamma, "float32")
        shift = -ops.cast(norm.moving_mean, "float32") * scale
        if norm.center:
            shift = shift + ops.cast(norm.beta, "float32")
        kernel = ops.cast(conv.kernel, "float32") * scale  # (kh, kw, in, out) * (out,)
        bias = shift + ops.cast(conv.bias, "float32") * scale if conv.use_bias else shift
        outputs = ops.conv(
            inputs,
            ops.cast(kernel, inputs.dtype),
            strides=conv.strides,
            padding=conv.padding,
            data_format="channels_last",
            dilation_rate=conv.dilation_rate,
        )
        # BiasAdd (not AddV2): TensorFlow's remapper then fuses conv, bias,
        # the residual Add and the ReLU after it into one oneDNN call.
        outputs = tf.nn.bias_add(outputs, ops.cast(bias, outputs.dtype))
        return conv.activation(outputs)  # Keras' Conv2D always has one (linear by default)

    def compute_output_shape(self, input_shape):
        return self._conv.compute_output_shape(input_shape)


class _PassThrough(keras.layers.Layer):
    """Stands in for a BatchNorm that :class:`_FoldedConv2D` already applied."""

    def call(self, inputs, training=None, mask=None):
        return inputs
