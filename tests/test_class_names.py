"""The class-name table every export carries (keras_retina/deploy/class_names.py): one format, one reader."""

import os

import pytest

from keras_retina.deploy.class_names import (
    CLASS_NAMES_FILE,
    class_names_zip,
    format_class_names,
    parse_class_names,
    read_class_names,
    resolve_classes,
    write_class_names,
)

NAMES = ("red box", "dog", "über-cat")  # a space and a non-ASCII letter survive the TSV
IDS = (3, 7, 90)


def test_format_and_parse_round_trip():
    text = format_class_names(NAMES, IDS)
    assert text == "3\tred box\n7\tdog\n90\tüber-cat\n"
    assert parse_class_names(text) == (list(NAMES), list(IDS))
    assert parse_class_names("\n" + text + "\n  \n") == (list(NAMES), list(IDS))  # blank lines skipped


@pytest.mark.parametrize("bad", ["cat\nfish", "cat\tfish", "cat\r"])
def test_a_name_the_table_cannot_hold_is_refused_when_written(bad):
    with pytest.raises(ValueError, match=r"category id 7\) holds a tab, newline or carriage return"):
        format_class_names(["dog", bad], [3, 7])


@pytest.mark.parametrize("text,line", [("3\tdog\nfish\n", 2), ("x\tdog\n", 1), ("\n\n3dog\n", 3)])
def test_a_malformed_table_names_its_line(text, line):
    with pytest.raises(ValueError, match=f"line {line}: expected 'category_id<TAB>name'"):
        parse_class_names(text)


def test_read_class_names_of_a_saved_model_directory(tmp_path):
    os.makedirs(tmp_path / "assets")
    written = write_class_names(str(tmp_path / "assets" / CLASS_NAMES_FILE), NAMES, IDS)
    assert written == str(tmp_path / "assets" / "class_names.tsv")
    assert read_class_names(str(tmp_path)) == (list(NAMES), list(IDS))


def test_read_class_names_of_a_file_with_the_zip_appended(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"TFL3 stands in for a flatbuffer" + class_names_zip(NAMES, IDS))
    assert read_class_names(str(path)) == (list(NAMES), list(IDS))


def test_read_class_names_names_what_is_missing(tmp_path):
    (tmp_path / "plain.tflite").write_bytes(b"no zip here")
    with pytest.raises(ValueError, match=r"plain.tflite: no class_names.tsv inside; was it written by export_litert\?"):
        read_class_names(str(tmp_path / "plain.tflite"))
    with pytest.raises(FileNotFoundError, match="class_names.tsv"):
        read_class_names(str(tmp_path))  # a directory without assets/class_names.tsv


def test_resolve_classes_defaults_and_lengths():
    assert resolve_classes("export", 2, None, None) == (["class_0", "class_1"], [0, 1])
    assert resolve_classes("export", 2, ("a", "b"), (4, 5)) == (["a", "b"], [4, 5])
    with pytest.raises(ValueError, match=r"^export_litert: the model has 3 classes but got 2 class_names and 3 category_ids\.$"):
        resolve_classes("export_litert", 3, ["a", "b"], None)
