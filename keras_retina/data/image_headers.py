"""What an image file's first bytes say: its format, before anything decodes it.

The header parser and decompression-bomb guard of served requests
(:mod:`keras_retina.deploy.saved_model`) and the COCO-JSON reader's error
messages both read :data:`IMAGE_MAGIC_BYTES`.
"""

#: Leading bytes of the image formats ``tf.io.decode_image`` reads, with their
#: names (WebP is checked by its ``RIFF`` container only). TensorFlow has no op
#: that names a file's format without decoding it (``tf.io.is_jpeg`` covers
#: JPEG only), hence this table. It has two readers:
#:
#: * :mod:`keras_retina.data.coco_json`, after a decode failed, to word the error:
#:   "corrupt or truncated PNG data" for known leading bytes, "not an image" otherwise;
#: * :func:`keras_retina.deploy.saved_model.decode_image`, before decoding a served
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
