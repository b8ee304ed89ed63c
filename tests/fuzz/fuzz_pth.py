"""Fuzzes the ``.pth`` reader (``keras_retina.pretrained.pth.read_pth``): no code run, no allocation past the file.

Seeds: files from the library's ``write_pth`` and from tests/pth_files.py (torch's
zip and legacy layouts, a strided view, a Parameter, several dtypes).
Mutations: bytes of the whole file, and bytes of one zip entry (the pickle,
a storage, ``byteorder``) re-zipped with a valid CRC so that the reader gets
past the archive. Documented outcomes: the arrays, or ``CheckpointError`` /
``UnsafeCheckpointError`` naming the file. Invariants: the peak of Python and
NumPy allocations while reading (``tracemalloc``) stays under
``4 * file size + 1 MiB``, no array holds more bytes than twice the file,
and a pickle never runs code: no module is imported while reading (an unpickler that
resolved a global would import its module).

    python -m tests.fuzz.fuzz_pth --cases 10000 --seed 0
"""

from __future__ import annotations

import io
import os
import random
import sys
import tracemalloc
import zipfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzing
import pth_files

from keras_retina.pretrained.pth import CheckpointError, read_pth, write_pth

#: Largest allocation peak of one read: a few copies of the file's bytes, plus the unpickler's objects.
PEAK_LIMIT_FACTOR, PEAK_LIMIT_EXTRA = 4, 1 << 20


def _seed_files(workdir: str) -> list[bytes]:
    rng = np.random.default_rng(0)
    arrays = {"conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
              "bn.num_batches_tracked": np.array(7, np.int64), "fc.bias": np.arange(5, dtype=np.float16)}
    storage = pth_files.Storage(np.arange(12, dtype=np.float32))
    view = pth_files.Tensor(storage, (2, 3), (1, 2), 1)  # strided, offset: a transposed view
    paths = []
    path = os.path.join(workdir, "seed_library.pth")
    write_pth(path, arrays)
    paths.append(path)
    for legacy in (False, True):
        obj = pth_files.state_dict(arrays)
        obj["view"] = view
        obj["shared"] = pth_files.Tensor(storage, (12,))
        path = os.path.join(workdir, f"seed_{'legacy' if legacy else 'zip'}.pth")
        (pth_files.write_legacy if legacy else pth_files.write_zip)(path, obj)
        paths.append(path)
    path = os.path.join(workdir, "seed_wrapped.pth")
    pth_files.write_zip(path, {"model": pth_files.state_dict({"w": np.ones((2, 2), np.float64)}), "epoch": 3})
    paths.append(path)
    seeds = []
    for path in paths:
        with open(path, "rb") as f:
            seeds.append(f.read())
    return seeds


def mutate_zip_entry(data: bytes, rng: random.Random) -> bytes:
    """One entry of a zip checkpoint mutated and the archive rewritten (valid CRCs); other files: bytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = [(info.filename, archive.read(info)) for info in archive.infolist()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, NotImplementedError):
        return fuzzing.mutate_bytes(data, rng)
    if not entries:
        return fuzzing.mutate_bytes(data, rng)
    pickles = [i for i, (name, _) in enumerate(entries) if name.endswith("data.pkl")]
    index = rng.choice(pickles) if pickles and rng.random() < 0.6 else rng.randrange(len(entries))
    name, content = entries[index]
    if rng.random() < 0.1:
        name = rng.choice(("../evil.pkl", name + "x", "a/b/data.pkl", "archive/data.pkl"))
    entries[index] = (name, fuzzing.mutate_bytes(content, rng))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in entries:
            archive.writestr(name, content)
    return out.getvalue()


def make_check(workdir: str):
    """``(check, seeds, mutators)``; reads go through ``workdir/case.pth``."""
    seeds = _seed_files(workdir)
    path = os.path.join(workdir, "case.pth")

    def check(data: bytes) -> str:
        with open(path, "wb") as f:
            f.write(data)
        started = tracemalloc.is_tracing()
        if not started:
            tracemalloc.start()
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        modules = set(sys.modules)
        try:
            arrays = read_pth(path)
        except Exception as error:  # noqa: BLE001 (expect_error judges it)
            outcome = fuzzing.expect_error(error, (CheckpointError,), path)
            arrays = {}
        else:
            outcome = "ok"
        peak = tracemalloc.get_traced_memory()[1] - base
        # zipfile looks up the cp437 codec for names without the UTF-8 flag: a codec, not the pickle's doing.
        imported = sorted(m for m in set(sys.modules) - modules if not m.startswith("encodings."))
        if imported:
            raise fuzzing.Finding(f"reading imported {imported}")
        if not started:
            tracemalloc.stop()
        if peak > PEAK_LIMIT_FACTOR * len(data) + PEAK_LIMIT_EXTRA:
            raise fuzzing.Finding(f"reading {len(data)} bytes allocated {peak} bytes at its peak")
        if not isinstance(arrays, dict) or not all(
            isinstance(k, str) and isinstance(v, np.ndarray) for k, v in arrays.items()
        ):
            raise fuzzing.Finding(f"read_pth returned {type(arrays).__name__}, not a dict of arrays")
        total = sum(v.nbytes for v in arrays.values())
        if total > 2 * len(data):
            raise fuzzing.Finding(f"arrays of {total} bytes from a file of {len(data)}")
        return outcome

    return check, seeds, (fuzzing.mutate_bytes, mutate_zip_entry, mutate_zip_entry)


if __name__ == "__main__":
    sys.exit(fuzzing.main("fuzz_pth", make_check))
