"""The paper study's experiment: small objects in clutter, COCO's imbalance.

The data is the shapes generator's :data:`keras_retina.data.SMALL_OBJECTS_IN_CLUTTER`
setting (192-pixel images, 1-2 small objects among 8-16 unannotated
look-alikes: about 1 foreground anchor in 1000, measured by
``python -m experiments.paper_dense``), written as COCO JSON
under ``data/paper_dense/`` and read with ``dataset="coco_json"``. Write it
once before ``--experiment=experiments.paper_dense`` (from the repository
root, where ``experiments`` and ``data/`` are)::

    python -m experiments.paper_dense      # writes the data and the backbone, prints the foreground ratio
    python main.py --experiment=experiments.paper_dense --mode=train

(``python -m experiments.paper_study`` writes it itself.) The
model and optimiser are the default ``shapes`` experiment's (tiny
backbone, GroupNorm heads, Adam with clipping: see
``keras_retina/recipes/shapes.py`` for why). The backbone starts from
the study's own pre-trained weights, as the paper's starts from ImageNet: a
crop classifier trained on other images of this setting
(``experiments/paper_pretrain.py``; ``write_data(pretrained=True)``
trains it once, about 5 minutes), with the stem and the stride-4 stage
frozen; ``--override=model.backbone_weights=null`` trains from scratch
instead. The loss is the paper's focal loss (alpha 0.25, gamma 2). No scale jitter: it would change the
object sizes, hence the measured imbalance.

A second data setting, "wide" (:data:`DATASETS`, ``data/paper_dense_wide/``:
:data:`keras_retina.data.WIDE_OBJECTS_IN_CLUTTER`), draws objects of
more shapes and sizes for table 1c_wide; :func:`data_overrides` points the
config at it and ``write_data(data="wide")`` writes it.
"""

from __future__ import annotations

import os

import keras_retina as kr
from experiments import paper_pretrain

#: Where the data is written, and its size.
DATA_DIR = os.path.join("data", "paper_dense")
NUM_TRAIN, NUM_VAL = 1600, 300
DATA_SEED = 0
#: The study's data settings: name -> (folder, the name of a ``keras_retina.data`` shapes setting).
#: "wide" (table 1c_wide) draws objects of more shapes and sizes, to test anchor density.
DATASETS = {
    "dense": (DATA_DIR, "SMALL_OBJECTS_IN_CLUTTER"),
    "wide": (os.path.join("data", "paper_dense_wide"), "WIDE_OBJECTS_IN_CLUTTER"),
}


def data_overrides(name: str) -> tuple[str, ...]:
    """``--override`` strings that point the config at data setting ``name`` (none for "dense").

    Example:
        >>> data_overrides("dense")
        ()
        >>> data_overrides("wide")[0]
        'data.train_annotations=data/paper_dense_wide/train/annotations.json'
    """
    directory = _data_dir(name)
    if name == "dense":
        return ()
    return tuple(
        f"data.{split}_{field}={os.path.join(directory, split, leaf)}"
        for split in ("train", "val")
        for field, leaf in (("annotations", "annotations.json"), ("images", "images"))
    )


def _data_dir(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"Unknown paper_dense data setting {name!r}; known: {sorted(DATASETS)}.")
    return DATASETS[name][0]


def config() -> kr.config.ExperimentConfig:
    """The study's base config; each table changes a few fields with ``--override``.

    Example:
        >>> c = config()
        >>> c.data.dataset, c.data.image_size, c.model.focal_gamma, c.model.backbone_weights
        ('coco_json', 192, 2.0, 'data/paper_dense_pretrain/tiny_backbone.weights.h5')
    """
    return kr.config.ExperimentConfig(
        name="paper_dense",  # the name of the runs' config.json, whichever way --experiment names this module
        model=kr.config.ModelConfig(
            backbone="tiny",
            backbone_weights=paper_pretrain.WEIGHTS_PATH,
            fpn_channels=64,
            head_channels=64,
            num_head_convs=4,
            use_group_norm=True,
        ),
        data=kr.config.DataConfig(
            dataset="coco_json",
            train_annotations=os.path.join(DATA_DIR, "train", "annotations.json"),
            train_images=os.path.join(DATA_DIR, "train", "images"),
            val_annotations=os.path.join(DATA_DIR, "val", "annotations.json"),
            val_images=os.path.join(DATA_DIR, "val", "images"),
            image_size=192,
            batch_size=8,
            max_boxes=8,
            scale_jitter=None,
        ),
        train=kr.config.TrainConfig(
            epochs=20,
            steps_per_epoch=100,
            optimizer="adam",
            learning_rate=1e-3,
            weight_decay=0.0,
            clipnorm=5.0,
            warmup_steps=100,
            eval_every_epochs=20,
        ),
    )


def write_data(
    directory: str | None = None,
    num_train: int = NUM_TRAIN,
    num_val: int = NUM_VAL,
    verbose: bool = True,
    pretrained: bool = False,
    data: str = "dense",
) -> dict:
    """Writes (or finds) the study's train and val splits; returns ``make_shapes_splits``' dict.

    ``data`` names the setting (:data:`DATASETS`); ``directory`` defaults to
    its folder. With ``pretrained``, also the pre-trained backbone the
    config names (:func:`experiments.paper_pretrain.ensure_weights`:
    trained once, a few minutes; both settings start from it).

    Example:
        >>> import tempfile
        >>> splits = write_data(tempfile.mkdtemp(), num_train=2, num_val=1, verbose=False)
        >>> splits["train"].num_images, splits["val"].num_images
        (2, 1)
    """
    default_dir = _data_dir(data)  # rejects an unknown name
    directory = directory or default_dir
    setting = getattr(kr.data, DATASETS[data][1])
    splits = kr.data.make_shapes_splits(directory, num_train, num_val, seed=DATA_SEED, verbose=verbose, **setting)
    if pretrained:
        paper_pretrain.ensure_weights()
    return splits


if __name__ == "__main__":
    from experiments import study_measure  # noqa: PLC0415

    splits = write_data(pretrained=True)
    study_measure.print_foreground_ratio(config(), splits["train"].annotation_file, splits["train"].image_dir)
