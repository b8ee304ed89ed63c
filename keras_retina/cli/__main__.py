"""``python -m keras_retina.cli``: the same program as ``python main.py`` and the ``keras-retina`` command."""

from keras_retina.cli import run

run()
