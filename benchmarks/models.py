"""The two detectors and the synthetic batch that every benchmark measures (no flags here).

Shared by :mod:`benchmarks.cases` and :mod:`benchmarks.profile`, so that a
profile shows the very model and batch the benchmark timed.
"""

from __future__ import annotations

#: Boxes per synthetic training image.
BOXES_PER_IMAGE = 8


def build_keras_retina(num_classes, image_size, trainable, fold_batchnorm=True):
    """keras_retina's ResNet-50 RetinaNet with random weights, built for ``image_size``.

    ``trainable``: ``"default"`` (everything, as with random weights),
    ``"detectron"`` (stem, stage 1 and BatchNorm frozen, as with ImageNet
    weights) or ``"all"``.
    """
    import keras_retina as kr

    kwargs = {}
    if trainable == "detectron":
        kwargs = dict(freeze_at=2, freeze_batchnorm=True)
    elif trainable == "all":
        kwargs = dict(freeze_at=0, freeze_batchnorm=False)
    model = kr.RetinaNet(
        num_classes=num_classes,
        backbone="resnet50",
        backbone_weights=None,
        fold_batchnorm=fold_batchnorm,
        **kwargs,
    )
    model.build((None, image_size, image_size, 3))
    return model


def build_keras_hub(num_classes, image_size, trainable):
    """keras-hub's RetinaNet with the ResNet-50 layout of its COCO preset."""
    import keras
    import keras_hub

    shape = (image_size, image_size, 3)
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512],
        stackwise_num_blocks=[3, 4, 6, 3],
        stackwise_num_strides=[1, 2, 2, 2],
        block_type="bottleneck_block",
        use_pre_activation=False,
        image_shape=shape,
    )
    backbone = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder, min_level=3, max_level=7, use_p5=False, image_shape=shape
    )
    model = keras_hub.models.RetinaNetObjectDetector(backbone=backbone, num_classes=num_classes)
    if trainable == "detectron":
        # The same layers keras_retina freezes with pretrained weights: the
        # stem and the first stage, and every BatchNorm (inference mode).
        for layer in encoder.layers:
            name = layer.name
            if name.startswith(("conv1", "pool1", "stack0")) or isinstance(
                layer, keras.layers.BatchNormalization
            ):
                layer.trainable = False
    return model


def set_class_bias(model, lib, value):
    import numpy as np

    layer = model.classification_head.output_conv if lib == "keras_retina" else model.classification_head.prediction_layer
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, np.full_like(bias, value)])


def synthetic_batch(lib, batch, size, num_classes, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    xy = rng.uniform(0, size * 0.7, (batch, BOXES_PER_IMAGE, 2))
    wh = rng.uniform(16, size * 0.3, (batch, BOXES_PER_IMAGE, 2))
    xyxy = np.concatenate([xy, xy + wh], -1).astype("float32")
    classes = rng.integers(0, num_classes, (batch, BOXES_PER_IMAGE)).astype("int32")
    if lib == "keras_retina":
        return images, {"boxes": xyxy, "classes": classes}
    # keras-hub: yxyx boxes (its default format) and "labels".
    yxyx = xyxy[..., [1, 0, 3, 2]]
    return images.astype("float32"), {"boxes": yxyx, "labels": classes.astype("float32")}


# ------------------------------------------------- the default recipe: the first run
#: Shapes images written for the step benchmark and the profile (the run itself writes 800 + 100).
STEP_DATA_IMAGES = (64, 16)


def default_config(overrides=(), **replace):
    """The default experiment (``python main.py``'s ``shapes``) with ``--override`` strings applied."""
    import dataclasses

    from keras_retina import config as config_lib
    from keras_retina import recipes

    config = config_lib.override(recipes.load("shapes"), list(overrides))
    return config_lib.validate(dataclasses.replace(config, **replace))


def default_model_and_data(config, directory):
    """The default experiment's compiled model and a small shapes dataset at its sizes, under ``directory``.

    Returns ``(model, data)``: ``data`` is a :class:`keras_retina.data.run_data.RunData`
    whose training pipeline is the run's own (augmentation, batch size, image size).
    """
    import dataclasses

    from keras_retina import training
    from keras_retina.data import run_data

    num_train, num_val = STEP_DATA_IMAGES
    data_config = dataclasses.replace(
        config.data, shapes_dir=str(directory), shapes_num_train=num_train, shapes_num_val=num_val
    )
    import keras

    keras.utils.set_random_seed(config.train.seed)
    data = run_data.RunData(data_config, seed=config.train.seed)
    steps = training.steps_per_epoch(config, data.num_train_images) * config.train.epochs
    model = training.build_compiled_model(config, len(data.class_names), steps)
    return model, data
