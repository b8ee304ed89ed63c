"""One worker of tests/test_multi_worker.py: trains two steps under MultiWorkerMirroredStrategy.

Usage: python multi_worker_script.py OUTPUT.npz  (TF_CONFIG set by the caller)
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf  # noqa: E402

strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TF op

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import small_model, toy_batch  # noqa: E402

keras.utils.set_random_seed(1)
images, y = toy_batch()
images = np.concatenate([images, images[::-1]])
y = {key: np.concatenate([value, value[::-1]]) for key, value in y.items()}
dataset = tf.data.Dataset.from_tensor_slices((images, y)).batch(4).repeat()
with strategy.scope():
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
history = model.fit(dataset, epochs=1, steps_per_epoch=2, verbose=0).history
np.savez(sys.argv[1], *model.get_weights(), loss=np.array(history["loss"]))
print("worker done", strategy.num_replicas_in_sync)
