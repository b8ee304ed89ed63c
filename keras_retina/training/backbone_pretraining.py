"""Pre-training a backbone as a crop classifier: the stand-in for ImageNet where nothing may be downloaded.

The paper's detectors start from an ImageNet-pretrained ResNet. The CPU-sized
``tiny`` backbone has no published weights, so this module gives it a
classification task on images of the detection data's world: crops of
COCO-format images, each labelled with the class of the object it is placed
on, or ``background`` for a window that touches no object. Weights saved
by :func:`pretrain` load with ``build_backbone(name, weights=path)`` (config
``model.backbone_weights``).

Written here because no dependency does it: Keras' and keras-hub's backbones
are pre-trained on ImageNet only, which is a download.
"""

from __future__ import annotations

import json
import os

import numpy as np

#: Side of the square crops fed to the classifier, in pixels.
CROP = 64


def crops(
    annotation_file: str,
    image_dir: str,
    crop: int = CROP,
    background_per_image: int = 2,
    context: float = 1.25,
    seed: int = 0,
) -> dict:
    """Labelled ``crop`` x ``crop`` windows of a COCO-format split.

    One window per annotated box, of side ``max(crop, context * longest box
    side)`` (at most the image's shorter side), placed at random so that the
    whole box lies inside it when it fits, and resized to ``crop`` when
    larger (label ``category_id``'s index), and ``background_per_image``
    windows of side ``crop`` per image that intersect no box (label
    ``num_classes``). A background window that finds no free place in 50
    tries is skipped and counted.

    The file is read and validated by
    :class:`~keras_retina.data.coco_json.CocoJsonSource`, and its images are
    decoded by its dataset (upright by their EXIF orientation, as the boxes
    are given), in the JSON's order. Crowd boxes are cropped like the others.

    Args:
        annotation_file: COCO instances JSON; boxes ``[x, y, w, h]`` in pixels.
        image_dir: folder of the images named in it.
        crop: output side in pixels; every image must be at least this large.
        background_per_image: background windows tried per image.
        context: window side over the box's longest side.
        seed: numpy seed of the placements.

    Returns:
        ``{"images": uint8 (N, crop, crop, 3), "labels": int32 (N,) in
        [0, num_classes], "class_names": names in category-id order plus
        "background", "background_skipped": int}``.

    Raises:
        ValueError: naming the file and the image when an image is smaller
            than ``crop`` (checked before any image is decoded).
        CocoFormatError: ``annotation_file`` is not COCO instances JSON, or
            an annotation is invalid (the message names the file, the image
            id and the field).
        FileNotFoundError: the annotation file, ``image_dir`` or an image
            file does not exist.
        tf.errors.InvalidArgumentError: an image file is not a readable
            image, or not of the JSON's size (named, with its image id).

    Example::

        found = crops("shapes/train/annotations.json", "shapes/train/images")
        found["images"].shape        # (N, 64, 64, 3)
        found["class_names"][-1]     # 'background', label num_classes
    """
    import tensorflow as tf  # noqa: PLC0415

    from keras_retina.data.coco_json import CocoJsonSource  # noqa: PLC0415

    source = CocoJsonSource(annotation_file, image_dir)
    class_names = source.class_names + ("background",)
    for image_id in source.image_ids:  # every size checked before any image is decoded
        record = source.image_record(image_id)
        if record.height < crop or record.width < crop:
            raise ValueError(
                f"{annotation_file}: image {record.file_name!r} is {record.width}x{record.height}, "
                f"smaller than the {crop}-px crop."
            )
    rng = np.random.default_rng(seed)
    images, labels, skipped = [], [], 0
    for example in source.dataset():  # upright, RGB, and of the JSON's size (else a named error)
        pixels = example["image"].numpy()
        height, width = pixels.shape[:2]
        record = source.image_record(int(example["image_id"]))
        boxes = [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in record.boxes.tolist()]  # [x, y, w, h] pixels
        for (x, y, w, h), label in zip(boxes, record.classes.tolist()):
            side = int(min(max(crop, np.ceil(context * max(w, h))), height, width))
            # Origins that keep the box inside the window (where it fits) and the window inside the image.
            x_low, x_high = max(0, int(np.ceil(x + w)) - side), min(int(x), width - side)
            y_low, y_high = max(0, int(np.ceil(y + h)) - side), min(int(y), height - side)
            x0 = rng.integers(min(x_low, x_high), max(x_low, x_high) + 1)
            y0 = rng.integers(min(y_low, y_high), max(y_low, y_high) + 1)
            window = pixels[y0 : y0 + side, x0 : x0 + side]
            if side != crop:
                window = tf.cast(tf.image.resize(window, (crop, crop), antialias=True) + 0.5, tf.uint8).numpy()
            images.append(window)
            labels.append(label)
        for _ in range(background_per_image):
            for _try in range(50):
                x0, y0 = rng.integers(0, width - crop + 1), rng.integers(0, height - crop + 1)
                if all(x0 >= x + w or x0 + crop <= x or y0 >= y + h or y0 + crop <= y for x, y, w, h in boxes):
                    images.append(pixels[y0 : y0 + crop, x0 : x0 + crop])
                    labels.append(source.num_classes)
                    break
            else:
                skipped += 1
    return {
        "images": np.stack(images),
        "labels": np.asarray(labels, np.int32),
        "class_names": class_names,
        "background_skipped": skipped,
    }


def pretrain(
    train: tuple[str, str],
    val: tuple[str, str],
    weights_path: str,
    backbone: str = "tiny",
    steps: int = 6000,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    verbose: int = 1,
) -> dict:
    """Trains ``backbone`` on :func:`crops` of ``train`` and saves its weights to ``weights_path``.

    The classifier is ``backbone -> C5 -> global average pooling -> Dense``,
    trained with Adam (``learning_rate``, cosine decay to 0 over ``steps``)
    and random horizontal flips; only the backbone's weights are saved, and a
    record next to them (``<weights_path>.json``).

    Args:
        train: ``(annotation_file, image_dir)`` of the training images.
        val: the same for the held-out images (accuracy only).
        weights_path: a ``.weights.h5`` path; folders are created.
        backbone: a :data:`keras_retina.model.backbones.BACKBONES` name.
        steps: optimiser steps (split into at most 10 epochs for the log).
        batch_size: crops per step.
        learning_rate: Adam's initial learning rate.
        seed: seed of the crops, the shuffling and the initialisation.
        verbose: Keras' ``fit`` verbosity.

    Returns:
        ``{"train_accuracy", "val_accuracy", "train_crops", "val_crops",
        "background_skipped", "classes", "steps", "weights"}`` (accuracies in
        [0, 1], of the last epoch and of the held-out crops).

    Example::

        result = pretrain(("shapes/train/annotations.json", "shapes/train/images"),
                          ("shapes/val/annotations.json", "shapes/val/images"),
                          "weights/tiny.weights.h5", steps=2000)
        result["val_accuracy"]    # and weights/tiny.weights.h5.json holds the same record
        backbone = build_backbone("tiny", weights=result["weights"])
    """
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from keras_retina.model.backbones import build_backbone, preprocessor  # noqa: PLC0415

    train_crops = crops(*train, seed=seed)
    val_crops = crops(*val, seed=seed + 1)
    names = train_crops["class_names"]
    keras.utils.set_random_seed(seed)
    network = build_backbone(backbone, freeze_at=0, freeze_batchnorm=False)
    inputs = keras.Input((CROP, CROP, 3))
    c5 = network(preprocessor(backbone)(inputs))[-1]
    logits = keras.layers.Dense(len(names))(keras.layers.GlobalAveragePooling2D()(c5))
    classifier = keras.Model(inputs, logits)
    classifier.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps))),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    def flip(image, label):  # uint8 in the dataset (a quarter of float32's memory), float32 out
        return tf.cast(tf.image.random_flip_left_right(image, seed=seed), tf.float32), label

    data = (
        tf.data.Dataset.from_tensor_slices((train_crops["images"], train_crops["labels"]))
        .shuffle(len(train_crops["labels"]), seed=seed)
        .repeat()
        .map(flip)
        .batch(batch_size)
    )
    epochs = max(1, min(10, steps // 10))
    history = classifier.fit(data, steps_per_epoch=max(1, steps // epochs), epochs=epochs, verbose=verbose)
    val_accuracy = classifier.evaluate(
        val_crops["images"].astype("float32"), val_crops["labels"], verbose=0, return_dict=True
    )["accuracy"]
    os.makedirs(os.path.dirname(os.path.abspath(weights_path)), exist_ok=True)
    network.save_weights(weights_path)
    result = {
        "backbone": backbone,
        "train_accuracy": float(history.history["accuracy"][-1]),
        "val_accuracy": float(val_accuracy),
        "train_crops": int(len(train_crops["labels"])),
        "val_crops": int(len(val_crops["labels"])),
        "background_skipped": int(train_crops["background_skipped"]),
        "classes": list(names),
        "steps": int(max(1, steps // epochs) * epochs),
        "weights": weights_path,
    }
    with open(weights_path + ".json", "w") as f:
        json.dump({**result, "weights": os.path.basename(weights_path)}, f, indent=1)
    return result
