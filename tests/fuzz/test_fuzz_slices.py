"""A short seeded slice of every fuzz harness in this folder: no finding in 200 cases (50 images, 100 calls).

The long campaigns run from the command line (``python -m tests.fuzz.<harness>
--cases 10000``); docs/RELIABILITY.md has their counts. Each harness's
regression inputs (the files that found the bugs fixed since) are replayed
by the tests beside the fixes.
"""

import os
import random
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzing

SLICE = 200


def _slice(module, cases=SLICE, seed=0, **kwargs):
    with tempfile.TemporaryDirectory() as workdir:
        check, seeds, mutators = module.make_check(workdir, **kwargs)
        report = fuzzing.run_campaign(module.__name__, check, seeds, mutators, cases, seed)
    assert not report["findings"], report["findings"][0]["error"]
    assert sum(report["outcomes"].values()) == cases + len(seeds)
    return report["outcomes"]


def test_coco_json_slice():
    import fuzz_coco_json

    outcomes = _slice(fuzz_coco_json)
    assert outcomes.get("ok", 0) > 0 and outcomes.get("CocoFormatError", 0) > 0


def test_yolo_slice():
    import fuzz_yolo

    outcomes = _slice(fuzz_yolo, cases=120)
    assert any(key.endswith("YoloFormatError") for key in outcomes)


def test_pth_slice():
    import fuzz_pth

    outcomes = _slice(fuzz_pth)
    assert outcomes.get("ok", 0) > 0 and outcomes.get("UnsafeCheckpointError", 0) + outcomes["CheckpointError"] > 0


def test_image_headers_slice():
    import fuzz_image_headers

    outcomes = _slice(fuzz_image_headers)
    assert outcomes.get("refused before decoding (named)", 0) > 0 and outcomes.get("decoded (mutant)", 0) > 0


def test_coco_images_slice():
    import fuzz_coco_images

    report = fuzz_coco_images.run(cases=50, seed=0)
    assert not report["findings"], report["findings"][0]["error"]
    assert report["outcomes"].get("decoded", 0) >= 7  # the seeds at least


@pytest.mark.slow
def test_litert_slice(tmp_path):
    pytest.importorskip("ai_edge_litert")
    import fuzz_litert

    tflite = fuzz_litert.export_small_model(str(tmp_path / "small.tflite"))
    outcomes = _slice(fuzz_litert, cases=100, tflite=tflite)
    assert outcomes.get("ok", 0) > 0 and outcomes.get("ValueError", 0) > 0


def test_the_oracle_catches_undocumented_errors():
    """A check that raises a bare KeyError, or an error that does not name the file, is a finding."""
    def check(data):
        if data[:1] == b"k":
            raise KeyError("images")
        try:
            raise ValueError("something is wrong")
        except ValueError as error:
            return fuzzing.expect_error(error, (ValueError,), "/data/file.json")

    report = fuzzing.run_campaign("oracle", check, [b"k", b"v"], [lambda data, rng: data], cases=4)
    assert len(report["findings"]) == 6
    assert "KeyError" in report["findings"][0]["error"] and "does not name" in report["findings"][1]["error"]


def test_mutations_are_reproducible_from_the_seed():
    seeds = [b"0123456789abcdef" * 4]
    first = [fuzzing.mutate_bytes(seeds[0], random.Random(f"7:{case}"), seeds) for case in range(20)]
    again = [fuzzing.mutate_bytes(seeds[0], random.Random(f"7:{case}"), seeds) for case in range(20)]
    assert first == again and len(set(first)) > 10
