"""keras_retina.compat: the Keras internals we rely on still exist and behave, in the tested Keras range."""

import os
import re

import keras
import tensorflow as tf

from keras_retina import compat

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "keras_retina")


def test_installed_keras_is_in_the_tested_range():
    low, high = compat.TESTED_KERAS_VERSIONS
    assert compat.keras_version_tested(), (
        f"Keras {keras.__version__} is outside the range keras_retina was tested with "
        f"(>= {low}, < {high}): read keras_retina/compat.py, check each workaround against this "
        "Keras, then update TESTED_KERAS_VERSIONS and setup.cfg."
    )


def test_version_range_edges():
    assert compat.keras_version_tested("3.15.0") and compat.keras_version_tested("3.15.9rc1")
    assert not compat.keras_version_tested("3.14.2") and not compat.keras_version_tested("3.16.0")


def test_functional_graph_nodes():
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3)
    norm = keras.layers.BatchNormalization()
    keras.Model(inputs, norm(conv(inputs)))
    assert len(compat.inbound_nodes(norm)) == 1
    assert compat.inbound_nodes(norm)[0].parent_nodes[0].operation is conv
    assert len(compat.outbound_nodes(conv)) == 1


def test_built_input_shape_of_a_subclassed_model():
    from helpers import small_model

    model = small_model()
    assert compat.built_input_shape(model) is None
    model.build((None, 64, 64, 3))
    assert compat.built_input_shape(model) == (None, 64, 64, 3)


def test_model_strategy_and_additional_loss():
    from helpers import two_replica_strategy

    strategy, _ = two_replica_strategy()  # the process's one MirroredStrategy
    with strategy.scope():
        model = keras.Sequential([keras.layers.Dense(1)])
    assert compat.model_strategy(model) is strategy
    # Keras divides an extra loss by the replicas, so that their all-reduced sum is the loss once.
    assert float(strategy.run(lambda: compat.additional_loss(model, tf.constant(2.0))).values[0]) == 1.0


def _private_keras_names() -> set[str]:
    """Private attributes of the Keras objects keras_retina subclasses or inspects."""
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(inputs))
    backup = keras.callbacks.BackupAndRestore(os.path.join(PACKAGE, "..", ".never-written"))
    objects = (dense, model, backup, keras.optimizers.SGD(), keras.losses.MeanSquaredError())
    names = set()
    for obj in objects:
        names |= {n for n in dir(obj) if n.startswith("_") and not n.startswith("__")}
        names |= {n for n in vars(obj) if n.startswith("_") and not n.startswith("__")}
    return names


def test_no_private_keras_attribute_outside_compat():
    private = _private_keras_names()
    assert {"_inbound_nodes", "_maybe_symbolic_build", "_save_model", "_build_shapes_dict"} <= private
    offenders = []
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or path.endswith("compat.py"):
                continue
            with open(path) as f:
                lines = f.read().splitlines()
            # Attributes a file assigns itself (self._lock = ...) are its own.
            own = {m for line in lines for m in re.findall(r"self\.(_[a-z]\w*)\s*=[^=]", line)}
            for number, line in enumerate(lines, 1):
                code = line.split("#", 1)[0]
                # Reads of another object's private Keras attribute, or overrides of one.
                used = set(re.findall(r"\.(_[a-z]\w*)", code))
                used |= set(re.findall(r"def (_[a-z]\w*)\(self", code))
                for attr in sorted((used - own) & private):
                    offenders.append(f"{os.path.relpath(path, PACKAGE)}:{number}: {attr}")
    assert not offenders, "private Keras attributes outside keras_retina/compat.py:\n" + "\n".join(offenders)
