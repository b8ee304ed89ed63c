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

    Example:
        >>> format_class_names(["cat", "dog"], [17, 18])
        '17\\tcat\\n18\\tdog\\n'
    """
    return "".join(f"{cid}\t{name}\n" for cid, name in zip(category_ids, class_names))


def parse_class_names(text: str) -> tuple[list[str], list[int]]:
    """``(class_names, category_ids)`` of the TSV text of :func:`format_class_names`; blank lines are skipped.

    Example:
        >>> parse_class_names("17\\tcat\\n18\\ttabby cat\\n")
        (['cat', 'tabby cat'], [17, 18])
    """
    rows = [line.split("\t", 1) for line in text.split("\n") if line.strip()]
    return [name for _, name in rows], [int(cid) for cid, _ in rows]


def write_class_names(path: str, class_names: Sequence[str], category_ids: Sequence[int]) -> str:
    """Writes the TSV of :func:`format_class_names` to ``path`` (a SavedModel asset's format); returns ``path``."""
    with open(path, "w") as f:
        f.write(format_class_names(class_names, category_ids))
    return path


def class_names_zip(class_names: Sequence[str], category_ids: Sequence[int]) -> bytes:
    """A zip archive holding :data:`CLASS_NAMES_FILE`, to append to a ``.tflite`` flatbuffer.

    TFLite Support packs associated files this way: interpreters ignore the
    bytes after the flatbuffer, ``zipfile`` reads the archive from the
    file's end.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(CLASS_NAMES_FILE, format_class_names(class_names, category_ids))
    return buffer.getvalue()


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
