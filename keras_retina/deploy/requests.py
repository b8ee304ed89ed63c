"""A served request's images: the limits, the checks before decoding, decoding, resize and pad.

What every runtime does to a request before its model sees it: the
SavedModel's serving graph (:class:`keras_retina.deploy.saved_model.InferenceModule`)
and prediction on image files with a ``.tflite`` file
(:func:`keras_retina.deploy.predict.predict_files`) run these same functions,
so a request is refused, decoded and resized the same way whichever runtime
serves it. That is why they live here, in a module of their own, rather than
in one export format's module.

The limits are serving policy (how many images a request may carry, how
many pixels an image may announce, and the refusal a client reads), so they
belong to deploy; how to read a size from an image's header is a property of
the file formats and lives with the other image-file knowledge in the data
layer (:func:`keras_retina.data.image_headers.read_image_size`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_retina.data.image_headers import (
    HEADER_FORMATS,
    IMAGE_FORMAT_NAMES,
    IMAGE_MAGIC_BYTES,
    IMAGE_SIZE_SPEC,
    clamped_area,
    read_image_size,
)
from keras_retina.data.orientation import decode_upright
from keras_retina.data.pipeline import transform_example

#: Default ``max_pixels`` of the serving graph: 40 megapixels (width x height),
#: more than phone photos (12-24 MP at default settings) and most camera
#: photos; raise it to serve 45-102 MP high-resolution or medium-format ones.
DEFAULT_MAX_PIXELS = 40_000_000
#: Default ``max_batch`` of the serving graph: images per request.
DEFAULT_MAX_BATCH = 64
#: Largest accepted ``max_pixels``: sizes are compared as
#: :func:`~keras_retina.data.image_headers.clamped_area`, exact below 2**31.
MAX_PIXELS_LIMIT = 2**31 - 1


def prepare_image(image_uint8, image_size: int, min_size: int | None = None, max_size: int | None = None):
    """Resizes and pads one image exactly as the evaluation pipeline does.

    Args:
        image_uint8: ``(H, W, 3)`` uint8 image.
        image_size: the model's square input size in pixels.
        min_size, max_size: the shorter-side resize rule, if the model has
            one (:func:`keras_retina.data.pipeline.shorter_side_size`).

    Returns:
        ``(image (S, S, 3) float32, scale (2,) (sy, sx), image_shape (2,) int32)``.
    """
    example = {
        "image": image_uint8,
        "boxes": tf.zeros((0, 4), tf.float32),
        "classes": tf.zeros((0,), tf.int32),
    }
    image, y = transform_example(example, image_size=image_size, max_boxes=1, min_size=min_size, max_size=max_size)
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



def check_limit(name: str, value, largest: int) -> int:
    """``value`` as an int in ``[1, largest]``, else a ValueError naming ``name``, the value and the range.

    Example:
        >>> check_limit("max_batch", 8, 64)
        8
        >>> check_limit("max_batch", 0, 64)
        Traceback (most recent call last):
        ...
        ValueError: max_batch must be an integer from 1 to 64; got 0.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= largest:
        raise ValueError(f"{name} must be an integer from 1 to {largest}; got {value!r}.")
    return int(value)


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
    sizes = tf.map_fn(read_image_size, images, fn_output_signature=IMAGE_SIZE_SPEC)
    format_names = tf.gather(tf.constant(HEADER_FORMATS), sizes["format"])
    which = tf.strings.join(["request image ", tf.strings.as_string(tf.range(count)), " (", format_names])
    size = tf.strings.join([tf.strings.as_string(sizes["width"]), " x ", tf.strings.as_string(sizes["height"])])
    malformed = tf.not_equal(sizes["problem"], "")
    too_large = clamped_area(sizes["width"], sizes["height"]) > max_pixels
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


def check_pixel_images(images, max_pixels: int, max_batch: int):
    """``serving_images``' limits: ``images`` uint8 ``(B, H, W, 3)``; returns them gated on the checks."""
    shape = tf.shape(images, out_type=tf.int64)
    too_large = clamped_area(shape[2], shape[1]) > max_pixels
    message = tf.strings.format(
        f"request images of {{}} x {{}} pixels are over the limit of max_pixels={max_pixels} pixels "
        "(width x height); refused",
        (shape[2], shape[1]),
    )
    checks = [_refuse_large_batch(shape[0], max_batch), _refuse_unless(~too_large | (shape[0] == 0), message)]
    with tf.control_dependencies(checks):
        return tf.identity(images)

