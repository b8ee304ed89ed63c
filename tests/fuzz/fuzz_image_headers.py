"""Fuzzes the image-header parser and bomb guard: a served request's path before and through decoding.

Runs, in one ``tf.function``, what the SavedModel's serving graph runs on
each request image (``keras_retina.deploy.requests``):
``check_encoded_images`` (``read_image_size`` on the header, the
``max_pixels`` and GIF frame limits) and then ``decode_image``. The
exported SavedModel itself is not loaded per case: it calls these same
functions, and loading it would cost seconds a case.

Seeds: small valid JPEG (baseline, progressive, EXIF-rotated), PNG, GIF (two
frames), BMP and WebP (lossy, lossless) files, and the decompression bombs
of tests/bomb_files.py. Documented outcomes: the decoded image, or
``InvalidArgumentError`` (refused before decoding, or the decoder's own
refusal). Invariants: a decoded image has at most ``MAX_PIXELS`` pixels and
the size the header announced (width and height swapped for EXIF
orientations 5-8; for a GIF, at most the size of its largest frame); the process's peak resident memory grows by no more than
``RSS_LIMIT`` in any case (``resource.getrusage``).

    python -m tests.fuzz.fuzz_image_headers --cases 10000 --seed 0
"""

from __future__ import annotations

import io
import os
import resource
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fuzzing  # noqa: I001  (first: it puts tests/ on the path)
import bomb_files

from keras_retina.data.image_headers import HEADER_FORMATS, read_image_size
from keras_retina.data.orientation import exif_orientation
from keras_retina.deploy.requests import check_encoded_images, decode_image

#: The harness's max_pixels: small, so that any image past the guard is cheap and a bypass stands out.
MAX_PIXELS = 1 << 20
#: Most growth of the peak resident memory in one case: 3 bytes a pixel of MAX_PIXELS for the image, three
#: times over for GIF frames and decoder buffers, plus slack for TensorFlow's first runs of each kernel.
RSS_LIMIT = 64 << 20


def _pil(array, fmt, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def seed_files() -> list[bytes]:
    """Valid small images of every format, and bombs that the guard must refuse."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (12, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.fromarray(image), Image.fromarray(image[::-1])]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    return [
        _pil(image, "JPEG"), _pil(image, "JPEG", progressive=True), _pil(image, "JPEG", exif=exif),
        _pil(image, "PNG"), _pil(image[..., 0], "PNG"), gif.getvalue(), _pil(image, "BMP"),
        _pil(image, "WEBP"), _pil(image, "WEBP", lossless=True),
        bomb_files.jpeg(20000, 20000), bomb_files.png(1500, 1000), bomb_files.bmp(30000, 30000),
        bomb_files.webp_lossy(16000, 16000), bomb_files.webp_lossless(16000, 16000),
        bomb_files.webp_extended(16000, 16000),
        bomb_files.gif((16, 16), [(2000, 2000)]), bomb_files.gif((16, 16), [(600, 600)] * 12),
    ]


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def serve_one(contents):
    """The serving graph's request path for one image: ``(image, header sizes)``."""
    checked = check_encoded_images(tf.reshape(contents, [1]), max_pixels=MAX_PIXELS, max_batch=4)
    return decode_image(checked[0], tf.constant(0)), read_image_size(contents), exif_orientation(contents)


def make_check(workdir: str):
    """``(check, seeds, mutators)``; nothing is written under ``workdir``."""
    seeds = seed_files()
    for data in seeds:  # tracing and TensorFlow's first runs of each kernel: not a case's memory
        try:
            serve_one(tf.constant(data))
        except tf.errors.InvalidArgumentError:
            pass

    def check(data: bytes) -> str:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        try:
            image, size, orientation = serve_one(tf.constant(data))
        except tf.errors.InvalidArgumentError as error:
            outcome = "refused before decoding" if "before decoding" in error.message else "decoder refused"
            if "request image 0" in error.message:
                outcome += " (named)"
        else:
            height, width = image.shape[:2]
            expected = (int(size["height"]), int(size["width"]))
            if int(orientation) >= 5:
                expected = expected[::-1]
            if height * width > MAX_PIXELS:
                raise fuzzing.Finding(f"decoded {width}x{height}, past max_pixels={MAX_PIXELS}")
            gif = HEADER_FORMATS[int(size["format"])] == "GIF"
            # A GIF's header size is its largest frame, an upper bound: giflib clips frames to the screen.
            if (height, width) != expected and not (gif and height <= expected[0] and width <= expected[1]):
                raise fuzzing.Finding(
                    f"{HEADER_FORMATS[int(size['format'])]} header says {expected[::-1]} (width, height), "
                    f"decoded {width}x{height}")
            outcome = "decoded"
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        if grown > RSS_LIMIT:
            raise fuzzing.Finding(f"peak resident memory grew by {grown >> 20} MiB in one case")
        return outcome if outcome != "decoded" or data in seeds else "decoded (mutant)"

    return check, seeds, (fuzzing.mutate_bytes,)


if __name__ == "__main__":
    sys.exit(fuzzing.main("fuzz_image_headers", make_check))
