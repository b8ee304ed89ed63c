"""The study's stand-in for ImageNet pre-training: the tiny backbone taught to classify crops (issue 15).

The paper fine-tunes an ImageNet-pretrained ResNet; nothing may be downloaded
here, and the ``tiny`` backbone has no published weights. So, as ImageNet
is to COCO, a classification task on other images of the same world:
64 x 64 crops of a separately drawn set of the study's images (the shapes
generator's ``SMALL_OBJECTS_IN_CLUTTER`` setting, seed 1: no image of the
study's own splits, seed 0), each labelled with the class of the shape it is
centred on, or ``background`` for a window that touches no shape (it holds
clutter and texture). The backbone (global average pooling of C5, one dense
layer) learns that task once; every study run then starts from these
weights, as the paper's runs start from ImageNet, with the stem and the
stride-4 stage frozen (``freeze_at=2``, the library's default for a
pretrained backbone).

Why: from scratch, the study's model needs about 4000 steps before its AP
stops improving, 20-25 minutes a run, 5-6 hours a table (docs/paper_study.md);
the issue asks for about an hour a table.

    python -m keras_retina.experiments.paper_pretrain     # writes the weights, prints the crop accuracy
"""

from __future__ import annotations

import json
import os

import numpy as np

#: Where the pre-training images are written, and where the weights go.
DATA_DIR = os.path.join("data", "paper_dense_pretrain")
WEIGHTS_PATH = os.path.join("data", "paper_dense_pretrain", "tiny_backbone.weights.h5")
NUM_TRAIN, NUM_VAL = 4000, 200
DATA_SEED = 1  # the study's own splits are seed 0
CROP = 64
BACKGROUND_PER_IMAGE = 2
STEPS = 6000
BATCH_SIZE = 64
LEARNING_RATE = 1e-3


def write_data(directory: str = DATA_DIR, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL, verbose: bool = True) -> dict:
    """Writes (or finds) the pre-training images; returns ``make_shapes_splits``' dict.

    Example:
        >>> import tempfile
        >>> write_data(tempfile.mkdtemp(), num_train=2, num_val=1, verbose=False)["val"].num_images
        1
    """
    from keras_retina.data.shapes import SMALL_OBJECTS_IN_CLUTTER, make_shapes_splits  # noqa: PLC0415

    return make_shapes_splits(directory, num_train, num_val, seed=DATA_SEED, verbose=verbose, **SMALL_OBJECTS_IN_CLUTTER)


def crops(annotation_file: str, image_dir: str, crop: int = CROP, background_per_image: int = BACKGROUND_PER_IMAGE, seed: int = 0):
    """Labelled ``crop`` x ``crop`` windows of a COCO-JSON split.

    One window per annotated box, placed at random so that the whole box lies
    inside it (label ``category_id - 1``), and ``background_per_image``
    windows per image that intersect no box (label ``num_classes``; a window
    is skipped after 50 failed placements, which the image count shows).

    Args:
        annotation_file: COCO instances JSON; boxes ``[x, y, w, h]`` in pixels.
        image_dir: folder of the images named in it.
        crop: window side in pixels (no larger than the images).
        background_per_image: background windows tried per image.
        seed: numpy seed of the placements.

    Returns:
        ``(images, labels, class_names)``: uint8 ``(N, crop, crop, 3)``,
        int32 ``(N,)`` in ``[0, num_classes]``, and the class names with
        ``"background"`` last.

    Example:
        >>> import tempfile
        >>> split = write_data(tempfile.mkdtemp(), num_train=3, num_val=1, verbose=False)["train"]
        >>> images, labels, names = crops(split.annotation_file, split.image_dir)
        >>> images.shape[1:], images.dtype, names[-1], int((labels == len(names) - 1).sum())
        ((64, 64, 3), dtype('uint8'), 'background', 6)
    """
    import tensorflow as tf  # noqa: PLC0415

    with open(annotation_file) as f:
        coco = json.load(f)
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    class_names = tuple(c["name"] for c in categories) + ("background",)
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    boxes_of: dict[int, list] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        boxes_of[annotation["image_id"]].append(annotation)
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for image in coco["images"]:
        pixels = tf.io.decode_image(tf.io.read_file(os.path.join(image_dir, image["file_name"])), channels=3).numpy()
        height, width = pixels.shape[:2]
        if height < crop or width < crop:
            raise ValueError(f"{annotation_file}: image {image['file_name']} is {width}x{height}, smaller than the {crop}-px crop.")
        boxes = [a["bbox"] for a in boxes_of[image["id"]]]
        for annotation in boxes_of[image["id"]]:
            x, y, w, h = annotation["bbox"]
            # Window origins that keep the whole box inside the window and the window inside the image.
            x0 = rng.integers(max(0, int(np.ceil(x + w)) - crop), min(int(x), width - crop) + 1)
            y0 = rng.integers(max(0, int(np.ceil(y + h)) - crop), min(int(y), height - crop) + 1)
            images.append(pixels[y0 : y0 + crop, x0 : x0 + crop])
            labels.append(label_of[annotation["category_id"]])
        for _ in range(background_per_image):
            for _try in range(50):
                x0, y0 = rng.integers(0, width - crop + 1), rng.integers(0, height - crop + 1)
                if all(x0 >= x + w or x0 + crop <= x or y0 >= y + h or y0 + crop <= y for x, y, w, h in boxes):
                    images.append(pixels[y0 : y0 + crop, x0 : x0 + crop])
                    labels.append(len(categories))
                    break
    return np.stack(images), np.asarray(labels, np.int32), class_names


def pretrain(
    directory: str = DATA_DIR,
    weights_path: str = WEIGHTS_PATH,
    steps: int = STEPS,
    batch_size: int = BATCH_SIZE,
    num_train: int = NUM_TRAIN,
    num_val: int = NUM_VAL,
    seed: int = 0,
    verbose: int = 1,
) -> dict:
    """Trains the tiny backbone on :func:`crops` and saves it for ``backbone_weights=``.

    The classifier is ``backbone -> C5 -> global average pooling -> Dense``,
    trained with Adam (1e-3, cosine decay to 0) and random horizontal flips; only the
    backbone's weights are saved (``build_backbone("tiny", weights=path)``
    loads them).

    Returns:
        ``{"train_accuracy", "val_accuracy", "train_crops", "val_crops",
        "classes", "steps", "weights"}``; also written next to the weights as
        ``<weights>.json``.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> result = pretrain(d, os.path.join(d, "w.weights.h5"), steps=2, batch_size=4, num_train=2, num_val=1, verbose=0)
        >>> result["classes"][-1], result["steps"], os.path.exists(result["weights"])
        ('background', 2, True)
    """
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    from keras_retina.backbones import build_backbone, preprocessor  # noqa: PLC0415

    splits = write_data(directory, num_train, num_val, verbose=verbose > 0)
    train_x, train_y, names = crops(splits["train"].annotation_file, splits["train"].image_dir, seed=seed)
    val_x, val_y, _ = crops(splits["val"].annotation_file, splits["val"].image_dir, seed=seed + 1)
    keras.utils.set_random_seed(seed)
    backbone = build_backbone("tiny", freeze_at=0, freeze_batchnorm=False)
    inputs = keras.Input((CROP, CROP, 3))
    c5 = backbone(preprocessor("tiny")(inputs))[-1]
    logits = keras.layers.Dense(len(names))(keras.layers.GlobalAveragePooling2D()(c5))
    classifier = keras.Model(inputs, logits)
    classifier.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(LEARNING_RATE, max(1, steps))),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    def flip(image, label):
        return tf.image.random_flip_left_right(image, seed=seed), label

    train = (
        tf.data.Dataset.from_tensor_slices((train_x.astype("float32"), train_y))
        .shuffle(len(train_y), seed=seed)
        .repeat()
        .map(flip)
        .batch(batch_size)
    )
    epochs = max(1, min(10, steps // 10))
    history = classifier.fit(train, steps_per_epoch=max(1, steps // epochs), epochs=epochs, verbose=verbose)
    val_accuracy = classifier.evaluate(val_x.astype("float32"), val_y, verbose=0, return_dict=True)["accuracy"]
    os.makedirs(os.path.dirname(os.path.abspath(weights_path)), exist_ok=True)
    backbone.save_weights(weights_path)
    result = {
        "train_accuracy": float(history.history["accuracy"][-1]),
        "val_accuracy": float(val_accuracy),
        "train_crops": int(len(train_y)),
        "val_crops": int(len(val_y)),
        "classes": list(names),
        "steps": int(max(1, steps // epochs) * epochs),
        "weights": weights_path,
    }
    with open(weights_path + ".json", "w") as f:
        json.dump(result, f, indent=1)
    return result


def ensure_weights(weights_path: str = WEIGHTS_PATH, **kwargs) -> str:
    """:data:`WEIGHTS_PATH`, pre-training first if the file is missing (a few minutes, once).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "w.weights.h5")
        >>> open(path, "w").close()
        >>> ensure_weights(path) == path
        True
    """
    if not os.path.exists(weights_path):
        print(f"Pre-training the tiny backbone on crops ({STEPS} steps): {weights_path}", flush=True)
        result = pretrain(weights_path=weights_path, **kwargs)
        print(f"crop accuracy: train {result['train_accuracy']:.3f}, val {result['val_accuracy']:.3f}", flush=True)
    return weights_path


if __name__ == "__main__":
    result = pretrain()
    print(json.dumps(result, indent=1))
