"""SavedModel export for TF Serving: encoded images in, final detections in original pixels out."""

from __future__ import annotations

import os
import re
import tempfile
from typing import Sequence

import numpy as np
import tensorflow as tf

from keras_retina import compat
from keras_retina.data.image_headers import IMAGE_FORMAT_NAMES, IMAGE_MAGIC_BYTES
from keras_retina.data.orientation import decode_upright
from keras_retina.data.pipeline import to_original_pixels, transform_example

#: File (in the SavedModel's ``assets/``) listing ``category_id<TAB>name`` per class.
CLASS_NAMES_ASSET = "class_names.tsv"

#: Default ``max_pixels`` of the serving graph: 40 megapixels (width x height),
#: more than phone photos (12-24 MP at default settings) and most camera
#: photos; raise it to serve 45-102 MP high-resolution or medium-format ones.
DEFAULT_MAX_PIXELS = 40_000_000
#: Default ``max_batch`` of the serving graph: images per request.
DEFAULT_MAX_BATCH = 64
#: Largest accepted ``max_pixels``: every dimension is clamped to 2**31 before
#: ``width * height`` is formed (no overflow), which is exact below this.
MAX_PIXELS_LIMIT = 2**31 - 1
#: The formats :func:`read_image_size` tells apart, by its ``format`` index.
HEADER_FORMATS = ("unknown", "JPEG", "PNG", "GIF", "BMP", "WebP")
#: The most steps (a record, or a run of equal-sized sub-blocks) that
#: :func:`read_image_size` takes through one GIF; a GIF that needs more is
#: refused. An ordinary animated GIF takes about 6 a frame (so ~1,300 frames).
GIF_MAX_BLOCKS = 8_192
#: Sub-blocks of one size skipped in one GIF step (encoders write 255-byte ones).
_GIF_RUN_LOOKAHEAD = 1024
#: Bytes of the header read for JPEG-less formats (WebP's frame header ends at byte 30).
_HEAD_BYTES = 32
#: Every dimension is clamped to this before multiplying (see MAX_PIXELS_LIMIT).
_DIMENSION_CLAMP = 2**31


def prepare_image(image_uint8, image_size: int):
    """Resizes and pads one image exactly as the evaluation pipeline does.

    Args:
        image_uint8: ``(H, W, 3)`` uint8 image.
        image_size: the model's square input size in pixels.

    Returns:
        ``(image (S, S, 3) float32, scale (2,) (sy, sx), image_shape (2,) int32)``.
    """
    example = {
        "image": image_uint8,
        "boxes": tf.zeros((0, 4), tf.float32),
        "classes": tf.zeros((0,), tf.int32),
    }
    image, y = transform_example(example, image_size=image_size, max_boxes=1)
    return image, y["scale"], y["image_shape"]


def decode_image(contents, index=None):
    """Decodes JPEG/PNG/GIF/BMP/WebP bytes to RGB uint8 ``(H, W, 3)``; a clear InvalidArgument otherwise.

    Bytes that start with none of the signatures in
    :data:`keras_retina.data.image_headers.IMAGE_MAGIC_BYTES` fail before the
    decoder runs, with a message naming the request image ``index``.
    Grayscale and RGBA become RGB; of an animated GIF the first frame is used.
    The image is turned upright by its EXIF orientation
    (:func:`keras_retina.data.orientation.exif_orientation`), as in training,
    so ``H`` and ``W`` and the served boxes are those of the displayed photo.
    Sizes are not checked here: :func:`check_encoded_images` refuses
    decompression bombs before this runs (turning does not change ``H * W``).

    Example:
        >>> tuple(decode_image(tf.io.encode_png(np.zeros((4, 6, 1), np.uint8))).shape)
        (4, 6, 3)

        A phone photo stored sideways (6 wide, 4 high, EXIF orientation 6):

        >>> import io
        >>> from PIL import Image
        >>> exif = Image.Exif()
        >>> exif[0x0112] = 6
        >>> buffer = io.BytesIO()
        >>> Image.new("RGB", (6, 4)).save(buffer, format="JPEG", exif=exif)
        >>> tuple(decode_image(buffer.getvalue()).shape)
        (6, 4, 3)
    """
    known = tf.reduce_any(
        [tf.equal(tf.strings.substr(contents, 0, len(magic)), magic) for magic, _ in IMAGE_MAGIC_BYTES]
    )
    where = "" if index is None else tf.strings.format(" (request image {})", index)
    with tf.control_dependencies(
        [
            tf.debugging.Assert(
                known,
                [tf.strings.join([f"input bytes are not a {IMAGE_FORMAT_NAMES} image", where])],
            )
        ]
    ):
        image = decode_upright(contents, channels=3)
    return tf.ensure_shape(image, (None, None, 3))


# ------------------------------------------------------ header sizes, limits
# Decompression bombs: an 18000 x 18000 one-bit PNG is 39 KB on the wire and
# 972 MB once TensorFlow has decoded it to RGB; a 13000 x 13000 JPEG is 2 MB
# and 507 MB. TensorFlow's PNG decoder refuses only 2**29 pixels or more,
# so the serving graph reads each image's width and height from its header,
# with string and arithmetic ops that allocate nothing image-sized, and refuses
# what is over ``max_pixels`` before any decoder runs.
#
# Hand-written because no TensorFlow op reads a PNG, GIF, BMP or WebP header
# without decoding (tf.image.extract_jpeg_shape does, for JPEG only). Each
# parser reads the bytes that TensorFlow's own decoder reads for the size it
# allocates (tensorflow/core/kernels/image/decode_image_op.cc and the
# libraries it calls); the source of truth is named at each one.


def _be(head, offset: int, size: int):
    """The big-endian unsigned integer in ``head[offset:offset + size]`` (int64)."""
    return sum(head[offset + k] * (256 ** (size - 1 - k)) for k in range(size))


def _le(head, offset: int, size: int):
    """The little-endian unsigned integer in ``head[offset:offset + size]`` (int64)."""
    return sum(head[offset + k] * (256**k) for k in range(size))


def _first_problem(checks):
    """The message of the first ``(condition, message)`` whose condition holds; ``""`` if none."""
    problem = tf.constant("")
    for condition, message in reversed(checks):
        problem = tf.where(condition, message, problem)
    return problem


def _truncated(name: str, length, needed: int, what: str):
    """``(length < needed, "truncated <name> header: <length> bytes, fewer than the <needed> <what>")``."""
    message = f"truncated {name} header: {{}} bytes, fewer than the {needed} {what}"
    return length < needed, tf.strings.format(message, length)


def _classify(head_str, length):
    """``HEADER_FORMATS`` index by the magic bytes TensorFlow's ``DecodeImage`` dispatches on.

    Same bytes and order as ``ClassifyFileFormat`` in
    ``tensorflow/core/kernels/image/decode_image_op.cc``: a file is checked as
    the format its decoder will decode it as.
    """

    def starts(magic):
        return tf.equal(tf.strings.substr(head_str, 0, len(magic)), magic)

    webp = starts(b"RIFF") & (length > 12) & tf.equal(tf.strings.substr(head_str, 8, 4), b"WEBP")
    checks = [starts(b"\xff\xd8\xff"), starts(b"\x89PNG\r\n\x1a\n"), starts(b"GIF8"), starts(b"BM"), webp]
    index = tf.constant(0, tf.int32)
    for i, matches in reversed(list(enumerate(checks, start=1))):
        index = tf.where(matches, i, index)
    return index


def _jpeg_size(contents):
    # libjpeg's jpeg_read_header (via tf.image.extract_jpeg_shape) reads the
    # markers up to the first scan: the SOF0-SOF15 frame header's height and
    # width, baseline and progressive alike; no scan is decoded. A JPEG
    # libjpeg cannot parse fails here, with its "Invalid JPEG data" message.
    shape = tf.image.extract_jpeg_shape(contents, output_type=tf.int64)  # (height, width, channels)
    return shape[1], shape[0], tf.constant("")


def _png_size(head_str, head, length):
    # PNG spec 5.2-5.3 / libpng's png_read_info: the 8-byte signature, then
    # the IHDR chunk (length, "IHDR", width and height as 4-byte big-endian
    # integers at bytes 16-23). libpng requires IHDR first.
    width, height = _be(head, 16, 4), _be(head, 20, 4)
    problem = _first_problem(
        [
            _truncated("PNG", length, 24, "that hold its IHDR width and height"),
            (tf.not_equal(tf.strings.substr(head_str, 12, 4), b"IHDR"), tf.constant("the first PNG chunk is not IHDR")),
            ((width == 0) | (height == 0), tf.constant("the PNG header gives a zero width or height")),
        ]
    )
    return width, height, problem


def _bmp_size(head, length):
    # TensorFlow's DecodeBmpV2 reads width and height as little-endian int32
    # at bytes 18 and 22 (a negative height: rows stored top-down) and needs
    # 32 bytes of header.
    def signed32(value):
        return tf.where(value >= 2**31, value - 2**32, value)

    width, height = signed32(_le(head, 18, 4)), signed32(_le(head, 22, 4))
    problem = _first_problem(
        [
            _truncated("BMP", length, 32, "that the TensorFlow BMP decoder reads"),
            (
                (width <= 0) | (height == 0),
                tf.strings.format("the BMP header gives width {} and height {}", (width, height)),
            ),
        ]
    )
    return width, tf.abs(height), problem


def _webp_size(head_str, head, length):
    # libwebp's WebPGetFeatures (src/dec/webp_dec.c, ParseHeadersInternal),
    # which TensorFlow's DecodeWebP sizes its output by: "RIFF", size,
    # "WEBP", then the first chunk's fourcc at byte 12 and its payload at 20:
    # * "VP8 " (lossy): VP8GetInfo, 3-byte frame tag, start code 9d 01 2a,
    #   then 16-bit little-endian width and height whose low 14 bits count;
    # * "VP8L" (lossless): VP8LGetInfo, signature byte 0x2f, then 14 bits of
    #   width - 1 and 14 of height - 1, little-endian bit order;
    # * "VP8X" (extended: alpha, metadata, animation): ParseVP8X, chunk size
    #   10, flags, 3 reserved bytes, 24-bit canvas width - 1 and height - 1.
    #   libwebp requires a still image's frame to be the canvas's size; an
    #   animation TensorFlow decodes only as 4 channels (refused at 3).
    chunk = tf.strings.substr(head_str, 12, 4)
    vp8, vp8l, vp8x = (tf.equal(chunk, tag) for tag in (b"VP8 ", b"VP8L", b"VP8X"))
    lossless_bits = _le(head, 21, 4)
    width = tf.where(
        vp8,
        tf.bitwise.bitwise_and(_le(head, 26, 2), 0x3FFF),
        tf.where(vp8l, tf.bitwise.bitwise_and(lossless_bits, 0x3FFF) + 1, _le(head, 24, 3) + 1),
    )
    height = tf.where(
        vp8,
        tf.bitwise.bitwise_and(_le(head, 28, 2), 0x3FFF),
        tf.where(
            vp8l,
            tf.bitwise.bitwise_and(tf.bitwise.right_shift(lossless_bits, 14), 0x3FFF) + 1,
            _le(head, 27, 3) + 1,
        ),
    )
    truncated_chunk, truncated_message = _truncated("WebP", length, 16, "that hold its first chunk header")
    truncated_vp8, truncated_vp8_message = _truncated("WebP", length, 30, "that hold a VP8 frame header")
    truncated_vp8l, truncated_vp8l_message = _truncated("WebP", length, 25, "that hold a VP8L header")
    truncated_vp8x, truncated_vp8x_message = _truncated("WebP", length, 30, "that hold a VP8X chunk")
    problem = _first_problem(
        [
            (truncated_chunk, truncated_message),
            (~(vp8 | vp8l | vp8x), tf.constant("the first WebP chunk is none of VP8, VP8L and VP8X")),
            (vp8 & truncated_vp8, truncated_vp8_message),
            (
                vp8 & tf.not_equal(tf.strings.substr(head_str, 23, 3), b"\x9d\x01\x2a"),
                tf.constant("no VP8 start code (9d 01 2a) in the WebP VP8 chunk"),
            ),
            (vp8l & truncated_vp8l, truncated_vp8l_message),
            (vp8l & tf.not_equal(head[20], 0x2F), tf.constant("no signature byte 0x2f in the WebP VP8L chunk")),
            (vp8x & truncated_vp8x, truncated_vp8x_message),
            (vp8x & tf.not_equal(_le(head, 16, 4), 10), tf.constant("the WebP VP8X chunk size is not 10")),
            ((width == 0) | (height == 0), tf.constant("the WebP header gives a zero width or height")),
        ]
    )
    return width, height, problem


def _gif_size(contents, head, length):
    # TensorFlow's gif::Decode (tensorflow/core/lib/gif/gif_io.cc) runs
    # giflib's DGifSlurp, which decodes EVERY frame into a buffer of its own
    # width x height bytes, then allocates the output at the largest frame
    # width x the largest frame height (the first frame only, without
    # expand_animations). The logical screen size (bytes 6-9) is never used:
    # a 1 x 1 screen may hold an 18000 x 18000 frame. So the frames' image
    # descriptors are read, walking the blocks as DGifSlurp does.
    width, height, frame_pixels, complete = _walk_gif(contents, head)
    problem = _first_problem(
        [
            _truncated("GIF", length, 13, "that hold its logical screen descriptor"),
            (
                ~complete,
                tf.constant(f"more than {GIF_MAX_BLOCKS} GIF blocks (records or runs of sub-blocks) to read"),
            ),
        ]
    )
    return width, height, frame_pixels, problem


def _walk_gif(contents, head):
    """Reads every GIF image descriptor: ``(largest width, largest height, sum of frame areas, read to the end)``.

    A record starts with 0x21 (extension: label, then sub-blocks), 0x2c (image
    descriptor: left, top, width, height as 16-bit little-endian, flags with
    the local colour table's size, then the LZW code size byte and
    sub-blocks) or 0x3b (trailer). Sub-blocks are a size byte and that many
    bytes, ending at a size of 0. The walk stops where giflib's would: the
    trailer, a byte that starts no record, or the end of the data.

    One loop step reads one record, or one run of up to
    ``_GIF_RUN_LOOKAHEAD`` sub-blocks of one size and the sub-block after it
    (encoders write 255-byte sub-blocks, so a frame's pixels are one or two
    steps). At most ``GIF_MAX_BLOCKS`` steps: a GIF crafted from tiny
    sub-blocks of changing sizes is refused rather than walked for long.
    """
    data = tf.io.decode_raw(contents, tf.uint8)  # (n,), n >= 4: the magic bytes matched
    n = tf.size(data, out_type=tf.int64)

    def byte_at(position):  # int64, 0 past the end
        inside = position < n
        return tf.where(inside, tf.cast(tf.gather(data, tf.clip_by_value(position, 0, n - 1)), tf.int64), 0)

    def colour_table_bytes(flags):  # 3 x 2**(size + 1) when the table's flag (0x80) is set
        size = tf.bitwise.left_shift(tf.constant(2, tf.int64), tf.bitwise.bitwise_and(flags, 7))
        return tf.where(flags >= 0x80, 3 * size, 0)

    first_record = 13 + colour_table_bytes(head[10])
    record_offsets = tf.range(10, dtype=tf.int64)
    run_steps = tf.range(_GIF_RUN_LOOKAHEAD, dtype=tf.int64)

    def step(position, in_sub_blocks, max_width, max_height, frame_pixels, done):
        record = byte_at(position + record_offsets)  # (10,)
        # At a record.
        is_extension = tf.equal(record[0], 0x21)
        is_image = tf.equal(record[0], 0x2C) & (position + 10 <= n)
        width, height = _le(record, 5, 2), _le(record, 7, 2)
        after_record = tf.where(is_extension, position + 2, position + 11 + colour_table_bytes(record[9]))
        # At a sub-block: skip the run of sub-blocks of its size, then one more.
        size = record[0]
        run_starts = position + (size + 1) * run_steps  # (_GIF_RUN_LOOKAHEAD,)
        same = tf.equal(byte_at(run_starts), size) & (size > 0)
        run = tf.reduce_min(tf.where(same, tf.constant(_GIF_RUN_LOOKAHEAD, tf.int64), run_steps))
        next_size_at = position + (size + 1) * run
        next_size = byte_at(next_size_at)
        whole_run = tf.equal(run, _GIF_RUN_LOOKAHEAD)
        after_sub_blocks = tf.where(whole_run, next_size_at, next_size_at + 1 + next_size)
        sub_blocks_end = ~whole_run & tf.equal(next_size, 0)

        frame = ~in_sub_blocks & is_image
        return (
            tf.where(in_sub_blocks, after_sub_blocks, after_record),
            tf.where(in_sub_blocks, ~sub_blocks_end, True),
            tf.where(frame, tf.maximum(max_width, width), max_width),
            tf.where(frame, tf.maximum(max_height, height), max_height),
            frame_pixels + tf.where(frame, width * height, 0),
            tf.where(in_sub_blocks, next_size_at >= n, ~(is_extension | is_image)),
        )

    zero = tf.constant(0, tf.int64)
    start = (first_record, tf.constant(False), zero, zero, zero, tf.constant(False))
    _, _, width, height, frame_pixels, done = tf.while_loop(
        lambda *state: ~state[-1], step, start, maximum_iterations=GIF_MAX_BLOCKS
    )
    return width, height, frame_pixels, done


@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def read_image_size(contents):
    """Reads an encoded image's format, width and height from its header, decoding nothing.

    The sizes are those TensorFlow's ``tf.io.decode_image`` would allocate
    for: JPEG's frame header (``tf.image.extract_jpeg_shape``), PNG's IHDR,
    BMP's info header, WebP's first chunk ("VP8 ", "VP8L" or the "VP8X"
    canvas), and for a GIF its largest frame, read from every image
    descriptor (the logical screen size is not what the decoder allocates).
    Only the first 32 bytes are read, but a GIF's blocks are walked to the
    end (at most :data:`GIF_MAX_BLOCKS` steps). Nothing image-sized is
    allocated.

    Args:
        contents: scalar tf.string, the encoded file.

    Returns:
        A dict of scalars: ``format`` int32 index into :data:`HEADER_FORMATS`
        (0 = none of them: left to the decoder, which refuses it); ``width``
        and ``height`` int64 pixels (0 when unknown); ``frame_pixels`` int64,
        the pixels the decoder writes for all frames together (a GIF's every
        frame, one byte each; otherwise ``width * height``, each dimension
        clamped to 2**31); ``problem`` tf.string, ``""`` for a well-formed
        header, else what is wrong (truncated, a wrong chunk, a zero size).
        A JPEG header that libjpeg cannot parse raises InvalidArgument
        ("Invalid JPEG data") instead.

    Example:
        >>> png = tf.io.encode_png(np.zeros((30, 40, 1), np.uint8))
        >>> size = read_image_size(png)
        >>> HEADER_FORMATS[int(size["format"])], int(size["width"]), int(size["height"])
        ('PNG', 40, 30)
        >>> size = read_image_size(b"\\x89PNG\\r\\n\\x1a\\n short")
        >>> size["problem"].numpy().decode()
        'truncated PNG header: 14 bytes, fewer than the 24 that hold its IHDR width and height'
    """
    length = tf.strings.length(contents)
    # The first _HEAD_BYTES bytes, zero-padded: every read below is in range.
    head_str = tf.strings.substr(
        tf.strings.join([tf.strings.substr(contents, 0, _HEAD_BYTES), b"\0" * _HEAD_BYTES]), 0, _HEAD_BYTES
    )
    head = tf.cast(tf.ensure_shape(tf.io.decode_raw(head_str, tf.uint8), [_HEAD_BYTES]), tf.int64)

    def one_frame(size_fn):
        def branch():
            width, height, problem = size_fn()
            return width, height, _clamped_area(width, height), problem

        return branch

    image_format = _classify(head_str, length)
    zero = tf.constant(0, tf.int64)
    width, height, frame_pixels, problem = tf.switch_case(
        image_format,
        [
            lambda: (zero, zero, zero, tf.constant("")),  # unknown: the decoder's own error
            one_frame(lambda: _jpeg_size(contents)),
            one_frame(lambda: _png_size(head_str, head, length)),
            lambda: _gif_size(contents, head, length),
            one_frame(lambda: _bmp_size(head, length)),
            one_frame(lambda: _webp_size(head_str, head, length)),
        ],
    )
    return {
        "format": image_format,
        "width": width,
        "height": height,
        "frame_pixels": frame_pixels,
        "problem": problem,
    }


def _clamped_area(width, height):
    """``width * height`` (int64), each clamped to 2**31 first: no overflow; exact under :data:`MAX_PIXELS_LIMIT`."""
    return tf.minimum(width, _DIMENSION_CLAMP) * tf.minimum(height, _DIMENSION_CLAMP)


_SIZE_SIGNATURE = {
    "format": tf.TensorSpec([], tf.int32),
    "width": tf.TensorSpec([], tf.int64),
    "height": tf.TensorSpec([], tf.int64),
    "frame_pixels": tf.TensorSpec([], tf.int64),
    "problem": tf.TensorSpec([], tf.string),
}


def _refuse_unless(ok, message):
    """An Assert (InvalidArgument when ``ok`` is False) whose message is ``message`` alone."""
    return tf.debugging.Assert(ok, [message])


def _refuse_large_batch(count, max_batch: int):
    return _refuse_unless(
        count <= max_batch,
        tf.strings.format(
            f"request of {{}} images is over the limit of max_batch={max_batch} images a request; "
            "refused before decoding",
            count,
        ),
    )


def check_encoded_images(images, max_pixels: int = DEFAULT_MAX_PIXELS, max_batch: int = DEFAULT_MAX_BATCH):
    """Refuses a request of encoded images over the limits before anything is decoded.

    First the batch: more than ``max_batch`` images fail at once, before any
    header is read. Then every image's header (:func:`read_image_size`):
    the first image (in request order) whose header is malformed, whose
    ``width * height`` is over ``max_pixels``, or (a GIF) whose frames
    together are over ``3 * max_pixels`` pixels (giflib keeps every frame,
    one byte a pixel: as much memory as one ``max_pixels`` RGB image) fails
    the request with InvalidArgument naming the request image's index,
    format and width x height, and the limit. Images of no known format
    pass, to get the decoder's error (see :func:`decode_image`).

    Args:
        images: tf.string ``(B,)`` encoded images.
        max_pixels: the most pixels (width x height) of one image.
        max_batch: the most images in one request.

    Returns:
        ``images``, gated on the checks: decode the returned tensor, and no
        decoder runs unless every check passed.

    Example:
        >>> import re
        >>> small = tf.io.encode_png(np.zeros((30, 40, 1), np.uint8))
        >>> checked = check_encoded_images(tf.stack([small]), max_pixels=1200)   # 40 x 30: passes
        >>> try:
        ...     check_encoded_images(tf.stack([small, small]), max_pixels=1200, max_batch=1)
        ... except tf.errors.InvalidArgumentError as error:
        ...     print(re.search(r"request.*before decoding", error.message)[0])
        request of 2 images is over the limit of max_batch=1 images a request; refused before decoding
        >>> try:
        ...     check_encoded_images(tf.stack([small]), max_pixels=100)
        ... except tf.errors.InvalidArgumentError as error:
        ...     print(re.search(r"request.*before decoding", error.message)[0])
        request image 0 (PNG, 40 x 30 pixels) is over the limit of max_pixels=100 pixels
        (width x height); refused before decoding
    """
    images = tf.convert_to_tensor(images, tf.string)
    count = tf.size(images)
    with tf.control_dependencies([_refuse_large_batch(count, max_batch)]):
        images = tf.identity(images)
    sizes = tf.map_fn(read_image_size, images, fn_output_signature=_SIZE_SIGNATURE)
    format_names = tf.gather(tf.constant(HEADER_FORMATS), sizes["format"])
    which = tf.strings.join(["request image ", tf.strings.as_string(tf.range(count)), " (", format_names])
    size = tf.strings.join([tf.strings.as_string(sizes["width"]), " x ", tf.strings.as_string(sizes["height"])])
    malformed = tf.not_equal(sizes["problem"], "")
    too_large = _clamped_area(sizes["width"], sizes["height"]) > max_pixels
    too_many_frame_pixels = sizes["frame_pixels"] > 3 * max_pixels
    problems = tf.where(
        malformed,
        tf.strings.join([which, "): ", sizes["problem"], "; refused before decoding"]),
        tf.where(
            too_large,
            tf.strings.join(
                [
                    which,
                    ", ",
                    size,
                    f" pixels) is over the limit of max_pixels={max_pixels} pixels (width x height); "
                    "refused before decoding",
                ]
            ),
            tf.where(
                too_many_frame_pixels,
                tf.strings.join(
                    [
                        which,
                        ", ",
                        size,
                        " pixels) has frames of ",
                        tf.strings.as_string(sizes["frame_pixels"]),
                        f" pixels in all, over the limit of 3 x max_pixels={3 * max_pixels} pixels for all "
                        "frames of a GIF (the decoder keeps every frame); refused before decoding",
                    ]
                ),
                "",
            ),
        ),
    )
    refused = malformed | too_large | too_many_frame_pixels
    # The first refused image's message; an empty request has none.
    first = tf.reduce_min(tf.concat([tf.where(refused, tf.range(count), count), [count]], axis=0))
    message = tf.gather(tf.concat([problems, [""]], axis=0), first)
    with tf.control_dependencies([_refuse_unless(~tf.reduce_any(refused), message)]):
        return tf.identity(images)


def _check_pixel_images(images, max_pixels: int, max_batch: int):
    """``serving_images``' limits: ``images`` uint8 ``(B, H, W, 3)``; returns them gated on the checks."""
    shape = tf.shape(images, out_type=tf.int64)
    too_large = _clamped_area(shape[2], shape[1]) > max_pixels
    message = tf.strings.format(
        f"request images of {{}} x {{}} pixels are over the limit of max_pixels={max_pixels} pixels "
        "(width x height); refused",
        (shape[2], shape[1]),
    )
    checks = [_refuse_large_batch(shape[0], max_batch), _refuse_unless(~too_large | (shape[0] == 0), message)]
    with tf.control_dependencies(checks):
        return tf.identity(images)


class InferenceModule(tf.Module):
    """The serving graph: decoding, resize and pad, the model, NMS, and the mapping back.

    What the SavedModel's signatures run; ``main.py --mode=predict`` calls
    the same methods in-process, so both give the same detections.

    Args:
        model: a built :class:`keras_retina.RetinaNet`.
        image_size: the square input size in pixels.
        class_names, category_ids: per contiguous class.
        asset_path: a file listing ``category_id<TAB>name`` per class.
        max_pixels: the most pixels (width x height) of a request image; a
            larger one is refused before it is decoded (see
            :func:`check_encoded_images`).
        max_batch: the most images in one request.

    Example:
        >>> import os, tempfile
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16,
        ...                      head_channels=16, num_head_convs=1)
        >>> asset = write_class_names(os.path.join(tempfile.mkdtemp(), CLASS_NAMES_ASSET),
        ...                           ["cat", "dog"], [17, 18])
        >>> module = InferenceModule(model, 128, ["cat", "dog"], [17, 18], asset)
        >>> jpeg = tf.io.encode_jpeg(np.zeros((60, 80, 3), np.uint8))
        >>> out = module.serve_encoded(tf.stack([jpeg]))
        >>> {name: tuple(value.shape) for name, value in out.items()}   # boxes in the 80 x 60 image
        {'detection_boxes': (1, 100, 4), 'detection_scores': (1, 100),
         'detection_classes': (1, 100), 'num_detections': (1,)}
    """

    def __init__(
        self,
        model,
        image_size: int,
        class_names: Sequence[str],
        category_ids: Sequence[int],
        asset_path: str,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_batch: int = DEFAULT_MAX_BATCH,
    ):
        super().__init__()
        self.max_pixels = _check_limit("max_pixels", max_pixels, MAX_PIXELS_LIMIT)
        self.max_batch = _check_limit("max_batch", max_batch, 2**31 - 1)
        self.model = model
        self.class_names_file = tf.saved_model.Asset(asset_path)
        self.image_size = int(image_size)
        self.category_ids = tf.constant(np.asarray(category_ids, np.int64))
        self.class_names = tf.constant(list(class_names))

    def _detect(self, images, scales, image_shapes):
        self._capture_model_variables()
        # An empty request skips the model (some CPU kernels reject a batch of 0).
        detections = tf.cond(
            tf.shape(images)[0] > 0,
            lambda: self.model.detect(images),
            lambda: self._no_detections(),
        )
        boxes = to_original_pixels(detections["boxes"], scales, image_shapes)
        classes = detections["classes"]
        valid = classes >= 0
        category = tf.gather(self.category_ids, tf.maximum(classes, 0))
        return {
            "detection_boxes": boxes,
            "detection_scores": detections["scores"],
            "detection_classes": tf.where(valid, category, tf.constant(-1, tf.int64)),
            "num_detections": tf.cast(detections["num_detections"], tf.int32),
        }

    def _capture_model_variables(self):
        """In a serving function, captures every model variable as an input named ``model_variable_<i>``.

        Captured first inside the ``tf.cond`` below, the variables would become
        inputs ``cond/input_1`` … ``cond/input_<n>`` of the serving function;
        ``tf.saved_model.save`` renames those to ``cond_input_*`` and logs every
        name, a ~3,000-character INFO line per signature. Captured here, at the
        function's top level under names that need no renaming, the cond reuses
        these inputs and nothing is renamed. Eagerly this does nothing.
        """
        if not tf.inside_function():
            return
        graph = tf.compat.v1.get_default_graph()  # the serving tf.function's FuncGraph
        for i, variable in enumerate(self.model.variables):
            graph.capture(variable.handle, name=f"model_variable_{i}")

    def _no_detections(self):
        max_detections = self.model.max_detections
        return {
            "boxes": tf.zeros((0, max_detections, 4), tf.float32),
            "scores": tf.zeros((0, max_detections), tf.float32),
            "classes": tf.zeros((0, max_detections), tf.int32),
            "num_detections": tf.zeros((0,), tf.int32),
        }

    def _prepare_batch(self, images_uint8_list_fn, count):
        spec = (
            tf.TensorSpec((self.image_size, self.image_size, 3), tf.float32),
            tf.TensorSpec((2,), tf.float32),
            tf.TensorSpec((2,), tf.int32),
        )
        return tf.map_fn(images_uint8_list_fn, tf.range(count), fn_output_signature=spec)

    def serve_encoded(self, images):
        """``images``: tf.string ``(B,)`` encoded images → detections in original pixels.

        Refuses a request over ``max_batch`` images, or with an image over
        ``max_pixels`` or a malformed header, before decoding anything.
        """
        images = check_encoded_images(images, self.max_pixels, self.max_batch)
        count = tf.shape(images)[0]
        prepared = self._prepare_batch(
            lambda i: prepare_image(decode_image(images[i], i), self.image_size), count
        )
        return self._detect(*prepared)

    def serve_images(self, images):
        """``images``: uint8 ``(B, H, W, 3)`` → detections in original pixels (same limits)."""
        images = _check_pixel_images(images, self.max_pixels, self.max_batch)
        count = tf.shape(images)[0]
        prepared = self._prepare_batch(lambda i: prepare_image(images[i], self.image_size), count)
        return self._detect(*prepared)

    def metadata(self):
        """Class names, category ids, the class-names asset's path and the request limits (int64)."""
        # Returning the asset's path makes the SavedModel carry the file.
        return {
            "class_names": self.class_names,
            "category_ids": self.category_ids,
            "class_names_file": self.class_names_file.asset_path,
            "max_pixels": tf.constant(self.max_pixels, tf.int64),
            "max_batch": tf.constant(self.max_batch, tf.int64),
        }


def _check_limit(name: str, value, largest: int) -> int:
    """``value`` as an int in ``[1, largest]``, else a ValueError naming ``name``, the value and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= largest:
        raise ValueError(f"{name} must be an integer from 1 to {largest}; got {value!r}.")
    return int(value)


def next_version(export_dir: str) -> int:
    """1 + the largest integer sub-directory of ``export_dir`` (1 if none)."""
    versions = [int(d) for d in os.listdir(export_dir) if d.isdigit()] if os.path.isdir(export_dir) else []
    return max(versions, default=0) + 1


def export_saved_model(
    model,
    export_dir: str,
    version: int | None = None,
    *,
    class_names: Sequence[str] | None = None,
    category_ids: Sequence[int] | None = None,
    image_size: int | None = None,
    warmup_images: Sequence[bytes] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> str:
    """Writes ``export_dir/<version>/``, a SavedModel for TF Serving.

    Signatures:

    * ``serving_default``: ``images`` tf.string ``[None]`` of encoded
      JPEG/PNG/GIF/BMP/WebP bytes (any sizes up to ``max_pixels``);
    * ``serving_images``: ``images`` uint8 ``[None, None, None, 3]``;
    * ``metadata``: no input; ``class_names``, ``category_ids``,
      ``class_names_file`` (the asset's path once loaded), and the limits
      ``max_pixels`` and ``max_batch`` (int64 scalars).

    Both detection signatures decode, resize and pad as the evaluation
    pipeline does, run the model, decode and NMS, and map boxes back to each
    original image. Outputs: ``detection_boxes`` float32 ``[B, D, 4]`` xyxy
    original pixels, ``detection_scores`` float32 ``[B, D]``,
    ``detection_classes`` int64 ``[B, D]`` (dataset category ids, -1 past
    ``num_detections``), ``num_detections`` int32 ``[B]``.

    The class names also travel as ``assets/class_names.tsv``, and
    ``assets.extra/tf_serving_warmup_requests`` holds a warm-up request.

    Limits. A compressed image can decode to far more memory than it takes
    on the wire: an 18000 x 18000 one-bit PNG is 39 KB and 972 MB once
    decoded to RGB (one such request took a serving process from 0.6 to
    1.7 GB; twenty at once, a 24 GB TF Serving host), and TensorFlow's
    PNG decoder refuses only 2**29 pixels or more. So ``serving_default`` first
    refuses a request of more than ``max_batch`` images, then reads every
    image's width and height from its header (:func:`read_image_size`) and
    refuses the request if one is over ``max_pixels`` (a GIF: also if its
    frames together are over ``3 * max_pixels``) or has a malformed
    header, all before any image is decoded. ``serving_images`` applies
    both limits to its pixel batch. A refused request fails with
    InvalidArgument (TF Serving answers 400 / INVALID_ARGUMENT) whose
    message names the limit and the request image (its index, format and
    width x height); the model keeps serving. Images that pass are decoded
    a few at a time (``tf.map_fn``, at most 10 in flight), each resized
    to the model's input in its own iteration: plan for about 10
    ``max_pixels`` images in memory a request.

    Args:
        model: a :class:`keras_retina.RetinaNet`.
        export_dir: the directory TF Serving watches.
        version: integer version; default one more than the largest present.
        class_names: name per contiguous class (default ``"class_<i>"``).
        category_ids: dataset id per class (default ``0..C-1``).
        image_size: square input size (default: the size the model was
            built with, else 512).
        warmup_images: encoded images for the warm-up request (default one
            generated 64x64 JPEG); they must be within the limits, or TF
            Serving's warm-up would fail to load the model.
        max_pixels: the most pixels (width x height) of one request image,
            from 1 to :data:`MAX_PIXELS_LIMIT`; default 40,000,000 (40
            megapixels: more than phone photos and most camera photos).
        max_batch: the most images in one request; default 64.

    Returns:
        The path of the version directory.

    Example:
        >>> import os, tempfile
        >>> model = kr.RetinaNet(num_classes=2, backbone="tiny", fpn_channels=16,
        ...                      head_channels=16, num_head_convs=1)
        >>> _ = model(np.zeros((1, 128, 128, 3), "float32"))   # build it at its input size
        >>> export_dir = tempfile.mkdtemp()
        >>> path = export_saved_model(model, export_dir, class_names=["cat", "dog"])
        >>> os.path.relpath(path, export_dir), sorted(os.listdir(path))
        ('1', ['assets', 'assets.extra', 'fingerprint.pb', 'saved_model.pb', 'variables'])
        >>> read_class_names(path)
        (['cat', 'dog'], [0, 1])
        >>> loaded = tf.saved_model.load(path)
        >>> limits = loaded.signatures["metadata"]()
        >>> int(limits["max_pixels"]), int(limits["max_batch"])
        (40000000, 64)
        >>> bomb = tf.io.encode_png(np.zeros((9000, 5000, 1), np.uint8))   # 45 MP in 45 KB
        >>> import re
        >>> try:
        ...     loaded.signatures["serving_default"](images=tf.stack([bomb]))
        ... except tf.errors.InvalidArgumentError as error:   # TF Serving: 400 INVALID_ARGUMENT
        ...     print(re.search(r"request.*before decoding", error.message)[0])
        request image 0 (PNG, 5000 x 9000 pixels) is over the limit of max_pixels=40000000 pixels
        (width x height); refused before decoding

        TF Serving then serves ``export_dir``, e.g.
        ``docker run -p 8501:8501 -v <export_dir>:/models/retinanet -e
        MODEL_NAME=retinanet tensorflow/serving``.
    """
    class_names, category_ids = resolve_classes("export_saved_model", model.num_classes, class_names, category_ids)
    image_size = int(image_size or _built_image_size(model) or 512)
    max_pixels = _check_limit("max_pixels", max_pixels, MAX_PIXELS_LIMIT)
    max_batch = _check_limit("max_batch", max_batch, 2**31 - 1)
    warmup_images = list(warmup_images or [_sample_jpeg()])
    _check_warmup_images(warmup_images, max_pixels, max_batch)
    version = next_version(export_dir) if version is None else int(version)
    path = os.path.join(export_dir, str(version))
    if os.path.exists(path):
        raise FileExistsError(f"export_saved_model: {path} already exists; pick another version.")

    # tf.saved_model.save on a tf.Module rather than keras.export.ExportArchive:
    # the archive keeps only variables and lookup tables, not the asset file.
    with tempfile.TemporaryDirectory() as scratch:
        asset_path = write_class_names(os.path.join(scratch, CLASS_NAMES_ASSET), class_names, category_ids)
        detector = InferenceModule(
            model, image_size, class_names, category_ids, asset_path, max_pixels=max_pixels, max_batch=max_batch
        )
        signatures = {
            "serving_default": tf.function(
                detector.serve_encoded, input_signature=[tf.TensorSpec([None], tf.string, name="images")]
            ),
            "serving_images": tf.function(
                detector.serve_images,
                input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
            ),
            "metadata": tf.function(detector.metadata, input_signature=[]),
        }
        tf.saved_model.save(detector, path, signatures=signatures)
    write_warmup_requests(path, warmup_images)
    return path


def _check_warmup_images(images: Sequence[bytes], max_pixels: int, max_batch: int) -> None:
    """A ValueError unless the warm-up request passes the serving graph's limits."""
    try:
        check_encoded_images(tf.constant(images, tf.string), max_pixels, max_batch)
    except tf.errors.InvalidArgumentError as error:
        found = re.search(r"request.*before decoding", error.message)
        reason = found[0] if found else error.message.strip()
        raise ValueError(
            f"export_saved_model: warmup_images would be refused by the exported model: {reason}."
        ) from None


def write_warmup_requests(saved_model_path: str, encoded_images: Sequence[bytes], model_name: str = "retinanet") -> str:
    """Writes ``assets.extra/tf_serving_warmup_requests`` (PredictionLog records).

    TF Serving replays these at load, so the first real request does not pay
    for graph initialisation.
    """
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2  # noqa: PLC0415

    extra = os.path.join(saved_model_path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    filename = os.path.join(extra, "tf_serving_warmup_requests")
    request = predict_pb2.PredictRequest(
        model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default")
    )
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(list(encoded_images), dtype=tf.string))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(filename) as writer:
        writer.write(log.SerializeToString())
    return filename


def resolve_classes(caller: str, num_classes: int, class_names, category_ids) -> tuple[list[str], list[int]]:
    """``class_names`` and ``category_ids`` as lists (defaults ``"class_<i>"`` and ``0..C-1``), one per class.

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


def write_class_names(path: str, class_names: Sequence[str], category_ids: Sequence[int]) -> str:
    """Writes ``category_id<TAB>name`` per class to ``path`` (the SavedModel asset's format); returns ``path``."""
    with open(path, "w") as f:
        f.writelines(f"{cid}\t{name}\n" for cid, name in zip(category_ids, class_names))
    return path


def read_class_names(saved_model_path: str) -> tuple[list[str], list[int]]:
    """Reads the class names and category ids from an exported SavedModel's asset file."""
    with open(os.path.join(saved_model_path, "assets", CLASS_NAMES_ASSET)) as f:
        rows = [line.rstrip("\n").split("\t", 1) for line in f if line.strip()]
    return [name for _, name in rows], [int(cid) for cid, _ in rows]


def _built_image_size(model) -> int | None:
    input_shape = compat.built_input_shape(model)
    if input_shape and input_shape[1] and input_shape[1] == input_shape[2]:
        return int(input_shape[1])
    return None


def _sample_jpeg() -> bytes:
    image = np.full((64, 64, 3), 127, np.uint8)
    return tf.io.encode_jpeg(image).numpy()
