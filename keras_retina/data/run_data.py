"""From a :class:`~keras_retina.config.DataConfig` to everything a mode needs.

The one place where the configured dataset (``shapes``, ``coco_json``,
``yolo`` or ``tfds:<name>``) is chosen: every ``main.py`` mode builds one
:class:`RunData` and takes from it what it needs (raw examples, pipelines,
class names and ids, COCO ground truth). Each part is made on first use and
kept, so a mode that needs only the validation split never reads the
training annotations, and none is built twice.

A new kind of dataset goes in :func:`_open_split` (and, if it is files on
disk, :attr:`RunData._files`), and its name in ``config.validate``.
"""

from __future__ import annotations

import contextlib
import functools
import io

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from pycocotools.coco import COCO

from keras_retina.config import DataConfig
from keras_retina.data.coco_json import CocoJsonSource
from keras_retina.data.pipeline import make_pipeline
from keras_retina.data.shapes import make_shapes_splits
from keras_retina.data.tfds_source import COCO_CATEGORY_IDS, coco_from_raw_dataset, tfds_class_names, tfds_dataset
from keras_retina.data.yolo import YoloSource

#: The two splits every dataset has.
SPLITS = ("train", "val")


class RunData:
    """The configured dataset's splits, pipelines, classes and ground truth, built once.

    Args:
        data: the experiment's data section.
        seed: seed of the training shuffle and augmentation (a resumed run
            passes a different one, so that it does not replay the first
            epochs' draws).
        data_service_job: with ``data.data_service``, the tf.data service
            job that the training pipelines of every worker share (one
            epoch split over all of them); None for a job of this process.

    Attributes:
        config: ``data``.

    Example::

        data = RunData(DataConfig(shapes_dir="data/shapes", image_size=64, batch_size=2))
        data.class_names                              # ('circle', 'square', ...)
        images, y = next(iter(data.pipeline("val")))  # (2, 64, 64, 3); y as make_pipeline's
        data.coco_gt, data.category_ids               # to score detections on "val"

    (``shapes``: the images are written under ``shapes_dir`` on first use,
    unless they are there already.)
    """

    def __init__(self, data: DataConfig, *, seed: int = 0, data_service_job: str | None = None):
        self.config = data
        self.seed = int(seed)
        self.data_service_job = data_service_job
        self._splits: dict[str, _Split] = {}
        self._pipelines: dict[str, tf.data.Dataset] = {}

    # ------------------------------------------------------------- the splits
    def split(self, name: str) -> "_Split":
        """The opened ``"train"`` or ``"val"`` split (annotations read once)."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}.")
        if name not in self._splits:
            opened = _open_split(self.config, name, self._files)
            other = self._splits.get("val" if name == "train" else "train")
            if other is not None:  # checked before it is kept: a refused split stays refused
                _check_same_categories(*((opened, other) if name == "train" else (other, opened)))
            self._splits[name] = opened
        return self._splits[name]

    def raw(self, split: str, shuffle: bool = False) -> tf.data.Dataset:
        """One pass over ``split`` as raw examples (see :mod:`keras_retina.data`)."""
        return self.split(split).dataset(shuffle=shuffle, seed=self.seed)

    def pipeline(self, split: str) -> tf.data.Dataset:
        """Batched ``(images, y)`` for ``split``, at the global batch size, on one input pipeline.

        ``"train"``: shuffled, augmented and repeated forever (``fit`` takes
        ``steps_per_epoch``); ``"val"``: one pass in file order, with
        ``image_id``, ``scale`` and ``image_shape`` in ``y`` for evaluation.
        """
        if split not in self._pipelines:
            self._pipelines[split] = self._make_pipeline(split)
        return self._pipelines[split]

    def distributed_pipeline(self, split: str, strategy: tf.distribute.Strategy):
        """``split``'s pipeline fed to ``strategy``: ``strategy.distribute_datasets_from_function``.

        Each input pipeline (one per worker) reads only its share of the
        images (the sources' ``input_context``, before any file is opened)
        and batches ``input_context.get_per_replica_batch_size(batch_size)``
        examples, so ``data.batch_size`` stays the global batch. With
        ``data.data_service`` the training split is read through the tf.data
        service instead (the service shares the images out, see
        :func:`keras_retina.data.make_pipeline`).

        Raises:
            ValueError: ``data.batch_size`` is not a multiple of the number
                of replicas (raised when the strategy calls the function).

        Example: at ``batch_size=2`` on two replicas, one image each per step::

            strategy = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
            batches = RunData(config).distributed_pipeline("val", strategy)
            images, y = next(iter(batches))
            strategy.experimental_local_results(images)   # two (1, H, W, 3) tensors
        """

        def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
            return self._make_pipeline(split, input_context)

        return strategy.distribute_datasets_from_function(dataset_fn)

    def _make_pipeline(self, split: str, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        data = self.config
        training = split == "train"
        batch_size = data.batch_size
        pipeline_id = 0
        if input_context is not None:
            batch_size = input_context.get_per_replica_batch_size(data.batch_size)
            pipeline_id = input_context.input_pipeline_id
        service = data.data_service if training else None
        # The tf.data service shares the images out over its consumers: no sharding here.
        share = None if service else input_context
        seed = self.seed + pipeline_id  # each pipeline its own draws (the same for one pipeline)
        opened = self.split(split)
        raw = opened.dataset(shuffle=training, seed=seed, input_context=share)
        if share is not None and share.num_input_pipelines > 1:
            logging.info(
                "%s split: input pipeline %d of %d reads %s of its images.",
                split,
                share.input_pipeline_id,
                share.num_input_pipelines,
                opened.share_description(share),
            )
        if training:
            return make_pipeline(
                raw.repeat(),
                image_size=data.image_size,
                batch_size=batch_size,
                training=True,
                max_boxes=data.max_boxes,
                seed=seed,
                scale_jitter=data.scale_jitter,
                horizontal_flip=data.horizontal_flip,
                data_service=service,
                data_service_job=self.data_service_job,
                min_size=data.min_size,
                max_size=data.max_size,
            )
        return make_pipeline(
            raw, image_size=data.image_size, batch_size=batch_size, training=False, max_boxes=data.max_boxes,
            min_size=data.min_size, max_size=data.max_size,
        )

    # ----------------------------------------------------------- what a run needs
    @property
    def class_names(self) -> tuple[str, ...]:
        """Name of each contiguous class (from the validation split)."""
        return self.split("val").class_names

    @property
    def category_ids(self) -> tuple[int, ...]:
        """The dataset's category id of each contiguous class."""
        return self.split("val").category_ids

    @property
    def num_train_images(self) -> int | None:
        """Images in one pass over the training split; ``None`` when unknown (TFDS)."""
        return self.split("train").num_images

    @functools.cached_property
    def coco_gt(self) -> COCO:
        """pycocotools ground truth of the validation split, for ``COCOeval``."""
        return self.split("val").coco_gt()

    def report_skipped(self) -> None:
        """Logs what ``skip_invalid=True`` skipped in the splits opened so far."""
        for name, split in self._splits.items():
            stats = split.stats
            if stats is not None and (stats.images_skipped or stats.invalid_annotations):
                logging.warning(
                    "%s split: %d images skipped (%d at load, %d while reading), %d invalid annotations. "
                    "First reasons: %s",
                    name,
                    stats.images_skipped,
                    stats.images_skipped_at_load,
                    stats.images_skipped_at_read,
                    stats.invalid_annotations,
                    "; ".join(stats.reasons[:3]),
                )

    @functools.cached_property
    def _files(self) -> dict[str, tuple[str, str]] | None:
        """``split -> (annotation file, image folder)`` of a COCO-format dataset; ``None`` for TFDS and YOLO."""
        data = self.config
        if data.dataset == "shapes":
            splits = make_shapes_splits(  # written once, then found on disk
                data.shapes_dir,
                num_train=data.shapes_num_train,
                num_val=data.shapes_num_val,
                seed=data.shapes_seed,
                image_size=(data.shapes_image_size, data.shapes_image_size),
            )
            return {name: (files.annotation_file, files.image_dir) for name, files in splits.items()}
        if data.dataset == "coco_json":
            return {
                "train": (data.train_annotations, data.train_images),
                "val": (data.val_annotations, data.val_images),
            }
        return None


def _check_same_categories(train: "_Split", val: "_Split") -> None:
    """Both splits must have the same categories, in the same order."""
    if tuple(train.category_ids) != tuple(val.category_ids):
        raise ValueError(
            f"Training categories {train.category_ids} ({train.where}) differ from "
            f"validation categories {val.category_ids} ({val.where})."
        )


class _Split:
    """What :class:`RunData` asks of one split, whatever its kind of dataset."""

    where: str  # a file or dataset name, for error messages
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    num_images: int | None
    stats = None  # SkipStats of a COCO-JSON source

    def dataset(self, shuffle: bool, seed: int, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        raise NotImplementedError

    def share_description(self, input_context: tf.distribute.InputContext) -> str:
        """How many images ``input_context``'s share holds, in words (for the log)."""
        return f"1/{input_context.num_input_pipelines}"

    def coco_gt(self) -> COCO:
        raise NotImplementedError


class _CocoJsonSplit(_Split):
    """A COCO-format annotation file and its image folder (``coco_json`` and ``shapes``)."""

    def __init__(self, annotation_file: str, image_dir: str, skip_invalid: bool):
        self.source = CocoJsonSource(annotation_file, image_dir, skip_invalid=skip_invalid)
        self.where = self.source.annotation_file
        self.class_names = tuple(self.source.class_names)
        self.category_ids = tuple(int(c) for c in self.source.category_ids)
        self.num_images = self.source.num_images
        self.stats = self.source.stats

    def dataset(self, shuffle: bool, seed: int, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        return self.source.dataset(shuffle=shuffle, seed=seed if shuffle else None, input_context=input_context)

    def share_description(self, input_context: tf.distribute.InputContext) -> str:
        return f"{self.source.share_size(input_context)} of {self.num_images}"

    def coco_gt(self) -> COCO:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its timings
            return COCO(self.where)


class _YoloSplit(_CocoJsonSplit):
    """A split of a YOLO-format dataset (``yolo``): the labels read into COCO-format records."""

    def __init__(self, data_yaml: str, split: str, skip_invalid: bool):
        self.source = YoloSource(data_yaml, split, skip_invalid=skip_invalid)
        self.where = self.source.annotation_file
        self.class_names = tuple(self.source.class_names)
        self.category_ids = tuple(int(c) for c in self.source.category_ids)
        self.num_images = self.source.num_images
        self.stats = self.source.stats

    def coco_gt(self) -> COCO:
        return self.source.coco_gt()


class _TfdsSplit(_Split):
    """A split of a tensorflow-datasets detection dataset (``tfds:<name>``)."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        self.name, self.tfds_split, self.data_dir = name, split, data_dir
        self.where = f"tfds:{name}[{split}]"
        self.class_names = tuple(tfds_class_names(name, data_dir=data_dir))
        # COCO's own ids, so that exported and predicted results score against
        # the official annotation files; other datasets use their label ids.
        self.category_ids = COCO_CATEGORY_IDS if name.startswith("coco/") else tuple(range(len(self.class_names)))
        self.num_images = None

    def dataset(self, shuffle: bool, seed: int, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        read_config = tfds.ReadConfig(shuffle_seed=seed) if shuffle else None  # seeded file order
        return tfds_dataset(
            self.name,
            self.tfds_split,
            data_dir=self.data_dir,
            shuffle_files=shuffle,
            read_config=read_config,
            input_context=input_context,
        )

    def coco_gt(self) -> COCO:
        # Built from the split itself: box areas stand in for mask areas.
        return coco_from_raw_dataset(self.dataset(False, 0), self.class_names, self.category_ids)


def _open_split(data: DataConfig, split: str, files: dict | None) -> _Split:
    """The one place where ``data.dataset`` picks a kind of source (``files``: :attr:`RunData._files`)."""
    if data.dataset.startswith("tfds:"):
        name = data.dataset.split(":", 1)[1]
        return _TfdsSplit(name, data.train_split if split == "train" else data.val_split, data.tfds_data_dir)
    if data.dataset == "yolo":
        return _YoloSplit(data.data_yaml, split, skip_invalid=data.skip_invalid)
    if files is None:
        raise ValueError(f"data.dataset must be 'shapes', 'coco_json', 'yolo' or 'tfds:<name>', got {data.dataset!r}.")
    return _CocoJsonSplit(*files[split], skip_invalid=data.skip_invalid)
