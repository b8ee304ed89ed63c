"""keras_retina command line; ``python main.py --help`` (the same as the ``keras-retina`` command).

The flags and the entry point live in :mod:`keras_retina.cli`; this file only
runs them, so that ``python main.py`` works from a checkout.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported

from keras_retina import cli  # noqa: E402

__doc__ = cli.__doc__  # absl prints the __main__ module's docstring as --help's usage

if __name__ == "__main__":
    cli.run()
