"""The command line: main.py and the keras-retina console script, from an installed (non-editable) package."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_help_lists_the_modes():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), "--help"], capture_output=True, text=True, timeout=300
    )
    assert "keras-retina --mode=evaluate --model_dir=runs/shapes" in result.stdout, result.stderr[-2000:]
    for mode in ("train_and_evaluate", "evaluate", "export", "predict", "analyze"):
        assert mode in result.stdout


def test_python_m_keras_retina_cli_is_the_same_program(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "keras_retina.cli", "--experiment=nope", "--mode=analyze"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    assert "--experiment='nope': no file keras_retina/recipes/nope.py" in result.stderr


ENTRY_POINTS = {
    "main.py": [os.path.join(ROOT, "main.py")],
    "python -m keras_retina.cli": ["-m", "keras_retina.cli"],
    # What the installed keras-retina script runs (setup.cfg: keras_retina.cli:run).
    "keras-retina": ["-c", "import sys; sys.argv[0] = 'keras-retina'; from keras_retina.cli import run; run()"],
}


def test_every_entry_point_runs_alike_with_onednn_on(tmp_path):
    """The three ways to start the program set TensorFlow's environment the same way, before it loads."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    lines = {}
    for name, arguments in ENTRY_POINTS.items():
        result = subprocess.run(
            [sys.executable, *arguments, "--mode=convert", f"--model_dir={tmp_path / 'run'}"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode != 0 and "--mode=convert needs --init_weights" in result.stderr, name
        lines[name] = [line for line in result.stdout.splitlines() if line.startswith("keras_retina --mode=convert on ")]
    assert len({tuple(found) for found in lines.values()}) == 1, lines
    (line,) = lines["main.py"]
    assert "oneDNN on" in line, line
    off = subprocess.run(
        [sys.executable, *ENTRY_POINTS["keras-retina"], "--mode=convert"],
        cwd=tmp_path, env=dict(env, TF_ENABLE_ONEDNN_OPTS="0"), capture_output=True, text=True, timeout=300,
    )
    assert "oneDNN off" in off.stdout  # a user's own setting is kept
    # On CPUs where TensorFlow would leave oneDNN off (AVX2 only), the package is what turns it on.
    imported = subprocess.run(
        [sys.executable, "-c", "import os, keras_retina.cli; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert imported.stdout.strip() == "1", imported.stderr[-2000:]


def test_unknown_experiment_lists_the_known_ones(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "main.py"), "--experiment=nope", "--mode=analyze"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode != 0
    from keras_retina import recipes

    assert {"coco_r50_1x", "shapes", "voc_r50"} <= set(recipes.names())
    assert f"no file keras_retina/recipes/nope.py (known: {', '.join(recipes.names())})" in result.stderr


@pytest.mark.slow
def test_installed_package_runs_its_recipes_from_another_directory(tmp_path):
    """pip install (not editable) into a folder, then keras-retina --mode=analyze from elsewhere."""
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), ROOT],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    assert (site / "keras_retina" / "recipes" / "shapes.py").exists()
    assert (site / "keras_retina" / "recipes" / "weights" / "tiny_shapes.weights.h5").exists()
    assert not (site / "experiments").exists()  # the paper study stays in the checkout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy comes first on the path, before the checkout's editable install.
    env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="2")
    where = subprocess.run(
        [sys.executable, "-c", "import keras_retina.recipes as e; print(e.__file__)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    # Every recipe's config loads from the installed copy, its files (the shapes backbone) included.
    configs = subprocess.run(
        [sys.executable, "-c", "import os; from keras_retina import recipes\n"
         "for name in recipes.names():\n"
         "    weights = recipes.load(name).model.backbone_weights\n"
         "    print(name, weights if weights in (None, 'imagenet') else os.path.isfile(weights))"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )
    assert configs.returncode == 0, configs.stderr[-3000:]
    loaded = dict(line.split(" ", 1) for line in configs.stdout.strip().splitlines())
    assert {"coco_r50_1x", "shapes", "voc_r50"} <= set(loaded) and "False" not in loaded.values(), loaded
    result = subprocess.run(
        [
            str(site / "bin" / "keras-retina"),
            "--mode=analyze",
            "--model_dir=run",
            "--override=data.shapes_dir=shapes",
            "--override=data.shapes_num_train=4",
            "--override=data.shapes_num_val=6",
        ],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    coverage = json.loads((elsewhere / "run" / "anchor_coverage.json").read_text())
    assert coverage["num_images"] == 6 and coverage["num_boxes"] > 0
    assert (elsewhere / "shapes" / "val" / "annotations.json").exists()
    assert "iou" in result.stdout.lower()
