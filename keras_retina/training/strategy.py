"""Where training runs: the ``tf.distribute`` strategy and the mixed-precision policy."""

from __future__ import annotations

import keras
import tensorflow as tf


def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """Returns the ``tf.distribute`` strategy called ``name``.

    ``auto``: MirroredStrategy over all visible GPUs when there are several,
    OneDeviceStrategy on the one GPU, and with no GPU TensorFlow's default
    strategy (no wrapping at all): on the CPU, ``fit`` under
    ``OneDeviceStrategy("/cpu:0")`` took 1.84 times as long a step
    (``benchmarks/bench_strategy.py``, ``docs/BENCHMARKS.md``). ``one_device``
    asks for OneDeviceStrategy anyway. ``multi_worker`` reads the cluster
    from ``TF_CONFIG`` and must be created before any other TensorFlow op
    runs. ``tpu`` resolves the local TPU.

    Example:
        >>> strategy = make_strategy("auto")
        >>> with strategy.scope(): model = kr.RetinaNet(num_classes=80)
        >>> strategy.num_replicas_in_sync
        1
    """
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy()
        return tf.distribute.OneDeviceStrategy(gpus[0].name) if gpus else tf.distribute.get_strategy()
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"strategy must be one of auto, one_device, mirrored, multi_worker, tpu; got {name!r}."
    )


def set_mixed_precision(name: str) -> None:
    """Sets Keras' global dtype policy: ``none``, ``float16`` or ``bfloat16``."""
    policies = {"none": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
    if name not in policies:
        raise ValueError(f"mixed_precision must be one of {sorted(policies)}, got {name!r}.")
    keras.config.set_dtype_policy(policies[name])
