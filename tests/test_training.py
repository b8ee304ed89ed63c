"""Training pieces: schedule, optimizer, strategies, and main.py runs end to end (slow)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_retina import training
from keras_retina.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_warmup_then_step_decay():
    schedule = training.WarmupStepDecay(0.01, milestones=(600, 800), warmup_steps=100, warmup_factor=1 / 3)
    values = {step: float(schedule(step)) for step in (0, 50, 100, 599, 600, 799, 800, 900)}
    assert values[0] == pytest.approx(0.01 / 3)
    assert values[50] == pytest.approx(0.01 * (1 / 3 + 2 / 3 * 0.5))
    assert values[100] == pytest.approx(0.01)
    assert values[599] == pytest.approx(0.01)
    assert values[600] == pytest.approx(0.001)
    assert values[799] == pytest.approx(0.001)
    assert values[800] == pytest.approx(0.0001)
    restored = training.WarmupStepDecay.from_config(schedule.get_config())
    assert float(restored(700)) == pytest.approx(0.001)


def test_optimizer_follows_papers_recipe():
    optimizer = training.build_optimizer(TrainConfig(), total_steps=90000)
    assert isinstance(optimizer, keras.optimizers.SGD)
    assert optimizer.momentum == 0.9 and optimizer.weight_decay == pytest.approx(1e-4)
    schedule = optimizer._learning_rate  # the schedule object (optimizer.learning_rate is its current value)
    assert schedule.milestones == (60000, 80000) and schedule.warmup_steps == 500
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    optimizer.build([kernel, bias])
    assert optimizer._use_weight_decay(kernel) and not optimizer._use_weight_decay(bias)


def test_strategies_on_cpu():
    # No GPU: the default strategy (OneDeviceStrategy("/cpu:0") made every CPU step 2.3x slower).
    assert training.make_strategy("auto") is tf.distribute.get_strategy()
    assert not tf.distribute.has_strategy()  # not entered: nothing is wrapped
    assert isinstance(training.make_strategy("one_device"), tf.distribute.OneDeviceStrategy)
    with pytest.raises(ValueError, match="strategy must be one of"):
        training.make_strategy("gpu")


def _main(model_dir, shapes_dir, *extra, **kwargs):
    command = [
        sys.executable,
        os.path.join(ROOT, "main.py"),
        f"--model_dir={model_dir}",
        "--image_size=128",
        "--batch_size=4",
        f"--override=data.shapes_dir={shapes_dir}",
        "--override=shapes_num_train=24",
        "--override=shapes_num_val=8",
        "--override=shapes_image_size=128",
        "--override=tensorboard=false",
        *extra,
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)


@pytest.mark.slow
def test_main_default_flow_writes_everything(tmp_path):
    result = _main(tmp_path / "run", tmp_path / "shapes", "--epochs=2", "--steps_per_epoch=3", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    for name in ("config.json", "classes.json", "metrics.json", "train_log.csv", "val_predictions.png", "checkpoints/latest.keras"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class_AP"}
    assert json.loads((run / "config.json").read_text())["data"]["image_size"] == 128
    header = (run / "train_log.csv").read_text().splitlines()[0].split(",")
    assert {"dropped_boxes", "truncated_boxes", "val_AP", "num_positives"} <= set(header), header
    rows = [line.split(",") for line in (run / "train_log.csv").read_text().splitlines()[1:]]
    # Evaluated once, after the last epoch (the default experiment's schedule); epoch 1 is not.
    assert [row[header.index("val_AP")] == "NA" for row in rows] == [True, False]
    assert float(rows[1][header.index("val_AP")]) == pytest.approx(metrics["AP"])
    # The final evaluation's detections are kept, and they are what metrics.json scored.
    from pycocotools.coco import COCO

    from keras_retina import evaluation
    from keras_retina.training import rundir

    results, image_ids = rundir.read_detections(str(run))
    assert len(image_ids) == 8 and results
    rescored = evaluation.coco_evaluate(COCO(str(tmp_path / "shapes" / "val" / "annotations.json")), results, image_ids=image_ids, verbose=False)
    assert rescored["AP"] == pytest.approx(metrics["AP"], abs=1e-9)
    timing = json.loads((run / "timing.json").read_text())
    assert set(timing["stages_s"]) >= {"report", "drawing", "export"} and len(timing["epoch_s"]) == 2
    assert all(seconds >= 0 for seconds in timing["stages_s"].values())
    assert sum(timing["stages_s"].values()) <= timing["total_s"] + 0.5
    assert timing["machine"]["cores"] >= 1 and timing["machine"]["vector_isa"] in ("AVX-512", "AVX2", "no AVX2")
    assert "Done in" in result.stdout and "export" in result.stdout
    assert not (run / "backup").exists()  # a finished run leaves no backup to resume from
    assert "COCO AP" in result.stdout
    assert (run / "export" / "1" / "saved_model.pb").exists()
    # A user loads the run's checkpoint with Keras after importing keras_retina, nothing else: the
    # optimizer's schedule is registered by the import.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, keras, keras_retina\n"
         "model = keras.saving.load_model(sys.argv[1])\n"
         "print(type(model).__name__, type(model.optimizer._learning_rate).__name__, int(model.optimizer.iterations))",
         str(run / "checkpoints" / "latest.keras")],
        cwd=tmp_path, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True, timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split() == ["RetinaNet", "WarmupStepDecay", "6"]
    # evaluate and analyze modes work on the finished run.
    evaluated = _main(tmp_path / "run", tmp_path / "shapes", "--mode=evaluate", timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "AP " in evaluated.stdout
    analyzed = _main(tmp_path / "run", tmp_path / "shapes", "--mode=analyze", timeout=300)
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    coverage = json.loads((run / "anchor_coverage.json").read_text())
    assert coverage["num_boxes"] > 0 and 0 <= coverage["all"]["iou_0.5"] <= 1
    # export and predict modes on the finished run.
    exported = _main(run, tmp_path / "shapes", "--mode=export", f"--export_dir={tmp_path / 'served'}", timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "served" / "1" / "saved_model.pb").exists()
    val_images = tmp_path / "shapes" / "val" / "images"
    predicted = _main(
        run, tmp_path / "shapes", "--mode=predict", f"--image={val_images}", f"--output_dir={tmp_path / 'out'}", timeout=300
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert isinstance(json.loads((tmp_path / "out" / "detections.json").read_text()), list)
    assert len(list((tmp_path / "out").glob("*.png"))) == 8


@pytest.mark.slow
def test_main_trains_on_users_coco_json_with_the_four_flags(tmp_path):
    from keras_retina.data import make_shapes_splits

    splits = make_shapes_splits(tmp_path / "mine", num_train=16, num_val=8, seed=3, image_size=(128, 128))
    result = _main(
        tmp_path / "run",
        tmp_path / "unused",
        "--dataset=coco_json",
        "--experiment=cpu_small",  # the offline option: own data otherwise fine-tunes from downloaded COCO weights
        f"--train_annotations={splits['train'].annotation_file}",
        f"--train_images={splits['train'].image_dir}",
        f"--val_annotations={splits['val'].annotation_file}",
        f"--val_images={splits['val'].image_dir}",
        "--epochs=1",
        "--steps_per_epoch=2",
        "--override=tensorboard=true",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "classes.json").read_text())["category_ids"] == [1, 2, 3, 4, 5]
    assert not (tmp_path / "unused").exists()  # the shapes data was not written
    # TensorBoard got the losses, the learning rate and a picture of detections.
    events = list((tmp_path / "run" / "logs").rglob("events.out.tfevents*"))
    tags = set()
    for path in events:
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    assert {"val_detections", "epoch_learning_rate", "epoch_cls_loss"} <= tags, tags


@pytest.mark.slow
def test_killed_run_resumes_and_completes(tmp_path):
    """SIGKILL mid-epoch, rerun the same command: it resumes and completes the planned steps."""
    args = ("--mode=train", "--epochs=4", "--steps_per_epoch=6", "--override=eval_every_epochs=100")
    command_dir = tmp_path / "run"
    # Write the dataset first so the timing below is about training.
    assert _main(command_dir / "warmup", tmp_path / "shapes", "--mode=analyze", timeout=300).returncode == 0
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    first = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "main.py"), f"--model_dir={command_dir}", "--image_size=128",
         "--batch_size=4", f"--override=data.shapes_dir={tmp_path / 'shapes'}", "--override=shapes_num_train=24",
         "--override=shapes_num_val=8", "--override=shapes_image_size=128", "--override=tensorboard=false", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    log = command_dir / "train_log.csv"
    deadline = time.time() + 400
    # Kill once at least one epoch is logged (so there is a backup) and the next is under way.
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.1)
    # No pause here: on a fast machine the remaining epochs take only seconds,
    # and the kill must land before the run ends.
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL
    epochs_before = len(log.read_text().splitlines()) - 1
    assert 1 <= epochs_before < 4
    second = _main(command_dir, tmp_path / "shapes", *args, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    rows = log.read_text().splitlines()[1:]
    epochs = [int(row.split(",")[0]) for row in rows]
    assert epochs == list(range(4)), epochs  # every epoch exactly once: none lost, none repeated
    assert (command_dir / "checkpoints" / "latest.keras").exists()
    model = keras.saving.load_model(command_dir / "checkpoints" / "latest.keras")
    assert int(model.optimizer.iterations.numpy()) == 4 * 6


@pytest.mark.slow
def test_train_runs_user_callbacks_after_the_evaluation(tmp_path):
    from keras_retina import recipes
    from keras_retina.config import override

    config = override(
        recipes.load("shapes"),
        [f"data.shapes_dir={tmp_path / 'shapes'}", "shapes_num_train=8", "shapes_num_val=4", "shapes_image_size=64",
         "image_size=64", "batch_size=4", "epochs=2", "steps_per_epoch=2", "tensorboard=false"],
    )
    config = dataclasses.replace(config, model_dir=str(tmp_path / "run"))
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, logs.get("val_AP")))

    model, history, data, metrics = training.train(config, callbacks=[Record()])
    assert [epoch for epoch, _ in seen] == [0, 1]
    # The shapes experiment evaluates after its last epoch only; callbacks see that epoch's val_AP.
    assert seen[0][1] is None and 0.0 <= seen[1][1] <= 1.0
    assert seen[-1][1] == metrics["AP"]
    assert data.class_names == ("circle", "square", "triangle", "diamond", "cross")


def test_cosine_schedule_warms_up_then_decays_to_zero():
    import dataclasses as dc

    train = dc.replace(TrainConfig(), schedule="cosine", learning_rate=0.02, warmup_steps=100, warmup_factor=0.25)
    optimizer = training.build_optimizer(train, total_steps=1100)
    restored = keras.optimizers.schedules.deserialize(optimizer.get_config()["learning_rate"])
    rate = lambda step: float(restored(step))  # noqa: E731
    assert rate(0) == pytest.approx(0.005) and rate(50) == pytest.approx(0.0125)
    assert rate(100) == pytest.approx(0.02)
    assert rate(600) == pytest.approx(0.01, rel=1e-4)  # half-way down the cosine
    assert rate(1100) == pytest.approx(0.0, abs=1e-9)


def test_linear_scaling_rule_follows_the_global_batch():
    import dataclasses as dc

    paper = dc.replace(TrainConfig(), learning_rate=0.01, warmup_steps=500, reference_batch_size=16)
    assert training.scaled_for_batch(paper, 16) == paper  # the paper's batch: its numbers
    scaled = training.scaled_for_batch(paper, 128)
    assert scaled.learning_rate == pytest.approx(0.08) and scaled.warmup_steps == 62
    assert training.scaled_for_batch(TrainConfig(), 128) == TrainConfig()  # no reference: as given
    optimizer = training.build_optimizer(paper, total_steps=100000, batch_size=64)
    schedule = optimizer._learning_rate
    assert schedule.base_learning_rate == pytest.approx(0.04) and schedule.warmup_steps == 125
