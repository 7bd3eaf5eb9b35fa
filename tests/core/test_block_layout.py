"""Block layout, centroid ownership and the rolling label rows (core/blocks.py), the
row-band TIFF writer (core.io.write_image_rows) and the memory estimate (core/memory.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_cellfocus.core import memory
from napari_cellfocus.core.blocks import LabelRows, block_grid, owned_objects
from napari_cellfocus.core.io import write_image_rows
from napari_cellfocus.core.normalize import FixedRange, PercentileNormalization


def test_block_grid_cores_partition_the_image_and_reads_add_the_margin():
    grid = block_grid((10, 7), block=4, margin=2)
    assert [len(row) for row in grid] == [2, 2, 2]
    cover = np.zeros((10, 7), int)
    for row in grid:
        for b in row:
            cover[b.core] += 1
    assert (cover == 1).all()
    b = grid[1][1]  # core rows 4..8, cols 4..7
    assert b.core == (slice(4, 8), slice(4, 7))
    assert b.read == (slice(2, 10), slice(2, 7))  # clipped at the image border
    assert b.core_in_read == (slice(2, 6), slice(2, 5))
    assert b.offset == (2, 2)
    with pytest.raises(ValueError, match="block must be > 0"):
        block_grid((4, 4), 0, 1)


def test_owned_objects_keeps_those_whose_centroid_is_in_the_core():
    grid = block_grid((8, 8), block=4, margin=2)
    b = grid[0][0]  # core (0..4, 0..4), read (0..6, 0..6)
    lab = np.zeros((6, 6), np.int32)
    lab[0:2, 0:2] = 5  # centroid (0.5, 0.5): in the core
    lab[3:6, 3:5] = 7  # centroid (4, 3.5): row 4 is outside the core (0..3)
    lab[2:5, 3] = 9  # centroid (3, 3): in the core, reaching into the margin
    owned, n = owned_objects(lab, b)
    assert n == 2
    assert set(np.unique(owned)) == {0, 1, 2}
    assert (owned[0:2, 0:2] == 1).all() and (owned[2:5, 3] == 2).all()
    assert (owned[lab == 7] == 0).all()


def test_label_rows_paste_drops_second_copies_and_releases_final_rows_in_order():
    shape = (8, 6)
    rows = LabelRows(shape, reach=2)
    grid = block_grid(shape, block=4, margin=2)
    first = grid[0][0]  # read rows 0..6, cols 0..6
    obj = np.zeros((6, 6), np.int32)
    obj[3:5, 1:3] = 1
    obj[0, 0] = 2
    assert list(rows.paste(obj, first)) == [1, 2]
    # The next block finds the same object again (its second copy) and a new one.
    again = np.zeros((6, 6), np.int32)  # grid[1][0] reads rows 2..8
    again[1:3, 1:3] = 1  # image rows 3..4: all taken -> dropped
    again[4, 4] = 2  # image row 6: new
    assert list(rows.paste(again, grid[1][0])) == [0, 3]
    assert rows.count == 3 and rows.dropped == 1
    released = list(rows.finish_row(next_core_start=4))  # rows < 4 - 2 are final
    assert [(r, a.shape) for r, a in released] == [(0, (2, 6))]
    rest = list(rows.flush())
    assert [(r, a.shape) for r, a in rest] == [(2, (6, 6))]
    full = np.concatenate([a for _, a in released + rest])
    assert full[0, 0] == 2 and (full[3:5, 1:3] == 1).all() and full[6, 4] == 3
    assert np.count_nonzero(full) == 6
    with pytest.raises(ValueError, match="already handed out"):
        rows.paste(obj, first)


@pytest.mark.parametrize(
    "shape, cuts",
    [((700, 530), [100, 450]), ((1000, 300), [10, 20, 300, 301, 999]), ((5, 7), [1])],
)
def test_write_image_rows_round_trips_any_band_heights(tmp_path, shape, cuts):
    a = np.random.default_rng(0).integers(0, 2**31 - 1, shape).astype(np.int32)
    edges = [0, *cuts, shape[0]]
    bands = ((edges[i], a[edges[i] : edges[i + 1]]) for i in range(len(edges) - 1))
    path = write_image_rows(tmp_path / "x.tif", shape, np.int32, bands)
    back = tifffile.imread(path)
    assert back.dtype == np.int32 and np.array_equal(back, a)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].is_tiled


def test_write_image_rows_refuses_missing_rows_and_leaves_no_file(tmp_path):
    bands = iter([(0, np.zeros((50, 10), np.int32))])
    with pytest.raises(ValueError, match="stopped at row 50 of 100"):
        write_image_rows(tmp_path / "x.tif", (100, 10), np.int32, bands)
    with pytest.raises(ValueError, match="does not follow row 50"):
        write_image_rows(
            tmp_path / "x.tif",
            (100, 10),
            np.int32,
            iter([(0, np.zeros((50, 10), np.int32)), (60, np.zeros((40, 10), np.int32))]),
        )
    assert list(tmp_path.iterdir()) == []


def test_fixed_range_is_the_whole_images_stretch_for_every_part():
    image = np.arange(1000, dtype=np.float32).reshape(10, 100)
    whole = PercentileNormalization(1.0, 99.0)
    fixed = FixedRange.of(image, whole)
    assert fixed.limits(image[:1]) == whole.limits(image)
    lo, hi = whole.limits(image)
    np.testing.assert_allclose(fixed(image[:2]), (image[:2] - lo) / (hi - lo), rtol=1e-6)
    assert not FixedRange(3.0, 3.0)(image).any()


def test_memory_estimates_by_hand():
    base = memory.BASE_BYTES
    post = memory.POST_BYTES_PER_PIXEL
    # 100 px uint16, 3 classes, no zoom: 2 + 12 + 4 + post bytes a pixel.
    assert memory.whole_image_bytes(100, 2) == base + 100 * (2 + 12 + 4 + post)
    # zoom 0.5: + the rescaled image and probabilities, 25 px x (4 + 12) bytes.
    assert memory.whole_image_bytes(100, 2, zoom=0.5) == base + 100 * (18 + post) + 25 * 16
    # Other channels read with the image count when they are more.
    assert memory.whole_image_bytes(100, 2, raw_bytes=1000) == base + 1000 + 100 * (16 + post)
    # Blocks of 10 + 2 x 1 px on a 100 x 50 image: the image, one 12 x 12 block and two
    # copies of 2 x 10 + 3 rows of labels.
    one = 144 * (2 + 12 + 4 + post)
    assert memory.block_bytes((100, 50), 2, 10, 1) == base + 5000 * 2 + one + 2 * 50 * 23 * 4
    # A 20000² uint16 image: whole far above blocks, blocks under 3 GiB.
    assert memory.block_bytes((20000, 20000), 2, 2048, 130) < 3 << 30
    assert memory.whole_image_bytes(20000**2, 2) > 10 << 30
    assert memory.fits(80, 100) and not memory.fits(81, 100) and memory.fits(10**15, None)
    assert memory.gib(1.5 * (1 << 30)) == "1.5 GiB"
    room = memory.available_bytes()
    assert room is None or room > 0


def test_forward_bytes_hand_computed():
    """The tile's activations beyond the 512² tile the base already holds: 800 B a pixel."""
    from napari_cellfocus.core.memory import forward_bytes, whole_image_bytes

    assert forward_bytes(4096 * 4096, tile=1024) == (1024**2 - 512**2) * 800
    assert forward_bytes(300 * 200, tile=1024) == 0  # smaller than the base tile
    assert forward_bytes(700 * 700, tile=1024) == (700 * 700 - 512**2) * 800
    # a 512-px tile adds nothing to the measured base; larger tiles need more memory
    small = whole_image_bytes(4096 * 4096, 2, tile=512)
    assert whole_image_bytes(4096 * 4096, 2, tile=1024) - small == (1024**2 - 512**2) * 800


def test_checked_bands_stops_at_the_last_row_and_names_the_file():
    from napari_cellfocus.core.bands import checked_bands

    pulled = []

    def bands():
        for first in (0, 4, 8, 12):
            pulled.append(first)
            yield first, np.zeros((4, 3), np.int64)

    got = list(checked_bands("a.tif", (8, 3), np.int32, bands()))
    assert [f for f, _ in got] == [0, 4] and pulled == [0, 4]  # band 8 never asked for
    assert all(rows.dtype == np.int32 for _, rows in got)
    with pytest.raises(ValueError, match=r"a\.tif: more row bands than the image's 6 rows"):
        list(checked_bands("a.tif", (6, 3), np.int32, bands()))
    wrong_width = r"a\.tif: row band at 0 of shape \(4, 3\) does not follow row 0"
    with pytest.raises(ValueError, match=wrong_width):
        list(checked_bands("a.tif", (8, 5), np.int32, bands()))


def test_ortho_bytes_hand_computed():
    """Three views kept, their combination, the side view on the z-resampled grid and two
    transposed resampled volumes, on top of the whole-volume estimate."""
    from napari_cellfocus.core.memory import ortho_bytes, whole_image_bytes

    n = 20 * 256 * 256
    maps = n * 4 * 3
    extra = 4 * maps + 2 * maps + 2 * (2 * n) * 4  # z scale 2
    assert ortho_bytes(n, 2, 3, 1.0, 2.0) == whole_image_bytes(n, 2, 3, 1.0) + extra
