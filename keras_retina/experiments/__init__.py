"""Experiments: one module per experiment, each with a ``config()`` returning an ExperimentConfig.

A new experiment is a new file here with a ``config()`` function; ``main.py
--experiment=<file name>`` (or ``keras-retina --experiment=...``) runs it.
"""

import importlib
import pkgutil

from keras_retina.config import ExperimentConfig


def load(name: str) -> ExperimentConfig:
    """Returns ``keras_retina/experiments/<name>.py``'s ``config()``.

    Example:
        >>> load("shapes").model.backbone
        'tiny'
    """
    try:
        module = importlib.import_module(f"keras_retina.experiments.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"keras_retina.experiments.{name}":
            raise
        raise ValueError(
            f"--experiment={name!r}: no file keras_retina/experiments/{name}.py (known: {', '.join(names())})."
        ) from None
    if not hasattr(module, "config"):
        raise ValueError(f"keras_retina/experiments/{name}.py has no config() function.")
    return module.config()


def names() -> tuple[str, ...]:
    """The experiments that :func:`load` knows, sorted.

    Example:
        >>> "shapes" in names()
        True
    """
    found = (info.name for info in pkgutil.iter_modules(__path__))
    return tuple(sorted(name for name in found if importlib.import_module(f"{__name__}.{name}").__dict__.get("config")))
