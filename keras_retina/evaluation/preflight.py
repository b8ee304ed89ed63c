"""A pre-flight check of a run's data: the mistakes that train for hours to a mAP near 0, found in seconds.

:func:`check_data` reads both splits from their annotations (no pixel decoded
for COCO-format data; other sources: the first ``max_images`` decoded
examples, noted) and reports, each with a severity and the flag that fixes
it: boxes outside the image or of zero size, normalised coordinates or the
wrong box format, rare or missing classes, classes unlike a model's, anchors
that cover few boxes (:mod:`~keras_retina.evaluation.anchor_fit`), boxes
that resizing shrinks below a few pixels, splits with nothing to learn or
score. ``--mode=analyze`` prints it and writes ``preflight.json``; training
runs it on a fresh start and refuses only an ``"error"`` (:class:`PreflightError`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Callable, Sequence

import numpy as np

from keras_retina.data.coco_annotations import DEFAULT_BOX_TOLERANCE, CocoAnnotations, CocoFormatError, load_coco_json
from keras_retina.evaluation import anchor_fit
from keras_retina.model.anchors import AnchorGenerator

#: The three severities, worst first: an ``"error"`` means training cannot work.
SEVERITIES = ("error", "warning", "info")
#: Training boxes below which a class is reported as rare.
MIN_BOXES_PER_CLASS = 10
#: Shorter side, in input pixels, below which a resized box is hard to detect.
MIN_BOX_SIDE = 8.0
#: Share of boxes with every coordinate in [0, 1] above which a split's boxes look normalised.
NORMALISED_SHARE = 0.9
#: Largest ``--image_size`` the check suggests; beyond it, sliced inference.
MAX_SUGGESTED_IMAGE_SIZE = 1536
#: Images read at most per split from sources read by decoding (TFDS).
DEFAULT_MAX_IMAGES = 2000
#: The JSON written next to ``anchor_coverage.json`` by ``--mode=analyze``.
REPORT_FILE = "preflight.json"

_SLICE_FLAGS = "--slice_size={size} --slice_overlap=0.2"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem (or remark) about the data.

    Attributes:
        code: a stable name for the kind of finding (``"normalised_coordinates"``, ...).
        severity: ``"error"`` (training cannot work), ``"warning"`` or ``"info"``.
        message: what was found, with counts.
        fix: what to do, naming the flag where there is one.
        split: ``"train"``, ``"val"`` or ``None`` (both, or neither).
        count: how many boxes, images or classes it concerns.
        examples: a few of them (file name, image id, values as given).

    Example:
        >>> Finding("empty_val", "error", "The val split has no images.", "Point --val_annotations at ...",
        ...         split="val").severity
        'error'
    """

    code: str
    severity: str
    message: str
    fix: str = ""
    split: str | None = None
    count: int | None = None
    examples: tuple[str, ...] = ()

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"Finding.severity must be one of {SEVERITIES}, got {self.severity!r}.")


class PreflightError(ValueError):
    """The data cannot train a detector; the message lists each error and its fix.

    Attributes:
        report: the :class:`PreflightReport`.

    Example:
        >>> report = PreflightReport(image_size=256, findings=[
        ...     Finding("no_train_boxes", "error", "The train split has no boxes.", "Annotate some.", "train")])
        >>> print(PreflightError(report))
        The data cannot train a detector (pre-flight check, 1 error):
        - [train] The train split has no boxes.
          fix: Annotate some.
    """

    def __init__(self, report: "PreflightReport"):
        self.report = report
        errors = report.errors
        lines = [f"The data cannot train a detector (pre-flight check, {len(errors)} error{'s' * (len(errors) != 1)}):"]
        for finding in errors:
            lines.append(f"- {_where(finding)}{finding.message}")
            if finding.fix:
                lines.append(f"  fix: {finding.fix}")
        super().__init__("\n".join(lines))


@dataclasses.dataclass
class PreflightReport:
    """What :func:`check_data` found.

    Attributes:
        image_size: the model's square input size the check assumed, pixels.
        findings: the findings, errors first.
        splits: per split: ``"where"``, ``"images"`` (in the split; ``None``
            when unknown), ``"images_read"``, ``"boxes"`` (not crowd),
            ``"crowd_boxes"``, ``"boxes_per_class"`` and ``"median_long_side"`` (pixels).
        anchor_coverage: :func:`keras_retina.evaluation.anchor_fit.anchor_coverage`'s
            report on the training boxes, ``None`` when there were none.
        notes: what the check could not see (a split read in part).
        seconds: how long the check took.

    Example:
        >>> report = PreflightReport(image_size=256, findings=[Finding("x", "warning", "Few boxes.", "More.")])
        >>> report.ok, len(report.warnings), report.to_json()["findings"][0]["severity"]
        (True, 1, 'warning')
        >>> print(report.format().splitlines()[0])
        Pre-flight check of the data at image_size 256: 0 errors, 1 warning, 0 info.
    """

    image_size: int
    findings: list[Finding] = dataclasses.field(default_factory=list)
    splits: dict = dataclasses.field(default_factory=dict)
    anchor_coverage: dict | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def _of(self, severity: str) -> list[Finding]:
        return [finding for finding in self.findings if finding.severity == severity]

    errors = property(lambda self: self._of("error"), doc="The findings that stop training.")
    warnings = property(lambda self: self._of("warning"), doc="The findings that hurt accuracy, not training.")

    @property
    def ok(self) -> bool:
        """True when nothing stops training (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """The report as printable text: a summary line per split, then each finding with its fix."""
        lines = [f"Pre-flight check of the data at image_size {self.image_size}: {_plural(len(self.errors), 'error')}, "
                 f"{_plural(len(self.warnings), 'warning')}, {len(self._of('info'))} info."]
        for name, split in self.splits.items():
            images = split["images"] if split["images"] is not None else "?"
            read = f" ({split['images_read']} read)" if split["images_read"] != split["images"] else ""
            size = f", median long side {split['median_long_side']:.0f} px" if split.get("median_long_side") else ""
            lines.append(
                f"  {name + ':':<6} {images} images{read}, {split['boxes']} boxes, "
                f"{len(split['boxes_per_class'])} classes{size} ({split['where']})"
            )
        coverage = self.anchor_coverage
        if coverage is not None and coverage["all"]["iou_0.5"] is not None:
            lines.append(f"  anchors: {coverage['all']['iou_0.5']:.1%} of training boxes have an anchor at IoU >= 0.5")
        for note in self.notes:
            lines.append(f"  note: {note}")
        for finding in self.findings:
            lines.append(f"{finding.severity.upper():<8}{_where(finding)}{finding.message}")
            if finding.fix:
                lines.append(f"{'':8}fix: {finding.fix}")
            for example in finding.examples:
                lines.append(f"{'':8}e.g. {example}")
        lines.append("No problems found." if not self.findings else "No errors: training can start." if self.ok
                     else "Training cannot work until the errors above are fixed.")
        return "\n".join(lines)

    def to_json(self) -> dict:
        """The report as a JSON-serialisable dict (what ``preflight.json`` holds)."""
        return {
            "ok": self.ok, "image_size": int(self.image_size),
            "num_errors": len(self.errors), "num_warnings": len(self.warnings),
            "findings": [dataclasses.asdict(finding) for finding in self.findings], "splits": self.splits,
            "anchor_coverage": self.anchor_coverage, "notes": list(self.notes), "seconds": round(self.seconds, 3),
        }

    def write(self, path: str) -> str:
        """Writes :meth:`to_json` to ``path`` (indented JSON); returns ``path``."""
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2)
        return path


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _where(finding: Finding) -> str:
    return f"[{finding.split}] " if finding.split else ""


# ----------------------------------------------------------------- reading a split
@dataclasses.dataclass
class _SplitBoxes:
    """One split's annotations as arrays: images ``(I,)``, boxes ``(N,)`` (not decoded unless ``read_by_decoding``)."""

    name: str
    where: str
    box_format: str  # "xywh" (a COCO bbox, as given) or "xyxy" (a source's raw examples)
    num_images: int | None
    image_ids: np.ndarray  # int64 (I,)
    file_names: list[str] | None  # (I,) or None
    heights: np.ndarray  # float64 (I,), NaN when unknown
    widths: np.ndarray
    box_image: np.ndarray  # int64 (N,): index into the image arrays
    boxes: np.ndarray  # float64 (N, 4) as given, in box_format
    classes: np.ndarray  # int64 (N,): contiguous class, -1 for an unknown category
    is_crowd: np.ndarray  # bool (N,)
    class_names: tuple[str, ...]
    validated: bool  # checked by the reader: invalid boxes were refused or skipped
    read_by_decoding: bool = False
    malformed: list[str] = dataclasses.field(default_factory=list)  # annotations that are no box at all
    skipped: object = None  # the reader's SkipStats (skip_invalid=True)

    @property
    def xyxy(self) -> np.ndarray:
        """``(N, 4)`` xyxy as the reader interprets the boxes."""
        if self.box_format == "xyxy":
            return self.boxes
        x, y, w, h = self.boxes.T
        return np.stack([x, y, x + w, y + h], axis=1)

    def example(self, box: int) -> str:
        """``"img.jpg (image_id 7): bbox [x, y, w, h]"`` for box index ``box``."""
        image = int(self.box_image[box])
        name = f"{self.file_names[image]} " if self.file_names is not None else ""
        values = ", ".join(f"{v:g}" for v in self.boxes[box])
        size = f" in a {self.widths[image]:g} x {self.heights[image]:g} image" if np.isfinite(self.widths[image]) else ""
        label = "bbox [x, y, width, height]" if self.box_format == "xywh" else "box [x1, y1, x2, y2]"
        return f"{name}(image_id {int(self.image_ids[image])}): {label} = [{values}]{size}"


def _split_boxes(name, where, box_format, num_images, images, boxes, class_names, **fields) -> _SplitBoxes:
    """:class:`_SplitBoxes` from lists: ``images`` = (ids, file names or None, heights, widths), ``boxes`` =
    (image index per box, ``(N, 4)`` rows or a list of them, classes, crowd flags)."""
    ids, files, heights, widths = images
    box_image, rows, classes, crowd = (np.concatenate(v) if isinstance(v, list) and v and isinstance(v[0], np.ndarray)
                                       else v for v in boxes)
    return _SplitBoxes(
        name=name, where=where, box_format=box_format, num_images=num_images,
        image_ids=np.asarray(ids, np.int64), file_names=files,
        heights=np.asarray(heights, np.float64), widths=np.asarray(widths, np.float64),
        box_image=np.asarray(box_image, np.int64), boxes=np.asarray(rows, np.float64).reshape(-1, 4),
        classes=np.asarray(classes, np.int64).reshape(-1), is_crowd=np.asarray(crowd, bool).reshape(-1),
        class_names=tuple(class_names), **fields,
    )


def _from_records(name: str, split, annotations: CocoAnnotations) -> _SplitBoxes:
    """A split whose reader validated a COCO file: its image records, no JSON read again."""
    records = [annotations.image_record(image_id) for image_id in annotations.image_ids]
    rows = [np.zeros((0, 4))] + [r.boxes.astype(np.float64) for r in records]
    boxes = np.concatenate(rows)
    boxes[:, 2:] -= boxes[:, :2]  # back to the file's [x, y, width, height] (clipped)
    images = ([r.image_id for r in records], [r.file_name for r in records],
              [r.height for r in records], [r.width for r in records])
    per_box = (np.repeat(np.arange(len(records)), [len(r.classes) for r in records]), boxes,
               [np.zeros(0, np.int64)] + [r.classes for r in records], [np.zeros(0, bool)] + [r.is_crowd for r in records])
    return _split_boxes(name, split.where, "xywh", len(records), images, per_box, split.class_names,
                        validated=True, skipped=annotations.stats)


def _from_json(name: str, annotation_file: str) -> _SplitBoxes:
    """A COCO file read leniently (every annotation kept as given), for when the reader refused it.

    :class:`~keras_retina.data.coco_annotations.CocoAnnotations` stops at the
    first invalid annotation; this read counts them all, so that a pattern
    (every box normalised, or xyxy in the bbox field) shows.
    """
    coco = load_coco_json(annotation_file)
    categories = sorted((c["id"], str(c.get("name", c["id"]))) for c in coco["categories"] if isinstance(c, dict) and "id" in c)
    class_of = {category_id: index for index, (category_id, _) in enumerate(categories)}
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    index_of, images = {}, ([], [], [], [])
    for image in coco["images"]:
        if not isinstance(image, dict) or "id" not in image or image["id"] in index_of:
            continue
        index_of[image["id"]] = len(images[0])
        size = [image.get(key) for key in ("height", "width")]
        size = [float(v) for v in size] if all(number(v) and v > 0 for v in size) else [math.nan, math.nan]
        for values, value in zip(images, (image["id"] if isinstance(image["id"], int) else -1,
                                          str(image.get("file_name", "?")), *size)):
            values.append(value)
    per_box, malformed = ([], [], [], []), []
    for annotation in coco["annotations"]:
        annotation = annotation if isinstance(annotation, dict) else {"id": repr(annotation)}
        bbox, image = annotation.get("bbox"), index_of.get(annotation.get("image_id"))
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(number(v) for v in bbox)):
            malformed.append(f"annotation id {annotation.get('id')!r}: bbox = {bbox!r}, not 4 finite numbers")
        elif image is None:
            malformed.append(f"annotation id {annotation.get('id')!r}: image_id {annotation.get('image_id')!r} is not in 'images'")
        else:
            for values, value in zip(per_box, (image, [float(v) for v in bbox],
                                               class_of.get(annotation.get("category_id"), -1),
                                               annotation.get("iscrowd", 0) == 1)):
                values.append(value)
    return _split_boxes(name, annotation_file, "xywh", len(images[0]), images, per_box,
                        [category_name for _, category_name in categories], validated=False, malformed=malformed)


def _progress(total: int | None, verbose: bool):
    """A progress bar with ``update(n)`` and ``close()``: tqdm's if installed, else Keras'."""
    try:
        import tqdm  # noqa: PLC0415  (optional)

        return tqdm.tqdm(total=total, unit="image", disable=not verbose, desc="pre-flight")
    except ImportError:
        import keras  # noqa: PLC0415

        bar = keras.utils.Progbar(total, unit_name="image", verbose=1 if verbose else 0)
        bar.update, bar.close = bar.add, lambda: None
        return bar


def _from_examples(name: str, data, split, max_images: int, verbose: bool) -> _SplitBoxes:
    """A split read through its decoded raw examples, the first ``max_images`` of them."""
    images, per_box = ([], None, [], []), ([np.zeros(0, np.int64)], [np.zeros((0, 4))], [np.zeros(0, np.int64)],
                                           [np.zeros(0, bool)])
    bar = _progress(max_images if split.num_images is None else min(split.num_images, max_images), verbose)
    for example in data.raw(name).take(max_images).as_numpy_iterator():
        rows = np.asarray(example["boxes"], np.float64).reshape(-1, 4)
        crowd = example.get("is_crowd", np.zeros(len(rows), bool))
        for values, value in zip(per_box, (np.full(len(rows), len(images[0])), rows, example["classes"], crowd)):
            values.append(np.asarray(value).reshape(-1, 4) if value is rows else np.asarray(value).reshape(-1))
        images[0].append(int(example.get("image_id", len(images[0]))))
        images[2].append(example["image"].shape[0])
        images[3].append(example["image"].shape[1])
        bar.update(1)
    bar.close()
    return _split_boxes(name, split.where, "xyxy", split.num_images, images, per_box, split.class_names,
                        validated=True, read_by_decoding=True)


def _read_split(data, name: str, max_images: int, verbose: bool, findings: list[Finding]) -> _SplitBoxes | None:
    """One split as :class:`_SplitBoxes`; a reader's refusal becomes an ``"unreadable"`` error."""
    try:
        split = data.split(name)
    except (ValueError, FileNotFoundError) as error:  # CocoFormatError is a ValueError
        config = data.config
        path = getattr(config, f"{name}_annotations", None) if config.dataset == "coco_json" else None
        fix = "Fix the file, or pass --skip_invalid to leave out (and count) the images with invalid annotations."
        if not isinstance(error, CocoFormatError) or "skip_invalid" not in str(error):
            fix = "Fix what the message names."
        findings.append(Finding("unreadable", "error", f"The {name} split cannot be read: {error}", fix, name))
        if path is None:
            return None
        try:
            return _from_json(name, path)  # see every box, not only the first invalid one
        except (ValueError, FileNotFoundError, OSError):
            return None
    annotations = getattr(split, "source", None)
    if isinstance(annotations, CocoAnnotations):
        return _from_records(name, split, annotations)
    return _from_examples(name, data, split, max_images, verbose)


# ----------------------------------------------------------------- the checks
def _share(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else 0.0


def _examples(split: _SplitBoxes, mask: np.ndarray, limit: int = 3) -> tuple[str, ...]:
    """The first box of each of the first ``limit`` images with a box in ``mask``."""
    chosen = np.flatnonzero(mask)
    first = np.sort(np.unique(split.box_image[chosen], return_index=True)[1])
    return tuple(split.example(int(i)) for i in chosen[first][:limit])


def _box_findings(split: _SplitBoxes, skip_invalid: bool) -> list[Finding]:
    """Box format, normalised coordinates, degenerate boxes and boxes outside the image, for one split."""
    findings = []

    def add(code, severity, message, fix, mask):  # mask: (N,) bool over the boxes it concerns
        findings.append(Finding(code, severity, message, fix, split.name, int(mask.sum()), _examples(split, mask)))

    if split.malformed:
        findings.append(Finding(
            "malformed_annotations", "error", f"{len(split.malformed)} annotations are not a valid box of a known image.",
            "Each annotation needs image_id (an id in 'images') and bbox = 4 finite numbers [x, y, width, height] "
            "in pixels.", split.name, len(split.malformed), tuple(split.malformed[:3]),
        ))
    stats = split.skipped
    if stats is not None and (stats.images_skipped_at_load or stats.invalid_annotations):
        findings.append(Finding(
            "skipped_invalid", "warning", f"{stats.invalid_annotations} invalid annotations: "
            f"{stats.images_skipped_at_load} images are left out (skip_invalid).",
            "Fix those annotations to train on those images too.", split.name, stats.images_skipped_at_load,
            tuple(stats.reasons[:3]),
        ))
    if (split.classes < 0).any():
        add("unknown_category", "error", f"{(split.classes < 0).sum()} annotations have a category_id that is not in "
            "'categories'.", "Add the category to 'categories', or fix the annotations' category_id.", split.classes < 0)
    keep = ~split.is_crowd & (split.classes >= 0)
    if not keep.any():
        return findings
    boxes, xyxy = split.boxes, split.xyxy
    widths, heights = split.widths[split.box_image], split.heights[split.box_image]
    known = np.isfinite(widths) & np.isfinite(heights)
    tol = DEFAULT_BOX_TOLERANCE
    normalised = keep & np.all((boxes >= 0.0) & (boxes <= 1.0), axis=1) & known & (np.minimum(widths, heights) > 32)
    share = normalised.sum() / keep.sum()
    yolo = "; YOLO-format labels: read them with --dataset=yolo --data_yaml=data.yaml" if split.box_format == "xywh" else ""
    unit = "bbox [x, y, width, height]" if split.box_format == "xywh" else "boxes"
    if share >= NORMALISED_SHARE:
        add("normalised_coordinates", "error", f"{share:.0%} of the boxes have every coordinate in [0, 1] in images "
            "larger than 32 px: they look normalised, and would be boxes of one pixel.",
            f"Give {unit} in pixels: multiply x and width by the image's width, y and height by its height{yolo}.",
            normalised)
    elif share >= 0.1:
        add("normalised_coordinates", "warning", f"{share:.0%} of the boxes have every coordinate in [0, 1]: some "
            "look normalised.", f"Check those annotations: {unit} are pixels.", normalised)
    outside = keep & known & ((xyxy[:, 0] < -tol) | (xyxy[:, 1] < -tol) | (xyxy[:, 2] > widths + tol) | (xyxy[:, 3] > heights + tol))
    if split.box_format == "xywh":
        degenerate = keep & ((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0))
        # [x1, y1, x2, y2] written into COCO's [x, y, width, height]: the "width" exceeds x and the "height" y in
        # nearly every box, and read as xywh many boxes leave the image while read as xyxy they fit.
        as_corners = keep & known & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        fits_as_corners = as_corners & (boxes[:, 2] <= widths + tol) & (boxes[:, 3] <= heights + tol)
        if (as_corners.sum() >= 0.9 * keep.sum() and outside.sum() >= max(0.02 * keep.sum(), 1)
                and (outside & fits_as_corners).sum() >= 0.9 * outside.sum()):
            add("xyxy_as_xywh", "error", "The bbox values look like corners [x1, y1, x2, y2], not COCO's [x, y, width, "
                f"height]: {outside.sum()} boxes leave the image as written and fit it as corners.",
                "Convert each bbox [x1, y1, x2, y2] to [x1, y1, x2 - x1, y2 - y1] in the annotation file.",
                outside & fits_as_corners)
    else:
        inverted = keep & ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
        degenerate = keep & ~inverted & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
        share = inverted.sum() / keep.sum()
        if share >= 0.1:
            add("xywh_as_xyxy", "error" if share >= 0.5 else "warning", f"{share:.0%} of the boxes have x2 < x1 or "
                "y2 < y1: they look like [x, y, width, height] read as corners [x1, y1, x2, y2].",
                "Give the source's boxes as [x1, y1, x2, y2] in pixels (x2 = x + width, y2 = y + height), or use "
                "the reader for its format (--dataset=coco_json, --dataset=yolo).", inverted)
        degenerate |= inverted & (share < 0.1)
    # A reader that validated refused these already (or skipped them, counted above); the others drop or clip them.
    refused = not split.validated and not skip_invalid
    severity, skip = ("error", "; or pass --skip_invalid to leave their images out.") if refused else ("warning", ".")
    if degenerate.any():
        add("degenerate_boxes", severity, f"{_plural(int(degenerate.sum()), 'box', 'boxes')} with zero or negative width or height. "
            f"{'The reader refuses them' if refused else 'They are dropped in the pipeline'}.",
            "Remove or fix them" + skip, degenerate)
    if outside.any():
        add("boxes_outside_image", severity, f"{_plural(int(outside.sum()), 'box', 'boxes')} leaving the image by more than {tol:g} px. "
            f"{'The reader refuses them' if refused else 'They are clipped to the image'}.",
            "Check the box format (pixels, [x, y, width, height] for COCO) and the images' width and height" + skip,
            outside)
    return findings


def _count_per_class(split: _SplitBoxes, num_classes: int) -> np.ndarray:
    chosen = split.classes[~split.is_crowd & (split.classes >= 0) & (split.classes < num_classes)]
    return np.bincount(chosen, minlength=num_classes)[:num_classes]


def _class_findings(train, val, class_names, partial: bool) -> list[Finding]:
    """Empty splits, classes missing from a split, rare classes."""
    findings = []
    num_classes = len(class_names)
    counts = {s.name: _count_per_class(s, num_classes) for s in (train, val) if s is not None}
    if train is not None and counts["train"].sum() == 0:
        findings.append(Finding(
            "no_train_boxes", "error",
            f"The training split ({train.where}) has no boxes{' in the images read' if partial else ''}: "
            "there is nothing to learn.",
            "Point --train_annotations at the annotated file (boxes in 'annotations', category_id in 'categories').",
            "train", 0,
        ))
    if val is not None and len(val.image_ids) == 0:
        findings.append(Finding(
            "empty_val", "error", f"The validation split ({val.where}) has no images: nothing to evaluate.",
            "Point --val_annotations / --val_images at a held-out set (a few dozen annotated images will do).", "val", 0,
        ))
    elif val is not None and counts["val"].sum() == 0:
        findings.append(Finding(
            "no_val_boxes", "error",
            f"The validation split ({val.where}) has no boxes: COCO AP is undefined, so no epoch can be scored.",
            "Point --val_annotations at an annotated held-out set.", "val", 0,
        ))
    in_images = " in the images read" if partial else ""
    for name, fix in (("train", "Add training examples of them, or remove them from 'categories'."),
                      ("val", "Add validation examples of them: their AP is not measured.")):
        if name not in counts or counts[name].sum() == 0:
            continue
        missing = [class_names[c] for c in np.flatnonzero(counts[name] == 0)]
        if missing:
            findings.append(Finding(
                f"class_missing_from_{name}", "warning" if name == "train" else "info",
                f"{_plural(len(missing), 'class', 'classes')} without {name} boxes{in_images}: {', '.join(missing[:10])}"
                + (" ..." if len(missing) > 10 else "") + (" (never learnt)." if name == "train" else "."),
                fix, name, len(missing),
            ))
    if "train" in counts and counts["train"].sum():
        rare = [(class_names[c], int(counts["train"][c])) for c in np.flatnonzero(
            (counts["train"] > 0) & (counts["train"] < MIN_BOXES_PER_CLASS))]
        if rare:
            listed = ", ".join(f"{n} ({k})" for n, k in rare[:10]) + (" ..." if len(rare) > 10 else "")
            findings.append(Finding(
                "rare_classes", "warning",
                f"{_plural(len(rare), 'class', 'classes')} with fewer than {MIN_BOXES_PER_CLASS} training boxes{in_images}: {listed}.",
                "Annotate more examples of them (a few dozen each), or merge them into a related class; fine-tuning "
                "from COCO weights (--init_weights=torchvision_v2_coco) needs fewer.", "train", len(rare),
            ))
    return findings


def _model_class_findings(class_names, num_model_classes, model_class_names, fine_tuning, model_description,
                          match_classes) -> list[Finding]:
    """The data's classes against a model's (a run directory's, or the ``--init_weights`` source's)."""
    if num_model_classes is None and model_class_names is None:
        return []
    num_model_classes = len(model_class_names) if num_model_classes is None else num_model_classes
    data_count, known = len(class_names), model_class_names is not None
    if fine_tuning:
        lowered = {n.strip().lower() for n in model_class_names or ()}
        matched = ([] if not known else sorted(match_classes(class_names, model_class_names)) if match_classes
                   else [i for i, n in enumerate(class_names) if n.strip().lower() in lowered])
        source = f"Fine-tuning from {model_description} ({num_model_classes} classes{'' if known else ', names unknown'})"
        if not matched:
            return [Finding(
                "fine_tuning_classes", "warning" if known else "info",
                f"{source}: none of the data's {data_count} classes has a name in it, so the classification layer "
                "starts from the prior (backbone, pyramid and box head still transfer).",
                "Classes are mapped by name (case, spaces, '_' and '-' ignored): rename categories that are the "
                "same object (e.g. 'people' -> 'person') to reuse their trained weights.", None, 0,
            )]
        names = ", ".join(class_names[i] for i in matched[:8]) + (" ..." if len(matched) > 8 else "")
        return [Finding("fine_tuning_classes", "info", f"{source} to the data's {data_count}: classes are mapped by "
                        f"name; {len(matched)} match ({names}), the other {data_count - len(matched)} start from the "
                        "prior.", "", None, len(matched))]
    if (tuple(model_class_names) == tuple(class_names)) if known else num_model_classes == data_count:
        return []
    detail = f"the data has {data_count} classes, {model_description} {num_model_classes}"
    if known and num_model_classes == data_count:
        detail = f"{model_description} has the same number of classes but other names or another order"
    return [Finding(
        "class_mismatch", "warning",
        f"The data's classes differ from the model's: {detail}. Evaluating or predicting with that model on this "
        "data would mislabel its detections.",
        "Train a new run (another --model_dir), or fine-tune from that model with "
        "--init_weights=<model_dir>/checkpoints/latest.keras (classes are mapped by name).", None,
        abs(num_model_classes - data_count),
    )]


def _resized_boxes(split: _SplitBoxes, image_size: int, min_size: int | None = None, max_size: int | None = None) -> dict:
    """The split's boxes as the evaluation transform resizes them, from the annotated image sizes.

    The scale is :func:`keras_retina.data.pipeline.transform_example`'s
    (aspect-preserving fit to ``image_size``, rounded size; or, with
    ``min_size`` and ``max_size``, the shorter side to ``min_size`` and the
    longer at most ``max_size``, floored), computed here on the annotation's
    sizes so that no image is decoded. Returns :func:`anchor_fit.collect_boxes`' dict
    plus ``"short_sides"`` (input pixels) and ``"scales"`` per image.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        if min_size is not None and max_size is not None:
            fit = np.minimum(min_size / np.minimum(split.heights, split.widths),
                             max_size / np.maximum(split.heights, split.widths))  # (I,)
            scale_y = np.maximum(np.floor(split.heights * fit), 1.0) / split.heights
            scale_x = np.maximum(np.floor(split.widths * fit), 1.0) / split.widths
        else:
            fit = np.minimum(image_size / split.heights, image_size / split.widths)  # (I,)
            scale_y = np.maximum(np.round(split.heights * fit), 1.0) / split.heights
            scale_x = np.maximum(np.round(split.widths * fit), 1.0) / split.widths
    xyxy = split.xyxy
    keep = ~split.is_crowd & (split.classes >= 0) & (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    keep &= np.isfinite(fit[split.box_image])
    index = split.box_image[keep]
    original = xyxy[keep]
    limits = np.stack([split.widths, split.heights, split.widths, split.heights], axis=1)[index]
    original = np.clip(original, 0.0, limits)
    factors = np.stack([scale_x, scale_y, scale_x, scale_y], axis=1)[index]
    visible = np.minimum(limits * factors, image_size)
    resized = np.clip(original * factors, 0.0, visible)
    kept = (resized[:, 2] > resized[:, 0]) & (resized[:, 3] > resized[:, 1])  # what the pipeline drops
    resized, original = resized[kept], original[kept]
    return {
        "boxes": resized.astype(np.float32),
        "areas": ((original[:, 2] - original[:, 0]) * (original[:, 3] - original[:, 1])).astype(np.float32),
        "num_images": len(split.image_ids),
        "image_size": int(image_size),
        "short_sides": np.minimum(resized[:, 2] - resized[:, 0], resized[:, 3] - resized[:, 1]),
        "scales": fit,
    }


def _size_findings(train: _SplitBoxes, resized: dict, image_size: int) -> list[Finding]:
    """Images much larger than the input, and boxes that the resize shrinks below :data:`MIN_BOX_SIDE`."""
    findings, long_sides, short = [], _long_sides(train), resized["short_sides"]
    if not long_sides.size or not short.size:
        return findings
    median_long = float(np.median(long_sides))
    small = short < MIN_BOX_SIDE
    if _share(small) >= 0.1:
        # The input size at which 90 % of the boxes keep MIN_BOX_SIDE pixels, in steps of 128 (the largest stride).
        needed = image_size * MIN_BOX_SIDE / max(float(np.quantile(short, 0.1)), 1e-3)
        suggested = int(math.ceil(needed / 128.0) * 128)
        slicing = f"sliced inference ({_SLICE_FLAGS.format(size=image_size)}, a planned option: tile by tile)"
        if suggested > MAX_SUGGESTED_IMAGE_SIZE or suggested > median_long:
            fix = (f"The objects are small even for the images: --image_size={min(suggested, MAX_SUGGESTED_IMAGE_SIZE)} "
                   f"helps; for large images predict with {slicing}, and train on crops of the images")
        elif suggested > image_size:
            fix = f"Train and evaluate at --image_size={suggested}"
            if median_long > 2 * suggested:
                fix += f"; or keep it and predict with {slicing}"
        else:
            fix = "Use smaller anchors (--mode=analyze searches them)"
        downscale = f" (images are scaled by {float(np.median(resized['scales'])):.2g} to fit {image_size} px)"
        findings.append(Finding(
            "small_boxes_after_resize", "warning",
            f"{_share(small):.0%} of the training boxes are shorter than {MIN_BOX_SIDE:g} px on a side after "
            f"resizing{downscale if median_long > image_size else ''}: they are hard to detect and few anchors "
            "fit them.", fix + ".", "train", int(small.sum()),
        ))
    elif median_long > 2 * image_size:
        findings.append(Finding(
            "large_images", "info",
            f"The median image's long side is {median_long:.0f} px, over twice --image_size={image_size}; the boxes "
            f"still keep {MIN_BOX_SIDE:g} px or more after resizing.",
            f"A larger --image_size may still help small objects; sliced inference "
            f"({_SLICE_FLAGS.format(size=image_size)}, a planned option) for very large images.", "train",
        ))
    return findings


def _anchor_findings(resized: dict, image_size: int, anchor_generator: AnchorGenerator, foreground_iou: float,
                     allow_low_quality_matches: bool, search: bool) -> tuple[list[Finding], dict | None]:
    """Anchor coverage of the training boxes (:mod:`anchor_fit`), and its ``--override`` flags when it is low."""
    if not len(resized["boxes"]):
        return [], None
    collected = {key: resized[key] for key in ("boxes", "areas", "num_images", "image_size")}
    coverage = anchor_fit.anchor_coverage((), image_size, anchor_generator, collected=collected)
    tips = anchor_fit.suggestions(coverage, anchor_generator)
    if tips == ["Anchor coverage looks healthy."]:
        return [], coverage
    fix = " ".join(tips[1:]) or "Raise --image_size or try more scales and aspect ratios (--mode=analyze searches)."
    if search:
        result = anchor_fit.search_anchors(
            collected["boxes"], collected["areas"], image_size, anchor_generator,
            foreground_iou=foreground_iou, allow_low_quality_matches=allow_low_quality_matches,
        )
        if result["changed"]:
            after = result["after"]["coverage"]["all"]["recall"]
            fix = f"Anchors that cover {after:.0%} of them: {result['command_line']} (--mode=analyze shows the search)."
    return [Finding(
        "anchor_coverage", "warning",
        f"{tips[0]} ({coverage['num_boxes']} training boxes at image_size {image_size})", fix, "train",
        coverage["num_boxes"],
    )], coverage


def _max_boxes_findings(split: _SplitBoxes, max_boxes: int | None) -> list[Finding]:
    if max_boxes is None or not len(split.box_image):
        return []
    per_image = np.bincount(split.box_image[~split.is_crowd], minlength=len(split.image_ids))
    over = per_image > max_boxes
    if not over.any():
        return []
    most = int(per_image.max())
    return [Finding(
        "too_many_boxes", "warning",
        f"{over.sum()} images have more than max_boxes={max_boxes} boxes (up to {most}); the boxes beyond it are "
        "dropped and those objects are trained as background.",
        f"--override data.max_boxes={int(math.ceil(most / 8) * 8)}", split.name, int(over.sum()),
    )]


def _long_sides(split: _SplitBoxes) -> np.ndarray:
    long_sides = np.maximum(split.heights, split.widths)
    return long_sides[np.isfinite(long_sides)]


def _summary(split: _SplitBoxes, class_names: Sequence[str]) -> dict:
    counts, long_sides = _count_per_class(split, len(class_names)), _long_sides(split)
    return {
        "where": split.where, "images": split.num_images, "images_read": int(len(split.image_ids)),
        "boxes": int(counts.sum()), "crowd_boxes": int(split.is_crowd.sum()),
        "boxes_per_class": {name: int(n) for name, n in zip(class_names, counts)},
        "median_long_side": float(np.median(long_sides)) if long_sides.size else None,
    }


def check_data(
    data,
    anchor_generator: AnchorGenerator | None = None,
    *,
    image_size: int | None = None,
    num_model_classes: int | None = None,
    model_class_names: Sequence[str] | None = None,
    fine_tuning: bool = False,
    model_description: str = "the model",
    match_classes: Callable[[Sequence[str], Sequence[str]], dict] | None = None,
    foreground_iou: float = 0.5,
    allow_low_quality_matches: bool = True,
    max_boxes: int | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    search_anchors: bool = True,
    verbose: bool = True,
) -> PreflightReport:
    """Checks a run's data before training: what would make training fail or learn nothing.

    Each split is read from its annotations (a COCO file's image records,
    no pixel decoded); a split the reader refuses is reported as an error
    and, for ``coco_json``, its file read again leniently to find the
    pattern behind it. Other sources (TFDS) are read through their decoded
    raw examples, the first ``max_images`` per split (a progress bar shows
    them), and the report notes it.

    Args:
        data: a :class:`keras_retina.data.RunData`.
        anchor_generator: the run's anchors (default: the paper's).
        image_size: the model's square input size, pixels (default ``data.config.image_size``).
        num_model_classes: classes of a model the data is for (a trained run's, or the fine-tuning source's).
        model_class_names: that model's class names, if known.
        fine_tuning: the model is an ``--init_weights`` source: classes are mapped by name, so other
            counts are expected.
        model_description: how to name that model in messages.
        match_classes: ``(data names, model names) -> {data class: model class}``, the weight
            transfer's mapping (:func:`keras_retina.training.transfer.match_classes`; default: equal
            names, case-insensitive).
        foreground_iou: the matching's foreground threshold (for the anchor search).
        allow_low_quality_matches: the matching's setting (reported by the search).
        max_boxes: boxes per image the pipeline keeps (default ``data.config.max_boxes``).
        max_images: images read at most per split from sources read by decoding.
        search_anchors: when coverage is low, search anchors that cover the boxes
            (:func:`anchor_fit.search_anchors`) to name their ``--override`` flags.
        verbose: show a progress bar where images are decoded.

    Returns:
        A :class:`PreflightReport`, errors first.

    Example:
        >>> import tempfile
        >>> from keras_retina.config import DataConfig
        >>> from keras_retina.data import RunData
        >>> directory = tempfile.mkdtemp()
        >>> _ = kr.data.make_shapes_splits(directory, num_train=40, num_val=10, image_size=(128, 128), verbose=False)
        >>> data = RunData(DataConfig(shapes_dir=directory, shapes_num_train=40, shapes_num_val=10,
        ...                           shapes_image_size=128, image_size=128))
        >>> report = check_data(data, verbose=False)
        >>> report.ok, report.splits["train"]["images"], [f.code for f in report.findings if f.severity == "error"]
        (True, 40, [])
    """
    start = time.time()
    config = data.config
    image_size = int(image_size or config.image_size)
    max_boxes = config.max_boxes if max_boxes is None else max_boxes
    anchor_generator = anchor_generator or AnchorGenerator()
    findings: list[Finding] = []
    report = PreflightReport(image_size=image_size)
    train = _read_split(data, "train", max_images, verbose, findings)
    val = _read_split(data, "val", max_images, verbose, findings)
    splits = [s for s in (train, val) if s is not None]
    for split in splits:
        if split.read_by_decoding and (split.num_images is None or split.num_images > len(split.image_ids)):
            report.notes.append(
                f"{split.name}: read through decoded images ({split.where}); the first {len(split.image_ids)} "
                f"images only (max_images={max_images}): counts are of those."
            )
        findings += _box_findings(split, config.skip_invalid)
        findings += _max_boxes_findings(split, max_boxes)
    class_names = (val or train).class_names if splits else ()
    partial = bool(report.notes)
    findings += _class_findings(train, val, class_names, partial)
    findings += _model_class_findings(class_names, num_model_classes, model_class_names, fine_tuning,
                                      model_description, match_classes)
    wrong_format = [f.code for f in findings if f.severity == "error" and f.split == "train" and f.code in (
        "normalised_coordinates", "xyxy_as_xywh", "xywh_as_xyxy")]
    if wrong_format:  # sizes and anchor coverage of misread boxes would only mislead
        report.notes.append(f"box sizes and anchor coverage are checked once {wrong_format[0]} is fixed.")
    elif train is not None and len(train.image_ids):
        # data.min_size / max_size: the shorter-side resize rule, where the config has it.
        resized = _resized_boxes(train, image_size, getattr(config, "min_size", None), getattr(config, "max_size", None))
        findings += _size_findings(train, resized, image_size)
        anchors, report.anchor_coverage = _anchor_findings(
            resized, image_size, anchor_generator, foreground_iou, allow_low_quality_matches, search_anchors
        )
        findings += anchors
    report.splits = {s.name: _summary(s, class_names) for s in splits}
    report.findings = sorted(findings, key=lambda f: SEVERITIES.index(f.severity))  # stable: errors first
    report.seconds = time.time() - start
    return report
