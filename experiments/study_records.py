"""The paper study's durable record: every finished run's ``study.json``, kept in git.

Run directories (``runs/paper_study/...``) are ignored by git and do not
outlive the machine they were trained on; a table whose run directories are
gone would survive only as text in ``docs/paper_study.md``. So each
collection copies every finished run's record (metrics,
AP curve, logged losses, measurements; no weights, a few kB each) to
``docs/paper_study_runs/<table>/<setting>_seed<k>.json``, and the
pre-trained backbone all runs start from (4.8 MB) to
``docs/paper_study_runs/backbone/``, where a fresh checkout finds it. The
tables are built from the run directories where they exist and from this
record where they do not.

Example:
    >>> import json, os, tempfile
    >>> runs, records = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(runs, "1b", "fl_g2.0_a0.25_seed0"))
    >>> with open(os.path.join(runs, "1b", "fl_g2.0_a0.25_seed0", "study.json"), "w") as f:
    ...     json.dump({"AP": 0.65}, f)
    >>> [os.path.relpath(p, records) for p in archive(runs, records, ["1b"])]
    ['1b/fl_g2.0_a0.25_seed0.json']
    >>> load(records, "1b", "fl_g2.0_a0.25_seed0")["AP"], archive(runs, records, ["1b"])
    (0.65, [])
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Sequence

RESULT_FILE = "study.json"
#: Beside the study's doc: ``docs/paper_study_runs``.
RECORDS_DIRNAME = "paper_study_runs"
BACKBONE_DIRNAME = "backbone"
#: 64 MB: the study's backbone is 4.8 MB; anything far larger is not it.
MAX_BACKBONE_BYTES = 64 * 2**20


def records_dir_for(doc_path: str) -> str:
    """The record folder beside ``doc_path``.

    Example:
        >>> records_dir_for("docs/paper_study.md")
        'docs/paper_study_runs'
    """
    return os.path.join(os.path.dirname(doc_path) or ".", RECORDS_DIRNAME)


def record_path(records_dir: str, table_key: str, run_name: str) -> str:
    """``<records_dir>/<table>/<run_name>.json``; ``run_name`` is ``<setting>_seed<k>``."""
    return os.path.join(records_dir, table_key, f"{run_name}.json")


def _read_json(path: str) -> dict:
    with open(path) as f:
        try:
            found = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}); restore it from git or delete it.") from error
    if not isinstance(found, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(found).__name__}.")
    return found


def load(records_dir: str | None, table_key: str, run_name: str) -> dict | None:
    """The kept record of one run, or ``None``; a record without ``AP`` is refused, naming the file."""
    if not records_dir:
        return None
    path = record_path(records_dir, table_key, run_name)
    if not os.path.exists(path):
        return None
    found = _read_json(path)
    if "AP" not in found:
        raise ValueError(f"{path}: no 'AP' field; restore it from git or delete it.")
    return found


def archive(runs_dir: str, records_dir: str, table_keys: Sequence[str], extra_files: Sequence[str] = ()) -> list[str]:
    """Copies every finished run's ``study.json`` of ``table_keys`` (and ``extra_files`` of
    ``runs_dir``, e.g. ``1e_timing.json``) into ``records_dir``; returns the paths written.

    Only new or changed records are written, so the git diff shows what a
    collection added. Unfinished runs (no ``study.json``) are left out.
    """
    written = []
    for key in table_keys:
        table_dir = os.path.join(runs_dir, key)
        if not os.path.isdir(table_dir):
            continue
        for name in sorted(os.listdir(table_dir)):
            source = os.path.join(table_dir, name, RESULT_FILE)
            if os.path.exists(source) and _copy_if_changed(source, record_path(records_dir, key, name)):
                written.append(record_path(records_dir, key, name))
    for name in extra_files:
        source = os.path.join(runs_dir, name)
        if os.path.exists(source) and _copy_if_changed(source, os.path.join(records_dir, name)):
            written.append(os.path.join(records_dir, name))
    return written


def _copy_if_changed(source: str, target: str) -> bool:
    with open(source, "rb") as f:
        data = f.read()
    if os.path.exists(target):
        with open(target, "rb") as f:
            if f.read() == data:
                return False
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target + ".tmp", "wb") as f:
        f.write(data)
    os.replace(target + ".tmp", target)
    return True


def sha256(path: str) -> str:
    """The file's SHA-256, hex.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x")
        >>> open(path, "w").close()
        >>> sha256(path)[:12]
        'e3b0c44298fc'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _backbone_paths(records_dir: str, weights_path: str) -> tuple[str, str]:
    base = os.path.join(records_dir, BACKBONE_DIRNAME, os.path.basename(weights_path))
    return base, base + ".json"


def archive_backbone(weights_path: str, records_dir: str) -> str | None:
    """Keeps ``weights_path`` (and its ``.json`` pre-training record, with the SHA-256 added) in
    ``records_dir/backbone/``; returns the kept path, or ``None`` if there are no weights yet.

    A kept backbone with another hash is not replaced: the runs already
    recorded were trained from it. That is an error naming both files, so
    a retrained backbone cannot silently mix into the tables.
    """
    if not os.path.exists(weights_path):
        return None
    kept, kept_json = _backbone_paths(records_dir, weights_path)
    digest = sha256(weights_path)
    if os.path.exists(kept_json):
        recorded = _read_json(kept_json).get("sha256")
        if recorded != digest:
            raise ValueError(
                f"{weights_path}: SHA-256 {digest[:12]} differs from the kept backbone {kept} ({str(recorded)[:12]}); the recorded "
                f"runs were trained from the kept one. Delete {weights_path} to restore it, or move the record aside to start anew."
            )
        return kept
    info = _read_json(weights_path + ".json") if os.path.exists(weights_path + ".json") else {}
    info.update({"sha256": digest, "bytes": os.path.getsize(weights_path)})
    os.makedirs(os.path.dirname(kept), exist_ok=True)
    shutil.copyfile(weights_path, kept)
    with open(kept_json, "w") as f:
        json.dump(info, f, indent=1, sort_keys=True)
    return kept


def restore_backbone(weights_path: str, records_dir: str) -> bool:
    """Copies the kept backbone to ``weights_path`` if that file is missing; ``True`` if it did.

    The kept file is checked before it is used: its size (at most
    :data:`MAX_BACKBONE_BYTES`) and its SHA-256 against the kept ``.json``.
    A mismatch is an error naming the file.
    """
    kept, kept_json = _backbone_paths(records_dir, weights_path)
    if os.path.exists(weights_path) or not os.path.exists(kept):
        return False
    if not os.path.exists(kept_json):
        raise ValueError(f"{kept}: no {os.path.basename(kept_json)} beside it with the SHA-256 to check it against.")
    size = os.path.getsize(kept)
    if size > MAX_BACKBONE_BYTES:
        raise ValueError(f"{kept}: {size} bytes, more than {MAX_BACKBONE_BYTES}: not the study's backbone.")
    expected = _read_json(kept_json).get("sha256")
    if sha256(kept) != expected:
        raise ValueError(f"{kept}: SHA-256 differs from {kept_json}'s 'sha256' ({str(expected)[:12]}); restore both from git.")
    os.makedirs(os.path.dirname(weights_path) or ".", exist_ok=True)
    shutil.copyfile(kept, weights_path)
    shutil.copyfile(kept_json, weights_path + ".json")
    return True
