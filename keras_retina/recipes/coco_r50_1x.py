"""The paper's COCO recipe (Table 1e / Detectron "1x"): ResNet-50-FPN, 90k iterations.

Batch 16, SGD momentum 0.9, weight decay 1e-4, LR 0.01 divided by 10 at 60k
and 80k, linear warm-up (500 iterations from 1/3), horizontal flip only,
ImageNet-initialised backbone with frozen BatchNorm and stem + res2.
Resolution: the paper resizes the shorter side to 800 (max 1333); this
library pads to a square, so the default here is 800 x 800 with the long
side fitted, and ``--image_size`` chooses 512–1024 (Table 1e's speed/accuracy
points). 90k iterations = 12 epochs of the 118k-image train2017 set at batch 16
(7,500 steps each).

``train.reference_batch_size=16``: those rates are for batch 16, so another
global batch ``B`` (``--batch_size``) gets the linear scaling rule, lr
``0.01 * B / 16`` and ``500 * 16 / B`` warm-up steps (docs/SCALING.md); at
batch 16 nothing changes. ``steps_per_epoch`` stays 7,500 (TFDS does not
give the pipeline its size): keep 12 epochs with ``train.steps_per_epoch``
``= 7500 * 16 / B``.
"""

from keras_retina.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="coco_r50_1x",
        model=ModelConfig(backbone="resnet50", backbone_weights="imagenet"),
        data=DataConfig(
            dataset="tfds:coco/2017",
            train_split="train",
            val_split="validation",
            image_size=800,
            batch_size=16,
            max_boxes=100,
            scale_jitter=None,
            horizontal_flip=True,
        ),
        train=TrainConfig(
            epochs=12,
            steps_per_epoch=7500,
            learning_rate=0.01,
            momentum=0.9,
            weight_decay=1e-4,
            warmup_steps=500,
            decay_fractions=(60000 / 90000, 80000 / 90000),
            reference_batch_size=16,
            eval_every_epochs=4,
            jit_compile=True,
        ),
    )
