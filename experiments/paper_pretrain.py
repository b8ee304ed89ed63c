"""The study's stand-in for ImageNet pre-training: the tiny backbone taught to classify crops.

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
the study's budget is about an hour a table.

    python -m experiments.paper_pretrain     # writes the weights, prints the crop accuracy
"""

from __future__ import annotations

import json
import os

import keras_retina as kr
from experiments import study_records

#: Where the pre-training images are written, and where the weights go.
DATA_DIR = os.path.join("data", "paper_dense_pretrain")
WEIGHTS_PATH = os.path.join("data", "paper_dense_pretrain", "tiny_backbone.weights.h5")
NUM_TRAIN, NUM_VAL = 4000, 200
#: Where the study keeps the backbone its runs started from (``study_records.archive_backbone``).
RECORDS_DIR = os.path.join("docs", study_records.RECORDS_DIRNAME)
DATA_SEED = 1  # the study's own splits are seed 0
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
    return kr.data.make_shapes_splits(directory, num_train, num_val, seed=DATA_SEED, verbose=verbose, **kr.data.SMALL_OBJECTS_IN_CLUTTER)


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
    """Writes the pre-training images and trains the tiny backbone on their crops.

    :func:`keras_retina.training.backbone_pretraining.pretrain` on 64-px crops of
    :func:`write_data`'s splits; returns its record.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> result = pretrain(d, os.path.join(d, "w.weights.h5"), steps=2, batch_size=4, num_train=2, num_val=1, verbose=0)
        >>> result["classes"][-1], result["steps"], os.path.exists(result["weights"])
        ('background', 2, True)
    """
    splits = write_data(directory, num_train, num_val, verbose=verbose > 0)
    return kr.training.backbone_pretraining.pretrain(
        (splits["train"].annotation_file, splits["train"].image_dir),
        (splits["val"].annotation_file, splits["val"].image_dir),
        weights_path,
        steps=steps,
        batch_size=batch_size,
        learning_rate=LEARNING_RATE,
        seed=seed,
        verbose=verbose,
    )


def ensure_weights(weights_path: str = WEIGHTS_PATH, **kwargs) -> str:
    """:data:`WEIGHTS_PATH`: if the file is missing, the kept copy in :data:`RECORDS_DIR` (checked
    against its SHA-256), else pre-trained now (5 min on an AVX-512 machine, 30 on an AVX2 one).

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "w.weights.h5")
        >>> open(path, "w").close()
        >>> ensure_weights(path) == path
        True
    """
    if study_records.restore_backbone(weights_path, RECORDS_DIR):
        print(f"Restored the kept backbone: {weights_path} from {RECORDS_DIR}", flush=True)
    if not os.path.exists(weights_path):
        print(f"Pre-training the tiny backbone on crops ({STEPS} steps): {weights_path}", flush=True)
        result = pretrain(weights_path=weights_path, **kwargs)
        print(f"crop accuracy: train {result['train_accuracy']:.3f}, val {result['val_accuracy']:.3f}", flush=True)
    return weights_path


if __name__ == "__main__":
    result = pretrain()
    print(json.dumps(result, indent=1))
