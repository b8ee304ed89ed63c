"""Pascal VOC 2007 with ResNet-50-FPN: a smaller real-data check than COCO.

VOC07 trainval (5,011 images) for 18 epochs at batch 16 (~5.6k iterations),
SGD LR 0.01 with drops at 2/3 and 8/9, 512 x 512, flip only; evaluated on
VOC07 test with the COCO metric (report AP50 to compare with VOC's mAP).
"""

from keras_retina.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="voc_r50",
        model=ModelConfig(backbone="resnet50", backbone_weights="imagenet"),
        data=DataConfig(
            dataset="tfds:voc/2007",
            train_split="train+validation",
            val_split="test",
            image_size=512,
            batch_size=16,
            max_boxes=64,
            scale_jitter=None,
        ),
        train=TrainConfig(epochs=18, steps_per_epoch=313, learning_rate=0.01, warmup_steps=300, eval_every_epochs=6),
    )
