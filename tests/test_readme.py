"""The README's "Using the library" example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_usage_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text.split("## Using the library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert (tmp_path / "retinanet.keras").exists()
    assert namespace["detections"]["boxes"].shape == (2, 100, 4)
    assert set(namespace["history"].history) >= {"loss", "cls_loss", "box_loss", "num_positives"}
    assert "(2, 100, 4)" in capsys.readouterr().out
