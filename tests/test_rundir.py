"""The run directory: classes, config, best AP, backups and log trimming."""

import json

import pytest
import tensorflow as tf

from keras_retina.config import ExperimentConfig, override
from keras_retina.training import rundir


def test_trim_log_drops_epochs_that_run_again(tmp_path):
    log = tmp_path / "train_log.csv"
    log.write_text("epoch,loss\n0,1.5\n1,1.2\n2,1.1\n")
    rundir.trim_log(str(log), 2)
    assert log.read_text() == "epoch,loss\n0,1.5\n1,1.2\n"
    rundir.trim_log(str(log), 0)
    assert log.read_text() == "epoch,loss\n"
    rundir.trim_log(str(tmp_path / "missing.csv"), 3)  # nothing to trim: no error


def test_classes_and_config_round_trip(tmp_path):
    rundir.write_classes(str(tmp_path), ("cat", "dog"), (17, 18))
    assert rundir.read_classes(str(tmp_path)) == (("cat", "dog"), (17, 18))
    config = override(ExperimentConfig(), ["data.image_size=320", "model.backbone=tiny"])
    rundir.write_config(str(tmp_path), config)
    assert rundir.read_config(str(tmp_path)) == config
    assert rundir.read_config(str(tmp_path / "missing")) is None


def test_missing_classes_and_checkpoint_name_the_run_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="No classes.json in .*train first"):
        rundir.read_classes(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="checkpoints/latest.keras: train first"):
        rundir.load_trained_model(str(tmp_path))


def test_best_ap_note(tmp_path):
    best = str(tmp_path / "best.keras")
    assert rundir.read_best_ap(best) == -1.0
    rundir.write_best_ap(best, epoch=3, ap=0.5)
    assert rundir.read_best_ap(best) == 0.5
    assert json.loads((tmp_path / "best.keras.json").read_text()) == {"epoch": 3, "AP": 0.5}


def test_backup_epoch_reads_keras_metadata(tmp_path):
    assert rundir.backup_epoch(str(tmp_path)) == 0
    (tmp_path / "training_metadata.json").write_text(json.dumps({"epoch": 4, "batch": -1}))
    assert rundir.backup_epoch(str(tmp_path)) == 4


def test_single_worker_writes_the_run_directory_itself():
    assert rundir.worker_dir("runs/x", tf.distribute.get_strategy()) == "runs/x"


def test_only_the_chief_writes_the_run_directory():
    assert rundir.task_dir("runs/x", "chief", 0, has_chief=True) == "runs/x"
    assert rundir.task_dir("runs/x", "worker", 0, has_chief=False) == "runs/x"  # worker 0 is the chief
    assert rundir.task_dir("runs/x", "worker", 0, has_chief=True) == "runs/x/workers/worker_0"
    assert rundir.task_dir("runs/x", "worker", 3, has_chief=False) == "runs/x/workers/worker_3"
    assert rundir.task_dir("runs/x", "evaluator", 0, has_chief=False) == "runs/x/workers/evaluator_0"


def test_claim_refuses_a_second_trainer_and_frees_the_directory_when_its_holder_dies(tmp_path):
    """The lock of a run directory: a second holder is refused with the first's pid; a killed holder leaves none."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from keras_retina.training import rundir\n"
         f"with rundir.claim({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(rundir.RunDirInUseError, match=rf"{tmp_path} is being trained by another process \(pid {holder.pid} on "):
            with rundir.claim(str(tmp_path)):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.time() + 10  # the kernel drops the flock as the process ends
    while True:
        try:
            with rundir.claim(str(tmp_path)):
                assert (tmp_path / ".lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
            break
        except rundir.RunDirInUseError:
            assert time.time() < deadline, "the killed holder's lock was not released"
            time.sleep(0.1)


def test_train_refuses_a_directory_another_process_is_training_into(tmp_path):
    import dataclasses

    from keras_retina import recipes, training

    config = dataclasses.replace(recipes.load("shapes"), model_dir=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    with rundir.claim(str(tmp_path / "run")):
        with pytest.raises(rundir.RunDirInUseError, match="is being trained by another process"):
            training.train(config)
    assert not (tmp_path / "run" / "config.json").exists()  # refused before it wrote anything
