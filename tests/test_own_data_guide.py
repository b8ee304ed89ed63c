"""docs/OWN_DATA.md runs as written: each of its commands, in order, on a small generated dataset.

The guide's ```bash blocks hold one command each. The test puts a tiny
COCO-format dataset (and its YOLO copy) where the guide's flags say, then runs
every ``python main.py`` command from a temporary working directory with only
flags that keep it CPU-small and offline added: a local torchvision-format
``.pth`` as ``--init_weights`` (nothing is downloaded; an HTTP(S) proxy that
refuses connections makes any download attempt fail), 128-pixel images, batch
2, one epoch of two steps. TF Serving's container is not run: a stand-in for
its REST API in this process runs the exported SavedModel's
``serving_default`` for the guide's client command.
"""

import base64
import http.server
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow as tf

import keras_retina as kr
from keras_retina.pretrained import torchvision as tv

REPO = pathlib.Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "OWN_DATA.md"

#: (step, what the command is) of each ```bash block of the guide, in order.
EXPECTED_COMMANDS = [
    (1, "analyze coco_json"),
    (1, "analyze yolo"),
    (2, "train_and_evaluate coco_json"),
    (3, "evaluate"),
    (4, "export saved_model"),
    (4, "export litert"),
    (5, "docker"),
    (5, "serving_client"),
    (5, "predict"),
]
#: What each kind of command gets added to run on 2 CPU cores in about a minute, offline.
IMAGE_SIZE = 128
SMALL_TRAINING = [f"--image_size={IMAGE_SIZE}", "--batch_size=2", "--epochs=1", "--steps_per_epoch=2",
                  "--override=train.tensorboard=false"]
#: Two of the shapes classes renamed to COCO classes, so fine-tuning keeps their rows of the COCO head.
COCO_NAMES = {"circle": "sports ball", "square": "tv"}


def guide_commands(text: str) -> list[tuple[int, list[str]]]:
    """``(step, argv)`` of each ```bash block under a ``## N.`` heading, in order; one command a block."""
    commands, step = [], None
    for match in re.finditer(r"^## (\d+)\. |^```bash\n(.*?)^```", text, re.M | re.S):
        if match.group(1):
            step = int(match.group(1))
            continue
        lines = [line.strip() for line in match.group(2).replace("\\\n", " ").splitlines()]
        lines = [line for line in lines if line and not line.startswith("#")]
        assert len(lines) == 1, f"a ```bash block of the guide (step {step}) must hold one command, got {lines}"
        assert step is not None, f"a ```bash block before the first numbered step: {lines[0]}"
        commands.append((step, shlex.split(lines[0], comments=True)))
    return commands


def _flags(argv: list[str]) -> dict:
    flags = {}
    for arg in argv[2:]:
        assert re.fullmatch(r"--\w+=.+", arg), f"flags in the guide are written --name=value, got {arg!r} in {argv}"
        name, value = arg[2:].split("=", 1)
        flags[name] = value
    return flags


def _kind(argv: list[str]) -> str:
    if argv[0] == "docker":
        return "docker"
    if argv[:2] == ["python", "examples/serving_client.py"]:
        return "serving_client"
    assert argv[:2] == ["python", "main.py"], f"unexpected command in the guide: {shlex.join(argv)}"
    flags = _flags(argv)
    mode = flags.get("mode", "train_and_evaluate")
    if mode == "export":
        return f"export {flags.get('format', 'saved_model')}"
    return f"{mode} {flags['dataset']}" if "dataset" in flags else mode


def _put_data_where_the_guide_says(cwd: pathlib.Path, flags: dict) -> None:
    """A 16-image train and 6-image val split of shapes, at the guide's paths (two classes given COCO names)."""
    for split, num_images, seed in (("train", 16, 1), ("val", 6, 2)):
        files = kr.data.make_shapes_dataset(
            cwd / "generated" / split, num_images, seed=seed, image_size=(IMAGE_SIZE, IMAGE_SIZE), verbose=False
        )
        annotations = json.loads(pathlib.Path(files.annotation_file).read_text())
        for category in annotations["categories"]:
            category["name"] = COCO_NAMES.get(category["name"], category["name"])
        annotation_file = cwd / flags[f"{split}_annotations"]
        annotation_file.parent.mkdir(parents=True, exist_ok=True)
        annotation_file.write_text(json.dumps(annotations))
        shutil.copytree(files.image_dir, cwd / flags[f"{split}_images"])


def _yolo_copy(cwd: pathlib.Path, coco_flags: dict, data_yaml: str) -> None:
    splits = {split: (str(cwd / coco_flags[f"{split}_annotations"]), str(cwd / coco_flags[f"{split}_images"]))
              for split in ("train", "val")}
    written = kr.data.write_yolo_dataset(cwd / os.path.dirname(data_yaml), splits)
    assert os.path.basename(written) == os.path.basename(data_yaml)


def _offline_env(tmp_path: pathlib.Path) -> dict:
    env = dict(os.environ)
    refused = "http://127.0.0.1:9"  # the discard port: nothing listens, so a download fails at once
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[name] = refused
    env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1"  # the client's request to the stand-in server
    env["KERAS_RETINA_CACHE"] = str(tmp_path / "empty_cache")  # no cached COCO weights to fall back on
    return env


def _run(argv: list[str], cwd: pathlib.Path, env: dict) -> str:
    """Runs a guide command (``python X`` as this interpreter on the repository's X); its output, or fails."""
    assert argv[0] == "python"
    command = [sys.executable, str(REPO / argv[1]), *argv[2:]]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"`{shlex.join(argv)}` failed ({result.returncode}):\n{output[-6000:]}"
    return output


def _with_flag(argv: list[str], name: str, value: str) -> list[str]:
    return [arg for arg in argv if not arg.startswith(f"--{name}=")] + [f"--{name}={value}"]


class _ServingStandIn(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST ``:predict`` in row format, running a SavedModel's ``serving_default``."""

    signature = None
    path_expected = None
    requests = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if self.path != self.path_expected or body.get("signature_name") != "serving_default":
            self.send_error(404, f"no model at {self.path}")
            return
        images = tf.constant([base64.b64decode(instance["b64"]) for instance in body["instances"]])
        outputs = {key: value.numpy() for key, value in type(self).signature(images=images).items()}
        rows = [{key: value[i].tolist() for key, value in outputs.items()} for i in range(len(body["instances"]))]
        payload = json.dumps({"predictions": rows}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_guide_has_the_five_steps_in_order():
    commands = guide_commands(GUIDE.read_text())
    assert [(step, _kind(argv)) for step, argv in commands] == EXPECTED_COMMANDS
    assert re.findall(r"^## (\d+)\. ", GUIDE.read_text(), re.M) == ["1", "2", "3", "4", "5"]
    by_kind = {_kind(argv): argv for _, argv in commands}
    analyze, train = _flags(by_kind["analyze coco_json"]), _flags(by_kind["train_and_evaluate coco_json"])
    # Train on the data the check looked at; the recipe and its weights are the defaults, not flags.
    assert {k: v for k, v in analyze.items() if k != "mode"} == train
    assert not {"experiment", "init_weights"} & set(train)
    main_commands = [argv for _, argv in commands if argv[:2] == ["python", "main.py"]]
    assert {_flags(argv)["model_dir"] for argv in main_commands} == {"runs/mydata"}


@pytest.mark.slow
def test_every_command_of_the_guide_runs(tmp_path):
    commands = guide_commands(GUIDE.read_text())
    assert [(step, _kind(argv)) for step, argv in commands] == EXPECTED_COMMANDS
    by_kind = {_kind(argv): argv for _, argv in commands}
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = _offline_env(tmp_path)
    run_dir = cwd / "runs" / "mydata"
    coco_flags = _flags(by_kind["analyze coco_json"])
    _put_data_where_the_guide_says(cwd, coco_flags)
    weights = tmp_path / "coco_v2.pth"  # torchvision's COCO RetinaNet v2 layout, random values
    state = tv.random_state_dict("v2", num_classes=91, seed=0)
    state["head.classification_head.cls_logits.bias"] += 4.0  # scores near 0.4: detections to serve
    kr.pretrained.write_pth(weights, state)

    # 1. Check the data: COCO JSON, then the YOLO variant on the same images and boxes.
    output = _run(_with_flag(by_kind["analyze coco_json"], "image_size", str(IMAGE_SIZE)), cwd, env)
    assert "No errors: training can start." in output
    report = json.loads((run_dir / "preflight.json").read_text())
    assert report["ok"] is True and report["image_size"] == IMAGE_SIZE
    assert report["splits"]["train"]["images"] == 16 and report["splits"]["val"]["images"] == 6
    assert (run_dir / "anchor_coverage.json").exists()
    yolo = by_kind["analyze yolo"]
    _yolo_copy(cwd, coco_flags, _flags(yolo)["data_yaml"])
    yolo = _with_flag(_with_flag(yolo, "model_dir", "runs/mydata_yolo"), "image_size", str(IMAGE_SIZE))
    assert "No errors: training can start." in _run(yolo, cwd, env)
    yolo_report = json.loads((cwd / "runs" / "mydata_yolo" / "preflight.json").read_text())
    for split in ("train", "val"):
        for key in ("images", "boxes", "boxes_per_class"):
            assert yolo_report["splits"][split][key] == report["splits"][split][key], (split, key)

    # 2. Train from COCO weights: the finetune_coco recipe, from the local file.
    train = by_kind["train_and_evaluate coco_json"] + [f"--init_weights={weights}", *SMALL_TRAINING]
    output = _run(train, cwd, env)
    assert "Done in" in output
    assert (run_dir / "checkpoints" / "latest.keras").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 1.0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["name"] == "finetune_coco"
    assert config["train"]["optimizer"] == "sgd" and config["train"]["init_weights"] == str(weights)
    assert config["model"]["backbone"] == "torchvision_resnet50"
    class_names = json.loads((run_dir / "classes.json").read_text())
    assert "sports ball" in json.dumps(class_names)

    # 3. Evaluate with the report (training wrote both: removed, so the evaluation must write them again).
    shutil.rmtree(run_dir / "report")
    os.remove(run_dir / "metrics.json")
    output = _run(by_kind["evaluate"], cwd, env)
    assert "Report: runs/mydata/report/report.md" in output
    assert (run_dir / "report" / "report.md").read_text().startswith("# Evaluation report")
    assert 0.0 <= json.loads((run_dir / "metrics.json").read_text())["AP"] <= 1.0

    # 4. Export: a second SavedModel version beside training's, and the LiteRT file.
    output = _run(by_kind["export saved_model"], cwd, env)
    assert "SavedModel written to runs/mydata/export/2" in output
    assert (run_dir / "export" / "2" / "saved_model.pb").exists()
    output = _run(by_kind["export litert"], cwd, env)
    assert "LiteRT model written to runs/mydata/export/model.tflite" in output
    assert (run_dir / "export" / "model.tflite").stat().st_size > 1_000_000

    # 5. Serve. TF Serving's container is not run here: what it is given is checked.
    docker = by_kind["docker"]
    assert docker[:2] == ["docker", "run"] and docker[-1] == "tensorflow/serving"
    assert "source=$PWD/runs/mydata/export,target=/models/retinanet" in docker[docker.index("--mount") + 1]
    model_name = docker[docker.index("-e") + 1].removeprefix("MODEL_NAME=")
    assert model_name == "retinanet"
    val_images = cwd / coco_flags["val_images"]
    photo = cwd / _flags(by_kind["predict"])["image"]
    shutil.copy(sorted(val_images.iterdir())[0], photo)
    jpeg = photo.read_bytes()
    assert jpeg[:2] == b"\xff\xd8"
    # The SavedModel's serving_default on the JPEG's bytes, as TF Serving would run it.
    signature = tf.saved_model.load(str(run_dir / "export" / "2")).signatures["serving_default"]
    served = signature(images=tf.constant([jpeg]))
    assert served["detection_boxes"].dtype == tf.float32 and served["detection_boxes"].shape[0] == 1
    assert served["detection_boxes"].shape[2] == 4
    assert served["detection_scores"].dtype == tf.float32 and served["detection_classes"].dtype == tf.int64
    assert served["num_detections"].dtype == tf.int32 and served["num_detections"].shape == (1,)
    count = int(served["num_detections"][0])
    # The COCO rows kept for "sports ball" and "tv" score near 0.4 (their bias + 4): detections to compare.
    assert 0 < count <= served["detection_boxes"].shape[1]
    categories = json.loads((cwd / coco_flags["val_annotations"]).read_text())["categories"]
    category_ids = {category["id"] for category in categories}
    assert set(served["detection_classes"].numpy()[0, :count].tolist()) <= category_ids
    boxes = served["detection_boxes"].numpy()[0, :count]
    assert np.all(boxes >= 0.0) and np.all(boxes <= IMAGE_SIZE)
    # The guide's client, against a stand-in for TF Serving's REST API running that signature.
    _ServingStandIn.signature = signature
    _ServingStandIn.path_expected = f"/v1/models/{model_name}:predict"
    _ServingStandIn.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ServingStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = by_kind["serving_client"] + [f"--port={server.server_address[1]}", "--min_score=0"]
        output = _run(client, cwd, env)
    finally:
        server.shutdown()
        server.server_close()
    assert [path for path, _ in _ServingStandIn.requests] == [_ServingStandIn.path_expected]
    printed = [line for line in output.splitlines() if line.startswith("  category")]
    assert f"{photo.name}:" in output.splitlines() and len(printed) == count
    # The local way: --mode=predict on the photo.
    _run(by_kind["predict"], cwd, env)
    detections = json.loads((run_dir / "predictions" / "detections.json").read_text())
    assert isinstance(detections, list) and len(detections) == count
    for detection in detections:
        assert detection["image_id"] == photo.stem and detection["category_id"] in category_ids
        assert len(detection["bbox"]) == 4 and 0.0 <= detection["score"] <= 1.0
    assert (run_dir / "predictions" / f"{photo.stem}.png").exists()
