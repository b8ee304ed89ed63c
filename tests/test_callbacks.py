"""Callbacks: NaN stop keeping the last good checkpoint, backups that survive a kill mid-save, COCO evaluation."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_retina.training import callbacks


def test_nan_loss_stops_training_and_keeps_last_good_checkpoint(tmp_path):
    from helpers import small_model, toy_batch

    images, y = toy_batch()
    # Epoch 1: two good batches. Epoch 2: a good batch, then one whose per-image
    # weights are NaN (a NaN image does not do: ReLU maps NaN to 0 on this CPU).
    weights = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [np.nan, np.nan]], "float32")
    # Repeated, so that each epoch continues the iterator (a finite dataset restarts).
    dataset = tf.data.Dataset.from_tensor_slices(weights).map(lambda w: (images, y, w)).repeat()
    model = small_model()
    model(images)  # BackupAndRestore needs a built model
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    latest = str(tmp_path / "latest.keras")
    stopper = callbacks.TerminateOnNaNKeepingLast(latest)
    history = model.fit(
        dataset,
        epochs=3,
        steps_per_epoch=2,
        verbose=0,
        callbacks=[
            callbacks.FiniteBackupAndRestore(str(tmp_path / "backup")),
            callbacks.FiniteModelCheckpoint(latest),
            stopper,
        ],
    ).history
    assert stopper.stopped_at == 1  # second batch of epoch 2
    assert len(history["loss"]) == 2 and np.isfinite(history["loss"][0]) and not np.isfinite(history["loss"][1])
    restored = keras.saving.load_model(latest)
    assert int(restored.optimizer.iterations.numpy()) == 2  # the state after epoch 1
    assert all(np.isfinite(w).all() for w in restored.get_weights())


def test_backup_interrupted_while_saving_leaves_the_previous_backup_loadable(tmp_path):
    """A save that dies half-way (as under SIGKILL) must not damage the backup a rerun resumes from."""
    from helpers import small_model

    model = small_model()
    model.build((None, 64, 64, 3))
    backup = callbacks.FiniteBackupAndRestore(str(tmp_path), save_freq="epoch")
    backup.set_model(model)
    backup.on_epoch_end(0, {"loss": 1.0})
    saved = [w.copy() for w in model.get_weights()]

    def dies_half_way(filepath, overwrite=True):
        with open(filepath, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n half a file")
        raise KeyboardInterrupt("killed while saving")

    model.set_weights([w + 1.0 for w in saved])
    original_save = model.save_weights
    model.save_weights = dies_half_way
    with pytest.raises(KeyboardInterrupt):
        backup.on_epoch_end(1, {"loss": 1.0})
    model.save_weights = original_save
    assert json.loads((tmp_path / "training_metadata.json").read_text())["epoch"] == 1
    restored = small_model()
    restored.build((None, 64, 64, 3))
    restored.load_weights(tmp_path / "latest.weights.h5")
    for want, got in zip(saved, restored.get_weights()):
        np.testing.assert_array_equal(got, want)


def test_coco_evaluation_schedule_logs_and_best_checkpoint(tmp_path, monkeypatch):
    from helpers import small_model

    from keras_retina import evaluation
    from keras_retina.training import rundir

    aps = iter([0.1, 0.3, 0.25])
    evaluated = []

    def fake_predict(model, dataset, category_ids, verbose=False):
        evaluated.append(len(evaluated))
        return [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}], [7]

    def fake_coco_evaluate(coco_gt, results, image_ids=None, verbose=False):
        assert image_ids == [7] and len(results) == 1  # the detections just made
        return {name: 0.0 for name in evaluation.METRIC_NAMES} | {"AP": next(aps)}

    monkeypatch.setattr(evaluation, "predict_to_coco", fake_predict)
    monkeypatch.setattr(evaluation, "coco_evaluate", fake_coco_evaluate)
    model = small_model()
    model.build((None, 64, 64, 3))
    best = str(tmp_path / "best.keras")
    callback = callbacks.CocoEvaluationCallback(None, None, (1, 2, 3), every_epochs=2, best_path=best)
    callback.set_model(model)
    callback.set_params({"epochs": 4})
    callback.on_train_begin()
    logged = []
    for epoch in range(4):
        logs = {"loss": 1.0}
        callback.on_epoch_end(epoch, logs)
        logged.append(logs.get("val_AP"))
    # Epoch 2 (every 2nd) and 4 (every 2nd, and the last); not 1 or 3.
    assert logged == [None, 0.1, None, 0.3]
    assert callback.last_metrics["AP"] == 0.3
    assert callback.last_results == ([{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}], [7])
    assert json.loads((tmp_path / "best.keras.json").read_text()) == {"epoch": 4, "AP": 0.3}
    assert os.path.exists(best)
    # A resumed run keeps the best so far: a lower AP does not replace it.
    resumed = callbacks.CocoEvaluationCallback(None, None, (1, 2, 3), every_epochs=2, best_path=best)
    assert resumed.best_ap == rundir.read_best_ap(best) == 0.3
    resumed.set_model(model)
    resumed.set_params({"epochs": 4})
    resumed.on_train_begin()
    logs = {}
    resumed.on_epoch_end(2, logs)  # epoch 3: the resumed fit's first, not on the schedule
    assert "val_AP" not in logs and len(evaluated) == 2
    resumed.on_epoch_end(3, logs)  # epoch 4: the last
    assert logs["val_AP"] == 0.25 and len(evaluated) == 3
    assert json.loads((tmp_path / "best.keras.json").read_text())["AP"] == 0.3


def test_resumed_run_evaluates_only_on_schedule_and_keeps_csv_columns(tmp_path, monkeypatch):
    """fit() killed after epoch 1 and resumed by BackupAndRestore: only epochs 3 (every 3) and 4 (last) are evaluated.

    Neither the run's first epoch nor the resumed fit's first is evaluated
    off schedule, and the CSV log still has the evaluation's columns.
    """
    from helpers import small_model, toy_batch

    from keras_retina import evaluation

    evaluated = []

    def fake_predict(model, dataset, category_ids, verbose=False):
        evaluated.append(int(model.optimizer.iterations.numpy()))
        return [], [1]

    monkeypatch.setattr(evaluation, "predict_to_coco", fake_predict)
    monkeypatch.setattr(evaluation, "coco_evaluate", lambda *a, **k: {name: 0.5 for name in evaluation.METRIC_NAMES})
    images, y = toy_batch()
    dataset = tf.data.Dataset.from_tensor_slices((images, y)).batch(2).repeat()
    log = tmp_path / "log.csv"

    class StopAfterFirstEpoch(keras.callbacks.Callback):  # the process "dies" after epoch 1 is backed up
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                raise KeyboardInterrupt("killed")

    def fit(extra=()):
        model = small_model()
        model.build((None, 128, 128, 3))
        model.compile(optimizer=keras.optimizers.SGD(0.01))
        run_callbacks = [
            callbacks.CocoEvaluationCallback(None, None, (1, 2, 3), every_epochs=3),
            callbacks.ResumableCSVLogger(str(log), columns=callbacks.CocoEvaluationCallback.LOG_NAMES, append=True),
            callbacks.FiniteBackupAndRestore(str(tmp_path / "backup"), delete_checkpoint=False),
            *extra,
        ]
        model.fit(dataset, epochs=4, steps_per_epoch=1, verbose=0, callbacks=run_callbacks)

    with pytest.raises(KeyboardInterrupt):
        fit([StopAfterFirstEpoch()])
    assert evaluated == []  # the run's first epoch is not on the schedule
    fit()
    assert evaluated == [3, 4]  # resumed at epoch 2: not evaluated; 3 (every 3rd) and 4 (last) are
    rows = [line.split(",") for line in log.read_text().splitlines()]
    header = rows[0]
    assert [row[0] for row in rows[1:]] == ["0", "1", "2", "3"]
    assert all(len(row) == len(header) for row in rows)
    val_ap = [row[header.index("val_AP")] for row in rows[1:]]
    assert val_ap == ["NA", "NA", "0.5", "0.5"]
