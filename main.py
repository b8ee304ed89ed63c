"""keras_retina command line; ``python main.py --help`` (the same as the ``keras-retina`` command).

The flags and the entry point live in :mod:`keras_retina.cli`; this file only
runs them, so that ``python main.py`` works from a checkout.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported
# TensorFlow turns its oneDNN kernels on by default only on CPUs with VNNI, BF16 or AMX; on an
# AVX2-only CPU its Eigen kernels cost 1.12x as much per train step (docs/BENCHMARKS.md, kernel paths).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from keras_retina import cli  # noqa: E402

__doc__ = cli.__doc__  # absl prints the __main__ module's docstring as --help's usage

if __name__ == "__main__":
    cli.run()
