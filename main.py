"""keras_retina command line; ``python main.py --help`` (the same as the ``keras-retina`` command).

The flags and the entry point live in :mod:`keras_retina.cli`; this file only
runs them, so that ``python main.py`` works from a checkout; it runs exactly as
``keras-retina`` and ``python -m keras_retina.cli`` do.
"""

from keras_retina import cli  # importing keras_retina sets TensorFlow's environment first, for every entry point

__doc__ = cli.__doc__  # absl prints the __main__ module's docstring as --help's usage

if __name__ == "__main__":
    cli.run()
