"""AnchorGenerator: counts, order, hand-computed coordinates, config."""

import math

import numpy as np
import pytest

import keras_retina as kr


def test_count_at_512_is_papers_49104():
    anchors = kr.AnchorGenerator()((512, 512))
    assert anchors.shape == (49104, 4)
    assert anchors.dtype == np.float32


def test_feature_sizes_round_up():
    gen = kr.AnchorGenerator()
    assert gen.feature_sizes((100, 130)) == [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]
    assert gen.anchors_per_level((100, 130)) == [13 * 17 * 9, 7 * 9 * 9, 4 * 5 * 9, 2 * 3 * 9, 1 * 2 * 9]
    assert len(gen((100, 130))) == sum(gen.anchors_per_level((100, 130)))


def test_golden_coordinates_first_cells():
    anchors = kr.AnchorGenerator()((256, 256))
    r = math.sqrt(2.0)
    # P3, cell (row 0, col 0): centre (4, 4); base size 32. Order: scale-major, ratios (0.5, 1, 2).
    half_w, half_h = 16 * r, 16 / r  # ratio h/w = 0.5: w = 32 * sqrt(2), h = 32 / sqrt(2)
    np.testing.assert_allclose(anchors[0], [4 - half_w, 4 - half_h, 4 + half_w, 4 + half_h], rtol=1e-6)
    np.testing.assert_allclose(anchors[1], [-12, -12, 20, 20], rtol=1e-6)
    np.testing.assert_allclose(anchors[2], [4 - half_h, 4 - half_w, 4 + half_h, 4 + half_w], rtol=1e-6)
    s = 2 ** (1 / 3) * 16  # second scale, ratio 1
    np.testing.assert_allclose(anchors[4], [4 - s, 4 - s, 4 + s, 4 + s], rtol=1e-6)
    # P3, cell (row 0, col 1): centre (12, 4); same shapes as cell (0, 0) moved 8 px right.
    np.testing.assert_allclose(anchors[9:18], anchors[0:9] + [8, 0, 8, 0], rtol=1e-6)
    # P3, cell (row 1, col 0): 32 cells per row at 256 px, so index 32 * 9.
    np.testing.assert_allclose(anchors[32 * 9 : 33 * 9], anchors[0:9] + [0, 8, 0, 8], rtol=1e-6)
    # First anchor of P7 (stride 128): centre (64, 64), 512 px square at index 4 of that cell.
    p7_start = sum(kr.AnchorGenerator().anchors_per_level((256, 256))[:4])
    np.testing.assert_allclose(anchors[p7_start + 1], [-192, -192, 320, 320], rtol=1e-6)


def test_areas_follow_scales_and_ratios():
    gen = kr.AnchorGenerator()
    anchors = gen((128, 128))
    first_cell = anchors[:9]
    widths = first_cell[:, 2] - first_cell[:, 0]
    heights = first_cell[:, 3] - first_cell[:, 1]
    expected_sizes = np.repeat([32 * s for s in gen.scales], 3)
    np.testing.assert_allclose(np.sqrt(widths * heights), expected_sizes, rtol=1e-5)
    np.testing.assert_allclose(heights / widths, np.tile(gen.aspect_ratios, 3), rtol=1e-5)


def test_custom_levels_and_shapes():
    gen = kr.AnchorGenerator(min_level=3, max_level=5, scales=(1.0,), aspect_ratios=(1.0,))
    assert gen.num_anchors_per_location == 1
    assert gen((64, 64)).shape == (8 * 8 + 4 * 4 + 2 * 2, 4)


def test_config_round_trip():
    gen = kr.AnchorGenerator(
        max_level=6, size_multiplier=3.0, scales=(1.0, 1.5), aspect_ratios=(1.0,), offset=0.0, order="ratio_major"
    )
    config = gen.get_config()
    assert config == {
        "min_level": 3,
        "max_level": 6,
        "size_multiplier": 3.0,
        "scales": (1.0, 1.5),
        "aspect_ratios": (1.0,),
        "offset": 0.0,
        "order": "ratio_major",
        "round_to_pixels": False,
    }
    restored = kr.AnchorGenerator.from_config(config)
    assert restored == gen
    np.testing.assert_array_equal(restored((96, 96)), gen((96, 96)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_level": 5, "max_level": 4}, "min_level"),
        ({"scales": ()}, "scales"),
        ({"aspect_ratios": (0.0,)}, "aspect_ratios"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kr.AnchorGenerator(**kwargs)


def test_dynamic_shape_is_rejected():
    with pytest.raises(ValueError, match="static"):
        kr.AnchorGenerator()((None, 128))


def test_offset_moves_centres_to_the_cell_corner():
    centred = kr.AnchorGenerator(scales=(1.0,), aspect_ratios=(1.0,))((64, 64))
    corner = kr.AnchorGenerator(scales=(1.0,), aspect_ratios=(1.0,), offset=0.0)((64, 64))
    # P3 has stride 8: every anchor moves by half a stride up and left.
    np.testing.assert_allclose(centred[:64] - corner[:64], 4.0)
    np.testing.assert_allclose(corner[0], [-16.0, -16.0, 16.0, 16.0])


def test_ratio_major_order_permutes_each_cell():
    scale_major = kr.AnchorGenerator()((128, 128))
    ratio_major = kr.AnchorGenerator(order="ratio_major")((128, 128))
    # Cell anchors of scale-major index s * 3 + r sit at ratio-major index r * 3 + s.
    permutation = [r * 3 + s for s in range(3) for r in range(3)]
    np.testing.assert_array_equal(
        scale_major.reshape(-1, 9, 4), ratio_major.reshape(-1, 9, 4)[:, permutation]
    )


def test_round_to_pixels_gives_whole_pixel_corners_of_truncated_sizes():
    gen = kr.AnchorGenerator(offset=0.0, order="ratio_major", round_to_pixels=True)
    anchors = gen((256, 256))
    np.testing.assert_array_equal(anchors, np.round(anchors))
    # Ratio 1 anchors of cell (0, 0) at P3 are squares of torchvision's int sizes 32, 40, 50.
    np.testing.assert_array_equal(anchors[3:6, 2] - anchors[3:6, 0], [32.0, 40.0, 50.0])


def test_bad_offset_and_order_are_refused():
    with pytest.raises(ValueError, match="offset"):
        kr.AnchorGenerator(offset=1.0)
    with pytest.raises(ValueError, match="order"):
        kr.AnchorGenerator(order="random")
