"""EXIF orientation: images decoded as a viewer shows them, in graph ops.

A camera stores a JPEG's pixels as the sensor read them and writes, in the
EXIF ``Orientation`` tag (0x0112), how a viewer must turn them to show the
photo upright; phones do this for every photo taken sideways or upside down.
Annotation tools draw boxes on the image as displayed, so boxes (and the
JSON's ``width`` / ``height``) only fit the pixels after that turn.
``tf.io.decode_image`` ignores the tag and returns the stored pixels.

The eight values (TIFF 6.0 / EXIF 2.3), and what :func:`upright` does to the
stored pixels, as ``PIL.ImageOps.exif_transpose`` does:

====  ===================================  =======================
 tag  stored row 0 / column 0 shows         upright
====  ===================================  =======================
  1   top / left (no turn)                 unchanged
  2   top / right                          flip left-right
  3   bottom / right                       rotate 180°
  4   bottom / left                        flip up-down
  5   left / top                           transpose
  6   right / top                          rotate 90° clockwise
  7   right / bottom                       transverse
  8   left / bottom                        rotate 90° counter-clockwise
====  ===================================  =======================

Everything here is TensorFlow graph ops (it runs inside ``tf.data`` and the
served SavedModel) and reads a small, bounded number of bytes of the file.
"""

from __future__ import annotations

import tensorflow as tf

#: Orientation of an image that needs no turn (also: no EXIF, not a JPEG, malformed).
ORIENTATION_UPRIGHT = 1
#: The EXIF tag that holds the orientation, and its TIFF type (SHORT).
_ORIENTATION_TAG = 0x0112
_TIFF_SHORT = 3
#: JPEG segments looked at before giving up (phones write the Exif APP1 first or second).
_MAX_SEGMENTS = 16
#: IFD0 entries looked at: tags are in ascending order, and at most ~16 TIFF
#: tags sort before 0x0112, so the orientation is among the first entries.
_MAX_IFD_ENTRIES = 64
_IFD_ENTRY_BYTES = 12
_APP1, _SOS, _EOI = 0xE1, 0xDA, 0xD9
_EXIF_HEADER = b"Exif\x00\x00"


def _read_bytes(contents, length, position, count: int):
    """``count`` bytes of ``contents`` from ``position`` as int64, zeros past the end.

    Returns ``(values (count,) int64, in_bounds bool)``; reads at most
    ``count`` bytes whatever ``position`` is (negative or past the end included).
    """
    start = tf.clip_by_value(position, 0, length)
    piece = tf.strings.substr(contents, start, tf.constant(count, tf.int64))
    padded = tf.strings.join([piece, tf.constant(b"\x00" * count)])
    values = tf.cast(tf.io.decode_raw(padded, tf.uint8)[:count], tf.int64)
    in_bounds = (position >= 0) & (position + count <= length)
    return values, in_bounds


def _unsigned(values, offset: int, size: int, little_endian):
    """The unsigned ``size``-byte integer at ``values[..., offset:]``, in either byte order."""
    big = sum(values[..., offset + k] * (256 ** (size - 1 - k)) for k in range(size))
    little = sum(values[..., offset + k] * (256**k) for k in range(size))
    return tf.where(little_endian, little, big)


def _find_exif(contents, length):
    """``(tiff_start, segment_end)`` int64 of the first Exif APP1 segment; ``(-1, -1)`` if none.

    Walks the markers from byte 2 (after SOI): ``FF xx`` then a big-endian
    2-byte length that counts itself; stops at SOS (the entropy-coded data
    follows), EOI, a byte that is not a marker, or after ``_MAX_SEGMENTS``.
    """
    not_found = tf.constant(-1, tf.int64)

    def keep_going(step, position, tiff_start, segment_end, done):
        return tf.logical_not(done) & (step < _MAX_SEGMENTS)

    def next_segment(step, position, tiff_start, segment_end, done):
        head, whole = _read_bytes(contents, length, position, 4 + len(_EXIF_HEADER))
        marker = head[1]
        segment_length = head[2] * 256 + head[3]  # counts its own 2 bytes
        is_fill = (head[0] == 0xFF) & (marker == 0xFF)  # fill bytes may precede a marker
        standalone = (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD7))  # TEM, RSTn
        ends = (head[0] != 0xFF) | (marker == _SOS) | (marker == _EOI) | (marker == 0xD8)
        ends |= tf.logical_not(is_fill | standalone) & (segment_length < 2)
        is_exif = tf.logical_not(ends | is_fill | standalone) & (marker == _APP1) & whole
        for k, byte in enumerate(_EXIF_HEADER):
            is_exif &= head[4 + k] == byte
        is_exif &= segment_length >= 2 + len(_EXIF_HEADER)
        one, two = tf.constant(1, tf.int64), tf.constant(2, tf.int64)
        step_bytes = tf.where(is_fill, one, tf.where(standalone, two, 2 + segment_length))
        return (
            step + 1,
            position + step_bytes,
            tf.where(is_exif, position + 4 + len(_EXIF_HEADER), tiff_start),
            tf.where(is_exif, tf.minimum(position + 2 + segment_length, length), segment_end),
            done | ends | is_exif,
        )

    start = (
        tf.constant(0),
        tf.constant(2, tf.int64),
        not_found,
        not_found,
        tf.logical_not(tf.strings.substr(contents, 0, 2) == b"\xff\xd8"),  # JPEG's SOI
    )
    _, _, tiff_start, segment_end, _ = tf.while_loop(
        keep_going, next_segment, start, maximum_iterations=_MAX_SEGMENTS
    )
    return tiff_start, segment_end


def exif_orientation(contents) -> tf.Tensor:
    """The EXIF orientation (1-8) of encoded image bytes, read in graph ops.

    Reads the first APP1 segment that starts ``Exif\\0\\0`` of a JPEG, its
    TIFF header (``II`` little-endian or ``MM`` big-endian, 42, the offset
    of IFD0), and IFD0's tag 0x0112 (SHORT). Reads at most a few hundred
    bytes, whatever the file says; never raises.

    Hand-written because TensorFlow has no EXIF reader (``tf.io.decode_jpeg``
    skips the APP1 segment) and this must run inside ``tf.data`` and a
    SavedModel, where PIL cannot.

    Args:
        contents: scalar ``tf.string``, the bytes of an image file (any format).

    Returns:
        int32 scalar in ``1..8``; 1 when there is no orientation tag, the
        bytes are not a JPEG, or the EXIF data is malformed or out of range.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> exif = Image.Exif()
        >>> exif[0x0112] = 6                    # "rotate 90° clockwise to view"
        >>> buffer = io.BytesIO()
        >>> Image.new("RGB", (8, 4)).save(buffer, format="JPEG", exif=exif)
        >>> int(exif_orientation(buffer.getvalue()))
        6
        >>> int(exif_orientation(tf.io.encode_png(np.zeros((4, 8, 3), np.uint8))))
        1
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    length = tf.cast(tf.strings.length(contents), tf.int64)
    tiff_start, segment_end = _find_exif(contents, length)

    header, header_whole = _read_bytes(contents, length, tiff_start, 8)
    little = (header[0] == 0x49) & (header[1] == 0x49)  # "II"
    big = (header[0] == 0x4D) & (header[1] == 0x4D)  # "MM"
    ok = (tiff_start >= 0) & header_whole & (tiff_start + 8 <= segment_end)
    ok &= (little | big) & (_unsigned(header, 2, 2, little) == 42)
    ifd_start = tiff_start + _unsigned(header, 4, 4, little)  # offsets count from the TIFF header

    count_bytes, count_whole = _read_bytes(contents, length, ifd_start, 2)
    entry_count = _unsigned(count_bytes, 0, 2, little)
    ok &= count_whole & (ifd_start + 2 + _IFD_ENTRY_BYTES * entry_count <= segment_end)

    table, _ = _read_bytes(contents, length, ifd_start + 2, _MAX_IFD_ENTRIES * _IFD_ENTRY_BYTES)
    entries = tf.reshape(table, (_MAX_IFD_ENTRIES, _IFD_ENTRY_BYTES))  # (entries, 12 bytes)
    is_orientation = (
        (tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64) < entry_count)
        & (_unsigned(entries, 0, 2, little) == _ORIENTATION_TAG)
        & (_unsigned(entries, 2, 2, little) == _TIFF_SHORT)
        & (_unsigned(entries, 4, 4, little) == 1)  # one value, held in the entry itself
    )
    value = _unsigned(entries, 8, 2, little)  # (entries,)
    found = tf.reduce_any(is_orientation)
    orientation = tf.gather(value, tf.argmax(tf.cast(is_orientation, tf.int32)))
    ok &= found & (orientation >= 1) & (orientation <= 8)
    return tf.cast(tf.where(ok, orientation, ORIENTATION_UPRIGHT), tf.int32)


def upright(image, orientation) -> tf.Tensor:
    """Turns stored pixels as EXIF ``orientation`` says, to the image a viewer shows.

    Equals ``PIL.ImageOps.exif_transpose`` for every orientation; values
    outside ``1..8`` leave the image unchanged.

    Args:
        image: ``(H, W, C)`` tensor of any dtype, the stored pixels.
        orientation: int scalar, the EXIF orientation (:func:`exif_orientation`).

    Returns:
        ``(H, W, C)`` for orientations 1-4, ``(W, H, C)`` for 5-8, same dtype.

    Example:
        >>> stored = np.arange(6, dtype=np.uint8).reshape(2, 3, 1)
        >>> stored[..., 0]
        array([[0, 1, 2],
               [3, 4, 5]], dtype=uint8)
        >>> upright(stored, 6).numpy()[..., 0]   # rotated 90° clockwise
        array([[3, 0],
               [4, 1],
               [5, 2]], dtype=uint8)
        >>> upright(stored, 3).numpy()[..., 0]   # upside down
        array([[5, 4, 3],
               [2, 1, 0]], dtype=uint8)
    """
    image = tf.convert_to_tensor(image)
    orientation = tf.cast(orientation, tf.int32)
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
    branches = [
        lambda: image,  # 1
        lambda: tf.image.flip_left_right(image),  # 2
        lambda: tf.image.rot90(image, k=2),  # 3
        lambda: tf.image.flip_up_down(image),  # 4
        lambda: tf.image.transpose(image),  # 5
        lambda: tf.image.rot90(image, k=3),  # 6: rot90 turns counter-clockwise
        lambda: tf.image.rot90(tf.image.transpose(image), k=2),  # 7
        lambda: tf.image.rot90(image, k=1),  # 8
    ]
    return tf.switch_case(index, branches)


def decode_upright(contents, channels: int = 3) -> tf.Tensor:
    """Decodes JPEG/PNG/GIF/BMP/WebP bytes to uint8 pixels as a viewer shows them.

    ``tf.io.decode_image`` (first frame of an animated GIF) followed by
    :func:`upright` with the file's :func:`exif_orientation`.

    Args:
        contents: scalar ``tf.string``, the encoded image.
        channels: channels of the result (3: grayscale, RGBA and CMYK become RGB).

    Returns:
        uint8 ``(H, W, channels)``, the displayed height and width.

    Raises:
        tf.errors.InvalidArgumentError: the bytes do not decode (as ``tf.io.decode_image``).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> exif = Image.Exif()
        >>> exif[0x0112] = 8                    # stored sideways
        >>> buffer = io.BytesIO()
        >>> Image.new("RGB", (8, 4)).save(buffer, format="JPEG", exif=exif)   # 8 wide, 4 high
        >>> tuple(tf.io.decode_image(buffer.getvalue()).shape), tuple(decode_upright(buffer.getvalue()).shape)
        ((4, 8, 3), (8, 4, 3))
    """
    image = tf.io.decode_image(contents, channels=channels, dtype=tf.uint8, expand_animations=False)
    image = tf.ensure_shape(image, (None, None, channels))
    return upright(image, exif_orientation(contents))
