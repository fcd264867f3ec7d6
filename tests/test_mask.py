"""Mask maths (core/mask.py): grow/shrink/feather, brush dabs, fills, outpaint geometry and compositing."""

import numpy as np
import pytest

from cascade_studio.core import mask as M


def point_mask(size=41, at=(20, 20)):
    m = np.zeros((size, size), np.uint8)
    m[at[1], at[0]] = 255
    return m


def disc(size, cx, cy, r):
    yy, xx = np.mgrid[0:size, 0:size]
    return ((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.uint8) * 255


def test_invert_and_bounding_boxes():
    m = np.zeros((10, 20), np.uint8)
    assert M.bounding_box(m) is None
    m[2:5, 7:11] = 9
    assert M.bounding_box(m) == (7, 2, 4, 3)
    assert M.invert(m)[0, 0] == 255 and M.invert(m)[3, 8] == 246
    other = m.copy()
    other[9, 19] = 1
    assert M.changed_box(m, other) == (19, 9, 1, 1)
    assert M.changed_box(m, m.copy()) is None


@pytest.mark.parametrize("radius", [1, 3, 7, 12])
def test_grow_a_point_gives_the_exact_disc_and_shrink_takes_it_back(radius):
    m = point_mask()
    grown = M.grow(m, radius)
    np.testing.assert_array_equal(grown, disc(41, 20, 20, radius))
    np.testing.assert_array_equal(M.shrink(grown, radius), m)
    np.testing.assert_array_equal(M.grow(grown, -radius), m)
    assert m.sum() == 255  # input untouched


def test_grow_keeps_grey_levels_and_shrink_keeps_image_border():
    m = np.zeros((30, 30), np.uint8)
    m[10, 10] = 100
    assert M.grow(m, 2)[10, 12] == 100 and M.grow(m, 2)[10, 13] == 0
    border = np.zeros((30, 30), np.uint8)
    border[:, :6] = 255  # a strip along the left edge (as outpainting makes)
    shrunk = M.shrink(border, 3)
    assert (shrunk[:, :3] == 255).all() and (shrunk[:, 3:] == 0).all()
    assert M.grow(np.zeros((5, 5), np.uint8), 3).sum() == 0


def test_feather_softens_the_edge_only():
    m = np.zeros((100, 100), np.uint8)
    m[:, 50:] = 255
    f = M.feather(m, 8)
    row = f[50].astype(int)
    assert row[0] == 0 and row[99] == 255
    assert 0 < row[46] < row[50] < row[54] < 255  # a ramp across the old edge
    assert np.all(np.diff(row) >= 0)
    assert (f[:, :30] == 0).all() and (f[:, 70:] == 255).all()
    np.testing.assert_array_equal(M.feather(m, 0), m)


def test_hard_dab_is_a_disc_with_an_antialiased_rim():
    dab = M.brush_dab(21, 1.0)
    assert dab.shape == (23, 23)
    c = 11
    assert dab[c, c] == 1.0 and dab[c, c + 9] == 1.0
    assert 0.0 < dab[c, c + 10] <= 1.0 and dab[c, c + 11] == 0.0
    assert dab[0, 0] == 0.0


def test_soft_dab_falls_off_from_the_centre():
    dab = M.brush_dab(41, 0.0)
    c = dab.shape[0] // 2
    profile = dab[c, c:]
    assert profile[0] == 1.0
    assert np.all(np.diff(profile) <= 0)
    assert 0.0 < profile[10] < 1.0 and 0.0 < profile[18] < profile[10]
    half_hard = M.brush_dab(41, 0.5)
    assert half_hard[c, c + 9] == 1.0 and 0 < half_hard[c, c + 15] < 1.0


def test_stamp_paints_erases_idempotently_and_clips():
    m = np.zeros((20, 20), np.uint8)
    dab = M.brush_dab(7, 1.0)
    box = M.stamp(m, dab, 10, 10, 0.5)
    assert box == (6, 6, 9, 9)
    assert m[10, 10] == 128
    M.stamp(m, dab, 10, 10, 0.5)
    assert m[10, 10] == 128  # overlapping dabs never build up
    M.stamp(m, dab, 10, 10, 1.0, erase=True)
    assert m[10, 10] == 0
    assert M.stamp(m, dab, 0, 0, 1.0) == (0, 0, 5, 5) and m[0, 0] == 255
    assert M.stamp(m, dab, -50, -50, 1.0) is None


def test_fill_rect_and_polygon():
    m = np.zeros((50, 50), np.uint8)
    filled, box = M.fill_rect(m, (40, 45, 20, 20))
    assert box == (40, 45, 10, 5) and (filled[45:, 40:] == 255).all() and filled.sum() == 255 * 50
    tri, box = M.fill_polygon(m, [(10, 10), (40, 10), (10, 40)])
    assert tri[12, 12] == 255 and tri[38, 38] == 0 and box[0] == 10
    erased, _ = M.fill_polygon(tri, [(0, 0), (49, 0), (49, 49), (0, 49)], 0)
    assert erased.sum() == 0
    assert M.fill_polygon(m, [(1, 1), (2, 2)])[0].sum() == 0


@pytest.mark.parametrize(
    ("size", "sides", "expected"),
    [
        ((1024, 1024), (0, 0, 256, 0), (0, 0, 256, 0, 1280, 1024)),
        ((1000, 1024), (0, 0, 200, 0), (0, 0, 280, 0, 1280, 1024)),  # 1200 -> 1280, extra to the right
        ((1024, 768), (100, 0, 100, 0), (128, 0, 128, 0, 1280, 768)),  # split between the growing sides
        ((1024, 1000), (0, 10, 0, 0), (0, 24, 0, 0, 1024, 1024)),
        ((1000, 1000), (0, 0, 0, 0), (0, 0, 0, 0, 1000, 1000)),  # nothing grows: nothing snaps
    ],
)
def test_outpaint_geometry_snaps_growing_axes_to_the_grid(size, sides, expected):
    ext = M.outpaint_geometry(*size, *sides)
    assert (ext.left, ext.top, ext.right, ext.bottom, ext.width, ext.height) == expected
    assert all(got >= asked for got, asked in zip((ext.left, ext.top, ext.right, ext.bottom), sides))


def test_outpaint_geometry_rejects_negative_sides():
    with pytest.raises(ValueError):
        M.outpaint_geometry(512, 512, -1, 0, 0, 0)


def test_extend_pads_the_image_and_masks_the_new_area():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)
    old_mask = np.zeros((100, 120), np.uint8)
    old_mask[40:50, 40:50] = 255
    ext = M.outpaint_geometry(120, 100, 8, 0, 0, 20)
    new_image, new_mask = M.extend(image, old_mask, ext)
    assert new_image.shape == (ext.height, ext.width, 3) == (128, 128, 3)
    assert (ext.left, ext.bottom) == (8, 28)
    top, left = ext.top, ext.left
    np.testing.assert_array_equal(new_image[top : top + 100, left : left + 120], image)
    expected = np.full((ext.height, ext.width), 255, np.uint8)
    expected[top : top + 100, left : left + 120] = old_mask
    np.testing.assert_array_equal(new_mask, expected)
    np.testing.assert_array_equal(new_image[:, 0], new_image[:, left])  # edge pixels stretched


def test_composite_keeps_everything_outside_mask_and_band_identical():
    rng = np.random.default_rng(1)
    source = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)
    result = rng.integers(0, 256, (160, 200, 3), dtype=np.uint8)
    mask = np.zeros((160, 200), np.uint8)
    mask[50:90, 60:120] = 255
    mask[95, 100] = 40  # a faint soft pixel counts as mask too
    band = 12
    out = M.composite(source, result, mask, band)
    outside = M.grow((mask > 0).astype(np.uint8) * 255, band) == 0
    assert outside.sum() > 20000
    np.testing.assert_array_equal(out[outside], source[outside])
    np.testing.assert_array_equal(out[mask == 255], result[mask == 255])
    alpha = M.transition_alpha(mask, band)
    ramp = alpha[70, 60 - band : 60]  # the band left of the mask edge at x = 60
    assert np.all(np.diff(ramp) >= 0) and ramp[0] < 0.05 and ramp[-1] > 0.95
    assert 0 < alpha[70, 51] < alpha[70, 55] < 1  # a real transition inside the band
    blended = out[70, 51].astype(int)
    lo, hi = np.minimum(source[70, 51], result[70, 51]), np.maximum(source[70, 51], result[70, 51])
    assert np.all((lo <= blended) & (blended <= hi))
    np.testing.assert_array_equal(M.composite(source, result, np.zeros_like(mask), band), source)
    with pytest.raises(ValueError):
        M.composite(source, result[:10], mask, band)


def test_crop_context_pads_and_clips():
    m = np.zeros((300, 400), np.uint8)
    m[100:120, 10:30] = 255
    assert M.crop_context(m, 16) == (0, 84, 46, 52)
    x, y, w, h = M.crop_context(m, 16, grid=128)
    assert (w, h) == (128, 128) and x == 0 and 0 <= y <= 84
    assert M.crop_context(np.zeros((4, 4), np.uint8), 8) is None


def test_composite_keeps_a_small_unmasked_hole_identical():
    # The blur's tail adds up from every side inside a hole; the band must still end exactly.
    rng = np.random.default_rng(2)
    source = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    result = 255 - source
    band = 12
    mask = 255 - disc(64, 32, 32, band + 1)
    out = M.composite(source, result, mask, band)
    outside = M.grow(mask, band) == 0
    assert outside.sum() >= 1
    np.testing.assert_array_equal(out[outside], source[outside])
