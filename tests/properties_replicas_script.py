"""The loss of fixed batches on R replicas (``python tests/properties_replicas_script.py R``), printed as JSON.

Run by tests/test_properties_losses.py once per R in (1, 2, 4): a process
holds one MirroredStrategy (a second one's collectives clash), and four
logical CPUs must be made before TensorFlow starts. Each batch of 4 images
is split evenly over the replicas; the printed loss is the sum of the
replicas' shares, what ``tf.distribute`` all-reduces in ``fit``.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import tensorflow as tf

import keras_retina as kr

IMAGE, NUM_CLASSES, BATCH = 64, 3, 4


def batches():
    """Seeded batches with positives in only some images, padding, zero-size and outside boxes."""
    num_anchors = len(kr.AnchorGenerator()((IMAGE, IMAGE)))
    out = []
    for seed, kind in enumerate(("mixed", "one_image", "padding", "zero", "outside", "mixed", "one_image")):
        rng = np.random.default_rng(seed)
        n = 3
        xy = rng.uniform(0, IMAGE - 20, (BATCH, n, 2))
        wh = rng.uniform(8, 40, (BATCH, n, 2))
        classes = rng.integers(0, NUM_CLASSES, (BATCH, n))
        if kind == "one_image":  # every positive on one replica: a local normaliser would be wrong elsewhere
            classes[1:] = -1
        elif kind == "padding":
            classes[:] = -1
        elif kind == "zero":
            wh[:, 0, 0] = 0.0
        elif kind == "outside":
            xy[:, 0] += 500.0
        boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
        y = {"boxes": boxes, "classes": classes.astype(np.int32)}
        y_pred = {"cls_logits": rng.normal(0, 3, (BATCH, num_anchors, NUM_CLASSES)).astype(np.float32),
                  "box_deltas": rng.normal(0, 1, (BATCH, num_anchors, 4)).astype(np.float32)}
        out.append((kind, y, y_pred))
    return out


def main(replicas: int) -> None:
    devices = [d.name for d in tf.config.list_logical_devices("CPU")[:replicas]]
    strategy = tf.distribute.MirroredStrategy(devices) if replicas > 1 else tf.distribute.OneDeviceStrategy(devices[0])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = kr.RetinaNet(num_classes=NUM_CLASSES, backbone="tiny", fpn_channels=16, head_channels=16,
                             num_head_convs=1)
        model.compile(optimizer="sgd")
    x = np.zeros((BATCH, IMAGE, IMAGE, 3), np.float32)
    results = []
    for kind, y, y_pred in batches():
        def shard(value):
            return strategy.experimental_distribute_values_from_function(
                lambda context: tf.nest.map_structure(
                    lambda v: np.split(np.asarray(v), replicas)[context.replica_id_in_sync_group], value))

        per_replica = strategy.run(model.compute_loss, args=(shard(x), shard(y), shard(y_pred)))
        loss = float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))
        positives = int(model.label_anchors((IMAGE, IMAGE), y)["foreground"].numpy().sum())
        results.append({"kind": kind, "loss": loss, "positives": positives})
    print(json.dumps(results))


if __name__ == "__main__":
    # Before TensorFlow starts (nothing above runs an op); not on import, where it would clash with
    # the two logical CPUs of the test process (conftest.py).
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 4
    )
    main(int(sys.argv[1]))
