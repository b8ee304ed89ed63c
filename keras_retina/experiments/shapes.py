"""The default experiment: a CPU-sized RetinaNet on the built-in synthetic shapes data.

Sized so that ``python main.py`` trains, evaluates and exports in minutes on
2 CPU cores (6 to 35 of them, by machine: README.md). Deviations from the
paper, all for that budget:
the ``tiny`` backbone from scratch (no ImageNet weights to download), 64
FPN / head channels with GroupNorm in the heads (without it the heads'
N(0, 0.01) init leaves a from-scratch model near its prior for hundreds of
steps), 256-pixel images, Adam with gradient-norm clipping instead of SGD
(measured on this data: AP 0.16 after 400 steps against 0.10 for SGD with
GroupNorm and 0.005 for SGD without).
It evaluates once, after the last epoch (the time-to-accuracy benchmark
draws the curve: docs/BENCHMARKS.md).
"""

from keras_retina.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="shapes",
        model=ModelConfig(backbone="tiny", fpn_channels=64, head_channels=64, num_head_convs=4, use_group_norm=True),
        data=DataConfig(
            dataset="shapes",
            shapes_num_train=800,
            shapes_num_val=100,
            shapes_image_size=256,
            image_size=256,
            batch_size=8,
            max_boxes=32,
            scale_jitter=(0.8, 1.2),
        ),
        train=TrainConfig(
            epochs=16,
            steps_per_epoch=100,
            optimizer="adam",
            learning_rate=1e-3,
            weight_decay=0.0,
            clipnorm=5.0,
            warmup_steps=100,
            eval_every_epochs=16,  # once, at the end: the run's report and metrics.json use it
        ),
    )
