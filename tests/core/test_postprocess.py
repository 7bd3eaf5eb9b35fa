"""Tests for napari_cellfocus.core.postprocess on hand-made probability maps.

Class order everywhere: 0 background, 1 cell, 2 touching, 3 gap.  Most maps are
built from a class sketch ``h`` with one fixed probability vector per class, so
the expected instances can be worked out by hand from the definitions (thesis T
eq. 4.4 / Algorithm 2 for TH, T 4.2.4 for WT, T 5.2.3 for MAP).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import watershed

from napari_cellfocus.core.postprocess import (
    ThresholdSearch,
    average_probabilities,
    best_grid_index,
    binary_watershed_labels,
    fill_holes,
    map_labels,
    postprocess,
    relabel_consecutive,
    remove_small_objects,
    search_thresholds,
    threshold_labels,
    watershed_labels,
)

# One probability vector per class of a sketch (sums to 1; z2 < 0.1 off touching,
# so the default gamma2 = 0.1 only picks the touching class).
BG = (0.9, 0.05, 0.05)
CELL = (0.1, 0.85, 0.05)
TOUCH = (0.05, 0.35, 0.6)


def from_classes(h, table=(BG, CELL, TOUCH)) -> np.ndarray:
    """(C, *h.shape) float32 map with ``table[h[p]]`` at every pixel."""
    h = np.asarray(h)
    return np.moveaxis(np.asarray(table, dtype=np.float32)[h], -1, 0).copy()


def from_columns(*columns) -> np.ndarray:
    """(C, 1, X) map from per-class rows of values given left to right."""
    return np.asarray(columns, dtype=np.float32)[:, None, :]


# ----------------------------------------------------------------------------- TH


def test_th_touching_to_nearest_cell_and_equidistant_to_background_1d():
    """1x9 row: cell A at x=0..2, touching x=3..5, cell B at x=6..8.

    x=3: distance 1 to A (x=2), 3 to B (x=6) -> A.
    x=4: distance 2 to A and 2 to B -> equidistant -> background.
    x=5: 3 to A, 1 to B -> B.
    Expected [1 1 1 1 0 2 2 2 2], count 2.
    """
    probs = from_classes([[1, 1, 1, 2, 2, 2, 1, 1, 1]])
    labels, count = threshold_labels(probs, min_size=0)
    np.testing.assert_array_equal(labels, [[1, 1, 1, 1, 0, 2, 2, 2, 2]])
    assert count == 2
    assert labels.dtype == np.int32


def test_th_uses_euclidean_distance_with_exact_ties():
    """3x5 sketch, A = cell pixel (0,0), B = cell pixel (2,4), the rest of the
    top-left region touching:

        h = 1 2 2 0 0        squared distances to A / B for the touching pixels:
            2 2 2 2 0        (0,1) 1/13 -> A   (0,2) 4/8  -> A   (1,0) 1/17 -> A
            0 2 2 2 1        (1,1) 2/10 -> A   (1,2) 5/5  -> tie (1,3) 10/2 -> B
                             (2,1) 5/9  -> A   (2,2) 8/4  -> B   (2,3) 13/1 -> B

    (0,2) is a tie under the chessboard metric (2 vs 2) and (2,1) a tie under the
    city-block metric (3 vs 3); only Euclidean distance gives the answer above.
    The background pixel (1,2) touches the background at (0,3) diagonally, so it is
    not a hole.  Expected:

        1 1 1 0 0
        1 1 0 2 0
        0 1 2 2 2
    """
    h = [[1, 2, 2, 0, 0], [2, 2, 2, 2, 0], [0, 2, 2, 2, 1]]
    labels, count = threshold_labels(from_classes(h), min_size=0)
    np.testing.assert_array_equal(labels, [[1, 1, 1, 0, 0], [1, 1, 0, 2, 0], [0, 1, 2, 2, 2]])
    assert count == 2


def test_th_decision_rule_boundaries_eq_4_4():
    """Eq. 4.4: touching iff z2 >= gamma2; cell iff z1 >= gamma1 and z2 < gamma2.

    A 1x3 row of the same vector (0.25, 0.5, 0.25) (exact in float32):
    gamma2 = 0.25 -> all touching, no cell -> nothing (count 0);
    gamma2 = 0.375, gamma1 = 0.5 -> all cell -> one object;
    gamma1 = 0.625 -> z1 below gamma1 -> nothing.
    """
    probs = from_columns([0.25] * 3, [0.5] * 3, [0.25] * 3)
    assert threshold_labels(probs, gamma1=0.5, gamma2=0.25, min_size=0)[1] == 0
    labels, count = threshold_labels(probs, gamma1=0.5, gamma2=0.375, min_size=0)
    np.testing.assert_array_equal(labels, [[1, 1, 1]])
    assert count == 1
    assert threshold_labels(probs, gamma1=0.625, gamma2=0.375, min_size=0)[1] == 0


def test_th_touching_without_adjacent_cell_is_background():
    """1x7: cell x=0..1, background x=2, touching x=3..4, background x=5..6.

    The touching pair is not connected to any cell pixel, so it has no "closest
    adjacent cell" and stays background: [1 1 0 0 0 0 0].
    """
    labels, count = threshold_labels(from_classes([[1, 1, 0, 2, 2, 0, 0]]), min_size=0)
    np.testing.assert_array_equal(labels, [[1, 1, 0, 0, 0, 0, 0]])
    assert count == 1


def test_th_fills_holes_of_each_cell():
    """5x5 ring of cell pixels around one background pixel (2,2): the hole is
    enclosed by one instance, so it is filled (25 - 16 border = 9 pixels) unless
    fill_holes=False (8 pixels)."""
    h = np.zeros((5, 5), int)
    h[1:4, 1:4] = 1
    h[2, 2] = 0
    filled, n = threshold_labels(from_classes(h), min_size=0)
    expected = np.zeros((5, 5), int)
    expected[1:4, 1:4] = 1
    np.testing.assert_array_equal(filled, expected)
    assert n == 1
    unfilled, _ = threshold_labels(from_classes(h), min_size=0, fill_holes=False)
    assert unfilled[2, 2] == 0 and unfilled.sum() == 8


def test_th_small_objects_removed_and_labels_consecutive():
    """1x11: cells of 3, 1 and 4 pixels separated by background:
    h = 1 1 1 0 1 0 1 1 1 1 0.  With min_size=2 the single pixel goes and the
    others are renumbered 1, 2: [1 1 1 0 0 0 2 2 2 2 0]; min_size=4 keeps only the
    last one (size 4 is not below 4) as label 1."""
    probs = from_classes([[1, 1, 1, 0, 1, 0, 1, 1, 1, 1, 0]])
    labels, count = threshold_labels(probs, min_size=2)
    np.testing.assert_array_equal(labels, [[1, 1, 1, 0, 0, 0, 2, 2, 2, 2, 0]])
    assert count == 2
    labels, count = threshold_labels(probs, min_size=4)
    np.testing.assert_array_equal(labels, [[0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0]])
    assert count == 1


def test_th_3d_touching_layers_split_along_z():
    """(Z=4, Y=3, X=3): cell plane z=0 (A), touching planes z=1, 2, cell plane z=3 (B).

    z=1 is at distance 1 from A and 2 from B -> A; z=2 at 2 / 1 -> B.
    Expected: z=0, 1 -> 1; z=2, 3 -> 2.
    """
    h = np.zeros((4, 3, 3), int)
    h[0], h[1], h[2], h[3] = 1, 2, 2, 1
    labels, count = threshold_labels(from_classes(h), min_size=0)
    expected = np.zeros((4, 3, 3), int)
    expected[:2], expected[2:] = 1, 2
    np.testing.assert_array_equal(labels, expected)
    assert count == 2


def test_th_3d_equidistant_plane_goes_to_background():
    """(Z=3, Y=2, X=2): cells at z=0 and z=2, touching at z=1, each touching voxel
    at distance 1 from both cells -> the middle plane is background."""
    h = np.zeros((3, 2, 2), int)
    h[0], h[1], h[2] = 1, 2, 1
    labels, count = threshold_labels(from_classes(h), min_size=0)
    assert count == 2
    assert (labels[1] == 0).all()
    assert (labels[0] == 1).all() and (labels[2] == 2).all()


def _brute_force_eq_4_4(h: np.ndarray) -> np.ndarray:
    """Straight transcription of eq. 4.4 + Algorithm 2 steps 3-9, pixel by pixel."""
    structure = ndimage.generate_binary_structure(h.ndim, 1)
    cells, _ = ndimage.label(h == 1, structure=structure)
    region, _ = ndimage.label(h > 0, structure=np.ones((3,) * h.ndim))
    cell_px = np.argwhere(cells > 0)
    cell_ids = cells[tuple(cell_px.T)]
    out = cells.copy()
    for p in np.argwhere(h == 2):
        if not (cells[region == region[tuple(p)]] > 0).any():
            continue  # no adjacent cell
        d2 = ((cell_px - p) ** 2).sum(axis=1)
        nearest = np.unique(cell_ids[d2 == d2.min()])
        out[tuple(p)] = nearest[0] if nearest.size == 1 else 0
    return out


@pytest.mark.parametrize("shape", [(30, 34), (9, 10, 11)])
def test_th_matches_pixelwise_definition_on_random_sketches(shape):
    """On random class sketches (sparse cells, many touching pixels; with the
    sparsest ones many touching pixels lie farther than the shell search radius
    from every cell, which exercises the distance-transform fallback), TH without
    hole filling / size filter equals a literal pixel-by-pixel transcription of
    eq. 4.4 with exact Euclidean ties."""
    rng = np.random.default_rng(3)
    for density in (0.02, 0.02, 0.02, 0.003, 0.003):
        h = np.where(rng.random(shape) < 0.5, 2, 0)
        h[rng.random(shape) < density] = 1
        expected, _ = relabel_consecutive(_brute_force_eq_4_4(h))
        labels, count = threshold_labels(from_classes(h), min_size=0, fill_holes=False)
        np.testing.assert_array_equal(labels, expected)
        assert count == expected.max()


# ---------------------------------------------------------------------------- MAP


def test_map_folds_gap_into_next_most_likely_class():
    """1x7, 4 classes (bg, cell, touching, gap):

    x   vector                 4-class argmax  folded (argmax of first three)
    0   (0.1, 0.7, 0.1, 0.1)   cell            cell
    1   (0.1, 0.3, 0.2, 0.4)   gap             cell
    2   (0.1, 0.2, 0.3, 0.4)   gap             touching -> nearest cell x=1 (d=1)
    3   (0.3, 0.1, 0.2, 0.4)   gap             background
    4   (0.1, 0.2, 0.3, 0.4)   gap             touching -> nearest cell x=5 (1 vs 3)
    5   (0.1, 0.5, 0.1, 0.3)   cell            cell
    6   (0.6, 0.1, 0.1, 0.2)   background      background

    Expected [1 1 1 0 2 2 0], count 2.
    """
    probs = from_columns(
        [0.1, 0.1, 0.1, 0.3, 0.1, 0.1, 0.6],
        [0.7, 0.3, 0.2, 0.1, 0.2, 0.5, 0.1],
        [0.1, 0.2, 0.3, 0.2, 0.3, 0.1, 0.1],
        [0.1, 0.4, 0.4, 0.4, 0.4, 0.3, 0.2],
    )
    labels, count = map_labels(probs, min_size=0)
    np.testing.assert_array_equal(labels, [[1, 1, 1, 0, 2, 2, 0]])
    assert count == 2


def test_map_touching_resolved_like_th():
    """The 1x9 row of the TH test, as MAP sees it (argmax: cell, touching): same
    result [1 1 1 1 0 2 2 2 2] -- nearest cell, equidistant pixel to background."""
    labels, count = map_labels(from_classes([[1, 1, 1, 2, 2, 2, 1, 1, 1]]), min_size=0)
    np.testing.assert_array_equal(labels, [[1, 1, 1, 1, 0, 2, 2, 2, 2]])
    assert count == 2


def test_map_3d_with_gap():
    """(C=4, Z=5, Y=2, X=2): planes z = cell, gap (next likely touching), background,
    gap (next likely cell), cell.  Folded: cell, touching, bg, cell, cell.
    The touching plane z=1 is next to the cell plane z=0 only -> object 1 = z 0..1;
    object 2 = z 3..4."""
    vec = {
        "cell": (0.1, 0.7, 0.1, 0.1),
        "gap_touch": (0.1, 0.2, 0.3, 0.4),
        "bg": (0.7, 0.1, 0.1, 0.1),
        "gap_cell": (0.1, 0.3, 0.2, 0.4),
    }
    planes = ["cell", "gap_touch", "bg", "gap_cell", "cell"]
    probs = np.zeros((4, 5, 2, 2), np.float32)
    for z, name in enumerate(planes):
        probs[:, z] = np.asarray(vec[name], np.float32)[:, None, None]
    labels, count = map_labels(probs, min_size=0)
    expected = np.zeros((5, 2, 2), int)
    expected[:2], expected[3:] = 1, 2
    np.testing.assert_array_equal(labels, expected)
    assert count == 2


# ----------------------------------------------------------------------------- WT

#: 1x9 row: two cells touching at x=3..5 with only a weak touching response.
WT_ROW = from_columns(
    [0.9, 0.05, 0.05, 0.05, 0.1, 0.05, 0.05, 0.05, 0.9],
    [0.05, 0.95, 0.92, 0.7, 0.5, 0.6, 0.93, 0.95, 0.05],
    [0.05, 0.0, 0.03, 0.25, 0.4, 0.35, 0.02, 0.0, 0.05],
)


def test_wt_separates_touching_blobs_that_th_merges():
    """WT_ROW with tau0 = 0.4, tau1 = 0.9:

    background markers: z0 >= 0.4 at x=0, 8; cell markers: z1 >= 0.9 at x=1,2 (A)
    and x=6,7 (B); x=3..5 unknown, relief z2 - z1 = -0.45, -0.10, -0.25.
    Flooding by increasing level: x=3 is reached from A, x=5 from B, and x=4 from
    x=3 (level -0.45 is processed before -0.25), so x=4 joins A:
    [0 1 1 1 1 2 2 2 0].
    TH with gamma1 = 0.5, gamma2 = 0.45 sees no touching pixel (max z2 = 0.4) and
    one cell run x=1..7: one merged object.
    """
    labels, count = watershed_labels(WT_ROW, tau0=0.4, tau1=0.9, min_size=0)
    np.testing.assert_array_equal(labels, [[0, 1, 1, 1, 1, 2, 2, 2, 0]])
    assert count == 2
    merged, n = threshold_labels(WT_ROW, gamma1=0.5, gamma2=0.45, min_size=0)
    assert n == 1
    np.testing.assert_array_equal(merged, [[0, 1, 1, 1, 1, 1, 1, 1, 0]])


def test_wt_one_marker_gives_one_object():
    """Same row, tau1 = 0.5: z1 >= 0.5 at x=1..7 is one connected marker, so the
    unknown-free row is one object x=1..7."""
    labels, count = watershed_labels(WT_ROW, tau0=0.4, tau1=0.5, min_size=0)
    np.testing.assert_array_equal(labels, [[0, 1, 1, 1, 1, 1, 1, 1, 0]])
    assert count == 1


def test_wt_gap_counts_as_background_marker():
    """1x5, 4 classes.  x=0,3,4: (0.3, 0.1, 0.3, 0.3) -> z0 + z3 = 0.6 >= tau0 = 0.4:
    background marker (z0 alone, 0.3, would not be).  x=1,2: (0.02, 0.95, 0.01,
    0.02): cell marker.  Expected [0 1 1 0 0]."""
    a, c = (0.3, 0.1, 0.3, 0.3), (0.02, 0.95, 0.01, 0.02)
    probs = np.asarray([a, c, c, a, a], np.float32).T[:, None, :]
    labels, count = watershed_labels(probs, tau0=0.4, tau1=0.9, min_size=0)
    np.testing.assert_array_equal(labels, [[0, 1, 1, 0, 0]])
    assert count == 1


def test_wt_3d_blobs_stacked_along_z():
    """WT_ROW laid along z over a 2x2 patch, shape (3, 9, 2, 2): every voxel of
    plane z=4 is reached from plane 3 (level -0.45) before plane 5 (-0.25), so
    planes 1-4 are object 1, 5-7 object 2, planes 0 and 8 background."""
    probs = np.broadcast_to(WT_ROW[:, 0, :, None, None], (3, 9, 2, 2)).copy()
    labels, count = watershed_labels(probs, tau0=0.4, tau1=0.9, min_size=0)
    expected = np.zeros((9, 2, 2), int)
    expected[1:5], expected[5:8] = 1, 2
    np.testing.assert_array_equal(labels, expected)
    assert count == 2


@pytest.mark.parametrize("shape", [(40, 44), (8, 14, 15)])
def test_wt_equals_plain_marker_watershed(shape):
    """The restricted flood used for speed gives exactly skimage's marker watershed
    on the whole image with the thesis markers and relief (then background marker
    -> 0), on smooth random probability maps."""
    rng = np.random.default_rng(5)
    logits = ndimage.gaussian_filter(rng.normal(size=(3, *shape)), (0,) + (1.5,) * len(shape))
    e = np.exp(4 * logits)
    probs = (e / e.sum(axis=0)).astype(np.float32)
    tau0, tau1 = 0.45, 0.5
    bg = probs[0] >= tau0
    markers, n = ndimage.label((probs[1] >= tau1) & ~bg)
    markers[bg] = n + 1
    expected = watershed(probs[2] - probs[1], markers, connectivity=1)
    expected[expected == n + 1] = 0
    expected, _ = relabel_consecutive(expected)
    labels, count = watershed_labels(probs, tau0=tau0, tau1=tau1, min_size=0)
    np.testing.assert_array_equal(labels, expected)
    assert count == expected.max() > 1


# ------------------------------------------------------------------ label helpers


def test_fill_holes_per_instance_never_merges():
    """Ring of one instance: centre filled.  Ring made of two instances (left
    column 1, right column 2): the centre belongs to neither, stays 0."""
    one = np.zeros((5, 5), int)
    one[1:4, 1:4] = 7
    one[2, 2] = 0
    out = fill_holes(one)
    assert out[2, 2] == 7 and out.sum() == 9 * 7
    two = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 1, 1, 2, 0],
            [0, 1, 0, 2, 0],
            [0, 1, 1, 2, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(fill_holes(two), two)


def test_fill_holes_ignores_border_and_diagonal_leaks():
    """Background touching the border is never a hole; nor is background joined to
    the outside through a diagonal gap (background uses full connectivity):
    (2,2) below reaches (1,3) diagonally, which reaches the border."""
    open_ring = np.array([[1, 1, 1], [1, 0, 1], [1, 0, 1]])
    np.testing.assert_array_equal(fill_holes(open_ring), open_ring)
    leak = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 1, 0, 1, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(fill_holes(leak), leak)


def test_fill_holes_3d_hollow_cube():
    """5x5x5 shell of label 3 around a hollow 3x3x3 core, in a 7x7x7 volume: the
    core (27 voxels) is filled -> 125 voxels of label 3."""
    vol = np.zeros((7, 7, 7), int)
    vol[1:6, 1:6, 1:6] = 3
    vol[2:5, 2:5, 2:5] = 0
    out = fill_holes(vol)
    assert (out[1:6, 1:6, 1:6] == 3).all() and (out == 3).sum() == 125


def test_remove_small_objects_keeps_ids():
    """Sizes: id 4 -> 1 pixel, id 9 -> 3 pixels.  min_size=2 removes id 4 only and
    does not renumber."""
    lab = np.array([[4, 0, 9], [0, 9, 9]])
    np.testing.assert_array_equal(remove_small_objects(lab, 2), [[0, 0, 9], [0, 9, 9]])
    np.testing.assert_array_equal(remove_small_objects(lab, 0), lab)


def test_relabel_consecutive_keeps_order_and_handles_huge_ids():
    """Ids 2, 5, 9 -> 1, 2, 3 in that order; ids 7 and 10**9 -> 1, 2."""
    out, n = relabel_consecutive(np.array([[0, 5, 5], [9, 0, 2]]))
    np.testing.assert_array_equal(out, [[0, 2, 2], [3, 0, 1]])
    assert n == 3 and out.dtype == np.int32
    out, n = relabel_consecutive(np.array([[0, 10**9], [7, 7]], dtype=np.int64))
    np.testing.assert_array_equal(out, [[0, 2], [1, 1]])
    assert n == 2


# ------------------------------------------------------------ binary + watershed


def _disc_scene(shape, centres, radius):
    yy, xx = np.indices(shape)
    fg = np.zeros(shape, np.float32)
    for cy, cx in centres:
        fg[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 0.9
    return fg


def test_binary_watershed_splits_a_pair_keeps_single_cells():
    """Discs of radius 6 (113 px): three single ones and one overlapping pair with
    centres 9 px apart.  The median component size is a single disc, so markers are
    >= 6 px apart: each single disc has one distance maximum (its centre) and the
    pair two (9 > 6 apart) -> 5 objects, every disc centre in a different object,
    and the objects cover exactly the thresholded mask."""
    centres = [(10, 10), (10, 40), (40, 10), (40, 36), (40, 45)]
    fg = _disc_scene((60, 60), centres, 6)
    labels, count = binary_watershed_labels(fg, threshold=0.5)
    assert count == 5
    ids = {int(labels[c]) for c in centres}
    assert len(ids) == 5 and 0 not in ids
    np.testing.assert_array_equal(labels > 0, fg >= 0.5)
    # Without the size-aware split the pair would be one object.
    merged = ndimage.label(fg >= 0.5)[1]
    assert merged == 4


def test_binary_watershed_cleaning_and_probability_input():
    """A 2-pixel speck (below min_size=16) is removed and a 1-pixel hole in a disc
    filled.  Feeding 3-class probabilities (foreground = 1 - z0) gives the same."""
    fg = _disc_scene((30, 30), [(15, 15)], 6)
    fg[15, 15] = 0.1  # hole
    fg[2, 2:4] = 0.9  # speck
    labels, count = binary_watershed_labels(fg, threshold=0.5, mean_cell_size=113)
    assert count == 1
    assert labels[15, 15] == 1 and labels[2, 2] == 0
    probs = np.stack([1 - fg, fg * 0.8, fg * 0.2])
    labels_p, count_p = binary_watershed_labels(probs, threshold=0.5, mean_cell_size=113)
    np.testing.assert_array_equal(labels_p, labels)
    assert count_p == 1


def test_binary_watershed_3d_pair_of_balls():
    """Two balls of radius 4 with centres 7 voxels apart (overlapping) in a
    16x16x24 volume, mean_cell_size = one ball (4/3 pi 4^3 = 268 voxels, r = 4):
    two distance maxima 7 > 4 apart -> 2 objects, each holding one centre."""
    zz, yy, xx = np.indices((16, 16, 24))
    fg = np.zeros((16, 16, 24), np.float32)
    for cx in (8, 15):
        fg[(zz - 8) ** 2 + (yy - 8) ** 2 + (xx - cx) ** 2 <= 16] = 1.0
    labels, count = binary_watershed_labels(fg, mean_cell_size=268, classes_first=False)
    assert count == 2
    assert labels[8, 8, 8] != labels[8, 8, 15] and labels[8, 8, 8] > 0


# ----------------------------------------------------------------------- COMB


def test_average_probabilities_is_the_per_class_mean():
    """Pixel 0: (1,0,0) and (0,1,0) -> (0.5, 0.5, 0); pixel 1: (0.2,0.2,0.6) twice
    -> unchanged.  Also in 3D (C, Z, Y, X)."""
    a = np.array([[1.0, 0.2], [0.0, 0.2], [0.0, 0.6]], np.float32)[:, None, :]
    b = np.array([[0.0, 0.2], [1.0, 0.2], [0.0, 0.6]], np.float32)[:, None, :]
    out = average_probabilities([a, b])
    np.testing.assert_allclose(out[:, 0, :], [[0.5, 0.2], [0.5, 0.2], [0.0, 0.6]], atol=1e-7)
    assert out.dtype == np.float32
    out3 = average_probabilities([a[:, None], b[:, None], b[:, None]])
    np.testing.assert_allclose(out3[:, 0, 0, 0], [1 / 3, 2 / 3, 0.0], atol=1e-6)


def test_average_probabilities_errors():
    a = from_classes([[0, 1]])
    with pytest.raises(ValueError, match="same shape"):
        average_probabilities([a, from_classes([[0, 1, 1]])])
    with pytest.raises(ValueError, match="at least one"):
        average_probabilities([])


# ------------------------------------------------------------------ dispatcher


def test_postprocess_dispatches_by_name():
    probs = from_classes([[1, 1, 1, 2, 2, 2, 1, 1, 1]])
    for name, func in [("th", threshold_labels), ("MAP", map_labels)]:
        got = postprocess(probs, name, min_size=0)
        want = func(probs, min_size=0)
        np.testing.assert_array_equal(got[0], want[0])
        assert got[1] == want[1]
    got = postprocess(WT_ROW, "wt", tau0=0.4, tau1=0.9, min_size=0)
    assert got[1] == 2
    with pytest.raises(ValueError, match="method"):
        postprocess(probs, "otsu")
    with pytest.raises(ValueError, match="tau0"):
        postprocess(probs, "th", tau0=0.3)


# -------------------------------------------------------------- threshold search

#: 7x11 scene (rows 0, 2, 4, 6 background):
#: row 1: cell x=0..4, touching x=5 (z2 = 0.25), cell x=6..10   -> reference A, B
#: row 3: cell x=0..8 with a weak ridge at x=4 (z2 = 0.15)        -> reference C
#: row 5: faint blob x=0..2 (z1 = 0.45), not in the reference.
_C = (0.3, 0.65, 0.05)  # cell
_T = (0.1, 0.65, 0.25)  # touching between A and B
_R = (0.2, 0.65, 0.15)  # weak ridge inside C
_F = (0.5, 0.45, 0.05)  # faint blob
_B = BG


def _search_scene():
    rows = [[_B] * 11 for _ in range(7)]
    rows[1] = [_C] * 5 + [_T] + [_C] * 5
    rows[3] = [_C] * 4 + [_R] + [_C] * 4 + [_B] * 2
    rows[5] = [_F] * 3 + [_B] * 8
    probs = np.moveaxis(np.asarray(rows, np.float32), -1, 0).copy()
    ref = np.zeros((7, 11), int)
    ref[1, 0:5], ref[1, 6:11], ref[3, 0:9] = 1, 2, 3
    return probs, ref


def test_search_thresholds_recovers_known_best():
    """Grid gamma1 in {0.3, 0.5, 0.7} x gamma2 in {0.1, 0.2, 0.3}, min_size 0,
    three reference objects, F1 = 2 TP / (n_true + n_pred), match at IoU > 0.5:

    * gamma1 = 0.7 > z1 = 0.65: no cell, nothing found -> F1 0.
    * gamma2 = 0.1: pair split (A, B found; x=5 equidistant), ridge also splits C
      into two 4-px halves (IoU 4/9 < 0.5): TP 2, 4 predictions -> 4/7;
      with gamma1 = 0.3 the faint blob is a 5th prediction -> 4/8.
    * gamma2 = 0.2: pair split, C intact: TP 3, 3 predictions -> 1;
      gamma1 = 0.3 adds the blob -> 6/7.
    * gamma2 = 0.3: pair merged (11 px vs 5 px, IoU 5/11): TP 1 (C), 2 predictions
      -> 2/5; with the blob -> 2/6.

    Best: gamma1 = 0.5, gamma2 = 0.2, F1 = 1.
    """
    probs, ref = _search_scene()
    grid = {"gamma1": [0.3, 0.5, 0.7], "gamma2": [0.1, 0.2, 0.3]}
    result = search_thresholds(probs, ref, method="th", grid=grid, objective="f1", min_size=0)
    assert isinstance(result, ThresholdSearch)
    assert result.objective == result.metric == "f1"
    assert result.best_params == {"gamma1": 0.5, "gamma2": 0.2}
    assert result.best_score == pytest.approx(1.0)
    expected = [[4 / 8, 6 / 7, 2 / 6], [4 / 7, 1.0, 2 / 5], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(result.scores, expected)
    np.testing.assert_array_equal(result.grid["gamma2"], [0.1, 0.2, 0.3])


def test_search_thresholds_pools_counts_over_images():
    """Second image: nothing to find and nothing found (all background).  Pooled
    counts leave every F1 unchanged (a per-image mean would give (F1 + 1) / 2)."""
    probs, ref = _search_scene()
    empty = from_classes(np.zeros((7, 11), int))
    grid = {"gamma1": [0.3, 0.5, 0.7], "gamma2": [0.1, 0.2, 0.3]}
    f1 = {"grid": grid, "objective": "f1", "min_size": 0}
    single = search_thresholds(probs, ref, **f1)
    both = search_thresholds([probs, empty], [ref, np.zeros((7, 11), int)], **f1)
    np.testing.assert_allclose(both.scores, single.scores)
    assert both.best_params == single.best_params
    # One map with its reference wrapped in a list is still one image.
    wrapped = search_thresholds(probs, [ref], **f1)
    np.testing.assert_allclose(wrapped.scores, single.scores)


def test_search_binary_threshold():
    """Two discs of foreground 0.6 (the reference) and a third of 0.35 (not):
    cutoff 0.3 finds 3 (F1 = 4/5), 0.5 finds the 2 (F1 = 1), 0.7 none (F1 = 0)."""
    fg = _disc_scene((40, 60), [(12, 12), (12, 45)], 5) / 0.9 * 0.6
    fg += _disc_scene((40, 60), [(30, 28)], 5) / 0.9 * 0.35
    ref = ndimage.label(fg >= 0.5)[0]
    grid = {"threshold": [0.3, 0.5, 0.7]}
    result = search_thresholds(fg, ref, method="binary", grid=grid, objective="f1")
    np.testing.assert_allclose(result.scores, [0.8, 1.0, 0.0])
    assert result.best_params == {"threshold": 0.5}


def test_search_thresholds_errors():
    probs, ref = _search_scene()
    with pytest.raises(ValueError, match="shape"):
        search_thresholds(probs, ref[:, :5])
    with pytest.raises(ValueError, match="grid"):
        search_thresholds(probs, ref, method="th", grid={"tau0": [0.5]})
    with pytest.raises(ValueError, match="as many"):
        search_thresholds([probs, probs], [ref])
    with pytest.raises(ValueError, match="metric"):
        search_thresholds(probs, ref, metric="count_error")
    with pytest.raises(ValueError, match="objective"):
        search_thresholds(probs, ref, objective="count_error")
    with pytest.raises(ValueError, match="give one of them"):
        search_thresholds(probs, ref, objective="f1", metric="sq")
    with pytest.raises(ValueError, match="method"):
        search_thresholds(probs, ref, method="map")


# ------------------------------------------------------------------ input errors


@pytest.mark.parametrize("func", [map_labels, threshold_labels, watershed_labels])
def test_invalid_probabilities_raise(func):
    good = from_classes([[0, 1, 2]])
    nan = good.copy()
    nan[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        func(nan)
    with pytest.raises(ValueError, match="sum to 1"):
        func(good * 0.5)
    with pytest.raises(ValueError, match="2 or 3 or 4 classes"):
        func(np.full((1, 1, 3), 1.0, np.float32))
    with pytest.raises(ValueError, match="2 or 3 or 4 classes"):
        func(np.full((5, 1, 3), 0.2, np.float32))
    with pytest.raises(ValueError, match="shape"):
        func(good[:, 0, :])  # (C, X): too few dimensions
    with pytest.raises(ValueError, match="shape"):
        func(good[:, None, None])  # 5-D
    with pytest.raises(ValueError, match="min_size"):
        func(good, min_size=-1)


def test_invalid_thresholds_raise():
    good = from_classes([[0, 1, 2]])
    with pytest.raises(ValueError, match="gamma1"):
        threshold_labels(good, gamma1=1.5)
    with pytest.raises(ValueError, match="tau0"):
        watershed_labels(good, tau0=-0.1)
    with pytest.raises(ValueError, match="mean_cell_size"):
        binary_watershed_labels(np.zeros((4, 4)), mean_cell_size=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_watershed_labels(np.full((4, 4), 3.0))
    with pytest.raises(ValueError, match="labels"):
        fill_holes(np.array([[0.5, 1.0]]))


def test_non_contiguous_inputs_give_the_same_result():
    """Memory layout must not matter: a transposed (Fortran-ordered) label image in
    fill_holes, and a Fortran-ordered probability map in TH / WT / MAP, give the
    same result as their C-ordered copies."""
    lab = np.zeros((6, 5), int)
    lab[1:5, 1:4] = 2
    lab[2:4, 2] = 0
    np.testing.assert_array_equal(fill_holes(lab.T), fill_holes(np.ascontiguousarray(lab.T)))
    assert fill_holes(lab.T)[2, 2] == 2
    h = [[1, 2, 2, 0, 0], [2, 2, 2, 2, 0], [0, 2, 2, 2, 1]]
    probs = from_classes(h)
    for func in (threshold_labels, map_labels, watershed_labels):
        got = func(np.asfortranarray(probs), min_size=0)
        want = func(probs, min_size=0)
        np.testing.assert_array_equal(got[0], want[0])


def _squares_scene(squares, shape=(20, 40)):
    """3-class map and reference from ``(y0, y1, x0, x1, p_cell, in_reference)`` squares
    (later ones drawn over earlier ones); no touching class, background = 1 - cell."""
    cell = np.zeros(shape, np.float32)
    ref = np.zeros(shape, np.int32)
    for y0, y1, x0, x1, p, truth in squares:
        cell[y0:y1, x0:x1] = p
        if truth:
            ref[y0:y1, x0:x1] = ref.max() + 1
    probs = np.stack([1 - cell, cell, np.zeros_like(cell)])
    return probs, ref


def test_search_objective_pq_and_f1_pick_different_thresholds():
    """Two 6 x 6 cells of P(cell) 0.9, each in a 1-pixel ring of 0.5 outside the reference,
    and a faint 3 x 3 cell of 0.5; gamma1 in {0.4, 0.7}, gamma2 = 0.5 (no touching pixel):

    * gamma1 = 0.4: the two cells come out 8 x 8 (IoU 36/64 = 0.5625 > 0.5, so they match)
      and the faint one exactly: TP 3 -> F1 = 1; PQ = (0.5625 + 0.5625 + 1) / 3 = 0.708.
    * gamma1 = 0.7: the two cells exactly, the faint one missed: TP 2, FN 1 ->
      F1 = 4/5 = 0.8; PQ = (1 + 1) / (2 + 1/2) = 0.8.

    F1 picks 0.4 (too large cells), PQ picks 0.7; PQ is the default objective."""
    probs, ref = _squares_scene(
        [
            (2, 10, 2, 10, 0.5, False),
            (3, 9, 3, 9, 0.9, True),
            (2, 10, 14, 22, 0.5, False),
            (3, 9, 15, 21, 0.9, True),
            (12, 15, 30, 33, 0.5, True),
        ]
    )
    grid = {"gamma1": [0.4, 0.7], "gamma2": [0.5]}
    f1 = search_thresholds(probs, ref, grid=grid, objective="f1", min_size=0)
    np.testing.assert_allclose(f1.scores[:, 0], [1.0, 0.8])
    assert f1.best_params == {"gamma1": 0.4, "gamma2": 0.5}
    pq = search_thresholds(probs, ref, grid=grid, min_size=0)
    assert pq.objective == "pq"
    np.testing.assert_allclose(pq.scores[:, 0], [2.125 / 3, 0.8])
    assert pq.best_params == {"gamma1": 0.7, "gamma2": 0.5}
    assert search_thresholds(probs, ref, grid=grid, metric="f1", min_size=0).best_params == (
        f1.best_params
    )


def test_search_tie_goes_to_the_middle_of_the_plateau():
    """Two exact cells of P(cell) 0.8 and a faint false blob of 0.15; gamma1 on
    0.1, 0.2, ..., 0.6, 0.9: 0.1 adds the blob (F1 4/5), 0.2-0.6 find exactly the two
    cells (F1 = PQ = 1), 0.9 nothing. The best is the middle of 0.2-0.6, 0.4, for both
    objectives (the first grid point of the plateau would be 0.2)."""
    probs, ref = _squares_scene(
        [(2, 8, 2, 8, 0.8, True), (2, 8, 20, 26, 0.8, True), (12, 16, 30, 34, 0.15, False)]
    )
    grid = {"gamma1": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9], "gamma2": [0.5]}
    for objective in ("pq", "f1"):
        result = search_thresholds(probs, ref, grid=grid, objective=objective, min_size=0)
        np.testing.assert_allclose(result.scores[:, 0], [0.8, 1, 1, 1, 1, 1, 0])
        assert result.best_params == {"gamma1": 0.4, "gamma2": 0.5}
        assert result.best_score == 1.0


def test_best_grid_index_by_hand():
    """1-D: plateau at 1..5 -> 3; an even plateau 1..4 -> 2 (the first of the two middle
    points). 2-D: a 3 x 3 block of best values at rows 1-3, columns 2-4 -> its centre
    (2, 3); of two parts the larger one wins even when the other comes first; a single
    best is itself."""
    assert best_grid_index([0, 1, 1, 1, 1, 1, 0.5]) == (3,)
    assert best_grid_index([0, 1, 1, 1, 1, 0]) == (2,)
    block = np.zeros((5, 6))
    block[1:4, 2:5] = 0.9
    assert best_grid_index(block) == (2, 3)
    two = np.zeros((4, 8))
    two[0, 0] = 0.9
    two[1:4, 4:7] = 0.9
    assert best_grid_index(two) == (2, 5)
    one = np.zeros((3, 3))
    one[2, 0] = 1.0
    assert best_grid_index(one) == (2, 0)
    assert best_grid_index([0.5, 0.5 + 1e-12, 0.2]) == (0,)  # equal within atol
