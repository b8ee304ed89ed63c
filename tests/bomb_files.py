"""Decompression bombs and oversized headers for the header-parser and serving-limit tests.

Each builder writes the bytes a file of that format starts with, as the
format's specification lays them out, small on disk however large the image
it announces. Only :func:`png` is a complete, decodable file; the others are
real headers (taken from a small file PIL writes, where one is at hand) with
the sizes patched, followed by a short or dummy body: the serving graph must
refuse them from the header alone.
"""

import io
import struct
import zlib

import numpy as np
from PIL import Image


def _pil_bytes(image, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, rows_per_chunk: int = 512) -> bytes:
    """A complete, valid 1-bit grayscale PNG of zeros (PNG spec: IHDR, IDAT, IEND).

    The IDAT stream is compressed a few hundred rows at a time, so not even
    the raw rows are ever held whole: 18000 x 18000 is 40.5 MB of raw rows,
    about 39 KB compressed, and 972 MB once decoded to RGB.
    """
    row = b"\0" * (1 + (width + 7) // 8)  # filter type 0, then width bits
    compressor = zlib.compressobj(9)
    parts = []
    for start in range(0, height, rows_per_chunk):
        parts.append(compressor.compress(row * min(rows_per_chunk, height - start)))
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def jpeg(width: int, height: int, progressive: bool = False) -> bytes:
    """A small JPEG from PIL with its frame header's (SOF0, or SOF2 if progressive) height and width patched.

    JPEG (ITU T.81) B.2.2: marker, 2-byte length, precision, then 2-byte
    height and width, big-endian. The scan still holds 24 x 16 pixels.
    """
    data = _pil_bytes(np.full((16, 24, 3), 100, np.uint8), "JPEG", progressive=progressive)
    position = 2  # after SOI
    while position < len(data):
        marker, length = data[position + 1], struct.unpack(">H", data[position + 2 : position + 4])[0]
        if marker in (0xC0, 0xC2):
            assert marker == (0xC2 if progressive else 0xC0)
            sizes = position + 5
            return data[:sizes] + struct.pack(">HH", height, width) + data[sizes + 4 :]
        position += 2 + length
    raise AssertionError("no SOF marker in PIL's JPEG")


def gif(screen, frames, sub_block_sizes=(1,)) -> bytes:
    """A GIF89a with logical screen ``screen`` (width, height) and one image descriptor per ``frames`` entry.

    GIF89a spec: header, logical screen descriptor (width, height
    little-endian 16-bit at bytes 6-9; no global colour table), then per
    frame an image descriptor (0x2c, left, top, width, height, flags), the
    LZW code size and sub-blocks of ``sub_block_sizes`` bytes each, ended by
    a 0 size; then the trailer 0x3b. The LZW data are dummy bytes.
    """
    out = [b"GIF89a", struct.pack("<HHBBB", *screen, 0, 0, 0)]
    for width, height in frames:
        out.append(b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02")
        out.extend(bytes([size]) + b"\x01" * size for size in sub_block_sizes)
        out.append(b"\x00")
    out.append(b"\x3b")
    return b"".join(out)


def bmp(width: int, height: int) -> bytes:
    """A BMP's 14-byte file header and 40-byte BITMAPINFOHEADER, no pixels.

    Width and height are little-endian int32 at bytes 18 and 22 (a negative
    height means rows stored top-down); 24 bits a pixel.
    """
    row = (3 * width + 3) // 4 * 4
    image_bytes = row * abs(height)
    file_header = b"BM" + struct.pack("<IHHI", 54 + image_bytes, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, image_bytes, 2835, 2835, 0, 0)
    return file_header + info


def _riff(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def webp_lossy(width: int, height: int) -> bytes:
    """A lossy WebP from PIL ('VP8 ' chunk) with its frame header's 14-bit width and height patched.

    RFC 9649 / VP8 (RFC 6386 9.1): the chunk payload at byte 20 is a 3-byte
    frame tag, the start code 9d 01 2a, then 16-bit little-endian width and
    height (low 14 bits; the top 2 are a scaling hint).
    """
    data = bytearray(_pil_bytes(np.full((16, 24, 3), 100, np.uint8), "WEBP", quality=50))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a"
    data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


def webp_lossless(width: int, height: int) -> bytes:
    """A lossless WebP from PIL ('VP8L' chunk) with its 14-bit width - 1 and height - 1 patched.

    RFC 9649 3.7.1 / VP8L: signature byte 0x2f at byte 20, then a
    little-endian 32-bit field: 14 bits width - 1, 14 bits height - 1, 1
    alpha bit, 3 version bits.
    """
    data = bytearray(_pil_bytes(np.full((16, 24, 3), 100, np.uint8), "WEBP", lossless=True))
    assert data[12:16] == b"VP8L" and data[20] == 0x2F
    bits = struct.unpack("<I", data[21:25])[0] & ~((1 << 28) - 1)  # keep alpha and version
    data[21:25] = struct.pack("<I", bits | (width - 1) | ((height - 1) << 14))
    return bytes(data)


def webp_extended(width: int, height: int) -> bytes:
    """A WebP whose first chunk is 'VP8X' with a 24-bit canvas of ``width`` x ``height``, then a small 'VP8L' frame.

    RFC 9649 2.7: 'VP8X', size 10, flags (4 bytes with the 3 reserved),
    canvas width - 1 and height - 1 as 24-bit little-endian at bytes 24-29.
    """
    frame = webp_lossless(24, 16)[12:]  # its 'VP8L' chunk
    canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0" + canvas
    return _riff(vp8x + frame)
