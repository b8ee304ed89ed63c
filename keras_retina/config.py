"""Experiment configuration: frozen dataclasses, validation and ``field=value`` overrides.

One config system: an experiment is a Python function in ``keras_retina/recipes/``
returning an :class:`ExperimentConfig`; ``main.py`` flags only pick the
experiment and override fields. The resolved config is written as JSON next
to the checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field

from keras_retina.model.anchors import DEFAULT_ASPECT_RATIOS, DEFAULT_SCALES


@dataclass(frozen=True)
class AnchorConfig:
    """Arguments of :class:`keras_retina.AnchorGenerator` (the paper's 9 anchors by default).

    The levels are the pyramid's: P3 to ``model.max_level``. Reachable as
    ``--override model.anchors.size_multiplier=2`` or
    ``--override "model.anchors.aspect_ratios=(0.25,0.5,1.0,2.0)"``.
    """

    size_multiplier: float = 4.0
    scales: tuple[float, ...] = DEFAULT_SCALES
    aspect_ratios: tuple[float, ...] = DEFAULT_ASPECT_RATIOS
    offset: float = 0.5
    order: str = "scale_major"
    round_to_pixels: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Arguments of :class:`keras_retina.RetinaNet` (see its docstring), and of its losses.

    Every constructor argument but ``num_classes`` (from the data) is a field
    here (``anchor_generator`` as the ``anchors`` section);
    ``focal_alpha``, ``focal_gamma`` and ``box_loss`` go to ``compile``.
    """

    backbone: str = "resnet50"
    backbone_weights: str | None = None
    freeze_at: int | None = None
    freeze_batchnorm: bool | None = None
    # BatchNorm that trains on several replicas uses the global batch's
    # statistics (synchronized); None: on exactly then; --nosync_batchnorm: off.
    sync_batchnorm: bool | None = None
    fpn_channels: int = 256
    head_channels: int = 256
    num_head_convs: int = 4
    use_group_norm: bool = False
    group_norm_epsilon: float = 1e-3
    p6_from: str = "c5"
    fpn_padding: str = "same"
    max_level: int = 7
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    prior_probability: float = 0.01
    bounding_box_format: str = "xyxy"
    foreground_iou: float = 0.5
    background_iou: float = 0.4
    allow_low_quality_matches: bool = True
    box_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    score_threshold: float = 0.05
    pre_nms_topk: int = 1000
    nms_iou_threshold: float = 0.5
    max_detections: int = 100
    class_agnostic_nms: bool = False
    soft_nms_sigma: float = 0.0  # Gaussian soft-NMS; 0: hard NMS
    fold_batchnorm: bool = True
    # Online hard example mining (the paper's Table 1d): None = off (focal loss on every anchor).
    ohem_batch_size: int | None = None
    ohem_positive_fraction: float | None = None  # None: no ratio; 0.25: the paper's 1:3
    focal_alpha: float | None = 0.25
    focal_gamma: float = 2.0
    box_loss: str = "smooth_l1"


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is batched.

    ``dataset`` is ``"shapes"`` (the built-in synthetic set, written to
    ``shapes_dir``), ``"coco_json"`` (the four annotation/image paths),
    ``"yolo"`` (a YOLO ``data.yaml``, ``data_yaml``) or ``"tfds:<name>"``
    (e.g. ``"tfds:coco/2017"``).
    """

    dataset: str = "shapes"
    train_annotations: str | None = None
    train_images: str | None = None
    val_annotations: str | None = None
    val_images: str | None = None
    data_yaml: str | None = None  # dataset="yolo": the data.yaml of a YOLO-format export
    tfds_data_dir: str | None = None
    train_split: str = "train"
    val_split: str = "validation"
    shapes_dir: str = "data/shapes"
    shapes_num_train: int = 400
    shapes_num_val: int = 100
    shapes_image_size: int = 256
    shapes_seed: int = 0  # the data's own seed: train.seed varies runs, not the data
    image_size: int = 512
    # Resize by the shorter side (min_size; the longer at most max_size) on
    # the image_size canvas instead of fitting image_size: the source's rule
    # for published COCO weights (torchvision: 800, 1333), set by --mode=convert.
    min_size: int | None = None
    max_size: int | None = None
    batch_size: int = 16
    max_boxes: int = 100
    skip_invalid: bool = False
    horizontal_flip: bool = True
    scale_jitter: tuple[float, float] | None = None
    # grpc://HOST:PORT of a tf.data service dispatcher: training images are
    # decoded and augmented on its workers (docs/SCALING.md); None: locally.
    data_service: str | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and run settings.

    ``schedule="step"`` (default) is the paper's: linear warm-up over
    ``warmup_steps``, then the learning rate divided by 10 at
    ``decay_fractions`` of the total
    steps (2/3 and 8/9: 60k and 80k of 90k).
    """

    epochs: int = 12
    steps_per_epoch: int | None = None
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    warmup_factor: float = 1.0 / 3.0
    decay_fractions: tuple[float, ...] = (2.0 / 3.0, 8.0 / 9.0)
    schedule: str = "step"  # "step" (the paper's) or "cosine" (same warm-up, cosine to 0; ignores decay_fractions)
    clipnorm: float | None = None
    optimizer: str = "sgd"
    strategy: str = "auto"
    mixed_precision: str = "none"
    jit_compile: bool = False
    seed: int = 0
    # Fine-tuning: a published name (kr.pretrained.CHECKPOINTS), a .pth or a .keras file.
    init_weights: str | None = None
    eval_every_epochs: int = 1
    tensorboard: bool = True
    # Linear scaling (Goyal et al. 2017, detectron2's REFERENCE_WORLD_SIZE):
    # learning_rate and warmup_steps are for this global batch; at batch B the
    # run uses learning_rate * B / ref and warmup_steps * ref / B. None: as given.
    reference_batch_size: int | None = None


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: model, data, training, and where results go."""

    name: str = "experiment"
    model_dir: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def resolved_model_dir(self) -> str:
        return self.model_dir or f"runs/{self.name}"


_CHOICES = {
    ("train", "strategy"): ("auto", "one_device", "mirrored", "multi_worker", "tpu"),
    ("train", "mixed_precision"): ("none", "float16", "bfloat16"),
    ("train", "optimizer"): ("sgd", "adam", "adamw"),
    ("train", "schedule"): ("step", "cosine"),
    ("model", "box_loss"): ("smooth_l1", "huber", "l1"),
    ("model", "p6_from"): ("c5", "p5"),
}


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Checks field values; returns ``config`` or raises ``ValueError`` naming the field."""
    for (section, name), choices in _CHOICES.items():
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise ValueError(f"{section}.{name} must be one of {choices}, got {value!r}.")
    data, train = config.data, config.train
    if not (data.dataset in ("shapes", "coco_json", "yolo") or data.dataset.startswith("tfds:")):
        raise ValueError(
            f"data.dataset must be 'shapes', 'coco_json', 'yolo' or 'tfds:<name>', got {data.dataset!r}."
        )
    if data.dataset == "yolo" and not data.data_yaml:
        raise ValueError("data.dataset='yolo' needs data.data_yaml (flag --data_yaml): the data.yaml of the export.")
    if data.dataset == "coco_json":
        missing = [
            name
            for name in ("train_annotations", "train_images", "val_annotations", "val_images")
            if getattr(data, name) is None
        ]
        if missing:
            raise ValueError(
                f"data.dataset='coco_json' needs {', '.join('data.' + m for m in missing)} "
                "(flags --train_annotations, --train_images, --val_annotations, --val_images)."
            )
    for section, name in (("data", "image_size"), ("data", "batch_size"), ("train", "epochs")):
        if getattr(getattr(config, section), name) <= 0:
            raise ValueError(f"{section}.{name} must be > 0, got {getattr(getattr(config, section), name)!r}.")
    if (data.min_size is None) != (data.max_size is None) or (
        data.min_size is not None and not 0 < data.min_size <= data.max_size <= data.image_size
    ):
        raise ValueError(
            "data.min_size and data.max_size go together, with 0 < min_size <= max_size <= data.image_size (the "
            f"canvas), got min_size={data.min_size!r}, max_size={data.max_size!r}, image_size={data.image_size!r}."
        )
    if data.data_service is not None and not str(data.data_service).startswith("grpc://"):
        raise ValueError(f"data.data_service must be grpc://HOST:PORT (a tf.data service dispatcher), got {data.data_service!r}.")
    if data.data_service is not None and data.skip_invalid:
        raise ValueError(
            "data.data_service cannot be used with data.skip_invalid=True: skipping counts in Python "
            "(tf.py_function), which a tf.data service worker cannot run."
        )
    if train.reference_batch_size is not None and train.reference_batch_size <= 0:
        raise ValueError(f"train.reference_batch_size must be > 0 or null, got {train.reference_batch_size!r}.")
    if train.learning_rate <= 0:
        raise ValueError(f"train.learning_rate must be > 0, got {train.learning_rate!r}.")
    if any(not 0 < f < 1 for f in train.decay_fractions):
        raise ValueError(f"train.decay_fractions must lie in (0, 1), got {train.decay_fractions!r}.")
    return config


def override(config: ExperimentConfig, assignments: typing.Iterable[str]) -> ExperimentConfig:
    """Applies ``"section.field=value"`` strings (``"field=value"`` if unambiguous).

    Nested sections take the whole path (``model.anchors.size_multiplier=2``).
    Values are parsed as JSON when they parse (numbers, ``true``, ``null``,
    lists), else as a tuple when written ``(a,b,...)``, else taken as
    strings, then converted to the field's type.

    Example:
        >>> config = override(ExperimentConfig(), ["train.learning_rate=0.02", "backbone=tiny",
        ...                                        "model.anchors.aspect_ratios=(0.25,0.5,1.0,2.0)"])
        >>> config.model.backbone, config.model.anchors.aspect_ratios
        ('tiny', (0.25, 0.5, 1.0, 2.0))
    """
    for assignment in assignments:
        if "=" not in assignment:
            raise ValueError(f"--override expects field=value, got {assignment!r}.")
        key, raw = assignment.split("=", 1)
        path = _locate(config, key.strip())
        config = _replace_path(config, path, _parse(raw))
    return config


def _replace_path(obj, path: tuple[str, ...], raw_value, where: str = ""):
    """``obj`` (a dataclass) with the field at ``path`` set to ``raw_value`` converted to its type."""
    name, rest = path[0], path[1:]
    where = f"{where}.{name}" if where else name
    if rest:
        return dataclasses.replace(obj, **{name: _replace_path(getattr(obj, name), rest, raw_value, where)})
    return dataclasses.replace(obj, **{name: _convert(_field_type(type(obj), name), raw_value, where)})


def replace(config: ExperimentConfig, section: str, **changes) -> ExperimentConfig:
    """Returns ``config`` with ``changes`` applied to one section; ``None`` values are ignored."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return config
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **changes)})


def to_dict(config: ExperimentConfig) -> dict:
    return dataclasses.asdict(config)


def from_dict(values: dict) -> ExperimentConfig:
    """Inverse of :func:`to_dict` (reads a written ``config.json``)."""
    sections = {}
    for section in ("model", "data", "train"):
        cls = _field_type(ExperimentConfig, section)
        items = values.get(section, {})
        sections[section] = cls(
            **{k: _convert(_field_type(cls, k), v, f"{section}.{k}") for k, v in items.items()}
        )
    top = {k: v for k, v in values.items() if k not in sections}
    return ExperimentConfig(**top, **sections)


def write_json(config: ExperimentConfig, path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(config), f, indent=2, sort_keys=True)


def _locate(config: ExperimentConfig, key: str) -> tuple[str, ...]:
    """The path of fields that ``key`` names (``"model.anchors.scales"`` or an unambiguous ``"scales"``-style name)."""
    sections = ("model", "data", "train")
    if "." in key:
        path = tuple(key.split("."))
        obj = config
        for i, name in enumerate(path):
            fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else set()
            if name not in fields or (i == 0 and name not in sections):
                raise ValueError(f"--override: unknown field {key!r}.")
            obj = getattr(obj, name)
        if dataclasses.is_dataclass(obj):
            raise ValueError(f"--override: {key!r} is a section; name one of its fields ({key}.<field>).")
        return path
    owners = [s for s in sections if key in {f.name for f in dataclasses.fields(getattr(config, s))}]
    if len(owners) != 1:
        raise ValueError(
            f"--override: field {key!r} is "
            + ("unknown" if not owners else f"ambiguous ({', '.join(o + '.' + key for o in owners)})")
            + "."
        )
    return owners[0], key


def _field_type(cls, name: str):
    return typing.get_type_hints(cls)[name]


def _parse(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        text = raw.strip()
        if text.startswith("(") and text.endswith(")"):  # a Python-style tuple: (0.25,0.5,1.0)
            try:
                return json.loads("[" + text[1:-1].rstrip(",") + "]")
            except json.JSONDecodeError:
                pass
        return raw


def _convert(annotation, value, where: str):
    """Converts a parsed value to a dataclass field's type (int, float, bool, str, tuple, Optional)."""
    if value is None:
        if type(None) in typing.get_args(annotation):
            return None
        raise ValueError(f"{where} cannot be null.")
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # Optional[X] and X | None
        return _convert(args[0], value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} expects a list like [1, 2], got {value!r}.")
        inner = args[0] if args else float
        return tuple(_convert(inner, v, where) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where} expects true or false, got {value!r}.")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where} expects an integer, got {value!r}.")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where} expects a number, got {value!r}.")
    if annotation is str:
        return str(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where} expects a section (a JSON object), got {value!r}.")
        unknown = set(value) - {f.name for f in dataclasses.fields(annotation)}
        if unknown:
            raise ValueError(f"{where} has no field(s) {sorted(unknown)}.")
        return annotation(**{k: _convert(_field_type(annotation, k), v, f"{where}.{k}") for k, v in value.items()})
    return value
