"""EXIF orientation (keras_retina/data/orientation.py) and its use in training, serving and predict.

Every image here is a displayed picture (HEIGHT x WIDTH, one coloured
rectangle on a flat background) whose pixels are stored turned by the inverse
of an EXIF orientation, as a phone stores a photo taken sideways; a viewer
(``PIL.ImageOps.exif_transpose``) shows it upright again. The JSON's size and
box are those of the displayed picture, as an annotation tool gives them.
"""

import io
import json
import os
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import small_model
from PIL import Image, ImageOps

import keras_retina as kr
from keras_retina.data.orientation import decode_upright, exif_orientation, upright
from keras_retina.deploy import requests
from keras_retina.deploy.predict import predict_files

HEIGHT, WIDTH = 64, 96  # displayed
#: The rectangle in the displayed picture: xyxy pixels, and its colour. Off
#: centre, so that every wrong turn moves it off its box.
BOX_XYXY = (52, 8, 88, 28)
COLOUR = np.array([220, 40, 40])
BACKGROUND = 120
ORIENTATION_TAG = 0x0112
ORIENTATIONS = tuple(range(1, 9))
#: PIL's transpose that stores a displayed picture so that an EXIF viewer
#: shows it upright: the inverse of what ``exif_transpose`` applies.
STORE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # exif_transpose applies ROTATE_270
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # exif_transpose applies ROTATE_90
}


def _displayed():
    image = np.full((HEIGHT, WIDTH, 3), BACKGROUND, np.uint8)
    x1, y1, x2, y2 = BOX_XYXY
    image[y1:y2, x1:x2] = COLOUR
    return image


def _exif(orientation, endian="<"):
    exif = Image.Exif()
    exif.endian = endian  # "<": "II" little-endian TIFF; ">": "MM" big-endian
    exif[ORIENTATION_TAG] = orientation
    return exif


def _jpeg(pixels, orientation=None, endian="<"):
    """JPEG bytes of ``pixels`` (as stored), with an EXIF orientation unless None."""
    options = {} if orientation is None else {"exif": _exif(orientation, endian)}
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, **options)
    return buffer.getvalue()


def _stored(orientation):
    """The displayed picture's pixels as stored under ``orientation``."""
    image = Image.fromarray(_displayed())
    return np.asarray(image if orientation == 1 else image.transpose(STORE[orientation]))


def _phone_jpeg(orientation):
    return _jpeg(_stored(orientation), orientation)


def _box_mean(image, box=BOX_XYXY, margin=3):
    """Mean colour inside ``box`` shrunk by ``margin`` pixels (away from JPEG ringing at the edges)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    return np.asarray(image)[y1 + margin : y2 - margin, x1 + margin : x2 - margin].reshape(-1, 3).mean(0)


def _assert_on_the_object(image, what):
    image = np.asarray(image)
    assert image.shape == (HEIGHT, WIDTH, 3), what
    np.testing.assert_allclose(_box_mean(image), COLOUR, atol=8, err_msg=what)
    # and the rest is background: the rectangle is where the box is, not also elsewhere
    assert abs(image[40:, :40].mean() - BACKGROUND) < 4, what


def _tiff_start(contents):
    return contents.index(b"Exif\x00\x00") + 6


def _patched(contents, position, new_bytes):
    return contents[:position] + new_bytes + contents[position + len(new_bytes) :]


# ----------------------------------------------------------- exif_orientation


def test_the_stored_pictures_show_upright_in_a_viewer():
    for orientation in ORIENTATIONS:
        shown = ImageOps.exif_transpose(Image.open(io.BytesIO(_phone_jpeg(orientation))))
        _assert_on_the_object(shown, f"orientation {orientation}")
        if orientation != 1:  # stored as it is, the box would miss the rectangle
            stored = _stored(orientation)
            misses = stored.shape != (HEIGHT, WIDTH, 3) or np.abs(_box_mean(stored) - COLOUR).max() > 50
            assert misses, orientation


@pytest.mark.parametrize("endian", ["<", ">"], ids=["little-endian II", "big-endian MM"])
def test_exif_orientation_reads_every_value_in_both_byte_orders(endian):
    pixels = np.zeros((4, 6, 3), np.uint8)
    read_in_graph = tf.function(exif_orientation, input_signature=[tf.TensorSpec([], tf.string)])
    for orientation in ORIENTATIONS:
        contents = _jpeg(pixels, orientation, endian)
        assert contents[_tiff_start(contents) : _tiff_start(contents) + 2] == (b"II" if endian == "<" else b"MM")
        assert Image.open(io.BytesIO(contents)).getexif()[ORIENTATION_TAG] == orientation
        value = exif_orientation(contents)
        assert value.dtype == tf.int32 and value.shape == ()
        assert int(value) == orientation
        assert int(read_in_graph(tf.constant(contents))) == orientation


def test_exif_orientation_finds_the_exif_segment_after_other_segments():
    contents = _jpeg(np.zeros((4, 6, 3), np.uint8), 6)
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>"  # an APP1 segment that is not Exif
    segments = b"\xff\xe1" + struct.pack(">H", 2 + len(xmp)) + xmp
    segments += b"\xff\xe2" + struct.pack(">H", 2 + 100) + bytes(100)  # APP2 (ICC profile)
    contents = contents[:2] + segments + contents[2:]
    assert Image.open(io.BytesIO(contents)).getexif()[ORIENTATION_TAG] == 6
    assert int(exif_orientation(contents)) == 6


def _not_oriented_cases():
    jpeg = _jpeg(np.zeros((4, 6, 3), np.uint8), 6)  # little-endian, IFD0 at 8, one entry
    tiff = _tiff_start(jpeg)
    app1 = jpeg.index(b"\xff\xe1")
    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(png, format="PNG")
    return {
        "no EXIF": _jpeg(np.zeros((4, 6, 3), np.uint8)),
        "a PNG": png.getvalue(),
        "empty bytes": b"",
        "two bytes of SOI": b"\xff\xd8",
        "not an image": b"hello, world" * 10,
        "truncated in the APP1": jpeg[: tiff + 12],
        "APP1 shorter than its IFD": _patched(jpeg, app1 + 2, struct.pack(">H", 2 + 6 + 8 + 2 + 6)),
        "APP1 length below 2": _patched(jpeg, app1 + 2, b"\x00\x01"),
        "TIFF byte order neither II nor MM": _patched(jpeg, tiff, b"IM"),
        "TIFF magic not 42": _patched(jpeg, tiff + 2, b"\x2b\x00"),
        "IFD0 offset past the end": _patched(jpeg, tiff + 4, struct.pack("<I", 0xFFFFFF00)),
        "IFD count pointing past the end": _patched(jpeg, tiff + 8, struct.pack("<H", 0xFFFF)),
        "orientation 0": _patched(jpeg, tiff + 10 + 8, struct.pack("<H", 0)),
        "orientation 9": _patched(jpeg, tiff + 10 + 8, struct.pack("<H", 9)),
        "orientation not a SHORT": _patched(jpeg, tiff + 10 + 2, struct.pack("<H", 4)),
        "marker that is not a marker": _patched(jpeg, 2, b"\x00\x00"),
        "Exif after SOS": jpeg[:2] + b"\xff\xda\x00\x02" + jpeg[2:],
    }


NOT_ORIENTED = _not_oriented_cases()


@pytest.mark.parametrize("case", sorted(NOT_ORIENTED))
def test_exif_orientation_is_1_for_missing_or_malformed_exif(case):
    contents = NOT_ORIENTED[case]
    assert int(exif_orientation(contents)) == 1
    read_in_graph = tf.function(exif_orientation, input_signature=[tf.TensorSpec([], tf.string)])
    assert int(read_in_graph(tf.constant(contents))) == 1


def test_the_malformed_cases_are_made_from_a_file_that_reads_6():
    good = _jpeg(np.zeros((4, 6, 3), np.uint8), 6)
    assert int(exif_orientation(good)) == 6  # so each case above is 1 because of its defect
    assert len(NOT_ORIENTED["orientation 9"]) == len(good)


def test_exif_orientation_reads_a_bounded_number_of_segments():
    """A JPEG of 10,000 empty segments before its Exif: orientation 1, and no error."""
    jpeg = _jpeg(np.zeros((4, 6, 3), np.uint8), 6)
    padding = b"\xff\xe3\x00\x02" * 10_000
    assert int(exif_orientation(jpeg[:2] + padding + jpeg[2:])) == 1


# --------------------------------------------------------------------- upright


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_upright_equals_pil_exif_transpose(orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    pil_image = Image.fromarray(stored)
    pil_image.getexif()[ORIENTATION_TAG] = orientation
    expected = np.asarray(ImageOps.exif_transpose(pil_image))
    assert expected.shape == ((5, 7, 3) if orientation <= 4 else (7, 5, 3))

    np.testing.assert_array_equal(upright(stored, orientation).numpy(), expected)
    in_graph = tf.function(  # unknown size, as after decoding in tf.data
        upright, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32)]
    )
    np.testing.assert_array_equal(in_graph(stored, tf.constant(orientation)).numpy(), expected)


@pytest.mark.parametrize("orientation", [0, 9, -3])
def test_upright_leaves_other_values_unchanged(orientation):
    stored = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    np.testing.assert_array_equal(upright(stored, orientation).numpy(), stored)


def test_decode_upright_matches_a_viewer():
    contents = _phone_jpeg(6)
    image = decode_upright(contents).numpy()
    assert image.dtype == np.uint8
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(contents))).convert("RGB"))
    assert image.shape == shown.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(image.astype(int) - shown).mean() < 2  # two JPEG decoders
    assert kr.data.decode_upright is decode_upright


# ------------------------------------------------------ training and evaluation


def _write_phone_dataset(directory, orientations=ORIENTATIONS, json_size=(HEIGHT, WIDTH), box=BOX_XYXY):
    """One image per orientation, annotated on the displayed picture; returns (annotation_file, image_dir)."""
    image_dir = directory / "images"
    image_dir.mkdir()
    x1, y1, x2, y2 = box
    images, annotations = [], []
    for orientation in orientations:
        name = f"phone_{orientation}.jpg"
        (image_dir / name).write_bytes(_phone_jpeg(orientation))
        height, width = json_size
        images.append({"id": orientation, "file_name": name, "height": height, "width": width})
        annotations.append(
            {"id": 10 + orientation, "image_id": orientation, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1]}
        )
    annotation_file = directory / "instances.json"
    annotation_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "red"}]})
    )
    return str(annotation_file), str(image_dir)


def test_coco_json_boxes_land_on_the_object_for_every_orientation(tmp_path):
    raw = kr.data.coco_json_dataset(*_write_phone_dataset(tmp_path))
    seen = []
    for example in raw:
        orientation = int(example["image_id"])
        seen.append(orientation)
        boxes = example["boxes"].numpy()
        np.testing.assert_array_equal(boxes, [BOX_XYXY])
        _assert_on_the_object(example["image"].numpy(), f"orientation {orientation}")
        np.testing.assert_allclose(_box_mean(example["image"].numpy(), boxes[0]), COLOUR, atol=8)
    assert seen == list(ORIENTATIONS)


def test_a_json_with_the_stored_size_is_refused_naming_the_file(tmp_path):
    """Orientation 6 stores the 64 x 96 picture as 96 x 64: a JSON with that size is wrong."""
    annotation_file, image_dir = _write_phone_dataset(
        tmp_path, orientations=(6,), json_size=(WIDTH, HEIGHT), box=(2, 2, 12, 12)  # inside either size
    )
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        list(kr.data.coco_json_dataset(annotation_file, image_dir))
    text = str(error.value)
    assert f"Image file {os.path.join(image_dir, 'phone_6.jpg')} (image_id 6, listed in {annotation_file})" in text
    assert f"field height x width: the JSON says {WIDTH}x{HEIGHT} but the image decodes to {HEIGHT}x{WIDTH}" in text
    assert "EXIF orientation 6" in text


# ------------------------------------------------------------------- serving


def test_served_decode_image_turns_upright_in_a_saved_model(tmp_path):
    class Decoder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def decode(self, contents):
            return requests.decode_image(contents, tf.constant(0))

    tf.saved_model.save(Decoder(), str(tmp_path / "decoder"))
    loaded = tf.saved_model.load(str(tmp_path / "decoder"))
    for orientation in ORIENTATIONS:
        contents = _phone_jpeg(orientation)
        _assert_on_the_object(requests.decode_image(contents).numpy(), f"eager, orientation {orientation}")
        _assert_on_the_object(loaded.decode(tf.constant(contents)).numpy(), f"SavedModel, orientation {orientation}")


def test_bomb_check_reads_the_stored_size_which_turning_keeps_in_pixels():
    contents = _phone_jpeg(6)
    encoded = requests.check_encoded_images(tf.constant([contents]), max_pixels=HEIGHT * WIDTH)
    assert encoded.shape == (1,)
    with pytest.raises(tf.errors.InvalidArgumentError):
        requests.check_encoded_images(tf.constant([contents]), max_pixels=HEIGHT * WIDTH - 1)


# ------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def predicted(tmp_path_factory):
    photos = tmp_path_factory.mktemp("photos")
    for orientation in (1, 3, 6, 8):
        (photos / f"phone_{orientation}.jpg").write_bytes(_phone_jpeg(orientation))
    out = tmp_path_factory.mktemp("out")
    keras.utils.set_random_seed(0)
    model = small_model(score_threshold=0.0)  # untrained: 100 detections per image
    keras.config.disable_interactive_logging()
    try:
        json_path = predict_files(
            model,
            [str(photos)],
            str(out),
            image_size=64,
            class_names=["red", "green", "blue"],
            category_ids=[1, 2, 3],
            draw_score_threshold=1.1,  # nothing drawn: the PNG is the decoded picture
        )
    finally:
        keras.config.enable_interactive_logging()
    with open(json_path) as f:
        return out, json.load(f)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_predict_draws_on_the_displayed_picture(predicted, orientation):
    out, _ = predicted
    drawn = tf.io.decode_png(tf.io.read_file(str(out / f"phone_{orientation}.png"))).numpy()
    assert drawn.shape[0] > HEIGHT  # the picture under a header band that gives the threshold
    _assert_on_the_object(drawn[-HEIGHT:], f"orientation {orientation}")


@pytest.mark.parametrize("orientation", [6, 8])
def test_predict_boxes_are_in_displayed_pixels(predicted, orientation):
    _, results = predicted
    rows = [r for r in results if r["image_id"] == f"phone_{orientation}"]
    assert len(rows) == 100
    right = max(x + w for x, _, w, _ in (r["bbox"] for r in rows))
    bottom = max(y + h for _, y, _, h in (r["bbox"] for r in rows))
    assert right <= WIDTH + 1e-3 and bottom <= HEIGHT + 1e-3
    assert right > HEIGHT  # wider than the stored picture (HEIGHT wide): the displayed frame
