"""Fuzzes the COCO-JSON source's image read (``keras_retina.data.coco_json.CocoJsonSource.dataset``).

Seeds: the JPEGs ``make_shapes_dataset`` writes, and the same pictures as
PNG, GIF, BMP and WebP bytes (under the JSON's ``.jpg`` names: the decoder
goes by the bytes). Mutations: bytes. A tf.data pass costs ~0.1 s, so a
group of ``GROUP`` mutated images is written under one JSON and read in
one pass; each image is one case. With ``skip_invalid=True`` every image
must come out decoded at the JSON's size or be counted with a reason that
names its file and image id (never both, never neither: nothing dropped
silently); with ``skip_invalid=False`` the pass must stop at the first
invalid image with ``InvalidArgumentError`` naming it.

Training data is trusted input: this reader has no pixel limit (the serving
path has one, fuzz_image_headers). To keep the shared machine safe, mutants
whose header announces more than ``HARNESS_MAX_PIXELS`` are not decoded and
are counted apart.

    python -m tests.fuzz.fuzz_coco_images --cases 10000 --seed 0
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import random
import re
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzing

from keras_retina.data import make_shapes_dataset
from keras_retina.data.coco_json import CocoJsonSource
from keras_retina.data.image_headers import clamped_area, read_image_size

GROUP = 100
HARNESS_MAX_PIXELS = 4_000_000


def _seeds(files) -> tuple[list[bytes], dict]:
    with open(files.annotation_file) as f:
        coco = json.load(f)
    seeds = []
    for image in coco["images"]:
        with open(os.path.join(files.image_dir, image["file_name"]), "rb") as f:
            seeds.append(f.read())
    picture = np.asarray(Image.open(io.BytesIO(seeds[0])).convert("RGB"))
    for fmt in ("PNG", "GIF", "BMP", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format=fmt)
        seeds.append(buffer.getvalue())
    return seeds, coco


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _announced_pixels(contents):
    size = read_image_size(contents)
    return tf.maximum(clamped_area(size["width"], size["height"]), size["frame_pixels"])


def _announced(data: bytes) -> int:
    try:
        return int(_announced_pixels(tf.constant(data)))
    except tf.errors.InvalidArgumentError:  # a JPEG header libjpeg cannot parse: the decoder refuses it too
        return 0


def run_group(workdir: str, coco: dict, mutants: list[bytes]) -> list[str]:
    """The outcome of each mutant: read under one JSON, lenient pass then strict pass."""
    image_dir = os.path.join(workdir, "images")
    os.makedirs(image_dir, exist_ok=True)
    template = coco["images"][0]
    images, annotations, outcomes = [], [], [None] * len(mutants)
    for index, data in enumerate(mutants):
        if _announced(data) > HARNESS_MAX_PIXELS:
            outcomes[index] = "not decoded: header over the harness's cap"
            continue
        name = f"case{index}.jpg"
        with open(os.path.join(image_dir, name), "wb") as f:
            f.write(data)
        images.append(dict(template, id=index + 1, file_name=name))
    annotation_file = os.path.join(workdir, "group.json")
    with open(annotation_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": coco["categories"]}, f)
    paths = {image["id"]: os.path.join(image_dir, image["file_name"]) for image in images}

    source = CocoJsonSource(annotation_file, image_dir, skip_invalid=True)
    yielded = {}
    for example in source.dataset(num_parallel_calls=1, deterministic=True):
        yielded[int(example["image_id"])] = tuple(example["image"].shape)
    reasons = "\n".join(source.stats.reasons)
    invalid = []
    for image_id, path in paths.items():
        named = f"Image file {path} (image_id {image_id}," in reasons
        if image_id in yielded and named:
            raise fuzzing.Finding(f"image {path} both yielded and counted as skipped")
        if image_id in yielded:
            if yielded[image_id] != (template["height"], template["width"], 3):
                raise fuzzing.Finding(f"image {path} yielded at {yielded[image_id]}, not the JSON's size")
            outcomes[image_id - 1] = "decoded"
        elif named:
            reason = re.search(rf"image_id {image_id}, [^)]*\) is invalid: ([a-zA-Z ]+)", reasons)
            outcomes[image_id - 1] = "skipped: " + (reason[1].strip() if reason else "?")
            invalid.append(image_id)
        else:
            raise fuzzing.Finding(f"image {path} neither yielded nor counted: dropped silently")

    strict = CocoJsonSource(annotation_file, image_dir, skip_invalid=False)
    try:
        for _ in strict.dataset(num_parallel_calls=1, deterministic=True):
            pass
    except tf.errors.InvalidArgumentError as error:
        first = min(invalid) if invalid else None
        if first is None or f"Image file {paths[first]} (image_id {first}," not in error.message:
            raise fuzzing.Finding(f"strict pass failed without naming the first invalid image: {error.message[:300]}")
    else:
        if invalid:
            raise fuzzing.Finding(f"strict pass read images {invalid} that the lenient pass skipped")
    return outcomes


def run(cases: int, seed: int, findings_dir: str | None = None, verbose: bool = False) -> dict:
    """``cases`` mutated images in groups of ``GROUP``; the counts by outcome and the findings."""
    started = time.monotonic()
    outcomes, findings = collections.Counter(), []
    with tempfile.TemporaryDirectory() as workdir:
        files = make_shapes_dataset(os.path.join(workdir, "shapes"), num_images=3, seed=3, image_size=(64, 96),
                                    verbose=False)
        seeds, coco = _seeds(files)
        for group in range(-1, (cases + GROUP - 1) // GROUP):
            rng = random.Random(f"{seed}:{group}")
            if group < 0:
                mutants = list(seeds)  # the seeds themselves: every one decodes
            else:
                count = min(GROUP, cases - group * GROUP)
                mutants = [fuzzing.mutate_bytes(rng.choice(seeds), rng, seeds) for _ in range(count)]
            try:
                results = run_group(os.path.join(workdir, f"group{group}"), coco, mutants)
            except Exception as error:  # noqa: BLE001 (a finding, recorded)
                results = [f"finding: {type(error).__name__}"] * len(mutants)
                record = {"group": group, "error": str(error)[-3000:]}
                if findings_dir:
                    os.makedirs(findings_dir, exist_ok=True)
                    record["inputs"] = []
                    for index, data in enumerate(mutants):
                        record["inputs"].append(os.path.join(findings_dir, f"coco_images-{seed}-{group}-{index}.bin"))
                        with open(record["inputs"][-1], "wb") as f:
                            f.write(data)
                findings.append(record)
                if verbose:
                    print(f"[fuzz_coco_images] group {group}: {error}", file=sys.stderr)
            if group < 0 and any(result != "decoded" for result in results) and not findings:
                findings.append({"group": group, "error": f"a seed does not decode: {results}"})
            outcomes.update(results)
    return {"target": "fuzz_coco_images", "cases": cases, "seed": seed,
            "seconds": round(time.monotonic() - started, 1), "outcomes": dict(sorted(outcomes.items())),
            "findings": findings}


def main(argv=None) -> int:
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.fuzz_coco_images")
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--findings", default="fuzz_findings")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = run(args.cases, args.seed, args.findings, verbose=True)
    print(json.dumps({k: v for k, v in report.items() if k != "findings"} | {"findings": len(report["findings"])}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if report["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
