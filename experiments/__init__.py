"""Experiments: one module per experiment, each with a ``config()`` returning an ExperimentConfig."""

import importlib

from keras_retina.config import ExperimentConfig


def load(name: str) -> ExperimentConfig:
    """Returns ``experiments/<name>.py``'s ``config()``.

    Example:
        >>> load("shapes").model.backbone
        'tiny'
    """
    try:
        module = importlib.import_module(f"experiments.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"experiments.{name}":
            raise
        raise ValueError(f"--experiment={name!r}: no file experiments/{name}.py.") from None
    if not hasattr(module, "config"):
        raise ValueError(f"experiments/{name}.py has no config() function.")
    return module.config()
