"""How much memory a segmentation takes, and whether it fits, known before any work.

Two ways to segment an image (``engine.segment`` whole, ``engine.blocks`` by blocks) hold
different things at their peak:

* **whole image**: the image, its float32 probabilities on the image grid (4 bytes a
  class and pixel), the network-scale copies when the image is rescaled to the model's
  nucleus size (the resized image and its probabilities), the int32 labels and the
  post-processing temporaries (:data:`POST_BYTES_PER_PIXEL`);
* **forward pass**: the network's activations for one tile (:func:`forward_bytes`);
* **blocks**: the image, and for one block of ``(block + 2 margin)^2`` pixels what the
  whole-image path needs for all of them, plus about two block rows of labels.

Both add :data:`BASE_BYTES` (Python, torch and the model). The per-pixel figures are
measured by ``benchmarks/bench_memory.py`` (peak resident memory of ``cellfocus predict``
runs, see docs/benchmarks.md); the estimate is meant to be a little high, never low.
"""

from __future__ import annotations

import math
from pathlib import Path

#: Post-processing temporaries at their peak, bytes a pixel (measured, rounded up).
POST_BYTES_PER_PIXEL = 18
#: Python, numpy, torch and a loaded default model (measured, rounded up).
BASE_BYTES = 700 << 20
#: The network's activations, bytes a pixel of the tile predicted at once (the inference
#: copy of the default U-Net: 705 B/px at 512², 759 B/px at 1024², measured, rounded up).
FORWARD_BYTES_PER_TILE_PIXEL = 800
#: Tile side whose forward pass :data:`BASE_BYTES` already holds (it was measured with
#: 512-px tiles).
BASE_TILE = 512
#: Tile side the estimate assumes by default (the CPU's, ``engine.predict.DEFAULT_TILE``).
DEFAULT_TILE = 1024
#: Share of the available memory a run may plan to use: the rest is left for the system
#: and for the estimate's error.
USABLE_SHARE = 0.8


def forward_bytes(n_pixels: int, tile: int = DEFAULT_TILE) -> int:
    """Bytes the network's forward pass holds beyond :data:`BASE_BYTES`: the activations
    of a tile of ``tile``² pixels (or of the whole image when it is smaller), less the
    512² tile already counted in the base."""
    tile_pixels = min(int(n_pixels), int(tile) ** 2)
    return max(0, tile_pixels - BASE_TILE**2) * FORWARD_BYTES_PER_TILE_PIXEL


def whole_image_bytes(
    n_pixels: int,
    itemsize: int,
    n_classes: int = 3,
    zoom: float = 1.0,
    raw_bytes: int = 0,
    tile: int = DEFAULT_TILE,
) -> int:
    """Peak bytes of segmenting ``n_pixels`` (all planes) in one piece.

    ``itemsize``: bytes a pixel of the image as segmented; ``zoom``: the resampling to the
    model's scale (1: none); ``raw_bytes``: the file's pixels when they are more than the
    image segmented (other channels read with it), else 0; ``tile``: the largest tile side
    predicted at once.
    """
    image = max(int(raw_bytes), n_pixels * itemsize)
    probs = n_pixels * 4 * n_classes
    rescaled = 0 if zoom == 1.0 else math.ceil(n_pixels * zoom * zoom) * 4 * (1 + n_classes)
    labels = n_pixels * 4
    post = n_pixels * POST_BYTES_PER_PIXEL
    forward = forward_bytes(math.ceil(n_pixels * zoom * zoom), tile)
    return int(BASE_BYTES + image + probs + rescaled + labels + post + forward)


def ortho_bytes(
    n_pixels: int,
    itemsize: int,
    n_classes: int = 3,
    zoom: float = 1.0,
    z_scale: float = 1.0,
    tile: int = DEFAULT_TILE,
    raw_bytes: int = 0,
) -> int:
    """Peak bytes of segmenting a volume of ``n_pixels`` voxels from three orthogonal views
    (``engine.segment.Segmenter.iter_predict_ortho``): what :func:`whole_image_bytes`
    counts, plus the three views' probabilities kept until they are combined and the
    combined map (4 maps of the volume's size), the side view being predicted on the grid
    resampled along z by ``z_scale`` (one more map of ``z_scale`` times the size) and the
    two transposed resampled volumes (float32). Counted from what is held, not measured.
    ``raw_bytes``: as :func:`whole_image_bytes`.
    """
    maps = n_pixels * 4 * n_classes
    side_volumes = 2 * math.ceil(n_pixels * z_scale) * 4
    views = 4 * maps + math.ceil(maps * z_scale) + side_volumes
    whole = whole_image_bytes(n_pixels, itemsize, n_classes, zoom, raw_bytes, tile)
    return whole + views


def block_bytes(
    shape: tuple[int, int],
    itemsize: int,
    block: int,
    margin: int,
    n_classes: int = 3,
    zoom: float = 1.0,
    tile: int = DEFAULT_TILE,
) -> int:
    """Peak bytes of segmenting a (Y, X) image of ``shape`` in blocks of ``block`` px
    with ``margin`` px of context (see :mod:`napari_cellfocus.engine.blocks`)."""
    height, width = (int(n) for n in shape)
    side_y = min(height, block + 2 * margin)
    side_x = min(width, block + 2 * margin)
    one_block = whole_image_bytes(side_y * side_x, itemsize, n_classes, zoom, tile=tile)
    one_block -= BASE_BYTES
    rows = 2 * width * min(height, 2 * block + 3 * margin) * 4  # label rows and their copy
    return int(BASE_BYTES + height * width * itemsize + one_block + rows)


#: Environment variable capping the memory a run plans for, e.g. ``8G`` or ``512M``
#: (a shared node where other jobs need their share).
LIMIT_VARIABLE = "CELLFOCUS_MEMORY_LIMIT"


def parse_size(text: str) -> int:
    """``'8G'``, ``'512M'``, ``'1.5GiB'``, ``'1000000'`` (bytes) -> bytes; ``ValueError``."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in units and t[-1:] else ""
    number = t[: len(t) - len(unit)] if unit else t
    try:
        value = float(number) * units[unit]
    except ValueError:
        raise ValueError(f"expected a size such as 8G or 512M, got {text!r}.") from None
    if not value > 0:
        raise ValueError(f"expected a size > 0, got {text!r}.")
    return int(value)


def available_bytes() -> int | None:
    """Memory this process may still take: the system's available memory, or less under
    a cgroup (container, Slurm job) limit or the :data:`LIMIT_VARIABLE` cap; ``None``
    when unknown. A malformed cap raises ``ValueError`` naming the variable."""
    import os

    found = []
    cap = os.environ.get(LIMIT_VARIABLE, "").strip()
    if cap:
        try:
            found.append(parse_size(cap))
        except ValueError as err:
            raise ValueError(f"{LIMIT_VARIABLE}: {err}") from None
    try:
        import psutil

        found.append(int(psutil.virtual_memory().available))
    except Exception:
        pass
    limit = _cgroup_room()
    if limit is not None:
        found.append(limit)
    return min(found) if found else None


def _cgroup_room() -> int | None:
    """``memory.max - memory.current`` of this process's cgroup (v2), ``None`` if none."""
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            base = Path("/sys/fs/cgroup") / line[3:].strip().lstrip("/")
            try:
                limit = (base / "memory.max").read_text().strip()
                current = int((base / "memory.current").read_text().strip())
            except (OSError, ValueError):
                return None
            if limit == "max":
                return None
            return max(0, int(limit) - current)
    return None


def gib(n_bytes: float) -> str:
    """``n_bytes`` as GiB with one decimal, e.g. ``'10.9 GiB'``."""
    return f"{n_bytes / (1 << 30):.1f} GiB"


def fits(n_bytes: int, available: int | None) -> bool:
    """Whether a run needing ``n_bytes`` fits in :data:`USABLE_SHARE` of ``available``
    (always, when the available memory is unknown)."""
    return available is None or n_bytes <= USABLE_SHARE * available
