"""The ``keras-retina`` command (and ``python main.py``): train, evaluate, export, predict, analyze, convert.

    keras-retina                        # shapes demo: train, evaluate, export, draw
    keras-retina --dataset=coco_json --train_annotations=... --train_images=... \\
        --val_annotations=... --val_images=...
    keras-retina --experiment=coco_r50_1x --tfds_data_dir=/data/tfds
    keras-retina --mode=evaluate --model_dir=runs/shapes

Flags pick a recipe (``keras_retina/recipes/<name>.py``) and override its
fields (:mod:`keras_retina.cli.flags`); what each mode does lives in
:mod:`keras_retina.cli.modes`.
"""

from __future__ import annotations

import sys

from absl import app

from keras_retina.cli import flags as cli_flags
from keras_retina.cli import modes
from keras_retina.cli.flags import config_from_flags
from keras_retina.evaluation.preflight import PreflightError
from keras_retina.pretrained.published import WeightsUnavailableError

FLAGS = cli_flags.FLAGS


def main(argv) -> None:
    """absl entry point: flags -> config -> :func:`keras_retina.cli.modes.run`."""
    del argv
    strategy = None
    if FLAGS.strategy == "multi_worker":
        import tensorflow as tf  # noqa: PLC0415

        # Collective ops must be configured before any other TensorFlow op runs.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # The same line from main.py, keras-retina and python -m keras_retina.cli: what the run's times are measured on.
    print(f"keras_retina --mode={FLAGS.mode} on {modes.machine()['summary']}", flush=True)
    flag_values = {name: FLAGS[name].value for name in FLAGS}
    config = config_from_flags(flag_values)
    try:
        modes.run(FLAGS.mode, config, flag_values, strategy=strategy)
    except (WeightsUnavailableError, PreflightError) as error:
        # Situations the message fully explains, with the flags that fix them: no traceback.
        raise SystemExit(f"keras_retina: {error}") from None


def run() -> None:
    """The console script ``keras-retina``: parses ``sys.argv`` and runs :func:`main`."""
    entry = sys.modules["__main__"]
    if not entry.__doc__:  # absl prints the __main__ module's docstring as --help's usage
        entry.__doc__ = __doc__
    # --help lists the main program's flags: ours are defined here, not there.
    for flag in FLAGS.get_flags_for_module(cli_flags.__name__):
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main)


__all__ = ["config_from_flags", "main", "modes", "run"]


if __name__ == "__main__":
    run()
