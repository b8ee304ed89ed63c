"""Drawing boxes with class names (and scores) on images, and PNG grids.

Drawn with Pillow's ``ImageDraw`` rather than ``keras.visualization``: in
Keras 3.15 ``draw_bounding_boxes`` needs OpenCV (``cv2``) and
``plot_bounding_box_gallery`` needs matplotlib, neither of which this package
depends on (nor is installed headless by default), and Keras draws every class
in one colour. Pillow is already a dependency and works headless.
"""

from __future__ import annotations

import colorsys
import os
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Gap between grid cells and around the grid, in pixels.
_GRID_GAP = 4
#: Grid background colour (RGB).
_GRID_BACKGROUND = (255, 255, 255)
#: Text colour of headers and captions (RGB).
_TEXT_COLOR = (0, 0, 0)
#: Font size of headers and captions, in pixels.
CAPTION_FONT_SIZE = 12


def class_color(class_id: int) -> tuple[int, int, int]:
    """Distinct, deterministic RGB colour of a class.

    Hues step by the golden ratio so that neighbouring ids differ strongly.

    Args:
        class_id: class index ``>= 0``.

    Returns:
        ``(r, g, b)`` in 0-255.

    Example:
        >>> class_color(0)
        (255, 64, 64)
    """
    hue = (int(class_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 1.0)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _to_uint8_image(image: Any, argument: str = "image") -> np.ndarray:
    """``(H, W, 3)`` uint8 copy of a uint8 or 0-255 float image."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] not in (1, 3):
        raise ValueError(f"`{argument}` must have shape (H, W, 3) or (H, W, 1), got shape {array.shape}.")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    if array.dtype != np.uint8:
        array = np.clip(np.round(array.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def _label_text(
    class_id: int, class_names: Sequence[str] | Mapping[int, str] | None, score: float | None
) -> str:
    """``"name 0.87"``; the class id when there are no names."""
    if class_names is None:
        name = str(class_id)
    elif isinstance(class_names, Mapping):
        name = str(class_names.get(class_id, class_id))
    else:
        name = str(class_names[class_id]) if 0 <= class_id < len(class_names) else str(class_id)
    return name if score is None else f"{name} {score:.2f}"


def draw_boxes(
    image: Any,
    boxes: Any,
    classes: Any,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    scores: Any | None = None,
    *,
    line_width: int = 2,
    show_labels: bool = True,
) -> np.ndarray:
    """Draws xyxy boxes with class names (and scores) on one image.

    A box ``(x_min, y_min, x_max, y_max)`` covers pixel columns ``x_min`` to
    ``x_max - 1`` and rows ``y_min`` to ``y_max - 1`` (coordinates rounded
    to the nearest pixel edge); its outline lies on those outer pixels and
    extends ``line_width`` pixels inwards, in `class_color` of its class. The
    label sits above the box (inside it at the top of the image). Rows with
    class ``< 0`` (padding) are not drawn.

    Args:
        image: uint8 or 0-255 float ``(H, W, 3)`` (or ``(H, W, 1)``).
        boxes: float ``(N, 4)`` xyxy in pixels of ``image``.
        classes: int ``(N,)``; ``-1`` marks padding rows.
        class_names: names indexed by class id (sequence or mapping); None
            labels boxes with the id.
        scores: optional float ``(N,)`` in [0, 1], printed after the name.
        line_width: outline width in pixels, ``>= 1``.
        show_labels: draw the label text.

    Returns:
        uint8 ``(H, W, 3)``: a copy of ``image`` with the boxes drawn.

    Raises:
        ValueError: if shapes do not match; the message names the argument.

    Example:
        >>> canvas = draw_boxes(np.zeros((64, 64, 3), np.uint8),
        ...                     [[8, 8, 40, 32]], [2], class_names=["a", "b", "c"])
        >>> canvas.shape, canvas.dtype
        ((64, 64, 3), dtype('uint8'))
    """
    canvas = _to_uint8_image(image)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
    classes = np.asarray(classes).reshape(-1).astype(np.int64)
    if boxes.shape[0] != classes.shape[0]:
        raise ValueError(
            f"`boxes` and `classes` must have the same number of rows, got boxes shape "
            f"{boxes.shape} and classes shape {classes.shape}."
        )
    if scores is not None:
        scores = np.asarray(scores, np.float64).reshape(-1)
        if scores.shape[0] != classes.shape[0]:
            raise ValueError(
                f"`scores` must have one value per box, got scores shape {scores.shape} for "
                f"{classes.shape[0]} boxes."
            )
    if int(line_width) < 1:
        raise ValueError(f"`line_width` must be >= 1, got {line_width!r}.")

    pil_image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pil_image)
    font = ImageFont.load_default()
    height, width = canvas.shape[:2]
    for i in np.flatnonzero(classes >= 0):
        x_min, y_min, x_max, y_max = np.round(boxes[i]).astype(int)
        # PIL's rectangle is inclusive of its end pixel: the last covered one.
        x0, y0 = max(x_min, 0), max(y_min, 0)
        x1, y1 = min(x_max - 1, width - 1), min(y_max - 1, height - 1)
        if x1 < x0 or y1 < y0:
            continue  # Empty or entirely outside the image.
        color = class_color(classes[i])
        draw.rectangle((x0, y0, x1, y1), outline=color, width=int(line_width))
        if show_labels:
            text = _label_text(int(classes[i]), class_names, None if scores is None else scores[i])
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            text_w, text_h = right - left + 4, bottom - top + 2
            text_y = y0 - text_h if y0 - text_h >= 0 else y0 + int(line_width)
            draw.rectangle((x0, text_y, x0 + text_w - 1, text_y + text_h - 1), fill=color)
            draw.text((x0 + 2 - left, text_y + 1 - top), text, fill=(0, 0, 0), font=font)
    return np.asarray(pil_image)


def save_batch_png(
    images: Any,
    y: Mapping[str, Any],
    path: str | os.PathLike,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    max_images: int = 8,
    columns: int = 4,
    *,
    line_width: int = 2,
) -> str:
    """Draws a batch of examples with their boxes into one PNG grid (see :func:`draw_batch`).

    Meant for a batch from ``make_pipeline`` (augmented training examples) or
    for detections (``y`` with ``"scores"``, as from ``model.predict``).

    Args:
        path: PNG file to write; parent folders are created.
        images, y, class_names, max_images, columns, line_width: as for
            :func:`draw_batch`.

    Returns:
        ``path`` as a string.

    Example:
        >>> import os, tempfile
        >>> y = {"boxes": [[[4., 4., 20., 28.]]], "classes": [[0]]}
        >>> path = save_batch_png(np.zeros((1, 32, 32, 3), np.uint8), y,
        ...                       os.path.join(tempfile.mkdtemp(), "grid", "batch.png"),
        ...                       class_names=["square"])
        >>> os.path.basename(path), os.path.getsize(path) > 0
        ('batch.png', True)
    """
    grid = draw_batch(images, y, class_names, max_images, columns, line_width=line_width)
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    Image.fromarray(grid).save(path, format="PNG")
    return path


def draw_batch(
    images: Any,
    y: Mapping[str, Any],
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    max_images: int = 8,
    columns: int = 4,
    *,
    line_width: int = 2,
) -> np.ndarray:
    """Draws the first ``max_images`` examples of a batch with their boxes, tiled in a grid.

    Args:
        images: uint8 or 0-255 float ``(B, H, W, 3)``.
        y: dict with ``"boxes"`` float ``(B, N, 4)`` xyxy pixels of
            ``images`` and ``"classes"`` int ``(B, N)`` (-1 padding, not
            drawn); optional ``"scores"`` float ``(B, N)``.
        class_names: names indexed by class id; None labels with the id.
        max_images: draw at most this many images of the batch.
        columns: images per grid row.
        line_width: box outline width in pixels.

    Returns:
        uint8 ``(rows * (H + 4) + 4, columns * (W + 4) + 4, 3)`` grid on white.

    Raises:
        ValueError: if ``images`` is not ``(B, H, W, 3)``, ``y`` lacks
            ``"boxes"`` or ``"classes"``, or ``max_images`` / ``columns``
            is not positive.

    Example:
        Two 32 x 32 images with their detections, side by side:

        >>> y = {"boxes": [[[4., 4., 20., 20.]], [[8., 8., 30., 30.]]],
        ...      "classes": [[0], [1]], "scores": [[0.9], [0.6]]}
        >>> grid = draw_batch(np.zeros((2, 32, 32, 3), np.uint8), y, class_names=["a", "b"])
        >>> grid.shape, grid.dtype
        ((40, 76, 3), dtype('uint8'))
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"`images` must have shape (B, H, W, 3), got shape {images.shape}.")
    missing = [key for key in ("boxes", "classes") if key not in y]
    if missing:
        raise ValueError(
            f"`y` must have keys 'boxes' and 'classes', got keys {sorted(y)} (missing {missing})."
        )
    for argument, value in (("max_images", max_images), ("columns", columns)):
        if int(value) < 1:
            raise ValueError(f"`{argument}` must be >= 1, got {value!r}.")
    boxes = np.asarray(y["boxes"])
    classes = np.asarray(y["classes"])
    scores = np.asarray(y["scores"]) if "scores" in y else None
    count = min(int(max_images), images.shape[0])
    if count == 0:
        raise ValueError(f"`images` must hold at least one image, got shape {images.shape}.")
    return _grid(images, boxes, classes, scores, class_names, count, int(columns), line_width)


def _grid(images, boxes, classes, scores, class_names, count, columns, line_width) -> np.ndarray:
    """The first ``count`` images with their boxes drawn, tiled ``columns`` wide: uint8 ``(H', W', 3)``."""
    cells = [
        draw_boxes(
            images[i],
            boxes[i],
            classes[i],
            class_names,
            None if scores is None else scores[i],
            line_width=line_width,
        )
        for i in range(count)
    ]
    return tile_images(cells, columns)


def tile_images(cells: Sequence[Any], columns: int = 4, *, gap: int = _GRID_GAP) -> np.ndarray:
    """Tiles same-sized images in a grid on white, row by row, ``columns`` wide.

    Args:
        cells: ``N >= 1`` uint8 or 0-255 float ``(H, W, 3)`` images, all of one size.
        columns: cells per grid row, ``>= 1`` (fewer when ``N`` is smaller).
        gap: white pixels between cells and around the grid, ``>= 0``.

    Returns:
        uint8 ``(rows * (H + gap) + gap, min(columns, N) * (W + gap) + gap, 3)``.

    Raises:
        ValueError: no cells, cells of different sizes, ``columns < 1`` or ``gap < 0``.

    Example:
        >>> tile_images([np.zeros((10, 20, 3), np.uint8)] * 3, columns=2).shape
        (32, 52, 3)
        >>> tile_images([np.zeros((10, 20, 3), np.uint8)] * 3, columns=2, gap=10).shape
        (50, 70, 3)
    """
    cells = [_to_uint8_image(cell, f"cells[{i}]") for i, cell in enumerate(cells)]
    if not cells:
        raise ValueError("`cells` must hold at least one image, got none.")
    if int(columns) < 1:
        raise ValueError(f"`columns` must be >= 1, got {columns!r}.")
    if int(gap) < 0:
        raise ValueError(f"`gap` must be >= 0, got {gap!r}.")
    gap = int(gap)
    cell_h, cell_w = cells[0].shape[:2]
    for i, cell in enumerate(cells):
        if cell.shape[:2] != (cell_h, cell_w):
            raise ValueError(
                f"`cells` must all have one size, got {cells[0].shape} for cells[0] and {cell.shape} for cells[{i}]."
            )
    count = len(cells)
    cols = min(int(columns), count)
    rows = -(-count // cols)
    grid = np.full(
        (rows * (cell_h + gap) + gap, cols * (cell_w + gap) + gap, 3),
        _GRID_BACKGROUND,
        np.uint8,
    )
    for i, cell in enumerate(cells):
        top = gap + (i // cols) * (cell_h + gap)
        left = gap + (i % cols) * (cell_w + gap)
        grid[top : top + cell_h, left : left + cell_w] = cell
    return grid


def _font(size: int):
    """Pillow's built-in font at ``size`` pixels (its fixed 10-pixel font before Pillow 10.1)."""
    try:
        return ImageFont.load_default(size=int(size))
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def _wrap(text: str, width: int, font, draw: ImageDraw.ImageDraw) -> list[str]:
    """``text`` split at spaces into lines no wider than ``width`` pixels (a longer word keeps its own line)."""
    lines: list[str] = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def text_band(
    text: str | Sequence[str], width: int, *, font_size: int = CAPTION_FONT_SIZE
) -> np.ndarray:
    """Black text on a white band ``width`` pixels wide, one line per item, wrapped to fit.

    Args:
        text: a string or a sequence of lines; lines wider than ``width``
            are wrapped at spaces.
        width: band width in pixels, ``>= 1``.
        font_size: text height in pixels, ``>= 1``.

    Returns:
        uint8 ``(lines * (font_size + 4) + 4, width, 3)``.

    Raises:
        ValueError: if ``width`` or ``font_size`` is not positive.

    Example:
        >>> text_band("3 detections with score >= 0.30", width=400).shape
        (20, 400, 3)
        >>> text_band(["line one", "line two"], width=400, font_size=20).shape
        (52, 400, 3)
    """
    for argument, value in (("width", width), ("font_size", font_size)):
        if int(value) < 1:
            raise ValueError(f"`{argument}` must be >= 1, got {value!r}.")
    width, font_size = int(width), int(font_size)
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    paragraphs = [text] if isinstance(text, str) else list(text)
    lines = [line for paragraph in paragraphs for line in _wrap(paragraph, width - 4, font, measure)]
    line_height = font_size + 4
    band = Image.new("RGB", (width, len(lines) * line_height + 4), _GRID_BACKGROUND)
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((2, 2 + i * line_height + 2), line, fill=_TEXT_COLOR, font=font)
    return np.asarray(band)


def add_header(image: Any, text: str | Sequence[str], *, font_size: int = CAPTION_FONT_SIZE) -> np.ndarray:
    """``image`` with a white band of text (:func:`text_band`) above it; the image itself is unchanged.

    Args:
        image: uint8 or 0-255 float ``(H, W, 3)``.
        text: a string or a sequence of lines.
        font_size: text height in pixels.

    Returns:
        uint8 ``(band + H, W, 3)``: the band's rows, then ``image``'s.

    Example:
        >>> picture = add_header(np.zeros((64, 400, 3), np.uint8), "score >= 0.30")
        >>> picture.shape, bool((picture[20:] == 0).all())
        ((84, 400, 3), True)
    """
    image = _to_uint8_image(image)
    band = text_band(text, image.shape[1], font_size=font_size)
    return np.concatenate([band, image], axis=0)


def _num_boxes(classes: Any) -> int:
    """Rows of ``classes`` that are boxes (``>= 0``), not padding."""
    return int((np.asarray(classes).reshape(-1) >= 0).sum())


def draw_ground_truth_and_detections(
    image: Any,
    ground_truth: Mapping[str, Any],
    detections: Mapping[str, Any],
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    captions: tuple[str, str] | None = None,
    *,
    line_width: int = 2,
) -> np.ndarray:
    """One image drawn twice side by side: its ground truth (left) and its detections (right).

    Both halves use :func:`draw_boxes`, so a class has one colour in both;
    detections are labelled with their scores. Each half has its caption
    above it.

    Args:
        image: uint8 or 0-255 float ``(H, W, 3)``.
        ground_truth: ``"boxes"`` float ``(N, 4)`` xyxy pixels of ``image``
            and ``"classes"`` int ``(N,)`` (-1 padding, not drawn).
        detections: ``"boxes"`` ``(D, 4)``, ``"classes"`` ``(D,)`` (-1 not
            drawn) and ``"scores"`` ``(D,)``: only the ones to draw.
        class_names: names indexed by class id; None labels with the id.
        captions: ``(left, right)`` texts above the halves; None: the
            number of boxes in each, ``("3 GT", "4 det")``.
        line_width: box outline width in pixels.

    Returns:
        uint8 ``(band + H, 2 W + 4, 3)`` where ``band`` is one caption line
        (:func:`text_band`, ``CAPTION_FONT_SIZE + 8`` pixels), the halves
        4 white pixels apart.

    Example:
        >>> pair = draw_ground_truth_and_detections(
        ...     np.zeros((64, 64, 3), np.uint8),
        ...     {"boxes": [[8., 8., 40., 40.]], "classes": [0]},
        ...     {"boxes": [[10., 9., 41., 40.]], "classes": [0], "scores": [0.8]},
        ...     class_names=["circle"])
        >>> pair.shape
        (84, 132, 3)
    """
    canvas = _to_uint8_image(image)
    left = draw_boxes(canvas, ground_truth["boxes"], ground_truth["classes"], class_names, line_width=line_width)
    right = draw_boxes(
        canvas, detections["boxes"], detections["classes"], class_names, detections["scores"], line_width=line_width
    )
    if captions is None:
        captions = (f"{_num_boxes(ground_truth['classes'])} GT", f"{_num_boxes(detections['classes'])} det")
    width = canvas.shape[1]
    bands = [text_band(captions[0], width), text_band(captions[1], width)]
    band_height = max(band.shape[0] for band in bands)
    pair = np.full((band_height + canvas.shape[0], 2 * width + _GRID_GAP, 3), _GRID_BACKGROUND, np.uint8)
    for offset, band, half in ((0, bands[0], left), (width + _GRID_GAP, bands[1], right)):
        pair[: band.shape[0], offset : offset + width] = band
        pair[band_height:, offset : offset + width] = half
    return pair
