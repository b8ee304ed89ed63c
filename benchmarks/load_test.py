"""Serving under load: many threads send a mix of good and bad requests; errors, answers, memory and latency.

Two runtimes, each called in-process from ``--threads`` threads:

* ``saved_model``: the SavedModel's ``serving_default`` (loaded with
  ``tf.saved_model.load``; one loaded model shared by every thread, as TF
  Serving shares one), one encoded image a request;
* ``litert``: a ``.tflite`` file, each request decoded, checked and resized
  by the same functions the SavedModel runs
  (:mod:`keras_retina.deploy.requests`), then one
  :class:`keras_retina.deploy.litert.LiteRTDetector` per thread (a LiteRT
  interpreter must not be called from two threads at once).

The requests (:func:`make_requests`) mix valid PNG and JPEG images of
different sizes with bad bytes (truncated files, random bytes, wrong magic
bytes) and decompression bombs (headers announcing 18000 x 18000 pixels).
Each outcome is checked as it arrives (:func:`check_outcome`): every valid request
answered; every bad one refused with InvalidArgumentError and the message
its kind documents; every answer for a given image equal to that image's
reference answer (computed alone before the load), bit for bit. Resident
memory (``VmRSS`` of ``/proc/self/status``) is sampled after every request;
its growth between the first and the last quarter of the run (after a
warm-up pass) shows a leak. Latency percentiles are printed and written,
never asserted.

Example:
    python -m benchmarks.load_test --requests 3000 --threads 4 --output docs/load_test.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import bomb_files  # noqa: E402 (the decompression bombs the serving tests use)

#: What a refused request's InvalidArgumentError says, by kind of bad request.
EXPECTED_ERRORS = {
    "random bytes": r"input bytes are not a JPEG, PNG, GIF, BMP or WebP image",
    "wrong magic": r"input bytes are not a JPEG, PNG, GIF, BMP or WebP image",
    "truncated jpeg": r"",  # the JPEG decoder's own message (its magic bytes are right)
    "truncated png": r"",  # PNG: the header parser's or the decoder's
    "png bomb": r"request image 0 \(PNG, 18000 x 18000 pixels\) is over the limit of max_pixels=\d+ pixels",
    "jpeg bomb": r"request image 0 \(JPEG, 13000 x 13000 pixels\) is over the limit of max_pixels=\d+ pixels",
}
#: Sizes (height, width) of the valid images: smaller, equal to and larger than a 128-px model input.
IMAGE_SIZES = ((48, 64), (100, 150), (128, 128), (240, 320), (480, 360))


def _picture(height, width, seed):
    """A blocky RGB picture with a seeded rectangle layout (each seed a different image)."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), rng.integers(0, 80), np.uint8)
    for _ in range(3):
        y1, x1 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        y2, x2 = y1 + rng.integers(height // 8, height // 2), x1 + rng.integers(width // 8, width // 2)
        image[y1:y2, x1:x2] = rng.integers(0, 256, 3)
    return image


def valid_images(count: int = 10, seed: int = 0) -> list[tuple[str, bytes]]:
    """``count`` distinct valid images, ``(name, bytes)``: PNG and JPEG in turn, sizes from :data:`IMAGE_SIZES`."""
    images = []
    for index in range(count):
        height, width = IMAGE_SIZES[index % len(IMAGE_SIZES)]
        picture = _picture(height, width, seed + index)
        if index % 2:
            images.append((f"png {width}x{height} #{index}", tf.io.encode_png(picture).numpy()))
        else:
            images.append((f"jpeg {width}x{height} #{index}", tf.io.encode_jpeg(picture, quality=90).numpy()))
    return images


def bad_requests(valid: list[tuple[str, bytes]], seed: int = 0) -> list[tuple[str, bytes]]:
    """One request of each kind in :data:`EXPECTED_ERRORS`, ``(kind, bytes)``, made from ``valid``'s images."""
    rng = np.random.default_rng(seed)
    jpeg = next(data for name, data in valid if name.startswith("jpeg"))
    png = next(data for name, data in valid if name.startswith("png"))
    return [
        ("random bytes", rng.bytes(2000)),
        ("wrong magic", b"\x00" + jpeg[1:]),  # a whole JPEG whose first byte is wrong
        ("truncated jpeg", jpeg[: len(jpeg) // 3]),
        ("truncated png", png[: len(png) // 2]),
        ("png bomb", bomb_files.png(18000, 18000)),
        ("jpeg bomb", bomb_files.jpeg(13000, 13000)),
    ]


def make_requests(count: int, bad_fraction: float = 0.25, seed: int = 0, distinct: int = 10):
    """``count`` requests ``(kind, key, bytes)`` in a seeded random order.

    ``kind`` is ``"valid"`` or a key of :data:`EXPECTED_ERRORS`; ``key``
    names the image (identical images share it). About ``bad_fraction``
    of the requests are bad, spread over the bad kinds.
    """
    valid = valid_images(distinct, seed)
    bad = bad_requests(valid, seed)
    rng = np.random.default_rng(seed + 1)
    requests = []
    for _ in range(count):
        if rng.random() < bad_fraction:
            kind, data = bad[rng.integers(len(bad))]
            requests.append((kind, kind, data))
        else:
            name, data = valid[rng.integers(len(valid))]
            requests.append(("valid", name, data))
    return requests


def rss_mb() -> float:
    """This process's resident memory (``VmRSS`` of ``/proc/self/status``) in MB; NaN where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ------------------------------------------------------------------ runtimes
def saved_model_server(export_path: str):
    """``serve(bytes) -> dict of NumPy arrays`` over a SavedModel's ``serving_default``, shared by all threads."""
    signature = tf.saved_model.load(export_path).signatures["serving_default"]

    def serve(contents: bytes) -> dict:
        return {key: value.numpy() for key, value in signature(images=tf.constant([contents])).items()}

    return serve


def litert_server(tflite_path: str):
    """``serve(bytes) -> dict of NumPy arrays`` over a ``.tflite`` file: one LiteRTDetector per calling thread.

    The request is checked, decoded and resized as the SavedModel does it
    (:mod:`keras_retina.deploy.requests`); boxes are mapped back to the
    image's pixels.
    """
    from keras_retina.data import to_original_pixels
    from keras_retina.deploy.litert import LiteRTDetector
    from keras_retina.deploy.requests import check_encoded_images, decode_image, prepare_image

    local = threading.local()
    detectors = []
    lock = threading.Lock()

    def detector():
        if not hasattr(local, "detector"):
            local.detector = LiteRTDetector(tflite_path, num_threads=1)
            with lock:
                detectors.append(local.detector)
        return local.detector

    def serve(contents: bytes) -> dict:
        runner = detector()
        encoded = check_encoded_images(tf.constant([contents]))
        image, scale, image_shape = prepare_image(
            decode_image(encoded[0], tf.constant(0)), runner.image_size, runner.min_size, runner.max_size
        )
        out = runner(np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8))
        boxes = to_original_pixels(out["detection_boxes"], scale[None], image_shape[None]).numpy()
        return {**{key: np.asarray(value) for key, value in out.items()}, "detection_boxes": boxes}

    serve.detectors = detectors
    return serve


# ------------------------------------------------------------------ the load
def run_load(serve, requests, pool: ThreadPoolExecutor, reference: dict | None = None) -> dict:
    """Sends ``requests`` to ``serve`` from ``pool``'s threads; returns their problems, latencies and RSS samples.

    Each outcome is checked (:func:`check_outcome`, against ``reference``)
    as it arrives and then dropped: keeping thousands of answers (2.8 KB
    each) would itself grow RSS by tens of MB, which is how a first version
    of this test mistook its own bookkeeping for a leak.

    Returns:
        dict: ``problems`` (strings, in completion order), ``latency_s``
        (per request), ``rss_mb`` (after each completed request, in
        completion order), ``seconds`` (wall time).
    """
    latency = np.zeros(len(requests))
    rss = np.full(len(requests), np.nan)
    problems, lock, done = [], threading.Lock(), [0]

    def one(index):
        kind, key, contents = requests[index]
        start = time.perf_counter()
        try:
            outcome = ("ok", serve(contents))
        except Exception as error:  # noqa: BLE001 (every outcome is recorded and checked)
            outcome = ("error", type(error).__name__, getattr(error, "message", str(error)))
        latency[index] = time.perf_counter() - start
        problem = check_outcome(index, kind, key, outcome, reference) if reference is not None else None
        sample = rss_mb()
        with lock:
            rss[done[0]] = sample
            done[0] += 1
            if problem:
                problems.append(problem)

    start = time.perf_counter()
    list(pool.map(one, range(len(requests))))
    return {"problems": problems, "latency_s": latency, "rss_mb": rss, "seconds": time.perf_counter() - start}


def references(serve, requests) -> dict:
    """Each distinct valid image's answer, computed alone (one thread, one request at a time): ``{key: outputs}``."""
    answers = {}
    for kind, key, contents in requests:
        if kind == "valid" and key not in answers:
            answers[key] = serve(contents)
    return answers


def check_outcome(index: int, kind: str, key: str, outcome: tuple, reference: dict) -> str | None:
    """The problem with one request's outcome, or None when it is as documented.

    A valid request must be answered with exactly its image's reference
    outputs (bit for bit); a bad one must fail with InvalidArgumentError
    whose message matches its kind's :data:`EXPECTED_ERRORS` pattern.
    ``outcome`` is ``("ok", outputs)`` or ``("error", type name, message)``.
    """
    if kind == "valid":
        if outcome[0] != "ok":
            return f"request {index} ({key}): {outcome[1]}: {outcome[2][:300]}"
        for name, value in reference[key].items():
            if not np.array_equal(outcome[1][name], value):
                diff = np.abs(np.asarray(outcome[1][name], np.float64) - np.asarray(value, np.float64)).max()
                return f"request {index} ({key}): {name} differs from the reference by up to {diff}"
        return None
    if outcome[0] != "error" or outcome[1] != "InvalidArgumentError":
        return f"request {index} ({kind}): expected InvalidArgumentError, got {outcome[:2]}"
    if not re.search(EXPECTED_ERRORS[kind], outcome[2]):
        return f"request {index} ({kind}): unexpected message {outcome[2][:300]!r}"
    return None


def check_outcomes(requests, outcomes, reference: dict) -> list[str]:
    """The problems of a list of outcomes, one per request (:func:`check_outcome`); empty when all are as documented."""
    problems = [
        check_outcome(index, kind, key, outcome, reference)
        for index, ((kind, key, _), outcome) in enumerate(zip(requests, outcomes))
    ]
    return [problem for problem in problems if problem]


def rss_growth_mb(rss) -> float:
    """Median RSS of the last quarter of the samples minus that of the first quarter, in MB."""
    quarter = max(len(rss) // 4, 1)
    return float(np.median(rss[-quarter:]) - np.median(rss[:quarter]))


def summary(result: dict, requests) -> dict:
    """Latency percentiles (ms; valid and refused requests apart), RSS figures (MB) and throughput of a run."""
    valid = np.array([kind == "valid" for kind, _, _ in requests])
    latency_ms = result["latency_s"] * 1000
    rss = result["rss_mb"]

    def percentiles(values):
        return {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 95, 99)} if len(values) else {}

    return {
        "requests": len(requests),
        "valid": int(valid.sum()),
        "refused": int((~valid).sum()),
        "seconds": round(result["seconds"], 2),
        "requests_per_second": round(len(requests) / result["seconds"], 1),
        "latency_ms_valid": percentiles(latency_ms[valid]),
        "latency_ms_refused": percentiles(latency_ms[~valid]),
        "rss_mb_first_quarter": round(float(np.median(rss[: max(len(rss) // 4, 1)])), 1),
        "rss_mb_last_quarter": round(float(np.median(rss[-max(len(rss) // 4, 1) :])), 1),
        "rss_growth_mb": round(rss_growth_mb(rss), 1),
        "rss_mb_max": round(float(rss.max()), 1),
        # Median RSS of each tenth of the run: a leak climbs steadily, an allocator settling flattens out.
        "rss_mb_by_tenth": [round(float(np.median(part)), 1) for part in np.array_split(rss, 10) if len(part)],
    }


def load_test(serve, requests, threads: int) -> dict:
    """References, a warm-up pass, then the threaded run; returns :func:`summary` plus ``problems``.

    The warm-up sends the first ``8 * threads`` requests through the same
    threads as the run (each thread's first call builds what it keeps:
    LiteRT interpreters, TensorFlow's per-thread state), so that the RSS
    samples of the run show growth, not set-up.
    """
    reference = references(serve, requests)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        warmup = run_load(serve, requests[: 8 * threads], pool, reference)
        result = run_load(serve, requests, pool, reference)
    return {**summary(result, requests), "problems": warmup["problems"] + result["problems"]}


# ------------------------------------------------------------------ models
def build_exports(directory: str, image_size: int = 128, runtimes=("saved_model", "litert")) -> dict:
    """A small untrained RetinaNet (score threshold 0: 100 detections an image) exported for ``runtimes``."""
    import keras

    import keras_retina as kr
    from keras_retina.deploy import litert
    from keras_retina.deploy.saved_model import export_saved_model

    keras.utils.set_random_seed(0)
    model = kr.RetinaNet(
        num_classes=3, backbone="tiny", fpn_channels=32, head_channels=32, num_head_convs=2, score_threshold=0.0,
        backbone_weights=None,
    )
    model.build((None, image_size, image_size, 3))
    names, ids = ("a", "b", "c"), (1, 2, 3)
    paths = {}
    if "saved_model" in runtimes:
        paths["saved_model"] = export_saved_model(
            model, os.path.join(directory, "saved_model"), class_names=names, category_ids=ids, image_size=image_size
        )
    if "litert" in runtimes:
        paths["litert"] = litert.export_litert(
            model, os.path.join(directory, "model.tflite"), class_names=names, category_ids=ids, image_size=image_size
        )
    return paths


def _machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        name = re.search(r"model name\s*:\s*(.*)", text)[1]
        family = re.search(r"cpu family\s*:\s*(\d+)", text)[1]
        isa = "AVX-512" if "avx512f" in text else "AVX2" if "avx2" in text else "no AVX2"
        isa += " + AMX" if "amx_tile" in text else ""
        return f"{name} (family {family}, {isa}), {os.cpu_count()} cores"
    except (OSError, TypeError):
        return "unknown"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per runtime")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--runtimes", default="saved_model,litert", help="comma-separated: saved_model, litert")
    parser.add_argument("--bad_fraction", type=float, default=0.25)
    parser.add_argument("--output", default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    runtimes = [name for name in args.runtimes.split(",") if name]
    requests = make_requests(args.requests, args.bad_fraction)
    report = {"machine": _machine(), "date": time.strftime("%Y-%m-%d"), "threads": args.threads, "runtimes": {}}
    with tempfile.TemporaryDirectory() as directory:
        paths = build_exports(directory, runtimes=runtimes)
        for name in runtimes:
            serve = saved_model_server(paths[name]) if name == "saved_model" else litert_server(paths[name])
            start = time.perf_counter()
            result = load_test(serve, requests, args.threads)
            result["minutes"] = round((time.perf_counter() - start) / 60, 2)
            report["runtimes"][name] = result
            shown = {key: value for key, value in result.items() if key != "problems"}
            print(f"{name}: {json.dumps(shown)}")
            print(f"{name}: {len(result['problems'])} problems", *result["problems"][:10], sep="\n  ")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
