"""A small model that trains on a CPU in minutes, offline, on any dataset: ``--experiment=cpu_small``.

The default demo's network (``recipes/shapes.py``): the ``tiny`` backbone
started from the weights shipped in the package (nothing is downloaded),
64-channel pyramid and GroupNorm heads, Adam with gradient-norm clipping at
1e-3. What changes for data of your own: an epoch is one pass over your
training images (``--steps_per_epoch`` changes that), 12 epochs, 320-pixel
inputs, up to 100 boxes per image, and an evaluation every 3 epochs.

The quick option, not the accurate one: the backbone learnt from crops of
synthetic shapes, not from photos, so on real photos expect far less than
the fine-tuned COCO recipe (``finetune_coco``, the default for your data).
Use it to check that your data loads and that the loss falls, or where a
small model must run on a small device.

Time per epoch (measured, docs/TRAINING.md): 0.53 s per step of 8
320-pixel images on 2 cores of an AMD EPYC (family 26, AVX-512), 2026-12-06:
1,000 training images are about 70 s an epoch.
"""

import dataclasses

from keras_retina.config import ExperimentConfig
from keras_retina.recipes import shapes


def config() -> ExperimentConfig:
    demo = shapes.config()
    return dataclasses.replace(
        demo,
        name="cpu_small",
        # The built-in shapes data until --dataset says otherwise: runs offline as it is.
        data=dataclasses.replace(demo.data, image_size=320, max_boxes=100),
        train=dataclasses.replace(demo.train, epochs=12, steps_per_epoch=None, eval_every_epochs=3),
    )
