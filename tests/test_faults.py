"""Faults a run survives: corrupt checkpoints and backups, saves cut short (disk full, SIGKILL), a killed worker.

What is checked (docs/RELIABILITY.md, "Faults"):

* a ``latest.keras`` truncated mid-zip, emptied or overwritten with random
  bytes: :func:`rundir.load_trained_model` (what export, predict and
  evaluate load) falls back to ``previous.keras``, then ``best.keras``,
  with a warning naming the bad file and the one used; none left: one
  :class:`rundir.UnreadableCheckpointError` naming every file tried;
* an unreadable backup: resuming falls back to the backup before it, with
  a warning, and no epoch is lost or logged twice;
* a save that fails part-way (``OSError(ENOSPC)``) or whose process is
  SIGKILLed mid-write leaves the previous checkpoint whole and loadable;
* a two-worker MultiWorkerMirroredStrategy run whose worker is SIGKILLed
  mid-epoch resumes, restarted, after the last completed epoch.
"""

import dataclasses
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
from helpers import small_model

from keras_retina.training import callbacks, rundir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trained_model(seed):
    keras.utils.set_random_seed(seed)
    model = small_model()
    model.build((None, 64, 64, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    return model


def _same_weights(model, other):
    return all(np.array_equal(a, b) for a, b in zip(model.get_weights(), other.get_weights()))


CORRUPTIONS = {
    "truncated mid-zip": lambda data: data[: len(data) // 2],
    "zero bytes": lambda data: b"",
    "random bytes": lambda data: np.random.default_rng(0).bytes(len(data)),
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory's checkpoints, three different models: previous (epoch 1), latest (epoch 2), best (epoch 1)."""
    directory = tmp_path_factory.mktemp("run")
    (directory / "checkpoints").mkdir()
    latest = str(directory / rundir.LATEST_CHECKPOINT)
    previous = str(directory / rundir.PREVIOUS_CHECKPOINT)
    models = {name: _trained_model(seed) for seed, name in enumerate(("previous", "latest", "best"))}
    rundir.save_checkpoint(models["previous"], latest, previous=previous)
    rundir.save_checkpoint(models["latest"], latest, previous=previous)
    rundir.save_checkpoint(models["best"], str(directory / rundir.BEST_CHECKPOINT))
    files = {name: (directory / "checkpoints" / f"{name}.keras").read_bytes() for name in models}
    return directory, models, files


def _restore(directory, files):
    for name, data in files.items():
        (directory / "checkpoints" / f"{name}.keras").write_bytes(data)


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(run_dir, corruption, caplog):
    directory, models, files = run_dir
    _restore(directory, files)
    assert _same_weights(rundir.load_trained_model(str(directory)), models["latest"])  # whole: itself
    latest = directory / rundir.LATEST_CHECKPOINT
    latest.write_bytes(CORRUPTIONS[corruption](files["latest"]))
    with caplog.at_level(logging.WARNING):
        model = rundir.load_trained_model(str(directory))
    assert _same_weights(model, models["previous"])
    warned = caplog.text
    assert f"Checkpoint {latest} cannot be loaded" in warned, warned
    assert f"Using {directory / rundir.PREVIOUS_CHECKPOINT} instead of {latest}" in warned, warned
    assert "Traceback" not in warned


def test_best_is_the_last_resort_and_none_left_is_one_clear_error(run_dir, caplog):
    directory, models, files = run_dir
    _restore(directory, files)
    for name in ("latest", "previous"):
        (directory / "checkpoints" / f"{name}.keras").write_bytes(CORRUPTIONS["truncated mid-zip"](files[name]))
    with caplog.at_level(logging.WARNING):
        assert _same_weights(rundir.load_trained_model(str(directory)), models["best"])
    assert f"Using {directory / rundir.BEST_CHECKPOINT}" in caplog.text
    # "best" asked for and readable: no fallback, no warning.
    caplog.clear()
    assert _same_weights(rundir.load_trained_model(str(directory), which="best"), models["best"])
    assert "cannot be loaded" not in caplog.text
    (directory / rundir.BEST_CHECKPOINT).write_bytes(b"")
    with pytest.raises(rundir.UnreadableCheckpointError) as error:
        rundir.load_trained_model(str(directory))
    message = str(error.value)
    for name, reason in (("latest", "not a whole .keras zip"), ("previous", "not a whole"), ("best", "empty file")):
        assert f"{directory / 'checkpoints' / name}.keras: {reason}" in message, message
    assert "zipfile" not in type(error.value).__module__


def test_a_save_that_fails_part_way_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    """Disk full half-way through writing latest.keras: the old file is untouched, no partial file is left."""
    latest, previous = str(tmp_path / "latest.keras"), str(tmp_path / "previous.keras")
    old, new = _trained_model(0), _trained_model(1)
    rundir.save_checkpoint(old, latest, previous=previous)

    def disk_full(self, filepath, overwrite=True, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half a zip archive")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filepath)

    monkeypatch.setattr(type(new), "save", disk_full)
    with pytest.raises(OSError) as error:
        rundir.save_checkpoint(new, latest, previous=previous)
    assert error.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["latest.keras"]  # no partial file; previous not yet moved
    assert _same_weights(keras.saving.load_model(latest), old)


_KILLED_MID_SAVE = textwrap.dedent(
    """
    import os, signal, sys, zipfile
    sys.path.insert(0, {tests!r})
    import keras
    from helpers import small_model
    from keras_retina.training import rundir

    latest, previous = sys.argv[1], sys.argv[2]
    model = small_model()
    model.build((None, 64, 64, 3))
    rundir.save_checkpoint(model, latest, previous=previous)
    model.set_weights([w + 1.0 for w in model.get_weights()])
    original = zipfile.ZipFile.writestr
    def killed_after_one_member(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.fp.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # before the central directory: a truncated zip
    zipfile.ZipFile.writestr = killed_after_one_member
    rundir.save_checkpoint(model, latest, previous=previous)
    """
)


def test_a_process_killed_mid_save_leaves_the_checkpoint_loadable(tmp_path):
    script = tmp_path / "save.py"
    script.write_text(_KILLED_MID_SAVE.format(tests=os.path.join(ROOT, "tests")))
    latest, previous = tmp_path / "latest.keras", tmp_path / "previous.keras"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, str(script), str(latest), str(previous)], check=False, env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    partial = tmp_path / ".incoming-latest.keras"
    assert partial.exists() and rundir.keras_file_problem(str(partial)) is not None  # it did die mid-write
    assert not previous.exists()  # the old file is moved only once the new one is whole
    assert rundir.keras_file_problem(str(latest)) is None
    assert len(keras.saving.load_model(latest).get_weights()) > 10


# ------------------------------------------------------------------ backups
def _backup(directory, model, epochs):
    """Backs ``model`` up after each of ``epochs`` as FiniteBackupAndRestore does; returns the callback."""
    backup = callbacks.FiniteBackupAndRestore(str(directory), save_freq="epoch", delete_checkpoint=False)
    backup.set_model(model)
    for epoch in range(epochs):
        backup.on_epoch_end(epoch, {"loss": 1.0})
    return backup


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_an_unreadable_backup_gives_way_to_the_one_before(tmp_path, corruption, caplog):
    model = _trained_model(0)
    _backup(tmp_path, model, epochs=2)
    weights = tmp_path / rundir.BACKUP_WEIGHTS
    assert rundir.check_backup(str(tmp_path)) == 2
    weights.write_bytes(CORRUPTIONS[corruption](weights.read_bytes()))
    with caplog.at_level(logging.WARNING):
        assert rundir.check_backup(str(tmp_path)) == 1
    assert f"Backup {weights} cannot be resumed from" in caplog.text
    assert f"Resuming from {weights}.bkp (after epoch 1)" in caplog.text
    assert json.loads((tmp_path / rundir.BACKUP_METADATA).read_text())["epoch"] == 1  # what Keras reads
    assert rundir.backup_epoch(str(tmp_path)) == 1
    restored = _trained_model(5)
    restored.load_weights(weights)  # the whole file Keras' BackupAndRestore will load
    weights.write_bytes(b"")
    with pytest.raises(rundir.UnreadableCheckpointError, match=rf"{weights}: empty file .*{weights}.bkp: missing"):
        rundir.check_backup(str(tmp_path))


def test_every_state_a_kill_between_the_renames_leaves_is_resumable(tmp_path):
    """AtomicBackupSave renames latest -> .bkp, incoming -> latest, then the metadata: a kill between any two."""
    model = _trained_model(0)
    _backup(tmp_path, model, epochs=2)
    weights, metadata = tmp_path / rundir.BACKUP_WEIGHTS, tmp_path / rundir.BACKUP_METADATA
    # Killed in epoch 3's save after the first rename: no latest, the .bkp holds epoch 2.
    os.replace(weights, f"{weights}.bkp")
    assert rundir.check_backup(str(tmp_path)) == 2 and weights.exists()
    # Killed before the metadata's rename: new weights (epoch 3), old metadata (epoch 2).
    backup = _backup(tmp_path, model, epochs=0)
    backup._current_epoch = 3  # noqa: SLF001 (Keras' counter, set by on_epoch_end)
    backup._save_model()  # noqa: SLF001
    metadata.write_text(json.dumps({"epoch": 2, "batch": 0}))
    assert rundir.check_backup(str(tmp_path)) == 3
    assert json.loads(metadata.read_text())["epoch"] == 3


def test_a_backup_that_fails_part_way_leaves_the_previous_backup(tmp_path, monkeypatch):
    model = _trained_model(0)
    backup = _backup(tmp_path, model, epochs=1)
    saved = [w.copy() for w in model.get_weights()]

    def disk_full(filepath, overwrite=True):
        with open(filepath, "wb") as f:
            f.write(b"\x89HDF\r\n\x1a\n half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filepath)

    model.set_weights([w + 1.0 for w in saved])
    monkeypatch.setattr(model, "save_weights", disk_full)
    with pytest.raises(OSError, match="No space left"):
        backup.on_epoch_end(1, {"loss": 1.0})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == [rundir.BACKUP_WEIGHTS, rundir.BACKUP_METADATA]
    assert rundir.check_backup(str(tmp_path)) == 1
    restored = _trained_model(5)
    restored.load_weights(tmp_path / rundir.BACKUP_WEIGHTS)
    for want, got in zip(saved, restored.get_weights()):
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------- train(): resume
class _StopAtEpoch(keras.callbacks.Callback):
    """Stops the process's training as a kill would, at the start of epoch ``epoch`` (after the backups before it)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"stopped at epoch {epoch}")


def _config(tmp_path, epochs):
    from keras_retina import recipes
    from keras_retina.config import override

    config = override(
        recipes.load("shapes"),
        [f"data.shapes_dir={tmp_path / 'shapes'}", "shapes_num_train=8", "shapes_num_val=4", "shapes_image_size=64",
         "image_size=64", "batch_size=4", f"epochs={epochs}", "steps_per_epoch=2", "tensorboard=false",
         "model.fpn_channels=32", "model.head_channels=32", "model.num_head_convs=1"],
    )
    return dataclasses.replace(config, model_dir=str(tmp_path / "run"))


@pytest.mark.slow
def test_resume_with_a_corrupt_checkpoint_and_backup_loses_no_epoch(tmp_path, caplog):
    """A run stopped in epoch 3 of 3, its latest.keras and last backup then corrupted, reruns to the end.

    Resuming reads the backup, not latest.keras: the unreadable last backup
    gives way to the one before (after epoch 1), epoch 2 runs again, and the
    log holds each epoch once; the checkpoints written afterwards are whole.
    """
    from keras_retina import training

    config = _config(tmp_path, epochs=3)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        training.train(config, callbacks=[_StopAtEpoch(2)])
    assert rundir.backup_epoch(str(run / rundir.BACKUP_DIR)) == 2
    latest, weights = run / rundir.LATEST_CHECKPOINT, run / rundir.BACKUP_DIR / rundir.BACKUP_WEIGHTS
    latest.write_bytes(CORRUPTIONS["truncated mid-zip"](latest.read_bytes()))
    weights.write_bytes(CORRUPTIONS["random bytes"](weights.read_bytes()))
    with caplog.at_level(logging.INFO):
        model, history, _, _ = training.train(config)
    assert f"Backup {weights} cannot be resumed from" in caplog.text
    assert "after epoch 1" in caplog.text
    assert history.epoch == [1, 2]  # epoch 2 (index 1) again, then the last
    rows = (run / rundir.TRAIN_LOG).read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == [0, 1, 2]
    assert int(model.optimizer.iterations.numpy()) == 3 * 2
    for name in (rundir.LATEST_CHECKPOINT, rundir.PREVIOUS_CHECKPOINT, rundir.BEST_CHECKPOINT):
        assert rundir.keras_file_problem(str(run / name)) is None, name
    assert int(rundir.load_trained_model(str(run)).optimizer.iterations.numpy()) == 3 * 2


# ------------------------------------------------------ two workers, one killed
_WORKER = textwrap.dedent(
    """
    import os, sys, time
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TF op
    import keras
    import numpy as np
    from absl import logging
    sys.path.insert(0, {tests!r})
    from helpers import small_model, toy_batch
    from keras_retina.training import callbacks, rundir

    logging.set_verbosity(logging.INFO)
    run, pause, epochs, steps = sys.argv[1], float(sys.argv[2]), 2, 3
    start = time.time()
    # What train() does around fit: this worker's directory, its backup checked, resumed by BackupAndRestore.
    directory = rundir.worker_dir(run, strategy)
    os.makedirs(os.path.join(directory, "checkpoints"), exist_ok=True)
    backup_dir = os.path.join(directory, rundir.BACKUP_DIR)
    resume_epoch = rundir.check_backup(backup_dir)
    print(f"resuming after epoch {{resume_epoch}}", flush=True)
    rundir.trim_log(os.path.join(directory, rundir.TRAIN_LOG), resume_epoch)

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            print(f"{{time.time() - start:.1f}} s: epoch {{self.epoch}} batch {{batch}}", flush=True)
            time.sleep(pause)  # the kill lands mid-epoch

    keras.utils.set_random_seed(1)
    images, y = toy_batch(64)
    dataset = tf.data.Dataset.from_tensor_slices((np.concatenate([images, images]), {{
        key: np.concatenate([value, value]) for key, value in y.items()}})).batch(4).repeat()
    with strategy.scope():
        model = small_model()
        model.build((None, 64, 64, 3))
        model.compile(optimizer=keras.optimizers.SGD(0.01))
    model.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[
        Progress(),
        callbacks.FiniteModelCheckpoint(os.path.join(directory, rundir.LATEST_CHECKPOINT)),
        callbacks.ResumableCSVLogger(os.path.join(directory, rundir.TRAIN_LOG), append=True),
        callbacks.FiniteBackupAndRestore(backup_dir, delete_checkpoint=False),
    ])
    print(f"{{time.time() - start:.1f}} s: worker done", flush=True)
    """
)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _start_workers(script, run, pause, logs):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
        log = open(logs[index], "w")  # noqa: SIM115 (closed when the process ends)
        processes.append(
            subprocess.Popen([sys.executable, str(script), str(run), str(pause)], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT, text=True)
        )
    return processes


@pytest.mark.slow
def test_a_worker_killed_mid_epoch_resumes_after_the_last_completed_epoch(tmp_path):
    """Two MultiWorkerMirroredStrategy workers; worker 1 is SIGKILLed in epoch 2 of 2 and the job restarted.

    Each worker runs what :func:`keras_retina.training.train` runs around
    ``fit`` (its own directory, :func:`rundir.check_backup`, the run's
    checkpoint, log and backup callbacks) on a toy model. The chief waits
    on the dead worker's collectives, so (as a cluster manager does) the
    whole job is stopped and started again: each worker resumes from its
    own backup after epoch 1, runs epoch 2 from its first step, and each
    directory's log holds epochs 0 and 1 once.
    """
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(tests=os.path.join(ROOT, "tests")))
    run = tmp_path / "run"
    first_logs = [tmp_path / "first_0.log", tmp_path / "first_1.log"]
    processes = _start_workers(script, run, 0.3, first_logs)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and "epoch 1 batch 0" not in first_logs[1].read_text():
            assert all(p.poll() is None for p in processes), first_logs[1].read_text()[-3000:]
            time.sleep(0.05)
        processes[1].send_signal(signal.SIGKILL)
        processes[1].wait()
        time.sleep(0.5)
        processes[0].send_signal(signal.SIGKILL)  # stopped by the job's manager, waiting on the dead worker
        processes[0].wait()
    finally:
        for process in processes:
            process.kill()
    assert processes[1].returncode == -signal.SIGKILL
    out = first_logs[1].read_text()
    assert "epoch 1 batch 0" in out and "epoch 1 batch 2" not in out, out[-3000:]  # killed mid-epoch
    directories = (run, run / "workers" / "worker_1")
    for directory in directories:
        assert rundir.backup_epoch(str(directory / rundir.BACKUP_DIR)) == 1, directory
    second_logs = [tmp_path / "second_0.log", tmp_path / "second_1.log"]
    processes = _start_workers(script, run, 0.0, second_logs)
    try:
        for process in processes:
            process.wait(timeout=300)
    finally:
        for process in processes:
            process.kill()
    for process, log in zip(processes, second_logs):
        out = log.read_text()
        assert process.returncode == 0 and "worker done" in out, out[-3000:]
        assert "resuming after epoch 1" in out, out[-3000:]
        assert "epoch 0 batch" not in out and "epoch 1 batch 0" in out, out[-3000:]
    for directory in directories:
        rows = (directory / rundir.TRAIN_LOG).read_text().splitlines()[1:]
        assert [int(row.split(",")[0]) for row in rows] == [0, 1], directory
        model = keras.saving.load_model(directory / rundir.LATEST_CHECKPOINT)
        assert int(model.optimizer.iterations.numpy()) == 2 * 3, directory  # no step lost, none repeated
