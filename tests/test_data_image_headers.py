"""The image header parser (keras_retina/data/image_headers.py): sizes read without decoding.

What the serving graph does with these sizes (the limits, the refusals) is
tested through an exported SavedModel in tests/test_saved_model.py.
"""

import io
import struct

import bomb_files
import numpy as np
import tensorflow as tf
from helpers import encode_jpeg, encode_png, pil_bytes
from PIL import Image

from keras_retina.data.image_headers import HEADER_FORMATS, clamped_area, read_image_size


def _top_down_bmp(image):
    """A 24-bit BMP with a negative height (rows stored top-down), as TensorFlow's decoder reads it."""
    height, width, _ = image.shape
    row = (3 * width + 3) // 4 * 4
    rows = np.zeros((height, row), np.uint8)
    rows[:, : 3 * width] = image[..., ::-1].reshape(height, 3 * width)  # BGR
    return bomb_files.bmp(width, -height) + rows.tobytes()


def _animated_gif(frames, **options):
    buffer = io.BytesIO()
    first, *rest = [Image.fromarray(frame) for frame in frames]
    first.save(buffer, format="GIF", save_all=True, append_images=rest, duration=40, loop=0, **options)
    return buffer.getvalue()


def test_read_image_size_matches_what_the_decoders_allocate():
    """Header sizes equal the shapes tf.io.decode_image returns, format by format, without decoding."""
    rng = np.random.RandomState(0)
    picture = rng.randint(0, 256, (37, 53, 3)).astype(np.uint8)
    frames = [rng.randint(0, 256, (37, 53, 3)).astype(np.uint8) for _ in range(3)]
    # A GIF's logical screen is not what the decoder allocates: its frames are.
    tiny_screen = bytearray(pil_bytes(picture, "GIF"))
    tiny_screen[6:10] = struct.pack("<HH", 1, 1)
    huge_screen = bytearray(pil_bytes(picture, "GIF"))
    huge_screen[6:10] = struct.pack("<HH", 18000, 18000)
    cases = {
        "JPEG": [encode_jpeg(picture), pil_bytes(picture, "JPEG", progressive=True), encode_jpeg(picture[..., :1])],
        "PNG": [encode_png(picture), encode_png(picture[..., :1]), pil_bytes(picture[..., 0] > 128, "PNG")],
        "GIF": [pil_bytes(picture, "GIF"), _animated_gif(frames), bytes(tiny_screen), bytes(huge_screen)],
        "BMP": [pil_bytes(picture, "BMP"), pil_bytes(picture[..., 0], "BMP"), _top_down_bmp(picture)],
        "WebP": [
            pil_bytes(picture, "WEBP", quality=80),  # 'VP8 '
            pil_bytes(picture, "WEBP", lossless=True),  # 'VP8L'
            pil_bytes(picture, "WEBP", exif=b"Exif\0\0MM\0*\0\0\0\x08\0\0"),  # 'VP8X'
        ],
    }
    webp_chunks = [contents[12:16] for contents in cases["WebP"]]
    assert webp_chunks == [b"VP8 ", b"VP8L", b"VP8X"]
    for name, files in cases.items():
        for i, contents in enumerate(files):
            size = read_image_size(tf.constant(contents))
            decoded = tf.io.decode_image(contents, channels=3, expand_animations=False).numpy()
            assert HEADER_FORMATS[int(size["format"])] == name, (name, i)
            assert (int(size["height"]), int(size["width"])) == decoded.shape[:2] == (37, 53), (name, i)
            assert size["problem"].numpy() == b"", (name, i)
            frame_count = 3 if contents == cases["GIF"][1] else 1
            assert int(size["frame_pixels"]) == frame_count * 37 * 53, (name, i)
        if name == "BMP":  # the top-down one decodes to the same picture
            np.testing.assert_array_equal(tf.io.decode_image(files[2], channels=3).numpy(), picture)
    unknown = read_image_size(tf.constant(b"these bytes are no image"))
    assert (int(unknown["format"]), int(unknown["width"]), unknown["problem"].numpy()) == (0, 0, b"")


def test_bomb_headers_announce_their_sizes_and_a_gif_its_frames():
    """Small files announcing hundreds of megapixels: the header gives the size the decoder would allocate."""
    cases = [
        (bomb_files.png(18000, 18000), "PNG", 18000, 18000, 18000 * 18000),
        (bomb_files.jpeg(13000, 13000, progressive=True), "JPEG", 13000, 13000, 13000 * 13000),
        (bomb_files.gif((1, 1), [(10, 10), (18000, 9000)]), "GIF", 18000, 9000, 10 * 10 + 18000 * 9000),
        (bomb_files.bmp(18000, -18000), "BMP", 18000, 18000, 18000 * 18000),
        (bomb_files.webp_extended(18000, 18000), "WebP", 18000, 18000, 18000 * 18000),
    ]
    for contents, name, width, height, frame_pixels in cases:
        size = {key: value.numpy() for key, value in read_image_size(tf.constant(contents)).items()}
        got = (HEADER_FORMATS[size["format"]], size["width"], size["height"], size["frame_pixels"], size["problem"])
        assert got == (name, width, height, frame_pixels, b""), name


def test_clamped_area_never_overflows():
    def area(width, height):
        return int(clamped_area(tf.constant(width, tf.int64), tf.constant(height, tf.int64)))

    assert area(53, 37) == 53 * 37
    assert area(2**31 - 1, 1) == 2**31 - 1  # exact below 2**31
    assert area(2**40, 1) == 2**31  # clamped, still over any limit under 2**31
    assert area(2**40, 2**40) == 2**62  # int64 holds it
    assert area(2**40, 0) == 0
