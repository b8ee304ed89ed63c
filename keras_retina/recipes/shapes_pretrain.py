"""How the default recipe's pre-trained backbone was made: ``python -m keras_retina.recipes.shapes_pretrain``.

The default ``shapes`` experiment starts its ``tiny`` backbone from
:data:`WEIGHTS_PATH`, a file in the package, as the paper's RetinaNet
starts from ImageNet: nothing is downloaded, and ``python main.py``
reaches its AP in a third of the steps it needed from scratch
(docs/BENCHMARKS.md, "The first run"). The weights come from
:func:`keras_retina.training.backbone_pretraining.pretrain`: a crop classifier
(5 shapes and background, 64 px crops) trained on :data:`NUM_TRAIN` images
of the default shapes setting drawn with seed :data:`DATA_SEED`; the
default run's own data is seed 0, so no image of its training or
validation split was seen. Running this module redraws those images under
``data/shapes_pretrain/`` and writes the weights again (about 10 minutes on
2 cores); ``<weights>.json`` records the accuracies.
"""

from __future__ import annotations

import json
import os

#: The weights file the default experiment loads, and what made it.
WEIGHTS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights", "tiny_shapes.weights.h5")
DATA_DIR = os.path.join("data", "shapes_pretrain")
NUM_TRAIN, NUM_VAL = 4000, 200
DATA_SEED = 1  # the default run's data is shapes_seed 0
IMAGE_SIZE = 256
STEPS = 6000


def main(weights_path: str = WEIGHTS_PATH, steps: int = STEPS, directory: str = DATA_DIR, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL, verbose: int = 2) -> dict:
    """Draws the pre-training images and trains the backbone; returns the record.

    Run it as a module, from the repository's root (the images go under
    ``data/shapes_pretrain/``, the weights to :data:`WEIGHTS_PATH`)::

        python -m keras_retina.recipes.shapes_pretrain

    The record is :func:`keras_retina.training.backbone_pretraining.pretrain`'s,
    also written to ``<weights_path>.json``.
    """
    from keras_retina.data.shapes import make_shapes_splits  # noqa: PLC0415
    from keras_retina.training import backbone_pretraining  # noqa: PLC0415

    splits = make_shapes_splits(directory, num_train, num_val, seed=DATA_SEED, image_size=(IMAGE_SIZE, IMAGE_SIZE), verbose=verbose > 0)
    return backbone_pretraining.pretrain(
        (splits["train"].annotation_file, splits["train"].image_dir),
        (splits["val"].annotation_file, splits["val"].image_dir),
        weights_path,
        steps=steps,
        verbose=verbose,
    )


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
