"""Scale-out on two logical CPUs (conftest.py): synchronised BatchNorm, evaluation on every replica, tf.data service."""


import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_retina as kr
from keras_retina import evaluation
from keras_retina.data import make_pipeline


def _two_replicas():
    from helpers import two_replica_strategy

    return two_replica_strategy()


# ------------------------------------------------------------ synchronised BatchNorm
def _one_step_with_trainable_batchnorm(strategy, sync_batchnorm=None):
    """Trainable weights before and after one SGD step of a ResNet-50 RetinaNet from scratch (BatchNorm trains).

    In float64 (the global dtype policy, put back afterwards): in float32 this
    network's step is only reproducible to about 2 % (see the test).
    """
    from helpers import toy_batch

    _, y = toy_batch(size=64)
    y["boxes"] = np.minimum(y["boxes"], 63.0)
    # 4 images: 2 per replica with different statistics.
    images = np.random.RandomState(1).uniform(0, 255, (4, 64, 64, 3))
    images *= np.array([1.0, 1.0, 0.6, 0.6])[:, None, None, None]
    y = {key: np.concatenate([value, value[::-1]]) for key, value in y.items()}
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        keras.utils.set_random_seed(3)
        with strategy.scope():
            model = kr.RetinaNet(
                num_classes=3, backbone="resnet50", fpn_channels=16, head_channels=16, num_head_convs=1,
                sync_batchnorm=sync_batchnorm,
            )
            model.build((None, 64, 64, 3))
            model.compile(optimizer=keras.optimizers.SGD(0.1))
        assert all(v.dtype == "float64" for v in model.trainable_weights)
        before = [v.numpy().copy() for v in model.trainable_weights]
        dataset = tf.data.Dataset.from_tensor_slices((images, y)).batch(4)
        model.fit(dataset, epochs=1, verbose=0)
    finally:
        keras.config.set_dtype_policy(policy)
    return model, before, [v.numpy() for v in model.trainable_weights]


def _relative(weights, reference, step):
    """||weights - reference|| / ||step||, all trainable weights flattened (float64)."""
    flat = lambda ws: np.concatenate([np.ravel(w) for w in ws]).astype(np.float64)  # noqa: E731
    return np.linalg.norm(flat(weights) - flat(reference)) / np.linalg.norm(step)


@pytest.mark.slow
def test_two_replicas_with_trainable_batchnorm_take_one_devices_step_only_when_synchronised():
    """Sync BatchNorm: 2 replicas x 2 images take the 4-image step of one device (within 1e-3 of the step).

    Per-replica statistics do not. Both sides run in float64 (Keras'
    BatchNorm keeps it: it computes in result_type(inputs, float32)): in
    float32 this from-scratch ResNet-50 amplifies rounding ~1e5-fold, so its
    step is only defined to ~2 % whatever the replicas do. Measured on one
    device alone (2-core AMD EPYC, cpu family 26, avx512f, 2.6 GHz, shared
    with other jobs), float32: feeding the same 4 images in another
    order (2, 3, 0, 1: the same step in exact arithmetic) moves the step by
    1.2 % (tf.nn.moments) and 2.0 % (synchronised BatchNorm's E[x^2] - E[x]^2);
    one formula against the other, 2.1 %; 2 synchronised replicas then differ
    from one device by 1.1 % (1.9 % against the same formula), per-replica
    statistics by 215 %. Float64, same runs: reordering 1.4e-13 and 2.0e-13,
    formulas 1.7e-13, 2 synchronised replicas 1.4e-13 (1.8e-13), per-replica
    252 %. In float32 the difference is spread evenly over every layer's
    weights, nearly orthogonal to the step, with the losses 1e-6 apart:
    rounding, not the synchronisation; in float64 the all-reduce gives the
    whole batch's step to 1e-13.
    """
    mirrored, single = _two_replicas()
    model, before, w_single = _one_step_with_trainable_batchnorm(single)
    bn = [l for l in model.backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bn and all(l.trainable for l in bn) and not any(l.synchronized for l in bn)  # one device: auto = off
    step = np.concatenate([np.ravel(a - b) for a, b in zip(w_single, before)])
    assert np.linalg.norm(step) > 1e-3
    synced, _, w_synced = _one_step_with_trainable_batchnorm(mirrored)  # auto: on (2 replicas)
    assert all(l.synchronized for l in synced.backbone.layers if isinstance(l, keras.layers.BatchNormalization))
    per_replica, _, w_per_replica = _one_step_with_trainable_batchnorm(mirrored, sync_batchnorm=False)
    assert not any(l.synchronized for l in per_replica.backbone.layers if isinstance(l, keras.layers.BatchNormalization))
    synced_error = _relative(w_synced, w_single, step)
    per_replica_error = _relative(w_per_replica, w_single, step)
    print(f"synchronised {synced_error:.2e}, per-replica {per_replica_error:.2e} of the step")
    assert synced_error < 1e-3
    assert per_replica_error > 0.5  # without synchronisation the step differs


def test_frozen_batchnorm_is_never_synchronised_and_round_trips(tmp_path):
    mirrored, _ = _two_replicas()
    with mirrored.scope():
        frozen = kr.RetinaNet(num_classes=3, backbone="resnet50", backbone_weights=None, freeze_batchnorm=True,
                              fpn_channels=16, head_channels=16, num_head_convs=1)
    assert not any(l.synchronized for l in frozen.backbone.layers if isinstance(l, keras.layers.BatchNormalization))
    # True forces it on one device too (the replicas' E[x^2] - E[x]^2 arithmetic), frozen BatchNorm still not.
    forced = kr.RetinaNet(num_classes=3, backbone="resnet50", backbone_weights=None, freeze_at=2,
                          sync_batchnorm=True, fpn_channels=16, head_channels=16, num_head_convs=1)
    bn = [l for l in forced.backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert {l.synchronized for l in bn if l.trainable} == {True}
    assert {l.synchronized for l in bn if not l.trainable} == {False}
    assert kr.RetinaNet.from_config(forced.get_config()).sync_batchnorm is True
    off = kr.RetinaNet(num_classes=3, backbone="tiny", sync_batchnorm=False)
    assert off.get_config()["sync_batchnorm"] is False
    assert kr.RetinaNet.from_config(off.get_config()).sync_batchnorm is False


# --------------------------------------------------------- evaluation on every replica
def test_evaluation_on_two_replicas_gives_one_devices_detections_and_ap(tmp_path):
    from keras_retina.config import DataConfig
    from keras_retina.data import make_shapes_splits
    from keras_retina.data.run_data import RunData

    mirrored, single = _two_replicas()
    # 5 validation images at a global batch of 2: the last step leaves one replica without an image.
    config = DataConfig(shapes_dir=str(tmp_path), shapes_num_train=2, shapes_num_val=5, shapes_image_size=64,
                        image_size=64, batch_size=2)
    make_shapes_splits(config.shapes_dir, 2, 5, image_size=(64, 64), verbose=False)
    data = RunData(config)
    keras.utils.set_random_seed(0)
    with mirrored.scope():
        model = kr.RetinaNet(num_classes=5, backbone="tiny", fpn_channels=16, head_channels=16, num_head_convs=1,
                             score_threshold=0.0, max_detections=20)
        model.build((None, 64, 64, 3))
    # Boxes of the ground truth as some detections, so that the AP is not 0.
    one_device = evaluation.evaluate_model(model, data.pipeline("val"), data.coco_gt, data.category_ids, verbose=False)
    results_one, ids_one = evaluation.predict_to_coco(model, data.pipeline("val"), data.category_ids, verbose=False)
    results_two, ids_two = evaluation.predict_to_coco(
        model, data.distributed_pipeline("val", mirrored), data.category_ids, verbose=False
    )
    assert sorted(ids_two) == sorted(ids_one) == [1, 2, 3, 4, 5]
    key = lambda r: (r["image_id"], -r["score"], r["category_id"], r["bbox"])  # noqa: E731
    assert len(results_one) == 5 * 20
    assert sorted(results_two, key=key) == sorted(results_one, key=key)
    two = evaluation.evaluate_model(
        model, data.distributed_pipeline("val", mirrored), data.coco_gt, data.category_ids, verbose=False
    )
    assert {k: v for k, v in two.items() if k != "per_class_AP"} == {k: v for k, v in one_device.items() if k != "per_class_AP"}
    assert two["per_class_AP"] == one_device["per_class_AP"]


# ---------------------------------------------------------------- tf.data service
def test_data_service_training_pipeline_sees_every_image_once_per_epoch():
    service = tf.data.experimental.service
    dispatcher = service.DispatchServer(service.DispatcherConfig(port=0))
    address = dispatcher.target.split("://")[1]
    workers = [service.WorkerServer(service.WorkerConfig(dispatcher_address=address)) for _ in range(2)]
    num_images, batch_size = 24, 4

    def example(image_id):  # the image's colour is its id + 1, so a batch says which images it holds
        return {
            "image": tf.fill((20, 30, 3), tf.cast(image_id + 1, tf.uint8)),
            "boxes": tf.constant([[1.0, 1.0, 10.0, 10.0]]),
            "classes": tf.constant([0]),
            "image_id": image_id,
        }

    raw = tf.data.Dataset.range(num_images).shuffle(num_images, seed=0).map(example)

    def image_ids(pipeline, num_batches=None):
        ids = []
        for images, _ in pipeline.take(-1 if num_batches is None else num_batches):
            ids.extend(int(v) - 1 for v in images[:, 0, 0, 0].numpy())
        return ids

    def pipeline(raw, shuffle_buffer=256):
        return make_pipeline(raw, image_size=32, batch_size=batch_size, seed=0, scale_jitter=None,
                             shuffle_buffer=shuffle_buffer, data_service=dispatcher.target)

    # One pass through two service workers: every image exactly once.
    assert sorted(image_ids(pipeline(raw))) == list(range(num_images))
    # Training repeats: over 4 epochs' worth of batches each image comes about 4 times (an image a
    # worker still holds from one epoch may arrive after another's next epoch has begun), not 8 as
    # it would if each of the 2 workers processed every image (processing mode OFF). (Without the
    # 256-image shuffle buffer, which mixes 10 epochs of 24 images, locally as on the service.)
    repeated = pipeline(raw.repeat(), shuffle_buffer=0)
    counts = np.bincount(image_ids(repeated, 4 * num_images // batch_size), minlength=num_images)
    assert counts.sum() == 4 * num_images and counts.min() >= 3 and counts.max() <= 5, counts
    del workers
