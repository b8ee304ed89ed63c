"""Every use of a private Keras attribute, in one place.

keras_retina relies on a few Keras internals that have no public
equivalent. Each one lives here, with the Keras version it was written for
and what it works around, so that a Keras upgrade means reading one file.
``tests/test_compat.py`` exercises each of them and fails with a clear
message when the installed Keras is outside :data:`TESTED_KERAS_VERSIONS`.

Written for Keras 3.15.1 (TensorFlow 2.21.0).
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

#: The Keras versions these workarounds were written and tested for:
#: ``(lowest, first untested)``; setup.cfg pins the same range.
TESTED_KERAS_VERSIONS = ("3.15", "3.16")


def keras_version_tested(version: str = keras.__version__) -> bool:
    """Whether ``version`` lies in :data:`TESTED_KERAS_VERSIONS`.

    Example:
        >>> keras_version_tested("3.15.1"), keras_version_tested("3.16.0")
        (True, False)
    """
    def key(text: str) -> tuple[int, ...]:
        return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in text.split(".")[:3])

    low, high = TESTED_KERAS_VERSIONS
    return key(low) <= key(version) < key(high)


# ------------------------------------------------------------ functional graph
def inbound_nodes(layer: keras.layers.Layer) -> list:
    """The nodes where ``layer`` is called in a functional graph (Keras 3.15 ``_inbound_nodes``).

    No public API lists a layer's call sites; BatchNorm folding
    (:func:`keras_retina.model.backbones.fold_batchnorm`) needs them to find
    Conv2D → BatchNorm pairs.
    """
    return layer._inbound_nodes


def outbound_nodes(layer: keras.layers.Layer) -> list:
    """The nodes that consume ``layer``'s outputs (Keras 3.15 ``_outbound_nodes``)."""
    return layer._outbound_nodes


def built_input_shape(model: keras.Model) -> tuple | None:
    """The input shape a subclassed model was built with, or ``None`` (Keras 3.15 ``_build_shapes_dict``).

    Example:
        >>> model = keras.Sequential([keras.layers.Dense(2)])
        >>> model.build((None, 3)); built_input_shape(model)
        (None, 3)
    """
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    shape = next(iter(shapes.values()), None)
    return tuple(shape) if shape is not None else None


def built_image_size(model: keras.Model) -> int | None:
    """The square image size ``S`` a model was built at (inputs ``(B, S, S, C)``), or ``None``.

    ``None`` when the model is unbuilt, or was built at an unknown or
    non-square size (from :func:`built_input_shape`). The exports use it as
    their default input size.

    Example:
        >>> model = keras.Sequential([keras.layers.Conv2D(2, 1)])
        >>> built_image_size(model) is None
        True
        >>> model.build((None, 64, 64, 3)); built_image_size(model)
        64
    """
    input_shape = built_input_shape(model)
    if input_shape and input_shape[1] and input_shape[1] == input_shape[2]:
        return int(input_shape[1])
    return None


# ------------------------------------------------------------------- model.fit
def model_strategy(model: keras.Model):
    """The ``tf.distribute`` strategy ``model`` was created under (Keras 3.15 ``_distribute_strategy``)."""
    return getattr(model, "_distribute_strategy", None)


def additional_loss(model: keras.Model, value):
    """One ``add_loss``/regulariser term scaled as ``Model.compute_loss`` does (Keras 3.15).

    Keras divides each extra loss by the number of replicas in
    ``_aggregate_additional_loss``; an overridden ``compute_loss`` must do
    the same so that the all-reduced sum is the loss once.
    """
    return model._aggregate_additional_loss(value)


class MultiWorkerFitFixes:
    """Mixin for a ``keras.Model``: ``fit`` under MultiWorkerMirroredStrategy in Keras 3.15.

    Keras 3.15 breaks ``fit`` under MultiWorkerMirroredStrategy twice
    (keras-team/keras#20585):

    * ``train_step`` logs are averaged over workers with
      ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars:
      they are given shape ``(1,)`` here, and the reduce returns the mean.
    * metrics and optimizer are built from a first batch that Keras
      averages over replicas with ``strategy.reduce``, which fails on
      ``PerReplica`` values: one local replica's batch has the same shapes,
      which is all the symbolic build needs (overrides the private
      ``_maybe_symbolic_build``).

    Under any other strategy both methods are Keras' own.
    """

    def train_step(self, data):
        logs = super().train_step(data)
        if isinstance(model_strategy(self), tf.distribute.MultiWorkerMirroredStrategy):
            logs = {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = model_strategy(self)
        if strategy is None or iterator is None or not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = keras.tree.map_structure(
                lambda x: strategy.experimental_local_results(x)[0]
                if isinstance(x, tf.distribute.DistributedValues)
                else x,
                next(batches),
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)


# ------------------------------------------------------------------- callbacks
class AtomicBackupSave:
    """Mixin for ``keras.callbacks.BackupAndRestore``: each backup replaces the last one whole, which is kept.

    Keras 3.15's ``BackupAndRestore._save_model`` writes the weights file in
    place: a process killed mid-write (or a full disk) leaves an unreadable
    ``latest.weights.h5`` from which the run cannot resume. On a local disk
    the backup is written beside the old one (``incoming.weights.h5``, its
    epoch stored in the file as the ``keras_retina_epoch`` attribute), the
    old one renamed to ``latest.weights.h5.bkp`` (Keras' name for the
    previous backup) and the new one renamed into place (``os.replace`` is
    atomic); a failed write removes the partial file. Every state a kill
    can leave holds a readable backup whose epoch is known:
    :func:`keras_retina.training.rundir.check_backup` picks it before
    resuming. Remote paths (``gs://``…) keep Keras' own step. Uses the
    private ``_save_model``, ``_weights_path``, ``_prev_weights_path``,
    ``_training_metadata_path``, ``_current_epoch`` and ``_last_batch_seen``.
    """

    def _save_model(self):
        if "://" in self.backup_dir:
            return super()._save_model()
        import h5py  # noqa: PLC0415 (Keras' own dependency)

        os.makedirs(self.backup_dir, exist_ok=True)
        incoming_weights = os.path.join(self.backup_dir, "incoming.weights.h5")
        incoming_metadata = self._training_metadata_path + ".incoming"
        try:
            self.model.save_weights(incoming_weights, overwrite=True)
            with h5py.File(incoming_weights, "a") as f:
                f.attrs["keras_retina_epoch"] = int(self._current_epoch)
            with open(incoming_metadata, "w") as f:
                json.dump({"epoch": self._current_epoch, "batch": self._last_batch_seen}, f)
        except BaseException:
            for path in (incoming_weights, incoming_metadata):
                if os.path.exists(path):
                    os.remove(path)
            raise
        if os.path.exists(self._weights_path):
            os.replace(self._weights_path, self._prev_weights_path)
        os.replace(incoming_weights, self._weights_path)
        os.replace(incoming_metadata, self._training_metadata_path)


# ------------------------------------------------------------------ LiteRT
def quantize_except(calibrated_model: bytes, scope: str) -> bytes:
    """int8-quantizes a calibrated LiteRT model, leaving tensors whose name contains ``scope`` in float32.

    TensorFlow's selective quantization (``QuantizationDebugOptions(denylisted_nodes=...)``)
    keeps a denied op in float but still rounds its output to the int8 grid
    (a quantize/dequantize pair): decoded box coordinates and scores lose
    their precision. Dropping the calibration statistics of those tensors
    leaves them nothing to be quantized with. Written for TensorFlow 2.21:
    ``tensorflow.lite.tools.flatbuffer_utils`` (the model's tensors) and the
    private ``tensorflow.lite.python.convert.mlir_quantize`` (what
    ``QuantizationDebugger.get_nondebug_quantized_model`` calls).
    """
    from tensorflow.lite.python import convert  # noqa: PLC0415
    from tensorflow.lite.tools import flatbuffer_utils  # noqa: PLC0415

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated_model))
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
            if scope in name:
                tensor.quantization = None
    stripped = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return convert.mlir_quantize(stripped, disable_per_channel=False, fully_quantize=False)
