"""Small shared fixtures for model tests: a CPU-sized RetinaNet, toy data, encoded images."""

import functools
import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_retina as kr

SMALL_MODEL_KWARGS = dict(num_classes=3, backbone="tiny", fpn_channels=32, head_channels=32, num_head_convs=2)


def small_model(**overrides):
    """A RetinaNet small enough to train in seconds on a CPU."""
    return kr.RetinaNet(**{**SMALL_MODEL_KWARGS, **overrides})


def toy_batch(size=128, seed=0):
    """Two images with coloured rectangles and their boxes (second image has one padding row).

    Returns:
        images float32 (2, size, size, 3) in [0, 255]; y = {"boxes": (2, 2, 4), "classes": (2, 2)}.
    """
    rng = np.random.RandomState(seed)
    images = (rng.rand(2, size, size, 3) * 60).astype("float32")
    boxes = np.array([[[20, 30, 70, 90], [80, 10, 120, 50]], [[40, 40, 100, 80], [0, 0, 0, 0]]], "float32")
    classes = np.array([[0, 2], [1, -1]], "int32")
    for b in range(2):
        for (x1, y1, x2, y2), c in zip(boxes[b], classes[b]):
            if c >= 0:
                images[b, int(y1) : int(y2), int(x1) : int(x2), c] = 255
    return images, {"boxes": boxes, "classes": classes}


def assert_keras_round_trip(obj, inputs, directory, targets=None):
    """Saves ``obj`` in a ``.keras`` file, loads it, and checks config and outputs are unchanged.

    ``obj`` is a registered keras_retina Model, Layer or Loss:
    * a Model is saved as it is and called on ``inputs``;
    * a Layer is wrapped in a functional model over ``inputs``' shapes;
    * a Loss is the compiled loss of an identity model, called on ``(targets, inputs)``.

    Returns the restored object (the loaded model, its layer, or its loss).
    """
    path = os.path.join(str(directory), f"{type(obj).__name__}.keras")
    if isinstance(obj, keras.losses.Loss):
        model = keras.Sequential([keras.Input(np.shape(inputs)[1:]), keras.layers.Identity()])
        model.compile(optimizer="sgd", loss=obj)
        want = obj(targets, inputs)
        model.save(path)
        restored = keras.saving.load_model(path).loss
        got = restored(targets, inputs)
    elif isinstance(obj, keras.Model):
        want = obj(inputs)
        obj.save(path)
        restored = keras.saving.load_model(path)
        got = restored(inputs)
    else:
        symbolic = keras.tree.map_structure(lambda x: keras.Input(np.shape(x)[1:], batch_size=np.shape(x)[0]), inputs)
        model = keras.Model(symbolic, obj(symbolic))
        want = model(inputs)
        model.save(path)
        loaded = keras.saving.load_model(path)
        restored = loaded.get_layer(obj.name)
        got = loaded(inputs)
    assert type(restored) is type(obj), (type(restored), type(obj))
    assert restored.get_config() == obj.get_config()
    keras.tree.map_structure(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0), want, got)
    return restored


def skip_if_onednn_cap_hides_bf16(policy: str = "mixed_bfloat16") -> None:
    """Skips a bfloat16 test when ``ONEDNN_MAX_CPU_ISA`` caps oneDNN below its bf16 kernels.

    The cap (used as a stand-in for AVX2-only machines) leaves the CPU's
    bf16 support visible to TensorFlow, which still sends bf16 convolutions
    to oneDNN, where the capped library has no kernel for them ("could not
    create a primitive descriptor"). A CPU that really lacks bf16 is not
    affected: TensorFlow does not route bf16 to oneDNN there.
    """
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if "bfloat16" in policy and cap and cap not in ("ALL", "DEFAULT") and "BF16" not in cap and "AMX" not in cap:
        pytest.skip(f"ONEDNN_MAX_CPU_ISA={cap} hides oneDNN's bf16 convolutions that TensorFlow still calls")


@functools.lru_cache(maxsize=None)
def two_replica_strategy():
    """The process's one MirroredStrategy over the two logical CPUs (../conftest.py), and a OneDeviceStrategy.

    Every test that needs two replicas takes this one: a second
    MirroredStrategy in the same process reuses collective instance keys, and
    its collectives then meet the first one's ("Shape mismatch in the
    collective instance 100").
    """
    import tensorflow as tf

    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest.py should create two logical CPUs"
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]]), tf.distribute.OneDeviceStrategy(devices[0].name)


def encode_jpeg(image, quality=95) -> bytes:
    """JPEG bytes of a uint8 ``(H, W, 3)`` image (TensorFlow's encoder)."""
    return tf.io.encode_jpeg(image, quality=quality).numpy()


def encode_png(image) -> bytes:
    """PNG bytes of a uint8 ``(H, W, C)`` image (TensorFlow's encoder)."""
    return tf.io.encode_png(image).numpy()


def pil_bytes(image, fmt, **options) -> bytes:
    """``image`` encoded by Pillow as ``fmt`` ("GIF", "BMP", "WEBP", ...), with its save options."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def untrained_shapes_run(tmp_path, shapes_image_size=64, image_size=64, num_val=4):
    """A run directory holding an untrained 5-class ``small_model`` on a few shapes images; returns its config.

    For tests of the evaluate and predict modes, which need a run directory but no trained model.
    """
    import dataclasses  # noqa: PLC0415

    from keras_retina import recipes  # noqa: PLC0415
    from keras_retina.config import override  # noqa: PLC0415
    from keras_retina.training import rundir  # noqa: PLC0415

    config = override(
        recipes.load("shapes"),
        [f"data.shapes_dir={tmp_path / 'shapes'}", "shapes_num_train=1", f"shapes_num_val={num_val}",
         f"shapes_image_size={shapes_image_size}", f"image_size={image_size}", "batch_size=2", "tensorboard=false"],
    )
    run = tmp_path / "run"
    config = dataclasses.replace(config, model_dir=str(run))
    (run / "checkpoints").mkdir(parents=True)
    model = small_model(num_classes=5, score_threshold=0.0)
    model.build((None, image_size, image_size, 3))
    model.save(str(run / rundir.LATEST_CHECKPOINT))
    rundir.write_config(str(run), config)
    rundir.write_classes(str(run), [f"c{i}" for i in range(5)], list(range(1, 6)))
    return config
