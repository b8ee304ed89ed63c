"""Recipes: the named configs a user picks with ``main.py --experiment=<name>``, one module each.

Each module has a ``config()`` returning an :class:`~keras_retina.config.ExperimentConfig`:
``shapes`` (the CPU demo, the default on the built-in data), ``finetune_coco``
(your own data fine-tuned from COCO weights, the default on any other data),
``cpu_small`` (the demo's small network for any data on a CPU),
``coco_r50_1x`` (the paper's COCO recipe), ``voc_r50`` (Pascal VOC). **A new recipe** is a new file here with
a ``config()`` function. ``--experiment`` also takes the dotted name of a
module outside the package that has one (``--experiment=experiments.paper_dense``,
the paper study's, from a checkout), so research configs need not ship in it.
"""

import importlib
import pkgutil

from keras_retina.config import ExperimentConfig


def load(name: str) -> ExperimentConfig:
    """Returns the ``config()`` of recipe ``name`` (``keras_retina/recipes/<name>.py``), or of module ``name`` if dotted.

    Example:
        >>> load("shapes").model.backbone
        'tiny'
    """
    module_name = name if "." in name else f"{__name__}.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if not module_name.startswith(error.name or "\0"):
            raise  # the module exists but something it imports does not
        where = f"module {name}" if "." in name else f"file keras_retina/recipes/{name}.py"
        raise ValueError(f"--experiment={name!r}: no {where} (known: {', '.join(names())}).") from None
    if not callable(getattr(module, "config", None)):
        raise ValueError(f"--experiment={name!r}: {module.__file__} has no config() function.")
    return module.config()


def default_for(dataset: str | None) -> str:
    """The recipe a run gets without ``--experiment``: the demo on ``shapes``, fine-tuning from COCO on other data.

    Example:
        >>> default_for(None), default_for("shapes"), default_for("yolo")
        ('shapes', 'shapes', 'finetune_coco')
    """
    return "shapes" if dataset in (None, "shapes") else "finetune_coco"


def names() -> tuple[str, ...]:
    """The recipes that :func:`load` knows by a plain name, sorted.

    Example:
        >>> "shapes" in names()
        True
    """
    found = (info.name for info in pkgutil.iter_modules(__path__))
    return tuple(sorted(name for name in found if importlib.import_module(f"{__name__}.{name}").__dict__.get("config")))
