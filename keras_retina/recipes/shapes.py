"""The default experiment: a CPU-sized RetinaNet on the built-in synthetic shapes data.

Sized so that ``python main.py`` trains, evaluates and exports in minutes on
2 CPU cores (README.md has the times by machine). Deviations from the
paper, all for that budget:
the ``tiny`` backbone, pre-trained not on ImageNet (a download) but as a
crop classifier on other images of the shapes data
(``keras_retina/recipes/weights/tiny_shapes.weights.h5``, made by
``python -m keras_retina.recipes.shapes_pretrain``; the stem and the
stride-4 stage frozen, as the paper freezes its ImageNet stem), 64
FPN / head channels with GroupNorm in the heads (without it the heads'
N(0, 0.01) init leaves the model near its prior for hundreds of
steps), 256-pixel images, Adam with gradient-norm clipping instead of SGD
(measured on this data from scratch: AP 0.16 after 400 steps against 0.10
for SGD with GroupNorm and 0.005 for SGD without), 6 epochs of 100 steps
(from the pre-trained backbone: AP 0.628 after 600 steps, 0.662 after 800;
from scratch it was 0.639 after 1600 steps: docs/BENCHMARKS.md).
``--backbone_weights=none`` trains from scratch (then use ``--epochs=16``).
It evaluates once, after the last epoch (the time-to-accuracy benchmark
draws the curve).
"""

from keras_retina.config import DataConfig, ExperimentConfig, ModelConfig, TrainConfig
from keras_retina.recipes import shapes_pretrain


def config() -> ExperimentConfig:
    return ExperimentConfig(
        name="shapes",
        model=ModelConfig(
            backbone="tiny",
            backbone_weights=shapes_pretrain.WEIGHTS_PATH,
            fpn_channels=64,
            head_channels=64,
            num_head_convs=4,
            use_group_norm=True,
        ),
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
            epochs=6,
            steps_per_epoch=100,
            optimizer="adam",
            learning_rate=1e-3,
            weight_decay=0.0,
            clipnorm=5.0,
            warmup_steps=100,
            eval_every_epochs=6,  # once, at the end: the run's report and metrics.json use it
        ),
    )
