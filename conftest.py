"""Set-up for the tests and the docstring examples (``pytest --doctest-modules keras_retina``).

Quiet TF logs; two logical CPU devices for MirroredStrategy tests; the names
every docstring example may use without importing them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

# Must run before TensorFlow initialises its devices: tests that need two
# replicas (tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])) rely on it.
_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import keras_retina as kr  # noqa: E402

# Scripts the tests run as child processes. --doctest-modules imports every
# file: importing the torchvision one would load torch next to TensorFlow
# (a crash), the multi-worker one would start a MultiWorkerMirroredStrategy
# in the test process, train, and write an .npz named after pytest's first
# argument.
# The script that wrote tests/data/saved_by_0_1_0.keras ran at 0.1.0 and imports that version's
# module paths.
collect_ignore = ["tests/torchvision_reference.py", "tests/multi_worker_script.py", "tests/data/make_saved_by_0_1_0.py"]


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
    doctest_namespace.update(np=np, tf=tf, keras=keras, ops=ops, kr=kr)
