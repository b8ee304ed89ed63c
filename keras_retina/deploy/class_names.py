"""The class names an exported model carries: one TSV format, written and read for every export.

Each export stores ``category_id<TAB>name``, one line per contiguous class,
as :data:`CLASS_NAMES_FILE`: a SavedModel in its ``assets/`` directory
(:func:`keras_retina.deploy.saved_model.export_saved_model`), a ``.tflite``
file in a zip appended to the flatbuffer
(:func:`keras_retina.deploy.litert.export_litert`). :func:`read_class_names`
reads either.

Example:
    >>> import os, tempfile
    >>> directory = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(directory, "assets"))
    >>> _ = write_class_names(os.path.join(directory, "assets", CLASS_NAMES_FILE), ["red box", "dog"], [3, 7])
    >>> read_class_names(directory)
    (['red box', 'dog'], [3, 7])
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Sequence

#: The class-name table's file name: in a SavedModel's ``assets/``, and inside a ``.tflite`` file's zip.
CLASS_NAMES_FILE = "class_names.tsv"


def resolve_classes(caller: str, num_classes: int, class_names, category_ids) -> tuple[list[str], list[int]]:
    """``class_names`` and ``category_ids`` as lists (defaults ``"class_<i>"`` and ``0..C-1``), one per class.

    Raises:
        ValueError: naming ``caller`` when either list's length is not ``num_classes``.

    Example:
        >>> resolve_classes("export", 2, None, [5, 9])
        (['class_0', 'class_1'], [5, 9])
    """
    class_names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(num_classes)]
    category_ids = list(category_ids) if category_ids is not None else list(range(num_classes))
    if len(class_names) != num_classes or len(category_ids) != num_classes:
        raise ValueError(
            f"{caller}: the model has {num_classes} classes but got {len(class_names)} "
            f"class_names and {len(category_ids)} category_ids."
        )
    return class_names, category_ids


def format_class_names(class_names: Sequence[str], category_ids: Sequence[int]) -> str:
    """The TSV text: ``category_id<TAB>name`` and a newline per class.

    A name holding a tab, a newline or a carriage return could not be read
    back: a ValueError naming it.

    Example:
        >>> format_class_names(["cat", "dog"], [17, 18])
        '17\\tcat\\n18\\tdog\\n'
        >>> format_class_names(["cat\\nfish"], [17])
        Traceback (most recent call last):
        ...
        ValueError: class name 'cat\\nfish' (category id 17) holds a tab, newline or carriage return, which the class-name table cannot hold; rename the class.
    """
    for cid, name in zip(category_ids, class_names):
        if any(c in str(name) for c in "\t\n\r"):
            raise ValueError(
                f"class name {str(name)!r} (category id {cid}) holds a tab, newline or carriage return, which the "
                "class-name table cannot hold; rename the class."
            )
    return "".join(f"{cid}\t{name}\n" for cid, name in zip(category_ids, class_names))


def parse_class_names(text: str) -> tuple[list[str], list[int]]:
    """``(class_names, category_ids)`` of the TSV text of :func:`format_class_names`; blank lines are skipped.

    Example:
        >>> parse_class_names("17\\tcat\\n18\\ttabby cat\\n")
        (['cat', 'tabby cat'], [17, 18])
    """
    names, ids = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        cid, tab, name = line.partition("\t")
        try:
            if not tab:
                raise ValueError("no tab")
            ids.append(int(cid))
        except ValueError:
            raise ValueError(
                f"class-name table line {number}: expected 'category_id<TAB>name', got {line[:80]!r}."
            ) from None
        names.append(name)
    return names, ids


def write_class_names(path: str, class_names: Sequence[str], category_ids: Sequence[int]) -> str:
    """Writes the TSV of :func:`format_class_names` to ``path`` (a SavedModel asset's format); returns ``path``."""
    with open(path, "w") as f:
        f.write(format_class_names(class_names, category_ids))
    return path


#: The input's resize rule inside a ``.tflite`` file's zip: ``{"min_size": int | null, "max_size": int | null}``.
RESIZE_FILE = "resize.json"


#: The inference settings frozen into a ``.tflite`` file (``InferenceSettings.as_dict()``), inside its zip.
INFERENCE_FILE = "inference_settings.json"


def class_names_zip(
    class_names: Sequence[str], category_ids: Sequence[int], resize: dict | None = None, inference: dict | None = None
) -> bytes:
    """A zip archive holding :data:`CLASS_NAMES_FILE` (and :data:`RESIZE_FILE`), to append to a ``.tflite`` flatbuffer.

    TFLite Support packs associated files this way: interpreters ignore the
    bytes after the flatbuffer, ``zipfile`` reads the archive from the
    file's end.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(CLASS_NAMES_FILE, format_class_names(class_names, category_ids))
        if resize is not None:
            archive.writestr(RESIZE_FILE, json.dumps(resize))
        if inference is not None:
            archive.writestr(INFERENCE_FILE, json.dumps(inference))
    return buffer.getvalue()


def read_resize_rule(path: str) -> tuple[int | None, int | None]:
    """``(min_size, max_size)`` recorded in a ``.tflite`` file by ``export_litert``; ``(None, None)`` when none is.

    A file whose record is malformed raises a ValueError naming the file and the field.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if RESIZE_FILE not in archive.namelist():
                return None, None
            rule = json.loads(archive.read(RESIZE_FILE).decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable {RESIZE_FILE} ({error}).") from None
    values = []
    for field in ("min_size", "max_size"):
        value = rule.get(field) if isinstance(rule, dict) else "missing"
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 16):
            raise ValueError(f"{path}: {RESIZE_FILE} field {field!r} must be null or a size in pixels, got {value!r}.")
        values.append(value)
    return values[0], values[1]


def read_inference_settings(path: str) -> dict:
    """The inference settings recorded in a ``.tflite`` file by ``export_litert`` (a dict; ``{}`` when none are).

    A file whose record is not a JSON object raises a ValueError naming the file.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if INFERENCE_FILE not in archive.namelist():
                return {}
            settings = json.loads(archive.read(INFERENCE_FILE).decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable {INFERENCE_FILE} ({error}).") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: {INFERENCE_FILE} must hold a JSON object, got {type(settings).__name__}.")
    return settings


def read_class_names(path: str) -> tuple[list[str], list[int]]:
    """``(class_names, category_ids)`` of an exported model.

    Args:
        path: a SavedModel directory (reads ``assets/class_names.tsv``) or a
            ``.tflite`` file written by
            :func:`keras_retina.deploy.litert.export_litert` (reads the zip
            appended to it).

    Raises:
        FileNotFoundError: ``path`` does not exist, or the SavedModel has no
            class-names asset.
        ValueError: a file that holds no :data:`CLASS_NAMES_FILE`.
    """
    if os.path.isdir(path):
        with open(os.path.join(path, "assets", CLASS_NAMES_FILE)) as f:
            return parse_class_names(f.read())
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read(CLASS_NAMES_FILE).decode("utf-8")
    except (zipfile.BadZipFile, KeyError) as error:
        raise ValueError(f"{path}: no {CLASS_NAMES_FILE} inside; was it written by export_litert?") from error
    return parse_class_names(text)
