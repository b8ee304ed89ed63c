"""What an image file's first bytes say: its format and, read from its header, its size.

Two things, both before anything decodes the image:

* :data:`IMAGE_MAGIC_BYTES`, the formats ``tf.io.decode_image`` reads, told
  apart by their leading bytes;
* :func:`read_image_size`, the width and height TensorFlow's decoder would
  allocate for, read in graph ops from the header alone, so that a served
  request's decompression bomb is refused before it is decoded
  (:func:`keras_retina.deploy.requests.check_encoded_images`).

Decompression bombs: an 18000 x 18000 one-bit PNG is 39 KB on the wire and
972 MB once TensorFlow has decoded it to RGB; a 13000 x 13000 JPEG is 2 MB
and 507 MB. TensorFlow's PNG decoder refuses only 2**29 pixels or more, so
the serving graph reads each image's width and height from its header, with
string and arithmetic ops that allocate nothing image-sized.

Hand-written because no TensorFlow op reads a PNG, GIF, BMP or WebP header
without decoding (``tf.image.extract_jpeg_shape`` does, for JPEG only). Each
parser reads the bytes that TensorFlow's own decoder reads for the size it
allocates (``tensorflow/core/kernels/image/decode_image_op.cc`` and the
libraries it calls); the source of truth is named at each one.
"""

from __future__ import annotations

import tensorflow as tf

#: Leading bytes of the image formats ``tf.io.decode_image`` reads, with their
#: names (WebP is checked by its ``RIFF`` container only). TensorFlow has no op
#: that names a file's format without decoding it (``tf.io.is_jpeg`` covers
#: JPEG only), hence this table. It has two readers:
#:
#: * :mod:`keras_retina.data.coco_json`, after a decode failed, to word the error:
#:   "corrupt or truncated PNG data" for known leading bytes, "not an image" otherwise;
#: * :func:`keras_retina.deploy.requests.decode_image`, before decoding a served
#:   request, to reject bytes that start with none of these with a clear
#:   ``InvalidArgumentError``.
IMAGE_MAGIC_BYTES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"RIFF", "WebP"),
)

#: The names of :data:`IMAGE_MAGIC_BYTES`, for messages: "JPEG, PNG, GIF, BMP or WebP".
IMAGE_FORMAT_NAMES = (
    ", ".join(name for _, name in IMAGE_MAGIC_BYTES[:-1]) + " or " + IMAGE_MAGIC_BYTES[-1][1]
)


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
#: Every dimension is clamped to this before multiplying (see :func:`clamped_area`).
_DIMENSION_CLAMP = 2**31


# ------------------------------------------------------------ header sizes

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
            return width, height, clamped_area(width, height), problem

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



def clamped_area(width, height):
    """``width * height`` (int64), each clamped to 2**31 first, so nothing overflows.

    Exact when the true product is under 2**31 (then neither factor is
    clamped); otherwise at least 2**31. So ``clamped_area(w, h) > limit``
    is exact for any ``limit`` under 2**31.

    Example:
        >>> int(clamped_area(tf.constant(40, tf.int64), tf.constant(30, tf.int64)))
        1200
        >>> int(clamped_area(tf.constant(2**40, tf.int64), tf.constant(2**40, tf.int64))) == 2**62
        True
    """
    return tf.minimum(width, _DIMENSION_CLAMP) * tf.minimum(height, _DIMENSION_CLAMP)


#: The outputs of :func:`read_image_size`, e.g. for ``tf.map_fn``'s ``fn_output_signature``.
IMAGE_SIZE_SPEC = {
    "format": tf.TensorSpec([], tf.int32),
    "width": tf.TensorSpec([], tf.int64),
    "height": tf.TensorSpec([], tf.int64),
    "frame_pixels": tf.TensorSpec([], tf.int64),
    "problem": tf.TensorSpec([], tf.string),
}
