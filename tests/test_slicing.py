"""Sliced inference (kr.model.slicing): the tile grid, greedy merging, tiles mapped back, the CLI flags."""

import importlib.util
import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_retina.model import postprocess
from keras_retina.model.slicing import SlicedInference, greedy_nmm, predict_sliced, slice_grid
from tests.helpers import small_model, untrained_shapes_run


@pytest.mark.parametrize("height,width,size,overlap", [
    (100, 150, 64, 0.25), (1024, 1536, 256, 0.2), (300, 200, 256, 0.0), (50, 40, 64, 0.5), (257, 513, 256, 0.2),
])
def test_tiles_cover_the_image_with_the_overlap_asked(height, width, size, overlap):
    tiles = slice_grid(height, width, size, overlap)
    covered = np.zeros((height, width), bool)
    for x1, y1, x2, y2 in tiles:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert (x2 - x1, y2 - y1) == (min(size, width), min(size, height))
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    starts = sorted(set(tiles[:, 0].tolist()))
    if len(starts) > 2:  # inner tiles step by size - overlap; the last is moved back to the edge
        assert starts[1] - starts[0] == size - int(overlap * size)


@pytest.mark.parametrize("height,width,size,overlap", [(100, 150, 64, 0.25), (1024, 1536, 256, 0.2), (300, 200, 256, 0.1),
                                                       (50, 40, 64, 0.5), (999, 1001, 320, 0.3)])
def test_tile_grid_is_sahis(height, width, size, overlap):
    slicing = pytest.importorskip("sahi.slicing")
    expected = slicing.get_slice_bboxes(height, width, size, size, False, overlap, overlap)
    assert slice_grid(height, width, size, overlap).tolist() == expected


def _random_detections(seed, n=60):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 200, (12, 2))[rng.integers(0, 12, n)]  # clustered: some overlap much, some little
    wh = rng.uniform(4, 60, (n, 2))
    xy = np.maximum(centres + rng.normal(0, 6, (n, 2)) - wh / 2, 0.0)  # sahi refuses negative coordinates
    boxes = np.concatenate([xy, xy + wh], axis=1).round(1)
    return boxes, rng.uniform(0.05, 1.0, n).round(4), rng.integers(0, 3, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric,agnostic", [("ios", False), ("iou", False), ("ios", True)])
def test_greedy_merge_equals_sahis_greedy_nmm(seed, metric, agnostic):
    combine = pytest.importorskip("sahi.postprocess.combine")
    from sahi.prediction import ObjectPrediction

    boxes, scores, classes = _random_detections(seed)
    predictions = [
        ObjectPrediction(bbox=box.tolist(), category_id=int(c), category_name=str(c), score=float(s))
        for box, s, c in zip(boxes, scores, classes)
    ]
    merged = combine.GreedyNMMPostprocess(match_threshold=0.5, match_metric=metric.upper(), class_agnostic=agnostic)(
        predictions
    )
    expected = sorted((round(p.score.value, 4), p.category.id, *np.round(p.bbox.to_xyxy(), 3)) for p in merged)
    ours_boxes, ours_scores, ours_classes = greedy_nmm(boxes, scores, classes, 0.5, metric, agnostic)
    ours = sorted((round(float(s), 4), int(c), *np.round(b.astype(np.float64), 3)) for b, s, c in
                  zip(ours_boxes, ours_scores, ours_classes))
    assert len(ours) == len(expected) < len(boxes)
    np.testing.assert_allclose(np.array(ours), np.array(expected), atol=2e-3)


def test_greedy_merge_joins_a_fragment_with_its_object_and_keeps_classes_apart():
    boxes = np.array([[0, 0, 40, 40], [30, 0, 40, 40], [30, 0, 40, 40], [100, 100, 110, 110]], "float32")
    scores = np.array([0.9, 0.95, 0.5, 0.3])
    classes = np.array([1, 1, 2, 1])
    merged_boxes, merged_scores, merged_classes = greedy_nmm(boxes, scores, classes)
    # The fragment (IoS 1 with the whole) joins it: one box for class 1 there, the union, the higher score.
    assert merged_boxes.tolist() == [[0, 0, 40, 40], [30, 0, 40, 40], [100, 100, 110, 110]]
    np.testing.assert_allclose(merged_scores, [0.95, 0.5, 0.3], rtol=1e-6)
    assert merged_classes.tolist() == [1, 2, 1]
    assert greedy_nmm(np.zeros((0, 4)), [], [])[0].shape == (0, 4)
    with pytest.raises(ValueError, match="metric"):
        greedy_nmm(boxes, scores, classes, metric="giou")


class _SquareFinder:
    """A stand-in detector that, like a real one, misses objects under 8 pixels in its input: one box per bright square.

    It finds the bright squares of each input image (rows and columns of bright pixels split into runs) and
    reports those at least ``MIN_SIDE`` pixels on a side.
    """

    MIN_SIDE = 8
    num_classes = 2
    inference_settings = postprocess.InferenceSettings(max_detections=50)

    def __init__(self):
        self.input_shapes = []

    def detect_function(self):
        return self.detect

    def detect(self, images):
        images = np.asarray(images)
        self.input_shapes.append(images.shape)
        out = {"boxes": np.zeros((len(images), 50, 4), "float32"), "scores": np.zeros((len(images), 50), "float32"),
               "classes": -np.ones((len(images), 50), "int32"), "num_detections": np.zeros(len(images), "int32")}
        for b, image in enumerate(images):
            bright = image.max(axis=-1) > 128
            found = []
            for y1, y2 in _runs(bright.any(axis=1)):
                for x1, x2 in _runs(bright[y1:y2].any(axis=0)):
                    if min(x2 - x1, y2 - y1) >= self.MIN_SIDE:
                        found.append([x1, y1, x2, y2])
            n = len(found[:50])
            if n:
                out["boxes"][b, :n] = found[:50]
                out["scores"][b, :n], out["classes"][b, :n] = 0.9, 1
            out["num_detections"][b] = n
        return {key: tf.constant(value) for key, value in out.items()}


def _runs(mask):
    """``[start, end)`` of each run of True in a 1-D mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def _large_image_with_small_squares():
    image = np.zeros((1024, 1536, 3), "uint8")
    squares = [(100 + 240 * i, 90 + 300 * j) for i in range(4) for j in range(5)]  # (y, x) of 20 squares, 14 px
    for y, x in squares:
        image[y : y + 14, x : x + 14] = 255
    return image, sorted([x, y, x + 14, y + 14] for y, x in squares)


def test_sliced_inference_finds_small_objects_that_the_whole_image_pass_misses():
    image, truth = _large_image_with_small_squares()
    finder = _SquareFinder()
    whole = predict_sliced(finder, image, slice_size=4096, image_size=256, whole_image=False)  # one tile: the image
    assert int(whole["num_detections"][0]) == 0  # 14 px shrunk to 2 px on a 256-pixel input
    for merge in ("nms", "greedy_nmm"):
        finder.input_shapes.clear()
        out = predict_sliced(finder, image, slice_size=256, slice_overlap=0.2, image_size=256, merge=merge,
                             batch_size=8)
        n = int(out["num_detections"][0])
        found = sorted(np.round(out["boxes"][0, :n]).astype(int).tolist())
        assert found == truth, merge  # every square once, at its place in the image's pixels
        num_tiles = len(slice_grid(1024, 1536, 256, 0.2)) + 1  # and the whole image
        assert all(shape == (8, 256, 256, 3) for shape in finder.input_shapes)  # batched, one shape
        assert len(finder.input_shapes) == -(-num_tiles // 8)


def test_tiles_resized_onto_the_input_map_back_to_image_pixels():
    image = np.zeros((600, 900, 3), "uint8")
    image[300:330, 500:530] = 255  # 30 px: seen as 15 px in tiles of 512 resized onto 256
    out = predict_sliced(_SquareFinder(), image, slice_size=512, image_size=256, whole_image=False)
    n = int(out["num_detections"][0])
    assert n == 1
    np.testing.assert_allclose(out["boxes"][0, 0], [500, 300, 530, 330], atol=2.0)


def test_wrapper_runs_where_a_model_is_expected_and_refuses_bad_arguments():
    model = small_model(max_detections=7)
    sliced = SlicedInference(model, slice_size=64, image_size=64)
    out = sliced.detect_function()(np.zeros((2, 100, 150, 3), "float32"))
    assert tuple(out["boxes"].shape) == (2, 7, 4) and sliced.num_classes == model.num_classes
    for bad in (dict(slice_size=0), dict(slice_size=64, slice_overlap=1.0), dict(slice_size=64, merge="wbf")):
        with pytest.raises(ValueError, match="slice_size|slice_overlap|merge"):
            SlicedInference(model, **bad)
    with pytest.raises(ValueError, match="multiple of 32"):
        predict_sliced(model, np.zeros((64, 64, 3)), slice_size=50)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        predict_sliced(model, np.zeros((1, 64, 64, 3)), slice_size=64)


def test_evaluate_and_predict_modes_with_slicing(tmp_path, capsys):
    """--mode=evaluate --slice_size scores sliced detections on full-size images; --mode=predict writes them."""
    from keras_retina.cli import modes
    from keras_retina.training import rundir

    config = untrained_shapes_run(tmp_path, shapes_image_size=96, num_val=3)
    model = rundir.load_trained_model(config.model_dir)
    flags = {"slice_size": 64, "slice_overlap": 0.25, "slice_merge": "nms"}
    metrics = modes.evaluate(config, flags)
    assert "Sliced inference: tiles of 64 px overlapping by 0.25" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / rundir.METRICS_FILE).read_text())["AP"] == metrics["AP"]
    Image.fromarray(np.full((150, 200, 3), 90, np.uint8)).save(tmp_path / "photo.png")
    path = modes.predict(config, {**flags, "image": [str(tmp_path / "photo.png")], "output_dir": str(tmp_path / "out")})
    with open(path) as f:
        results = json.load(f)
    assert results and all(r["image_id"] == "photo" for r in results)
    # Boxes in the photo's own pixels: beyond a 64-pixel input's reach, within the photo.
    assert max(r["bbox"][0] + r["bbox"][2] for r in results) > 64
    assert all(r["bbox"][0] + r["bbox"][2] <= 200.01 and r["bbox"][1] + r["bbox"][3] <= 150.01 for r in results)

    # The same through an exported file and its own runtime (--model=FILE).
    if importlib.util.find_spec("ai_edge_litert") is None:
        return
    import keras_retina as kr

    tflite = kr.export_litert(model, str(tmp_path / "model.tflite"), image_size=64, category_ids=list(range(1, 6)))
    file_flags = {**flags, "model": tflite, "tta": True, "tta_scales": ["1.0"]}
    file_metrics = modes.evaluate(config, file_flags)
    assert "Sliced inference" in capsys.readouterr().out
    assert json.loads(open(f"{tflite}.{rundir.METRICS_FILE}").read())["AP"] == file_metrics["AP"]
    path = modes.predict(config, {**file_flags, "image": [str(tmp_path / "photo.png")],
                                  "output_dir": str(tmp_path / "out_file")})
    with open(path) as f:
        file_results = json.load(f)
    assert file_results and max(r["bbox"][0] + r["bbox"][2] for r in file_results) > 64


def _detections(out, n=None):
    """``[(class, score, x1, y1, x2, y2)]`` of the first image of a detect-style dict, by score."""
    count = int(np.asarray(out["num_detections"])[0])
    rows = zip(np.asarray(out["classes"])[0, :count], np.asarray(out["scores"])[0, :count],
               np.asarray(out["boxes"])[0, :count])
    return [(int(c), float(s), *np.asarray(b, float)) for c, s, b in rows]


@pytest.mark.slow
def test_sliced_inference_and_flip_tta_through_an_exported_file_equal_the_keras_models(tmp_path):
    """The options survive export: a .tflite file run by LiteRT gives the Keras model's sliced and TTA detections."""
    pytest.importorskip("ai_edge_litert")
    import keras_retina as kr
    from keras_retina.deploy import runners
    from keras_retina.deploy.exported_model import ExportedModel
    from keras_retina.model.tta import TestTimeAugmentation

    model = small_model(num_classes=3, score_threshold=0.05, max_detections=20, soft_nms_sigma=0.5)
    model(np.zeros((1, 64, 64, 3), "float32"))
    # Random weights score every anchor near the prior (0.01): spread the class logits so that a few anchors score
    # well apart, and both runtimes rank them alike.
    head = model.classification_head.output_conv
    head.kernel.assign(head.kernel * 300.0)
    head.bias.assign(tf.fill(head.bias.shape, -2.0))
    path = kr.export_litert(model, str(tmp_path / "model.tflite"), image_size=64, category_ids=[4, 7, 9])
    exported = ExportedModel(runners.open_detector(path))
    assert exported.num_classes == 3 and exported.inference_settings == model.inference_settings  # read from the file
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (100, 150, 3)).astype("float32")
    for wrap in (lambda m: SlicedInference(m, slice_size=64, image_size=64),
                 lambda m: SlicedInference(TestTimeAugmentation(m, scales=(1.0,), merge="wbf"), slice_size=64)):
        keras_out = _detections(wrap(model).detect(image[None].round()))
        file_out = _detections(wrap(exported).detect(image[None].round()))
        assert len(file_out) == len(keras_out) > 0
        file_out, keras_out = np.array(file_out), np.array(keras_out)
        # Each of the 10 best of one has a twin among the other's (both ways; the tail near the 20-detection cut
        # may differ where scores tie).
        for ours, theirs in ((file_out, keras_out), (keras_out, file_out)):
            for row in ours[:10]:
                twins = ((theirs[:, 0] == row[0]) & (np.abs(theirs[:, 1] - row[1]) <= 2e-3)  # class, score
                         & (np.abs(theirs[:, 2:] - row[2:]).max(axis=1) <= 0.5))  # box, image pixels
                assert twins.any(), row
    with pytest.raises(ValueError, match="can only flip"):
        TestTimeAugmentation(exported, scales=(1.5,)).detect(np.zeros((1, 64, 64, 3)))
