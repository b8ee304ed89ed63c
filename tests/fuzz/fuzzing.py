"""The fuzzing engine every harness in this folder shares: seeded mutations, one outcome per case, findings saved.

Engine: a seeded mutation loop (byte-level mutations for every file, plus
structure-aware ones for JSON, YAML and label text), not atheris. atheris 3.0
does install here (Python 3.11), but its runs are driven by libFuzzer's own
randomness and coverage feedback, so the CI slice would not be reproducible
from a seed, its instrumentation of TensorFlow-heavy imports is slow, and it
stops at the first finding while the campaign must count every outcome;
``--atheris`` runs the same target and oracle under it when it is installed.

A harness gives ``check(data: bytes) -> str``: the name of the outcome (``"ok"``,
or the documented error type it raised) or an exception (a finding). The loop
counts outcomes, saves each finding's input and traceback under
``--findings`` and stops a case that runs past ``--case_timeout`` seconds (a hang).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS_DIR not in sys.path:  # the seed writers: tests/pth_files.py, tests/bomb_files.py
    sys.path.insert(0, TESTS_DIR)

#: Integers that break parsers: sign and width boundaries.
INTERESTING_INTS = (0, 1, -1, 2, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -(2**63), 10**30)
_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)


class Finding(AssertionError):
    """An outcome outside the documented ones: a crash, a wrong error type, a broken invariant."""


class CaseTimeout(BaseException):
    """A case ran past its time limit (a hang)."""


def mutate_bytes(data: bytes, rng: random.Random, seeds: Sequence[bytes] = ()) -> bytes:
    """1 to 4 random byte-level mutations of ``data`` (libFuzzer's kinds: flip, set, insert, erase, copy, splice)."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(9)
        position = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # flip a bit
            position %= len(data)
            data[position] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:  # an interesting byte
            data[position % len(data)] = rng.choice(_INTERESTING_BYTES)
        elif kind == 2:  # insert random bytes
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3 and data:  # erase a range
            del data[position : position + rng.randint(1, max(1, len(data) // 8))]
        elif kind == 4 and data:  # copy a range elsewhere
            start = rng.randrange(len(data))
            chunk = data[start : start + rng.randint(1, 64)]
            data[position:position] = chunk
        elif kind == 5:  # truncate
            del data[position:]
        elif kind == 6 and len(data) >= 4:  # an interesting 16/32-bit integer, either byte order
            width = rng.choice((2, 4))
            position = rng.randrange(len(data) - width + 1)
            value = rng.choice(INTERESTING_INTS) % (1 << (8 * width))
            data[position : position + width] = value.to_bytes(width, rng.choice(("little", "big")))
        elif kind == 7 and seeds:  # splice with another seed
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            data[position:] = other[cut:]
        elif kind == 8 and data:  # one random byte
            data[position % len(data)] = rng.randrange(256)
    return bytes(data)


def random_json_value(rng: random.Random, depth: int = 0):
    """A JSON value of any type, with the edge cases readers mishandle (huge ints, NaN, nesting, odd text)."""
    kind = rng.randrange(12 if depth < 3 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice((True, False))
    if kind == 2:
        return rng.choice(INTERESTING_INTS + (10**400, -(10**400)))
    if kind == 3:
        return rng.choice((0.5, -0.0, 1e308, -1e308, 1e-320, float("nan"), float("inf"), float("-inf")))
    if kind == 4:
        return rng.choice(("", "x", "\u00e9", "\ud800", "a/b", "../x.png", "\x00", "0", "1", "NaN", "1e999"))
    if kind == 5:
        return rng.randint(-5, 70)
    if kind == 6:
        return rng.uniform(-10, 100)
    if kind == 7:
        return "".join(chr(rng.randrange(1, 0x3000)) for _ in range(rng.randint(0, 6)))
    if kind in (8, 9):
        return [random_json_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if kind == 10:
        return {str(random_json_value(rng, depth + 1))[:8]: random_json_value(rng, depth + 1) for _ in range(3)}
    nested = []  # nesting (deeper: nest_deeply, on the text, as json.dumps has a recursion limit of its own)
    for _ in range(rng.choice((50, 300))):
        nested = [nested]
    return nested


def mutate_tree(value, rng: random.Random):
    """``value`` (parsed JSON or YAML) with one random node replaced, deleted, duplicated or retyped (a copy)."""
    value = json.loads(json.dumps(value))
    parents = []  # (container, key) of every node

    def walk(node):
        if isinstance(node, dict):
            for key in list(node):
                parents.append((node, key))
                walk(node[key])
        elif isinstance(node, list):
            for index in range(len(node)):
                parents.append((node, index))
                walk(node[index])

    walk(value)
    if not parents:
        return random_json_value(rng)
    container, key = rng.choice(parents)
    kind = rng.randrange(5)
    if kind == 0:
        del container[key]
    elif kind == 1 and isinstance(container, list):
        container.insert(key, json.loads(json.dumps(container[key])))  # a duplicate (repeated ids)
    elif kind == 2 and isinstance(container[key], (int, float)) and not isinstance(container[key], bool):
        number = container[key]
        container[key] = rng.choice((-number, number * 1000, number + 0.5, number - 1, 0, str(number)))
    else:
        container[key] = random_json_value(rng)
    return value


def nest_deeply(data: bytes, rng: random.Random) -> bytes:
    """JSON or YAML text with a value nested 10,000 to 200,000 lists deep after a random ``:`` (recursion limits)."""
    colons = [i for i, byte in enumerate(data) if byte == ord(":")]
    depth = rng.choice((10_000, 200_000))
    at = (rng.choice(colons) + 1) if colons else 0
    ends = [end for end in (data.find(b",", at), data.find(b"\n", at)) if end >= 0]
    end = min(ends, default=len(data))
    return data[:at] + b" " + b"[" * depth + b"]" * depth + data[end:]


def run_campaign(
    name: str,
    check: Callable[[bytes], str],
    seeds: Sequence[bytes],
    mutators: Sequence[Callable[[bytes, random.Random], bytes]],
    cases: int,
    seed: int = 0,
    findings_dir: str | None = None,
    case_timeout: float = 20.0,
    verbose: bool = False,
) -> dict:
    """Runs ``cases`` mutated inputs through ``check``; returns the counts by outcome and the findings.

    Case ``i`` uses ``random.Random(f"{seed}:{i}")``: any case reruns alone from
    ``(seed, i)``. The seeds themselves run first, as cases ``-len(seeds) .. -1``.

    Returns:
        ``{"target", "cases", "seed", "seconds", "outcomes": {name: count},
        "findings": [{"case", "error", "input"}]}`` (``input`` a file under
        ``findings_dir`` when given).
    """
    outcomes = collections.Counter()
    findings = []
    started = time.monotonic()

    def on_alarm(signum, frame):
        raise CaseTimeout(f"case ran past {case_timeout} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        for case in range(-len(seeds), cases):
            rng = random.Random(f"{seed}:{case}")
            if case < 0:
                data = seeds[case + len(seeds)]
            else:
                data = rng.choice(seeds)
                try:
                    data = rng.choice(mutators)(data, rng)
                except (RecursionError, OverflowError, ValueError):  # a mutation that cannot be written
                    pass  # (nested past json.dumps' limit, a huge int times a float): this case is the seed
            signal.setitimer(signal.ITIMER_REAL, case_timeout)
            try:
                outcome = check(data)
            except CaseTimeout:
                outcome, error = "finding: hang", traceback.format_exc()
            except Exception as exception:  # noqa: BLE001 (everything here is a finding, recorded below)
                outcome, error = f"finding: {type(exception).__name__}", traceback.format_exc()
            else:
                error = None
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            outcomes[outcome] += 1
            if error is not None:
                record = {"case": case, "error": error[-3000:]}
                if findings_dir:
                    os.makedirs(findings_dir, exist_ok=True)
                    record["input"] = os.path.join(findings_dir, f"{name}-{seed}-{case}.bin")
                    with open(record["input"], "wb") as f:
                        f.write(data)
                findings.append(record)
                if verbose:
                    print(f"[{name}] case {case}: {outcome}\n{error}", file=sys.stderr)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return {
        "target": name,
        "cases": cases,
        "seed": seed,
        "seconds": round(time.monotonic() - started, 1),
        "outcomes": dict(sorted(outcomes.items())),
        "findings": findings,
    }


def expect_error(error: BaseException, types: tuple, *needles: str) -> str:
    """The outcome name of a documented ``error``; a :class:`Finding` if its type or message is wrong.

    Args:
        error: what the reader raised.
        types: the documented error types.
        needles: texts the message must contain (the file's path, ...).
    """
    if not isinstance(error, types) or type(error) in (KeyError, TypeError, IndexError, AttributeError):
        raise Finding(f"undocumented error {type(error).__name__}: {error}") from error
    message = str(error)
    for needle in needles:
        if needle not in message:
            raise Finding(f"{type(error).__name__} does not name {needle!r}: {message[:500]}") from error
    return type(error).__name__


def main(name: str, make_check: Callable[[str], tuple], argv: Sequence[str] | None = None) -> int:
    """The command line of a harness: ``--cases N --seed S [--findings DIR] [--json FILE] [--atheris]``.

    ``make_check(workdir)`` returns ``(check, seeds, mutators)``. Exit status 1
    when there is a finding.
    """
    import tempfile

    parser = argparse.ArgumentParser(prog=f"python -m tests.fuzz.{name}")
    parser.add_argument("--cases", type=int, default=1000, help="mutated inputs to run")
    parser.add_argument("--seed", type=int, default=0, help="the campaign's seed; case i reruns from (seed, i)")
    parser.add_argument("--findings", default="fuzz_findings", help="folder for the inputs of findings")
    parser.add_argument("--json", default=None, help="also write the counts as JSON here")
    parser.add_argument("--case_timeout", type=float, default=20.0, help="seconds before a case counts as a hang")
    parser.add_argument("--atheris", action="store_true", help="run under atheris (coverage-guided) instead")
    args = parser.parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # the readers' skip warnings, thousands of them
    with tempfile.TemporaryDirectory() as workdir:
        check, seeds, mutators = make_check(workdir)
        if args.atheris:
            import atheris

            atheris.Setup([sys.argv[0], f"-runs={args.cases}", f"-seed={args.seed}"], check)
            atheris.Fuzz()
            return 0
        report = run_campaign(
            name, check, seeds, mutators, args.cases, args.seed, args.findings, args.case_timeout, verbose=True
        )
    text = json.dumps({k: v for k, v in report.items() if k != "findings"} | {"findings": len(report["findings"])})
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if report["findings"] else 0
