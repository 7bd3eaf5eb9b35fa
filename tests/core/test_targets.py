"""Tests for napari_cellfocus.core.targets (expected arrays worked out by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cellfocus.core import targets as tg


def _layout_touching() -> np.ndarray:
    """7 x 10 instance image used by several tests.

    A (label 5) rows 1-3 cols 1-3 and B (label 900) rows 1-3 cols 4-6 share a border;
    C (label 2) rows 5-6 cols 8-9 is isolated, its corner (5, 8) diagonal-2 from B's (3, 6).
    """
    g = np.zeros((7, 10), dtype=np.int32)
    g[1:4, 1:4] = 5
    g[1:4, 4:7] = 900
    g[5:7, 8:10] = 2
    return g


def _relabelled(g: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = np.zeros_like(g)
    for old, new in mapping.items():
        out[g == old] = new
    return out


BAD_INPUTS = [
    np.array([[0, 1.5], [0, 0]]),  # fractional
    np.array([[0, -1], [0, 1]]),  # negative
    np.zeros(5, dtype=int),  # 1D
    np.zeros((2, 2, 2, 2), dtype=int),  # 4D
]


# --------------------------------------------------------------------------- Algorithm 1
def _two_squares_mask() -> np.ndarray:
    """11 x 9 binary mask: 3x3 squares at rows 1-3, cols 1-3 and 5-7 (1-px gap at col 4)
    and an isolated 2x2 square at rows 7-8, cols 1-2 (3 background rows above it)."""
    m = np.zeros((11, 9), dtype=np.uint8)
    m[1:4, 1:4] = 1
    m[1:4, 5:8] = 1
    m[7:9, 1:3] = 1
    return m


def _expected_augment_2d() -> np.ndarray:
    e = np.zeros((11, 9), dtype=np.uint8)
    e[1:4, 1:3] = 1
    e[1:4, 6:8] = 1
    e[0:5, 3:6] = 2
    e[7:9, 1:3] = 1
    return e


def test_augment_three_class_2d_hand_example():
    """Algorithm 1 with a 3x3 square s_e on two squares separated by column 4.

    Step 1 (closing): dilation covers rows 0-4 x cols 0-8 (plus rows 6-9 x cols 0-3 from the
    isolated square); erosion, with the outside as background, keeps rows 1-3 x cols 1-7 (row 0
    touches the outside, row 4's lower neighbours row 5 are not dilated). Row 5 is never
    dilated, so the 3-row gap above the isolated square stays open and its closing is itself.
    Step 2: closing - h = column 4, rows 1-3.  Step 3: dilating it gives rows 0-4 x cols 3-5.
    Steps 4-5: those 15 pixels become class 2 (cells 1 + 2 = 3 clipped to 2, background 2);
    the remaining square pixels are 1 (cols 1-2, 6-7 and the isolated square), the rest 0.
    """
    out = tg.augment_three_class(_two_squares_mask())
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, _expected_augment_2d())


def test_augment_three_class_3d_hand_example():
    """The 2D mask on slices 1-3 of a 5-slice stack, slices 0 and 4 empty, 3x3x3 cube s_e.

    Closing: the dilation fills slices 0-4 with the 2D dilation; erosion keeps slices 1-3 only
    (slices 0 / 4 see the outside) and there equals the 2D closing. So the division region is
    column 4, rows 1-3 on slices 1-3; its cube dilation covers rows 0-4 x cols 3-5 on slices
    0-4. Slices 1-3 therefore equal the 2D result and slices 0 and 4 hold only that 5x3 block
    of class 2 (background pixels in the dilated division region)."""
    m = np.zeros((5, 11, 9), dtype=np.uint8)
    m[1:4] = _two_squares_mask()
    out = tg.augment_three_class(m)
    exp = np.zeros((5, 11, 9), dtype=np.uint8)
    exp[1:4] = _expected_augment_2d()
    exp[0, 0:5, 3:6] = 2
    exp[4, 0:5, 3:6] = 2
    np.testing.assert_array_equal(out, exp)


def test_augment_three_class_accepts_any_nonzero_and_bool():
    """Any non-zero value is foreground: labels 7 / 300 / 2 give the same map as 0/1."""
    m = _two_squares_mask().astype(np.int64)
    m[1:4, 1:4] *= 7
    m[1:4, 5:8] *= 300
    m[7:9, 1:3] *= 2
    np.testing.assert_array_equal(tg.augment_three_class(m), _expected_augment_2d())
    np.testing.assert_array_equal(
        tg.augment_three_class(_two_squares_mask().astype(bool)), _expected_augment_2d()
    )


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_augment_three_class_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        tg.augment_three_class(bad)


def test_augment_three_class_rejects_bad_structure_size():
    with pytest.raises(ValueError, match="structure_size"):
        tg.augment_three_class(_two_squares_mask(), structure_size=0)


# --------------------------------------------------------------------------- eq. 4.1
EXP_K2 = np.array(
    [
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 1, 2, 2, 2, 2, 1, 0, 0, 0],
        [0, 1, 2, 2, 2, 2, 1, 0, 0, 0],
        [0, 1, 2, 2, 2, 2, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
    ],
    dtype=np.uint8,
)

# Same with "at least one" other-cell pixel: (3, 6) and (5, 8) see each other.
EXP_K2_ANY = EXP_K2.copy()
EXP_K2_ANY[3, 6] = 2
EXP_K2_ANY[5, 8] = 2


def test_three_class_from_instances_default_k2():
    """Eq. 4.1, k = 2 (5x5 window), touching if more than one other-cell pixel.

    A pixel (r, c): all of B's rows 1-3 are within r +- 2, so it sees 3 * |{4,5,6} n [c-2, c+2]|
    B pixels: c = 3 -> 6, c = 2 -> 3 (touching), c = 1 -> 0 (cell). B symmetric: c = 4 -> 6,
    c = 5 -> 3 (touching), c = 6 -> 0 A pixels; (3, 6) sees only C's (5, 8): 1, not > 1 -> cell.
    C: (5, 8) sees only B's (3, 6): 1 -> cell; the others see nothing -> cell."""
    out = tg.three_class_from_instances(_layout_touching())
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, EXP_K2)


def test_three_class_from_instances_min_count_one():
    """With min_count = 1 ("there is another cell") the single-pixel contacts (3, 6) and
    (5, 8) also become touching."""
    out = tg.three_class_from_instances(_layout_touching(), min_count=1)
    np.testing.assert_array_equal(out, EXP_K2_ANY)


def test_three_class_from_instances_k1():
    """k = 1 (3x3 window): A's column 3 sees B's column 4 on 2 or 3 rows (>= 2) and B's
    column 4 likewise; columns 2 and 5 see no other cell; C is 2 away from B -> cell."""
    out = tg.three_class_from_instances(_layout_touching(), k=1)
    exp = EXP_K2.copy()
    exp[1:4, 2] = 1
    exp[1:4, 5] = 1
    np.testing.assert_array_equal(out, exp)


def test_three_class_from_instances_3d():
    """The 7x10 layout repeated on 3 slices; k = 2 (5x5x5 window) covers all 3 slices, so each
    count is 3x the 2D count: every pixel with a 2D count >= 1 now has >= 3 > 1. Each slice
    therefore equals the 2D 'at least one' pattern."""
    g = np.stack([_layout_touching()] * 3)
    out = tg.three_class_from_instances(g)
    np.testing.assert_array_equal(out, np.stack([EXP_K2_ANY] * 3))


def test_three_class_from_instances_label_invariance():
    g = _layout_touching()
    g2 = _relabelled(g, {5: 1, 900: 2, 2: 3})
    g3 = _relabelled(g, {5: 77, 900: 3, 2: 10**6})
    for other in (g2, g3):
        np.testing.assert_array_equal(
            tg.three_class_from_instances(other), tg.three_class_from_instances(g)
        )


def test_three_class_from_instances_accepts_whole_floats():
    np.testing.assert_array_equal(
        tg.three_class_from_instances(_layout_touching().astype(float)), EXP_K2
    )


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_three_class_from_instances_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        tg.three_class_from_instances(bad)


def test_three_class_from_instances_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be"):
        tg.three_class_from_instances(_layout_touching(), k=0)


# --------------------------------------------------------------------------- gap class
def _gap_layout() -> np.ndarray:
    """7 x 10: A (label 7) rows 1-5 cols 1-3, B (label 3) rows 1-5 cols 6-8, 2-px gap."""
    g = np.zeros((7, 10), dtype=np.int32)
    g[1:6, 1:4] = 7
    g[1:6, 6:9] = 3
    return g


def _expected_gap_r1() -> np.ndarray:
    e = (_gap_layout() > 0).astype(np.uint8)
    e[2:5, 4:6] = 3
    return e


def test_four_class_gap_radius1_hand_example():
    """Closing with the radius-1 disk (a cross), outside = background.

    Dilation D: rows 1-5 x all cols, plus rows 0 and 6 at cols 1-3 and 6-8.
    A gap pixel (r, 4) survives the erosion iff (r-1, 4), (r+1, 4), (r, 3), (r, 5) are in D:
    true for r = 2, 3, 4; false for r = 1 ((0, 4) not in D) and r = 5 ((6, 4) not in D).
    Same for column 5. Column 0 / 9 pixels have the outside as a neighbour -> not closed.
    The cells are 3 columns apart, so with k = 2 no pixel is touching.
    Expected: cells 1, rows 2-4 x cols 4-5 gap (3), the rest background."""
    out = tg.four_class_with_gap(_gap_layout(), gap_radius=1)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, _expected_gap_r1())


def test_four_class_gap_default_radius_fills_narrow_gap_only():
    """Default radius 3: the middle of the 2-px gap between two 9-row blocks is gap (every
    disk of radius 3 around a point within 3 of (5, 6) meets a block), while background 4+
    pixels from any cell, e.g. (5, 14), stays background."""
    g = np.zeros((11, 16), dtype=np.int32)
    g[1:10, 1:6] = 4
    g[1:10, 8:11] = 9
    out = tg.four_class_with_gap(g)
    assert out[5, 6] == tg.GAP and out[5, 7] == tg.GAP
    assert out[5, 14] == tg.BACKGROUND
    assert out[5, 3] == tg.CELL


def test_four_class_touching_uses_any_other_cell():
    """On the touching layout, with the cross closing there is no gap pixel (every background
    candidate has a 4-neighbour outside the dilation or outside the image), and touching
    follows "there is a pixel of another cell in the 5x5 window" (the thesis' condition with
    'for all' read as 'exists'), i.e. the min_count = 1 pattern."""
    out = tg.four_class_with_gap(_layout_touching(), gap_radius=1)
    np.testing.assert_array_equal(out, EXP_K2_ANY)


def test_four_class_gap_3d():
    """Gap layout repeated on 5 slices, ball of radius 1 (6-neighbour cross). The dilation
    fills the gap columns on every slice; the erosion removes slices 0 and 4 (outside
    neighbour), and on slices 1-3 the in-plane test is the 2D one: gap = rows 2-4 x cols 4-5."""
    g = np.stack([_gap_layout()] * 5)
    out = tg.four_class_with_gap(g, gap_radius=1)
    exp = np.stack([(_gap_layout() > 0).astype(np.uint8)] * 5)
    exp[1:4] = _expected_gap_r1()
    np.testing.assert_array_equal(out, exp)


def test_four_class_label_invariance():
    g = _gap_layout()
    np.testing.assert_array_equal(
        tg.four_class_with_gap(_relabelled(g, {7: 1, 3: 12345})), tg.four_class_with_gap(g)
    )


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_four_class_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        tg.four_class_with_gap(bad)


def test_four_class_rejects_bad_radius():
    with pytest.raises(ValueError, match="gap_radius"):
        tg.four_class_with_gap(_gap_layout(), gap_radius=0)


# --------------------------------------------------------------------------- BTGT
EXP_BORDER = np.array(
    [
        [0, 0, 0, 2, 2, 0, 0, 0, 0, 0],
        [0, 1, 1, 2, 2, 1, 1, 0, 0, 0],
        [0, 1, 1, 2, 2, 1, 1, 0, 0, 0],
        [0, 1, 1, 2, 2, 1, 1, 0, 0, 0],
        [0, 0, 0, 2, 2, 0, 0, 2, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
    ],
    dtype=np.uint8,
)


def test_border_target_2d_hand_example():
    """3x3 windows. Cell pixels: A's column 3 sees B's column 4 and vice versa -> 2; B's
    (3, 6) and C's (5, 8) are 2 apart -> stay 1. Background pixels with two instances in the
    window: (0, 3) sees A (1, 2-3) and B (1, 4); (0, 4) sees A (1, 3) and B (1, 4-5); the same
    for (4, 3), (4, 4); (4, 7) sees B (3, 6) and C (5, 8). Every other background pixel sees at
    most one instance -> 0."""
    np.testing.assert_array_equal(tg.border_target(_layout_touching()), EXP_BORDER)


def test_border_target_3d():
    """(a) The layout on 3 identical slices: the 3x3x3 window adds only copies of the same
    labels, so each slice equals the 2D result.
    (b) Instances touching only along z: A = slice 0, B = slice 1, both on rows 1-2 x cols 1-2
    of a 5x5 plane. Every cell voxel has the other cell right above/below -> 2. A background
    voxel's window spans both slices, so it sees both cells iff it is within Chebyshev
    distance 1 in-plane of the footprint: rows 0-3 x cols 0-3 -> 2, row 4 / col 4 -> 0."""
    g = np.stack([_layout_touching()] * 3)
    np.testing.assert_array_equal(tg.border_target(g), np.stack([EXP_BORDER] * 3))

    v = np.zeros((2, 5, 5), dtype=np.int32)
    v[0, 1:3, 1:3] = 8
    v[1, 1:3, 1:3] = 1
    exp = np.zeros((2, 5, 5), dtype=np.uint8)
    exp[:, 0:4, 0:4] = 2
    np.testing.assert_array_equal(tg.border_target(v), exp)


def test_border_target_label_invariance():
    g = _layout_touching()
    np.testing.assert_array_equal(
        tg.border_target(_relabelled(g, {5: 3, 900: 1, 2: 2})), EXP_BORDER
    )


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_border_target_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        tg.border_target(bad)


# --------------------------------------------------------------------------- DTGT
def test_inverse_distance_target_2d_hand_example():
    """t = 1 - (d - 1) / D_i per instance, 0 on background.

    * 3x5 rectangle (rows 1-3, cols 1-5): outline pixels d = 1; the middle-row pixels
      (2, 2..4) are 2 from the background rows 0 / 4 -> d = 2 = D. So outline 1, middle 0.5.
    * Two touching 3x3 squares (rows 6-8, cols 1-3 label 40 and cols 4-6 label 3): the centre
      of each is 2 from the background (and from the other square) -> 0.5; every other pixel
      has a non-own neighbour at distance 1 -> 1.
    * A single-pixel cell (label 9) at (10, 8): d = D = 1 -> 1."""
    g = np.zeros((12, 10), dtype=np.int32)
    g[1:4, 1:6] = 11
    g[6:9, 1:4] = 40
    g[6:9, 4:7] = 3
    g[10, 8] = 9
    out = tg.inverse_distance_target(g)
    assert out.dtype == np.float32
    exp = (g > 0).astype(np.float32)
    exp[2, 2:5] = 0.5
    exp[7, 2] = 0.5
    exp[7, 5] = 0.5
    np.testing.assert_allclose(out, exp, atol=1e-6)


def test_inverse_distance_target_image_edge_is_not_a_border():
    """Cell rows 0-2 x cols 0-2 of a 5x5 image (cut by the top-left edges): the nearest
    non-cell pixel of (r, c) is in column 3 or row 3, so d = 3 - max(r, c) and D = 3 at (0, 0):
    t(0, 0) = 1 - 2/3 = 1/3; t(0..1, 0..1) off-corner = 1 - 1/3 = 2/3; row / col 2 -> 1."""
    g = np.zeros((5, 5), dtype=np.int32)
    g[0:3, 0:3] = 1
    out = tg.inverse_distance_target(g)
    exp = np.zeros((5, 5))
    exp[0:3, 0:3] = 1.0
    exp[0:2, 0:2] = 2.0 / 3.0
    exp[0, 0] = 1.0 / 3.0
    np.testing.assert_allclose(out, exp, atol=1e-6)


def test_inverse_distance_target_whole_image_cell():
    """A cell filling the whole 3x3 image is measured from the image frame: ring d = 1,
    centre d = 2 = D -> ring 1, centre 0.5."""
    out = tg.inverse_distance_target(np.full((3, 3), 4))
    exp = np.ones((3, 3))
    exp[1, 1] = 0.5
    np.testing.assert_allclose(out, exp, atol=1e-6)


def test_inverse_distance_target_3d():
    """3x3x3 cube in a 5x5x5 volume: every voxel but the centre has a face neighbour outside
    (d = 1); the centre is 2 from the background -> D = 2: surface 1, centre 0.5."""
    g = np.zeros((5, 5, 5), dtype=np.int32)
    g[1:4, 1:4, 1:4] = 17
    out = tg.inverse_distance_target(g)
    exp = (g > 0).astype(np.float32)
    exp[2, 2, 2] = 0.5
    np.testing.assert_allclose(out, exp, atol=1e-6)


def test_inverse_distance_target_no_cells():
    out = tg.inverse_distance_target(np.zeros((4, 4), dtype=int))
    np.testing.assert_array_equal(out, np.zeros((4, 4), dtype=np.float32))


@pytest.mark.parametrize("bad", BAD_INPUTS)
def test_inverse_distance_target_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        tg.inverse_distance_target(bad)


# --------------------------------------------------------------------------- dispatcher
def test_class_target_dispatch():
    g = _layout_touching()
    np.testing.assert_array_equal(tg.class_target(g, 3), EXP_K2)
    np.testing.assert_array_equal(tg.class_target(g, 4, gap_radius=1), EXP_K2_ANY)
    np.testing.assert_array_equal(tg.class_target(g, 3, k=2, min_count=1), EXP_K2_ANY)
    with pytest.raises(ValueError, match="n_classes"):
        tg.class_target(g, 5)
    with pytest.raises(ValueError):
        tg.class_target(np.zeros(5, dtype=int), 3)


def test_class_constants():
    assert (tg.BACKGROUND, tg.CELL, tg.TOUCHING, tg.GAP) == (0, 1, 2, 3)
