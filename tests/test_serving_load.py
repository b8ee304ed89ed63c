"""Serving under load, in-process and bounded: a SavedModel and a .tflite file called from four threads.

A few hundred requests mixing valid PNG and JPEG images of five sizes with
bad bytes and decompression bombs (benchmarks/load_test.py makes them and
checks the outcomes; ``python -m benchmarks.load_test`` is the long run,
whose figures are in docs/RELIABILITY.md). Every valid request is answered
with its image's answer computed alone, bit for bit; every bad one is
refused with the documented InvalidArgumentError; resident memory does not
grow with the requests. Latency is printed, never asserted.
"""

import numpy as np
import pytest

from benchmarks import load_test

THREADS = 4


def leak_bound_mb(requests: int) -> float:
    """The largest RSS growth (MB, first to last quarter of a run) accepted for ``requests`` requests.

    The medians of the first and last quarters are about half the run
    apart, so a leak of L MB a request grows RSS by about L * requests / 2:
    0.2 MB a request is caught from a leak of 0.4 MB a request up (the runs
    measured grow by 1-2 MB in all), with room for the allocator's noise.
    """
    return 0.2 * requests


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return load_test.build_exports(str(tmp_path_factory.mktemp("load")), runtimes=("saved_model", "litert"))


def _assert_served_as_documented(result, requests):
    print({key: value for key, value in result.items() if key != "problems"})
    assert result["problems"] == [], "\n".join(result["problems"][:20])
    kinds = {kind for kind, _, _ in requests}
    assert kinds == {"valid", *load_test.EXPECTED_ERRORS}, kinds  # every bad kind was sent
    assert result["valid"] > result["refused"] > 0
    assert result["rss_growth_mb"] <= leak_bound_mb(len(requests)), result


def test_saved_model_under_load_from_four_threads(exports):
    requests = load_test.make_requests(240, seed=1)
    serve = load_test.saved_model_server(exports["saved_model"])
    _assert_served_as_documented(load_test.load_test(serve, requests, THREADS), requests)


def test_litert_under_load_with_one_interpreter_per_thread(exports):
    """LiteRTDetector is not thread-safe: each thread has its own (benchmarks.load_test.litert_server)."""
    requests = load_test.make_requests(120, seed=2)
    serve = load_test.litert_server(exports["litert"])
    _assert_served_as_documented(load_test.load_test(serve, requests, THREADS), requests)
    # One per thread, built by its first request, not per request: the 4 load threads' and the main thread's
    # (which computed the reference answers).
    assert len(serve.detectors) == THREADS + 1


def test_the_checks_catch_a_leak_a_wrong_answer_and_a_wrong_error(exports):
    """The load test's own checks fail where they should: 1 MB leaked a request, answers or refusals changed."""
    requests = load_test.make_requests(80, seed=3)
    serve = load_test.saved_model_server(exports["saved_model"])
    leaked = []

    def leaking(contents):
        leaked.append(np.ones(1 << 18, np.float32))  # 1 MB, written: resident
        return serve(contents)

    result = load_test.load_test(leaking, requests, THREADS)
    assert result["problems"] == []
    assert result["rss_growth_mb"] > leak_bound_mb(len(requests)), result
    leaked.clear()
    reference = load_test.references(serve, requests)
    outcomes = [("ok", reference[key]) if kind == "valid" else ("error", "InvalidArgumentError", "refused")
                for kind, key, _ in requests]
    first_valid = next(i for i, (kind, _, _) in enumerate(requests) if kind == "valid")
    changed = dict(outcomes[first_valid][1])
    changed["detection_scores"] = changed["detection_scores"] + np.float32(1e-6)
    outcomes[first_valid] = ("ok", changed)
    problems = load_test.check_outcomes(requests, outcomes, reference)
    assert any(f"request {first_valid} " in p and "detection_scores differs" in p for p in problems), problems
    # "refused" is not the documented message of random bytes, wrong magic or a bomb.
    assert any("unexpected message 'refused'" in p for p in problems), problems
