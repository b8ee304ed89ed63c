"""Your own data, fine-tuned from COCO weights: the recipe a dataset other than ``shapes`` gets by default.

``python main.py --dataset=coco_json ...`` (or ``--dataset=yolo``, or
``--dataset=tfds:voc/2007``) with no ``--experiment`` runs this recipe: the
paper's training recipe, started from a detector already trained on COCO
rather than from an ImageNet backbone.

* Weights: torchvision's COCO RetinaNet v2 (ResNet-50-FPN, GroupNorm heads,
  41.5 COCO AP), downloaded once (about 146 MB, hash-checked, cached under
  ``~/.keras/keras_retina``). Its backbone, pyramid and box head are kept;
  the classification head's last layer keeps the rows of the classes whose
  names match a COCO class and starts the others from the prior
  (:func:`keras_retina.training.transfer.transfer_weights`). Stem and first
  stage frozen, BatchNorm frozen, as the paper trains from a pre-trained
  backbone. Offline: ``--init_weights=PATH`` (the ``.pth`` file copied
  there), or ``--init_weights=none --backbone_weights=none`` to train from
  scratch (much weaker), or ``--experiment=cpu_small``.
* Optimiser: SGD, momentum 0.9, weight decay 1e-4, learning rate 0.01 for
  a global batch of 16 scaled linearly with the batch (0.005 at this
  recipe's batch of 8), linear warm-up from a third of the rate over 500
  steps at batch 16 (1,000 at batch 8, at most a tenth of the run).
* Schedule: 12 epochs, an epoch being one pass over the training images
  (``--steps_per_epoch`` changes that), the rate divided by 10 at 2/3 and
  8/9 of the run (the paper's 60k and 80k of 90k). Horizontal flip only.
* Input size 800: torchvision trained these weights with the shorter side
  resized to 800 (the longer at most 1333), so objects keep roughly the
  pixel sizes the weights learnt; this library pads to a square, so a 4:3
  photo becomes 800 x 600 on an 800 x 800 canvas. Smaller (``--image_size=512``)
  is 2.4 times cheaper and loses small objects; ``--mode=analyze`` says
  when your images are much larger than the input.
* Batch 8: 800-pixel ResNet-50-FPN training takes about 1.3 GB of
  accelerator memory per image; ``--batch_size`` changes it, and the
  rate follows.

Time per epoch, on paper: detectron2's model zoo trains this network at
800 pixels in 0.205 s per iteration of 16 images on 8 V100s, about 0.1 s per
image on one such GPU: 1,000 training images are about 2 minutes an epoch.
On a CPU it is impractical: 15 s per step of 8 images on 2 cores of an
AMD EPYC (family 26, AVX-512), 2026-12-06, so 31 minutes an epoch for
1,000 images (docs/TRAINING.md): use ``--experiment=cpu_small`` there.
"""

from keras_retina.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig

#: The weights this recipe starts from (``kr.pretrained.CHECKPOINTS``).
INIT_WEIGHTS = "torchvision_v2_coco"


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="finetune_coco",
        # Replaced by the COCO model's architecture when --init_weights is set;
        # used as it is with --init_weights=none.
        model=ModelConfig(backbone="resnet50", backbone_weights="imagenet"),
        data=DataConfig(
            dataset="coco_json",
            image_size=800,
            batch_size=8,
            max_boxes=100,
            horizontal_flip=True,
            scale_jitter=None,
        ),
        train=TrainConfig(
            epochs=12,
            steps_per_epoch=None,  # one pass over the training images
            optimizer="sgd",
            learning_rate=0.01,
            momentum=0.9,
            weight_decay=1e-4,
            warmup_steps=500,
            decay_fractions=(2.0 / 3.0, 8.0 / 9.0),
            reference_batch_size=16,
            init_weights=INIT_WEIGHTS,
            eval_every_epochs=1,
        ),
    )
