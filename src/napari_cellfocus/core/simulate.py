"""Synthetic fluorescence images of stained nuclei with exact instance ground truth.

The simulator follows the physics of a wide-field fluorescence acquisition of a
DNA stain (DAPI / Hoechst) rather than any particular data set:

1. **Geometry** (:func:`_place_cells`, :func:`_rasterize`): each nucleus is a
   star-convex shape, an ellipse (ellipsoid in 3D) whose radius is modulated by
   smooth random radial harmonics. Nuclei are dropped either alone or in clumps;
   inside a clump they overlap slightly and every pixel goes to the nucleus whose
   normalised radius ``rho = |q| / R(direction)`` is smallest there, which gives
   the flattened shared border of nuclei pressed against each other.
   Contacts between clumped nuclei either stay (touching cells share a border,
   no gap in ``labels``) or are opened into a 1-3 px gap (nearly touching cells).
2. **Emission** (:func:`_render_cell`): per-cell brightness (DNA content and
   staining variability: log-normal, cell cycle, dim cells, bright compact
   mitotic nuclei) times a thickness profile (rounded edge), chromatin texture
   (band-pass noise), bright heterochromatin foci, a peripheral rim and dark
   nucleoli (nucleoli exclude DNA dyes).
3. **Optics**: Gaussian approximation of the point-spread function
   (``blur_sigma``), extra blur for defocused nuclei, out-of-focus haze, unlabelled
   very-out-of-focus "ghost" nuclei from other planes, background
   autofluorescence (smooth, uneven) and multiplicative uneven illumination
   (vignetting plus a ramp).
4. **Detection**: Poisson photon shot noise (``photons`` = expected photons per
   pixel of a typical nucleus), Gaussian read noise (``read_noise``, electrons),
   camera gain and offset, quantisation to 8 or 16 bits with saturation.

Everything is drawn from one :class:`numpy.random.Generator` seeded by ``seed``,
so a scene is reproducible. Per-cell work is done on cropped windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "SimulatedScene",
    "random_scene_params",
    "simulate_cells",
    "simulate_dataset",
    "simulate_focus_stack",
]


@dataclass
class SimulatedScene:
    """One simulated acquisition and its ground truth.

    Attributes
    ----------
    image : np.ndarray, (Y, X) or (Z, Y, X)
        The noisy, digitised image: ``uint8`` (``bit_depth=8``), ``uint16``
        (``bit_depth=16``) or ``float32`` in [0, 1] (``bit_depth=None``).
        For a focus stack it is one noisy acquisition of the all-in-focus scene.
    labels : np.ndarray, int32, same shape as ``image``
        Instance ground truth: 0 = background, nuclei numbered 1..n consecutively,
        no overlaps (each pixel has one owner).
    clean : np.ndarray, float32, same shape, values in [0, 1]
        The noiseless, in-focus expected image on the same intensity scale as
        ``image`` divided by its full scale (``2**bit_depth - 1``, or 1 for float):
        blur, background, illumination and camera offset included, shot/read noise
        and quantisation excluded.
    params : dict
        Every parameter used (after defaults and validation) plus derived values:
        ``n_cells`` (nuclei in ``labels``), ``ndim``, ``full_scale``, ``gain``
        (ADU per photo-electron) and ``offset_adu``.
    stack : np.ndarray or None, (Z, Y, X)
        Focus stacks only: noisy slices, same dtype as ``image``.
    all_in_focus : np.ndarray or None, (Y, X)
        Focus stacks only: the noiseless image with every nucleus in focus, same
        dtype and scale as ``stack`` (ground truth for multi-focus fusion).
    depth : np.ndarray or None, (Y, X) float32
        Focus stacks only: for each nucleus pixel the (fractional) slice index at
        which that nucleus is in focus; ``-1.0`` on background.
    """

    image: np.ndarray
    labels: np.ndarray
    clean: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    stack: np.ndarray | None = None
    all_in_focus: np.ndarray | None = None
    depth: np.ndarray | None = None


# --------------------------------------------------------------------------- defaults

_DEFAULTS: dict[str, Any] = {
    "n_cells": None,
    "density": 0.25,
    "radius": (6.0, 12.0),
    "radius_spread": 0.2,
    "irregularity": 0.08,
    "elongation": 0.25,
    "cluster_fraction": 0.5,
    "cluster_size": 4.0,
    "touching": 0.7,
    "intensity_variation": 0.3,
    "texture": 0.25,
    "nucleoli": 1.0,
    "spots": 0.5,
    "edge_softness": 0.25,
    "mitotic_fraction": 0.02,
    "out_of_focus": 0.05,
    "background": 0.08,
    "haze": 0.05,
    "ghosts": 0.1,
    "illumination_gradient": 0.2,
    "blur_sigma": 1.0,
    "photons": 300.0,
    "read_noise": 3.0,
    "fill": 0.8,
    "offset": 0.01,
    "bit_depth": 8,
    "z_anisotropy": 2.0,
}


# --------------------------------------------------------------------------- validation


def _check_shape(shape: Sequence[int], allowed_ndim: Sequence[int] = (2, 3)) -> tuple[int, ...]:
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(
            f"shape: expected a tuple of ints like (256, 256), got {shape!r}."
        ) from None
    if len(out) not in allowed_ndim or any(s != t for s, t in zip(out, shape, strict=True)):
        raise ValueError(
            f"shape: expected {' or '.join(map(str, allowed_ndim))} whole-number sizes "
            f"(Y, X) or (Z, Y, X), got {shape!r}."
        )
    if any(s < 8 for s in out):
        raise ValueError(f"shape: every size must be >= 8 pixels, got {out}.")
    return out


def _check_range(name: str, value: Any, lo: float, hi: float, lo_open=False, hi_open=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}.") from None
    bad_lo = v <= lo if lo_open else v < lo
    bad_hi = v >= hi if hi_open else v > hi
    if (not math.isfinite(v) and not (hi == math.inf and v == math.inf)) or bad_lo or bad_hi:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ValueError(f"{name}: expected a value in {lb}{lo:g}, {hi:g}{rb}, got {value!r}.")
    return v


def _check_radius(radius: Any, spread: float) -> tuple[float, float]:
    if np.ndim(radius) == 0:
        r = _check_range("radius", radius, 0.0, math.inf, lo_open=True, hi_open=True)
        lo, hi = r * (1.0 - spread), r * (1.0 + spread)
    else:
        vals = np.asarray(radius, dtype=float).ravel()
        if vals.size != 2:
            raise ValueError(f"radius: expected a number or a (min, max) pair, got {radius!r}.")
        lo, hi = float(vals[0]), float(vals[1])
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo <= 0 or hi < lo:
            raise ValueError(f"radius: expected 0 < min <= max (pixels), got {radius!r}.")
    if lo < 1.5:
        raise ValueError(f"radius: nuclei need a radius of at least 1.5 px, got {radius!r}.")
    return lo, hi


def _resolve_params(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = set(kwargs) - set(_DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown simulation parameter(s) {sorted(unknown)}; known: {sorted(_DEFAULTS)}."
        )
    p = {**_DEFAULTS, **kwargs}
    p["radius_spread"] = _check_range("radius_spread", p["radius_spread"], 0.0, 0.9)
    p["radius"] = _check_radius(p["radius"], p["radius_spread"])
    if p["n_cells"] is not None:
        n = p["n_cells"]
        if isinstance(n, bool) or not float(n).is_integer() or n < 0:
            raise ValueError(f"n_cells: expected a whole number >= 0 or None, got {n!r}.")
        p["n_cells"] = int(n)
    p["density"] = _check_range("density", p["density"], 0.0, 1.0, lo_open=True)
    for name in (
        "cluster_fraction",
        "touching",
        "irregularity",
        "nucleoli",
        "spots",
        "mitotic_fraction",
        "out_of_focus",
        "haze",
        "offset",
    ):
        p[name] = _check_range(name, p[name], 0.0, 1.0)
    for name in ("intensity_variation", "texture", "elongation", "edge_softness"):
        p[name] = _check_range(name, p[name], 0.0, 2.0)
    p["cluster_size"] = _check_range("cluster_size", p["cluster_size"], 2.0, 1000.0)
    p["ghosts"] = _check_range("ghosts", p["ghosts"], 0.0, 10.0)
    p["background"] = _check_range("background", p["background"], 0.0, 10.0)
    p["illumination_gradient"] = _check_range(
        "illumination_gradient", p["illumination_gradient"], 0.0, 1.0, hi_open=True
    )
    p["blur_sigma"] = _check_range("blur_sigma", p["blur_sigma"], 0.0, 50.0)
    p["photons"] = _check_range("photons", p["photons"], 0.0, math.inf, lo_open=True)  # inf ok
    p["read_noise"] = _check_range("read_noise", p["read_noise"], 0.0, 1e6)
    p["fill"] = _check_range("fill", p["fill"], 0.0, 10.0, lo_open=True)
    if p["offset"] >= p["fill"]:
        raise ValueError(f"offset ({p['offset']:g}) must be below fill ({p['fill']:g}).")
    p["z_anisotropy"] = _check_range("z_anisotropy", p["z_anisotropy"], 0.1, 20.0)
    if p["bit_depth"] not in (8, 16, None) or isinstance(p["bit_depth"], bool):
        raise ValueError(
            f"bit_depth: expected 8, 16 or None (float32 output), got {p['bit_depth']!r}."
        )
    return p


# --------------------------------------------------------------------------- random fields


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: float | Sequence[float]
) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean and unit standard deviation (float32).

    ``sigma`` in pixels, one value or one per axis. Large ``sigma`` is done on a
    coarse grid and interpolated back, so the cost does not grow with ``sigma``.
    """
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (len(shape),))
    factor = max(1, int(sig.min() // 3))
    small = tuple(max(2, math.ceil(s / factor) + 2) for s in shape)
    noise = rng.standard_normal(small).astype(np.float32)
    noise = ndi.gaussian_filter(noise, tuple(sig / factor), mode="wrap")
    if factor > 1:
        zoom = [(s + 2 * factor) / n for s, n in zip(shape, small, strict=True)]
        noise = ndi.zoom(noise, zoom, order=1, mode="nearest", grid_mode=True)
        noise = noise[tuple(slice(factor, factor + s) for s in shape)]
    else:
        noise = noise[tuple(slice(0, s) for s in shape)]
    noise -= noise.mean()
    sd = noise.std()
    return noise / sd if sd > 0 else noise


# --------------------------------------------------------------------------- geometry


@dataclass
class _Cell:
    center: np.ndarray  # (ndim,) pixel coordinates
    radius: float  # mean radius in (lateral) pixels
    m: np.ndarray  # (ndim, ndim): pixel offset -> normalised local coordinates
    minv: np.ndarray  # inverse of m
    harm: np.ndarray  # deformation coefficients, see _radial_factor
    fmax: float  # upper bound of the radial factor
    reach: float  # upper bound of the distance centre -> outline (physical units)
    cluster: int  # -1 for a lone cell
    mitotic: bool

    @property
    def half_extent(self) -> np.ndarray:
        """Half size of the bounding box of the shape, per axis (pixels)."""
        return self.radius * self.fmax * np.sqrt((self.minv**2).sum(axis=1))


def _radial_factor(harm: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Smooth factor modulating the radius with direction.

    2D: ``1 + sum_k a_k cos(k theta + phi_k)`` for ``harm`` rows (k, a_k, phi_k).
    3D: ``1 + sum_j a_j cos(w_j u.v_j + phi_j)`` (random smooth function on the
    sphere) for rows (a_j, w_j, phi_j, v_j[3]).
    """
    if q.shape[0] == 2:
        theta = np.arctan2(q[1], q[0])
        f = np.ones_like(theta)
        for k, a, phi in harm:
            f += a * np.cos(k * theta + phi)
    else:
        norm = np.sqrt((q**2).sum(axis=0))
        norm[norm == 0] = 1.0
        f = np.ones(q.shape[1:], dtype=np.float64)
        for row in harm:
            a, w, phi = row[:3]
            proj = np.tensordot(row[3:], q, axes=1) / norm
            f += a * np.cos(w * proj + phi)
    return np.maximum(f, 0.35)


def _make_cell(
    rng: np.random.Generator,
    center: np.ndarray,
    radius: float,
    p: dict[str, Any],
    ndim: int,
    mitotic: bool,
) -> _Cell:
    elong = p["elongation"] * (2.5 if mitotic else 1.0)
    aspect = 1.0 + abs(rng.normal(0.0, elong)) + (0.8 * rng.random() if mitotic else 0.0)
    a_long, a_short = math.sqrt(aspect), 1.0 / math.sqrt(aspect)
    alpha = rng.uniform(0, math.pi)
    ca, sa = math.cos(alpha), math.sin(alpha)
    minv2 = np.array([[ca * a_long, -sa * a_short], [sa * a_long, ca * a_short]])
    m2 = np.array([[ca / a_long, sa / a_long], [-sa / a_short, ca / a_short]])
    irr = p["irregularity"] * (0.5 if mitotic else 1.0)
    if ndim == 2:
        ks = np.arange(2, 7, dtype=float)
        amps = irr * rng.standard_normal(ks.size) / (ks - 1.0) ** 1.2
        harm = np.stack([ks, amps, rng.uniform(0, 2 * math.pi, ks.size)], axis=1)
        fmax = 1.0 + float(np.abs(amps).sum())
        minv, m = minv2, m2
        stretch = a_long
    else:
        nh = 4
        amps = irr * rng.standard_normal(nh) / np.sqrt(np.arange(1, nh + 1))
        dirs = rng.standard_normal((nh, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        harm = np.concatenate(
            [
                amps[:, None],
                rng.uniform(1.5, 4.0, (nh, 1)),
                rng.uniform(0, 2 * math.pi, (nh, 1)),
                dirs,
            ],
            axis=1,
        )
        fmax = 1.0 + float(np.abs(amps).sum())
        flat = rng.uniform(0.6, 0.9)  # nuclei are flatter along the optical axis
        minv = np.zeros((3, 3))
        minv[0, 0] = flat / p["z_anisotropy"]
        minv[1:, 1:] = minv2
        m = np.zeros((3, 3))
        m[0, 0] = 1.0 / minv[0, 0]
        m[1:, 1:] = m2
        stretch = max(a_long, flat)
    return _Cell(
        center=np.asarray(center, dtype=float),
        radius=float(radius),
        m=m,
        minv=minv,
        harm=harm,
        fmax=fmax,
        reach=radius * fmax * stretch,
        cluster=-1,
        mitotic=mitotic,
    )


class _Grid:
    """Uniform bucket grid for neighbour queries while placing cells."""

    def __init__(self, cell_size: float, scale: np.ndarray):
        self.factor = [float(v) / cell_size for v in scale]  # pixel -> bucket index
        self.buckets: dict[tuple[int, ...], list[int]] = {}
        self.offsets = [tuple(v - 1 for v in o) for o in np.ndindex(*([3] * len(scale)))]

    def key(self, pos: np.ndarray) -> tuple[int, ...]:
        return tuple(math.floor(v * f) for v, f in zip(pos.tolist(), self.factor, strict=True))

    def add(self, idx: int, pos: np.ndarray) -> None:
        self.buckets.setdefault(self.key(pos), []).append(idx)

    def near(self, pos: np.ndarray) -> list[int]:
        k = self.key(pos)
        out: list[int] = []
        get = self.buckets.get
        for off in self.offsets:
            out.extend(get(tuple(a + b for a, b in zip(k, off, strict=True)), ()))
        return out


def _place_cells(
    rng: np.random.Generator, shape: tuple[int, ...], p: dict[str, Any]
) -> list[_Cell]:
    """Draw nuclei and place them alone or in clumps (see module docstring)."""
    ndim = len(shape)
    lo, hi = p["radius"]
    scale = np.ones(ndim)
    if ndim == 3:
        scale[0] = p["z_anisotropy"]
    if p["n_cells"] is not None:
        n_target = p["n_cells"]
    else:
        mean_r2 = (lo * lo + lo * hi + hi * hi) / 3.0
        if ndim == 2:
            cell_vol = math.pi * mean_r2
        else:
            cell_vol = 4.0 / 3.0 * math.pi * mean_r2**1.5 * 0.75 / p["z_anisotropy"]
        # clumped nuclei overlap before the pressed partition: ~15% of their area goes
        n_target = round(
            p["density"] * float(np.prod(shape)) / cell_vol / (1.0 - 0.15 * p["cluster_fraction"])
        )
    n_clustered = round(p["cluster_fraction"] * n_target)
    size_arr = np.asarray(shape, dtype=float)

    cells: list[_Cell] = []
    grid = _Grid(2.0 * hi * (1.0 + 3.0 * p["irregularity"]) * 1.6 + 4.0, scale)
    sc = [float(v) for v in scale]
    # per placed cell: centre (physical units), mean radius, reach, cluster id
    placed_info: list[tuple[list[float], float, float, int]] = []

    def fits(cell: _Cell, pos: np.ndarray, cluster: int) -> bool:
        c = [float(v) * f for v, f in zip(pos.tolist(), sc, strict=True)]
        for j in grid.near(pos):
            cj, rj, reach_j, clus_j = placed_info[j]
            d2 = sum((u - v) ** 2 for u, v in zip(c, cj, strict=True))
            if cluster >= 0 and clus_j >= 0:
                need = 0.72 * (rj + cell.radius)
            else:
                need = reach_j + cell.reach + 3.0
            if d2 < need * need:
                return False
        return True

    def commit(cell: _Cell, pos: np.ndarray, cluster: int) -> None:
        cell.center = np.asarray(pos, dtype=float)
        cell.cluster = cluster
        c = [float(v) * f for v, f in zip(cell.center.tolist(), sc, strict=True)]
        grid.add(len(cells), cell.center)
        placed_info.append((c, cell.radius, cell.reach, cluster))
        cells.append(cell)

    n_cluster = 0
    members: list[int] = []
    cluster_goal = 0
    failures = 0
    origin = np.zeros(ndim)
    for k in range(n_target):
        if failures > 60 + 3 * n_target:
            break
        mitotic = bool(rng.random() < p["mitotic_fraction"])
        r = rng.uniform(lo, hi) * (rng.uniform(0.55, 0.75) if mitotic else 1.0)
        cell = _make_cell(rng, origin, r, p, ndim, mitotic)
        in_cluster = k < n_clustered
        placed = False
        if in_cluster and members and len(members) < cluster_goal:
            for _ in range(25):
                anchor = cells[members[rng.integers(len(members))]]
                u = rng.standard_normal(ndim) / scale  # random physical direction
                u /= np.linalg.norm(u * scale)
                dist = (anchor.radius + r) * rng.uniform(0.8, 1.02)
                pos = anchor.center + dist * u
                if np.any(pos < 0) or np.any(pos > size_arr - 1):
                    failures += 1
                    continue
                if fits(cell, pos, n_cluster):
                    commit(cell, pos, n_cluster)
                    members.append(len(cells) - 1)
                    placed = True
                    break
                failures += 1
            if not placed:
                members = []  # this clump is full: start a new one with this cell
        if placed:
            continue
        for _ in range(40):
            pos = rng.uniform(0, 1, ndim) * (size_arr - 1)
            cluster = n_cluster + 1 if in_cluster else -1
            if fits(cell, pos, cluster):
                commit(cell, pos, cluster)
                if in_cluster:
                    n_cluster += 1
                    members = [len(cells) - 1]
                    cluster_goal = 2 + int(rng.poisson(max(p["cluster_size"] - 2.0, 0.0)))
                break
            failures += 1
    return cells


def _window(center: np.ndarray, half: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    lo = np.maximum(np.floor(center - half - 1).astype(int), 0)
    hi = np.minimum(np.ceil(center + half + 2).astype(int), shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _open_grid(win: tuple[slice, ...], origin: np.ndarray | None = None) -> list[np.ndarray]:
    """Sparse (broadcastable) pixel coordinates of a window, minus ``origin``."""
    ndim = len(win)
    out = []
    for ax, s in enumerate(win):
        v = np.arange(s.start, s.stop, dtype=float)
        if origin is not None:
            v = v - origin[ax]
        out.append(v.reshape([-1 if k == ax else 1 for k in range(ndim)]))
    return out


def _rasterize(cells: list[_Cell], shape: tuple[int, ...]) -> np.ndarray:
    """Label image where each pixel goes to the cell of smallest normalised radius < 1."""
    labels = np.zeros(shape, dtype=np.int32)
    best = np.full(shape, np.inf, dtype=np.float32)
    for i, cell in enumerate(cells, start=1):
        win = _window(cell.center, cell.half_extent, shape)
        if any(s.stop <= s.start for s in win):
            continue
        grids = _open_grid(win, cell.center)
        q = np.stack(
            np.broadcast_arrays(
                *[sum(mk * g for mk, g in zip(row, grids, strict=True)) for row in cell.m]
            )
        )
        rho = np.sqrt((q**2).sum(axis=0)) / (cell.radius * _radial_factor(cell.harm, q))
        bw = best[win]
        take = (rho < 1.0) & (rho < bw)
        bw[take] = rho[take]
        labels[win][take] = i
    return labels


def _neighbour_offsets(ndim: int) -> list[tuple[int, ...]]:
    """Half of the full (8 / 26) neighbourhood: one of each opposite pair."""
    offs = []
    for off in np.ndindex(*([3] * ndim)):
        o = tuple(v - 1 for v in off)
        first = next((v for v in o if v != 0), 0)
        if first > 0:
            offs.append(o)
    return offs


def _adjacent_pairs(labels: np.ndarray, full: bool = True) -> np.ndarray:
    """Unique pairs (a, b), a < b, of labels that touch (full or face connectivity)."""
    ndim = labels.ndim
    offsets = (
        _neighbour_offsets(ndim)
        if full
        else [tuple(int(i == ax) for i in range(ndim)) for ax in range(ndim)]
    )
    found = []
    for off in offsets:
        sa = tuple(
            slice(0, -1) if o == 1 else slice(1, None) if o == -1 else slice(None) for o in off
        )
        sb = tuple(
            slice(1, None) if o == 1 else slice(0, -1) if o == -1 else slice(None) for o in off
        )
        a, b = labels[sa], labels[sb]
        m = (a != b) & (a > 0) & (b > 0)
        if m.any():
            found.append(np.stack([np.minimum(a[m], b[m]), np.maximum(a[m], b[m])], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(found).astype(np.int64), axis=0)


def _carve_gaps(
    labels: np.ndarray, pairs: np.ndarray, gaps: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Open a background gap of ``gaps[k]`` pixels between each pair ``pairs[k]``.

    The gap is shared between both cells: one loses the pixels closer than
    ``a + 0.5`` to the other (so diagonal contacts go too), the other those
    closer than ``g - a + 0.5``, with ``a = ceil(g / 2)``.
    """
    if len(pairs) == 0:
        return labels
    need: dict[int, dict[int, list[int]]] = {}
    for (i, j), g in zip(pairs, gaps, strict=True):
        a = math.ceil(g / 2)
        if rng.random() < 0.5:
            i, j = j, i
        for cell, other, dist in ((i, j, a), (j, i, g - a)):
            if dist > 0:
                need.setdefault(int(cell), {}).setdefault(int(dist), []).append(int(other))
    objs = ndi.find_objects(labels)
    remove = np.zeros(labels.shape, dtype=bool)
    for cell, by_dist in need.items():
        sl = objs[cell - 1]
        if sl is None:
            continue
        win = tuple(
            slice(max(s.start - 4, 0), min(s.stop + 4, n))
            for s, n in zip(sl, labels.shape, strict=True)
        )
        lw = labels[win]
        own = lw == cell
        for dist, others in by_dist.items():
            d = ndi.distance_transform_edt(~np.isin(lw, others))
            remove[win] |= own & (d < dist + 0.5)
    out = labels.copy()
    out[remove] = 0
    return out


def _clean_labels(
    labels: np.ndarray, cells: list[_Cell], min_fraction: float = 0.15
) -> tuple[np.ndarray, list[_Cell]]:
    """Keep the largest face-connected piece of each label, drop tiny ones, relabel 1..n."""
    ndim = labels.ndim
    min_px = 6 if ndim == 2 else 20
    objs = ndi.find_objects(labels)
    kept: list[int] = []
    for i, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        lw = labels[sl]
        own = lw == i
        comp, n = ndi.label(own)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            lw[own & (comp != int(np.argmax(sizes)))] = 0
            own = lw == i
        area = int(own.sum())
        cell = cells[i - 1]
        expected = (
            float(np.pi * cell.radius**2)
            if ndim == 2
            else 4.0 / 3.0 * np.pi * (cell.radius**3) * abs(float(np.linalg.det(cell.minv)))
        )
        if area < max(min_px, min_fraction * expected):
            lw[own] = 0
        else:
            kept.append(i)
    lut = np.zeros(len(cells) + 1, dtype=np.int32)
    lut[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    return lut[labels], [cells[i - 1] for i in kept]


def _build_labels(
    rng: np.random.Generator, shape: tuple[int, ...], p: dict[str, Any]
) -> tuple[np.ndarray, list[_Cell]]:
    cells = _place_cells(rng, shape, p)
    labels = _rasterize(cells, shape)
    pairs = _adjacent_pairs(labels, full=True)
    if len(pairs):
        ci = np.array([cells[i - 1].cluster for i in pairs[:, 0]])
        cj = np.array([cells[j - 1].cluster for j in pairs[:, 1]])
        keep_touch = (ci >= 0) & (cj >= 0) & (rng.random(len(pairs)) < p["touching"])
        sep = ~keep_touch
        gaps = rng.integers(1, 4, size=int(sep.sum()))
        labels = _carve_gaps(labels, pairs[sep], gaps, rng)
    return _clean_labels(labels, cells)


# --------------------------------------------------------------------------- emission


@dataclass
class _Emission:
    window: tuple[slice, ...]
    values: np.ndarray  # float32, zero outside the cell
    extra_blur: float  # defocus blur on top of the PSF (pixels)


def _gauss_spots(
    grids: list[np.ndarray], centers: np.ndarray, sigmas: np.ndarray, amps: np.ndarray
) -> np.ndarray:
    shape = np.broadcast_shapes(*[g.shape for g in grids])
    out = np.zeros(shape, dtype=np.float32)
    for c, s, a in zip(centers, sigmas, amps, strict=True):
        d2 = sum((g - v) ** 2 for g, v in zip(grids, c, strict=True))
        out += (a * np.exp(-d2 / (2.0 * s * s))).astype(np.float32)
    return out


def _render_cells(
    rng: np.random.Generator,
    labels: np.ndarray,
    cells: list[_Cell],
    p: dict[str, Any],
    scale: np.ndarray,
) -> list[_Emission]:
    """Per-cell emitted intensity (before optics), on cropped windows."""
    shape = labels.shape
    lo, hi = p["radius"]
    r_mean = 0.5 * (lo + hi)
    coarse_sigma = np.maximum(0.22 * r_mean / scale, 0.8)
    coarse = _smooth_field(rng, shape, coarse_sigma) if cells else None
    fine = _smooth_field(rng, shape, 0.7) if cells else None
    pad = math.ceil(2.0 * p["edge_softness"] * hi) + 2
    lab_pad = np.pad(labels, pad, mode="edge")
    objs = ndi.find_objects(labels)
    out: list[_Emission] = []
    iv = p["intensity_variation"]
    for idx, (cell, sl) in enumerate(zip(cells, objs, strict=True), start=1):
        r = cell.radius
        # --- brightness: staining variability, DNA content, dim and mitotic cells
        b = float(np.exp(rng.normal(0.0, iv)))
        phase = rng.random()
        b *= 1.0 if phase < 0.6 else (rng.uniform(1.0, 1.25) if phase < 0.85 else 1.25)
        if rng.random() < min(0.35, 0.3 * iv):
            b *= rng.uniform(0.3, 0.6)
        if cell.mitotic:
            b *= rng.uniform(1.8, 3.0)
        b = float(np.clip(b, 0.2, 6.0))
        # --- thickness profile from the distance to the cell's own border
        win_p = tuple(slice(s.start, s.stop + 2 * pad) for s in sl)
        own_p = lab_pad[win_p] == idx
        dist = ndi.distance_transform_edt(own_p, sampling=scale)
        inner = tuple(slice(pad, -pad) for _ in sl)
        dist = dist[inner] - 0.5
        own = labels[sl] == idx
        width = max(p["edge_softness"] * r * rng.uniform(0.6, 1.4), 0.3)
        t = np.clip(dist / width, 0.0, 1.0)
        thick = np.sqrt(1.0 - (1.0 - t) ** 2)
        # --- chromatin texture
        tex_amp = p["texture"] * rng.uniform(0.5, 1.5) * (1.4 if cell.mitotic else 1.0)
        wc = rng.uniform(0.3, 0.8)
        tex = 1.0 + tex_amp * (wc * coarse[sl] + (1.0 - wc) * 0.7 * fine[sl])
        tex = np.maximum(tex, 0.15)
        grids = [g * sc for g, sc in zip(_open_grid(sl), scale, strict=True)]
        inside = np.argwhere(own) + np.array([s.start for s in sl])
        # heterochromatin foci / condensed chromosomes: bright small spots
        rate = p["spots"] * (r / 6.0) ** 2 * (3.0 if cell.mitotic else 1.0)
        n_spots = int(rng.poisson(rate)) if len(inside) else 0
        if n_spots:
            pos = inside[rng.integers(len(inside), size=n_spots)] * scale
            sig = rng.uniform(0.6, 1.0, n_spots) + 0.06 * r
            amp = rng.uniform(0.2, 0.7, n_spots) * (1.5 if cell.mitotic else 1.0)
            tex = tex * (1.0 + _gauss_spots(grids, pos, sig, amp))
        # nucleoli: DNA-poor, appear as dark holes inside interphase nuclei
        deep = np.argwhere(own & (dist > 0.35 * r)) + np.array([s.start for s in sl])
        n_nuc = (
            0 if cell.mitotic or r < 4 or not len(deep) else int(rng.poisson(1.5 * p["nucleoli"]))
        )
        if n_nuc:
            pos = deep[rng.integers(len(deep), size=n_nuc)] * scale
            sig = rng.uniform(0.08, 0.16, n_nuc) * r
            amp = rng.uniform(0.2, 0.5, n_nuc)
            tex = tex * np.clip(1.0 - _gauss_spots(grids, pos, sig, amp), 0.2, 1.0)
        # peripheral heterochromatin: slightly brighter rim under the envelope
        rim = rng.uniform(0.0, 0.2) * (0.0 if cell.mitotic else 1.0)
        profile = thick * (1.0 + rim * np.exp(-np.maximum(dist, 0.0) / 1.5))
        values = np.where(own, b * profile * tex, 0.0).astype(np.float32)
        extra = 0.0
        if rng.random() < p["out_of_focus"]:
            extra = float(rng.uniform(1.0, min(3.5, 0.5 * r + 1.0)))
        out.append(_Emission(sl, values, extra))
    return out


def _ghosts(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    n_cells: int,
    p: dict[str, Any],
    scale: np.ndarray,
) -> list[_Emission]:
    """Unlabelled, far out-of-focus nuclei from other planes (dim, very blurred)."""
    lo, hi = p["radius"]
    n = int(rng.poisson(p["ghosts"] * max(n_cells, 1)))
    out = []
    for _ in range(n):
        r = rng.uniform(lo, hi)
        c = rng.uniform(0, 1, len(shape)) * (np.asarray(shape) - 1)
        half = r / scale
        win = _window(c, half, shape)
        grids = [g * sc for g, sc in zip(_open_grid(win, c), scale, strict=True)]
        disk = (sum(g**2 for g in grids) < r * r).astype(np.float32)
        extra = float(rng.uniform(max(2.0, 0.4 * r), max(4.0, 1.0 * r)))
        out.append(_Emission(win, disk * rng.uniform(0.05, 0.2), extra))
    return out


# --------------------------------------------------------------------------- optics


def _psf_sigma(blur: float, ndim: int, p: dict[str, Any]) -> tuple[float, ...]:
    """Gaussian PSF sigma per axis; axial extent ~3x lateral, in z-steps."""
    if ndim == 2:
        return (blur, blur)
    return (3.0 * blur / p["z_anisotropy"], blur, blur)


def _add_blurred(acc: np.ndarray, em: _Emission, sigma: Sequence[float]) -> None:
    """Add ``em`` blurred by ``sigma`` (per axis) into ``acc``, on a padded window."""
    shape = acc.shape
    pad = [math.ceil(3.5 * s) for s in sigma]
    win = tuple(
        slice(max(s.start - q, 0), min(s.stop + q, n))
        for s, q, n in zip(em.window, pad, shape, strict=True)
    )
    buf = np.zeros(tuple(s.stop - s.start for s in win), dtype=np.float32)
    inner = tuple(
        slice(s.start - w.start, s.stop - w.start) for s, w in zip(em.window, win, strict=True)
    )
    buf[inner] = em.values
    if max(sigma) > 0:
        buf = ndi.gaussian_filter(buf, sigma, mode="constant", truncate=3.5)
    acc[win] += buf


def _illumination(rng: np.random.Generator, shape: tuple[int, ...], strength: float) -> np.ndarray:
    """Multiplicative excitation profile in (1 - strength, 1]: vignetting plus a ramp."""
    ny, nx = shape[-2:]
    yy, xx = np.meshgrid(
        np.linspace(-0.5, 0.5, ny, dtype=np.float32),
        np.linspace(-0.5, 0.5, nx, dtype=np.float32),
        indexing="ij",
    )
    cy, cx = rng.normal(0.0, 0.2, 2)
    vig = (yy - cy) ** 2 + (xx - cx) ** 2
    ang = rng.uniform(0, 2 * math.pi)
    ramp = yy * math.cos(ang) + xx * math.sin(ang)
    w = rng.uniform(0.0, 1.0)
    f = w * (vig - vig.min()) / max(np.ptp(vig), 1e-6) + (1.0 - w) * (ramp - ramp.min()) / max(
        np.ptp(ramp), 1e-6
    )
    illum = (1.0 - strength * f).astype(np.float32)
    if len(shape) == 3:
        illum = np.broadcast_to(illum, shape)
    return illum


@dataclass
class _Scene:
    labels: np.ndarray
    emissions: list[_Emission]
    ghosts: list[_Emission]
    background: np.ndarray  # autofluorescence + haze, before illumination
    illumination: np.ndarray
    psf: tuple[float, ...]
    scale: np.ndarray  # physical size of a pixel along each axis (z: z_anisotropy)


def _build_scene(rng: np.random.Generator, shape: tuple[int, ...], p: dict[str, Any]) -> _Scene:
    ndim = len(shape)
    scale = np.ones(ndim)
    if ndim == 3:
        scale[0] = p["z_anisotropy"]
    labels, cells = _build_labels(rng, shape, p)
    emissions = _render_cells(rng, labels, cells, p, scale)
    ghosts = _ghosts(rng, shape, len(cells), p, scale)
    psf = _psf_sigma(p["blur_sigma"], ndim, p)
    # background: autofluorescence / unbound dye, smooth and uneven
    hi = p["radius"][1]
    bg_sigma = max(shape[-2:]) / 6.0
    bg = p["background"] * np.clip(1.0 + 0.35 * _smooth_field(rng, shape, bg_sigma), 0.2, None)
    # haze: out-of-focus light of the nuclei themselves, a broad blur of their emission
    if p["haze"] > 0 and emissions:
        sharp = np.zeros(shape, dtype=np.float32)
        for em in emissions:
            sharp[em.window] += em.values
        factor = max(1, int(hi // 2))
        small = sharp[tuple(slice(None, None, factor) for _ in shape)]
        hz = ndi.gaussian_filter(small, 2.5 * hi / factor / scale, mode="reflect")
        zoom = [n / s for n, s in zip(shape, hz.shape, strict=True)]
        hz = ndi.zoom(hz, zoom, order=1, mode="nearest", grid_mode=True)[
            tuple(slice(0, n) for n in shape)
        ]
        bg = bg + p["haze"] * 2.0 * hz
    illum = _illumination(rng, shape, p["illumination_gradient"])
    return _Scene(labels, emissions, ghosts, bg.astype(np.float32), illum, psf, scale)


def _expected_signal(scene: _Scene, extra: Sequence[float] | None = None) -> np.ndarray:
    """Noise-free detected signal (relative units, a typical nucleus ~1).

    ``extra[k]`` overrides the defocus blur of cell ``k`` (pixels, added in
    quadrature to the PSF); ``None`` uses each cell's own (0 for in-focus cells).
    """
    shape = scene.labels.shape
    infocus = np.zeros(shape, dtype=np.float32)
    blurred = np.zeros(shape, dtype=np.float32)
    for k, em in enumerate(scene.emissions):
        e = em.extra_blur if extra is None else float(extra[k])
        if e <= 1e-3:
            infocus[em.window] += em.values
        else:
            sig = [
                math.sqrt(s * s + (e / c) ** 2)
                for s, c in zip(scene.psf, scene.scale, strict=True)
            ]
            _add_blurred(blurred, em, sig)
    for em in scene.ghosts:
        sig = [
            math.sqrt(s * s + (em.extra_blur / c) ** 2)
            for s, c in zip(scene.psf, scene.scale, strict=True)
        ]
        _add_blurred(blurred, em, sig)
    if max(scene.psf) > 0:
        infocus = ndi.gaussian_filter(infocus, scene.psf, mode="reflect", truncate=3.5)
    return (infocus + blurred + scene.background) * scene.illumination


# --------------------------------------------------------------------------- detection


def _camera(signal: np.ndarray, labels: np.ndarray, p: dict[str, Any]) -> dict[str, float]:
    """Gain and offset so the bright nuclei sit at ``fill`` of the full scale."""
    full = 1.0 if p["bit_depth"] is None else float(2 ** p["bit_depth"] - 1)
    fg = signal[labels > 0]
    # without nuclei, expose as if a typical nucleus (emission 1) were there
    ref = float(np.percentile(fg, 99.0)) if fg.size else 1.0
    ref = max(ref, 1e-6)
    offset_adu = p["offset"] * full
    photons = p["photons"] if math.isfinite(p["photons"]) else 1.0
    gain = (p["fill"] * full - offset_adu) / (photons * ref)
    return {"full_scale": full, "gain": gain, "offset_adu": offset_adu}


def _expected_adu(signal: np.ndarray, cam: dict[str, float], p: dict[str, Any]) -> np.ndarray:
    photons = p["photons"] if math.isfinite(p["photons"]) else 1.0
    return cam["offset_adu"] + cam["gain"] * photons * signal


def _acquire(
    rng: np.random.Generator, signal: np.ndarray, cam: dict[str, float], p: dict[str, Any]
) -> np.ndarray:
    """Poisson shot noise + Gaussian read noise + gain/offset + quantisation."""
    photons = p["photons"]
    lam = np.maximum(signal, 0.0).astype(np.float64) * (photons if math.isfinite(photons) else 1.0)
    electrons = rng.poisson(lam).astype(np.float64) if math.isfinite(photons) else lam
    if p["read_noise"] > 0:
        electrons = electrons + rng.normal(0.0, p["read_noise"], signal.shape)
    adu = cam["offset_adu"] + cam["gain"] * electrons
    return _digitise(adu, cam, p)


def _digitise(adu: np.ndarray, cam: dict[str, float], p: dict[str, Any]) -> np.ndarray:
    full = cam["full_scale"]
    if p["bit_depth"] is None:
        return np.clip(adu, 0.0, full).astype(np.float32)
    dtype = np.uint8 if p["bit_depth"] == 8 else np.uint16
    return np.clip(np.round(adu), 0, full).astype(dtype)


# --------------------------------------------------------------------------- public API


def simulate_cells(
    shape: Sequence[int] = (256, 256),
    n_cells: int | None = None,
    density: float = _DEFAULTS["density"],
    radius: float | tuple[float, float] = _DEFAULTS["radius"],
    irregularity: float = _DEFAULTS["irregularity"],
    cluster_fraction: float = _DEFAULTS["cluster_fraction"],
    touching: float = _DEFAULTS["touching"],
    intensity_variation: float = _DEFAULTS["intensity_variation"],
    texture: float = _DEFAULTS["texture"],
    background: float = _DEFAULTS["background"],
    illumination_gradient: float = _DEFAULTS["illumination_gradient"],
    blur_sigma: float = _DEFAULTS["blur_sigma"],
    photons: float = _DEFAULTS["photons"],
    read_noise: float = _DEFAULTS["read_noise"],
    bit_depth: int | None = _DEFAULTS["bit_depth"],
    seed: int | np.random.Generator | None = 0,
    **more: Any,
) -> SimulatedScene:
    """Simulate a fluorescence image of stained nuclei with instance ground truth.

    The image formation model (see the module docstring and ``docs/simulator.md``)
    is: star-convex nuclei placed alone or in clumps -> per-nucleus emission
    (brightness, rounded thickness profile, chromatin texture, foci, nucleoli)
    -> Gaussian PSF blur (plus defocus for some nuclei) + background
    autofluorescence + haze -> uneven illumination -> Poisson photon noise,
    Gaussian read noise, gain and offset -> quantisation.

    Parameters
    ----------
    shape : (Y, X) or (Z, Y, X)
        Image size in pixels (each >= 8). Three sizes give a 3D volume of
        ellipsoidal nuclei (z steps ``z_anisotropy`` times the pixel size).
    n_cells : int, optional
        Number of nuclei to place; overrides ``density``. Fewer may fit.
    density : float in (0, 1]
        Target fraction of the image covered by nuclei (0.05 sparse, 0.5 crowded).
    radius : float or (min, max)
        Mean nucleus radius in pixels: a (min, max) range drawn uniformly per
        nucleus, or one value spread by ``radius_spread`` (relative, default 0.2).
    irregularity : float in [0, 1]
        Amplitude of the smooth radial harmonics deforming each outline (0 = ellipses).
    cluster_fraction : float in [0, 1]
        Fraction of nuclei placed in clumps (mean clump size ``cluster_size``,
        default 4). Lone nuclei never touch anything.
    touching : float in [0, 1]
        Probability that two contacting clumped nuclei stay pressed together
        (shared border); otherwise a 1-3 px background gap is opened between them.
    intensity_variation : float >= 0
        Log-normal sigma of per-nucleus brightness; also sets the share of dim nuclei.
    texture : float >= 0
        Relative amplitude of the chromatin texture inside nuclei.
    background : float >= 0
        Mean background autofluorescence, relative to a typical nucleus (1).
    illumination_gradient : float in [0, 1)
        Strength of uneven illumination: the excitation falls to ``1 - value``
        at the dimmest corner (vignetting and a linear ramp).
    blur_sigma : float >= 0
        Sigma of the Gaussian PSF approximation, pixels.
    photons : float > 0
        Expected detected photons per pixel of a typical in-focus nucleus
        (``np.inf`` disables shot noise). Sets the signal-to-noise ratio.
    read_noise : float >= 0
        Camera read noise, standard deviation in photo-electrons.
    bit_depth : 8, 16 or None
        ``uint8``, ``uint16`` or ``float32`` (in [0, 1]) output.
    seed : int, Generator or None
        Seed of the :class:`numpy.random.Generator` (same seed, same scene).
    **more
        Further parameters with their defaults: ``radius_spread=0.2``,
        ``elongation=0.25`` (sd of aspect ratio - 1), ``cluster_size=4``,
        ``nucleoli=1.0`` (rate of dark nucleoli), ``spots=0.5`` (rate of bright foci),
        ``edge_softness=0.25`` (width of the rounded edge, fraction of the radius),
        ``mitotic_fraction=0.02`` (bright compact nuclei), ``out_of_focus=0.05``
        (fraction of defocused nuclei, extra blur 1-3.5 px), ``haze=0.05``,
        ``ghosts=0.1`` (unlabelled far-out-of-focus nuclei per nucleus),
        ``fill=0.8`` (bright nuclei at this fraction of the full scale; > 1
        saturates), ``offset=0.01`` (camera offset, fraction of full scale),
        ``z_anisotropy=2.0`` (3D only: z step / pixel size).

    Returns
    -------
    SimulatedScene
        ``image``, ``labels`` (int32, 1..n), ``clean`` (float32 in [0, 1]) and ``params``.

    Raises
    ------
    ValueError
        A parameter outside its range (negative radius, density outside (0, 1],
        bit depth other than 8/16/None, shape not 2 or 3 sizes >= 8, ...).
    """
    shape_t = _check_shape(shape)
    p = _resolve_params(
        {
            "n_cells": n_cells,
            "density": density,
            "radius": radius,
            "irregularity": irregularity,
            "cluster_fraction": cluster_fraction,
            "touching": touching,
            "intensity_variation": intensity_variation,
            "texture": texture,
            "background": background,
            "illumination_gradient": illumination_gradient,
            "blur_sigma": blur_sigma,
            "photons": photons,
            "read_noise": read_noise,
            "bit_depth": bit_depth,
            **more,
        }
    )
    rng = np.random.default_rng(seed)
    scene = _build_scene(rng, shape_t, p)
    in_focus = _expected_signal(scene, [0.0] * len(scene.emissions))
    defocused = any(em.extra_blur > 0 for em in scene.emissions)
    signal = _expected_signal(scene) if defocused else in_focus
    cam = _camera(in_focus, scene.labels, p)
    image = _acquire(rng, signal, cam, p)
    clean = np.clip(_expected_adu(in_focus, cam, p) / cam["full_scale"], 0.0, 1.0)
    params = {**p, **cam, "shape": shape_t, "ndim": len(shape_t), "seed": _seed_repr(seed)}
    params["n_cells_placed"] = int(scene.labels.max())
    params["n_cells_requested"] = p["n_cells"]
    params["n_cells"] = int(scene.labels.max())
    return SimulatedScene(
        image=image, labels=scene.labels, clean=clean.astype(np.float32), params=params
    )


def simulate_focus_stack(
    shape: Sequence[int] = (256, 256),
    n_slices: int = 5,
    depth_range: tuple[float, float] | None = None,
    defocus_per_slice: float = 1.5,
    seed: int | np.random.Generator | None = 0,
    **cell_params: Any,
) -> SimulatedScene:
    """Simulate a 2D focus stack: one scene, each nucleus at its own depth.

    Slice ``z`` shows nucleus ``k`` blurred by a Gaussian of sigma
    ``sqrt(blur_sigma**2 + (defocus_per_slice * |depth_k - z|)**2)`` (geometric
    defocus grows linearly with the distance from the focal plane; blur keeps the
    integrated intensity), on the same background and illumination, with fresh
    shot and read noise per slice. The exposure (gain) is shared by all slices.
    Intrinsically 2D (the stack axis is the focus axis).

    Parameters
    ----------
    shape : (Y, X)
        Size of each slice.
    n_slices : int >= 1
        Number of focal planes.
    depth_range : (min, max), optional
        Range of the per-nucleus in-focus depth, in slice units, drawn uniformly;
        default ``(0, n_slices - 1)``.
    defocus_per_slice : float >= 0
        Growth of the blur sigma per slice of defocus, pixels.
    seed : int, Generator or None
        Seed (same seed, same stack).
    **cell_params
        Any parameter of :func:`simulate_cells` except ``out_of_focus`` (depth
        replaces it).

    Returns
    -------
    SimulatedScene
        ``stack`` (Z, Y, X) noisy slices; ``all_in_focus`` (Y, X) noiseless with
        every nucleus in focus, same dtype/scale as ``stack``; ``depth`` (Y, X)
        float32 in-focus slice index of each nucleus pixel, ``-1`` on background;
        ``image`` one noisy acquisition of the all-in-focus scene; ``labels``;
        ``clean`` = ``all_in_focus`` / full scale (float32 in [0, 1]).
    """
    shape_t = _check_shape(shape, allowed_ndim=(2,))
    if isinstance(n_slices, bool) or not float(n_slices).is_integer() or n_slices < 1:
        raise ValueError(f"n_slices: expected a whole number >= 1, got {n_slices!r}.")
    n_slices = int(n_slices)
    if "out_of_focus" in cell_params:
        raise ValueError("out_of_focus: not used by focus stacks (each nucleus has a depth).")
    if depth_range is None:
        depth_range = (0.0, float(n_slices - 1))
    if np.ndim(depth_range) != 1 or len(depth_range) != 2:
        raise ValueError(f"depth_range: expected (min, max), got {depth_range!r}.")
    d_lo, d_hi = (float(v) for v in depth_range)
    if not (np.isfinite(d_lo) and np.isfinite(d_hi)) or d_hi < d_lo:
        raise ValueError(f"depth_range: expected finite min <= max, got {depth_range!r}.")
    dps = _check_range("defocus_per_slice", defocus_per_slice, 0.0, 100.0)
    p = _resolve_params({**cell_params, "out_of_focus": 0.0})
    rng = np.random.default_rng(seed)
    scene = _build_scene(rng, shape_t, p)
    n = len(scene.emissions)
    depths = rng.uniform(d_lo, d_hi, n)
    aif_signal = _expected_signal(scene, [0.0] * n)
    cam = _camera(aif_signal, scene.labels, p)
    slices = []
    for z in range(n_slices):
        signal = _expected_signal(scene, dps * np.abs(depths - z))
        slices.append(_acquire(rng, signal, cam, p))
    stack = np.stack(slices)
    aif_adu = _expected_adu(aif_signal, cam, p)
    all_in_focus = _digitise(aif_adu, cam, p)
    image = _acquire(rng, aif_signal, cam, p)
    clean = np.clip(aif_adu / cam["full_scale"], 0.0, 1.0).astype(np.float32)
    lut = np.concatenate([[-1.0], depths]).astype(np.float32)
    depth = lut[scene.labels]
    params = {
        **p,
        **cam,
        "shape": shape_t,
        "ndim": 2,
        "seed": _seed_repr(seed),
        "n_slices": n_slices,
        "depth_range": (d_lo, d_hi),
        "defocus_per_slice": dps,
        "n_cells": n,
        "cell_depths": depths.astype(np.float32),
    }
    return SimulatedScene(
        image=image,
        labels=scene.labels,
        clean=clean,
        params=params,
        stack=stack,
        all_in_focus=all_in_focus,
        depth=depth,
    )


def _seed_repr(seed: Any) -> Any:
    return seed if seed is None or isinstance(seed, int | np.integer) else "generator"


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(math.log(lo), math.log(hi))))


def random_scene_params(rng: np.random.Generator | int | None = None) -> dict[str, Any]:
    """Draw a varied, physically plausible parameter set for training-data generation.

    Covers sparse to crowded fields (density 0.03-0.6), nucleus radius ~4-25 px,
    isolated to strongly clumped nuclei, low to high SNR (8-5000 photons per
    pixel, read noise 0.5-8 e-), sharp to soft optics (PSF sigma 0.5-2.5 px),
    flat to strongly uneven background and illumination, 8- and 16-bit cameras
    with low to saturating exposure. The dict can be passed to
    :func:`simulate_cells` (``simulate_cells(shape, seed=s, **params)``).

    Parameters
    ----------
    rng : Generator, int or None
        Source of randomness (an int is used as a seed).

    Returns
    -------
    dict
        Keyword arguments of :func:`simulate_cells` (no ``shape`` or ``seed``).
    """
    rng = np.random.default_rng(rng)
    r = _loguniform(rng, 4.0, 25.0)
    spread = rng.uniform(0.08, 0.35)
    # a quarter sparse fields, the rest moderate to confluent
    density = _loguniform(rng, 0.03, 0.1) if rng.random() < 0.25 else rng.uniform(0.1, 0.6)
    # crowded fields are clumped (lone nuclei cannot pack densely)
    cluster_fraction = float(np.clip(rng.uniform(-0.2, 1.0) + 1.2 * density, 0.0, 1.0))
    bit_depth = 8 if rng.random() < 0.6 else 16
    fill = _loguniform(rng, 0.1, 1.15) if bit_depth == 8 else _loguniform(rng, 0.02, 0.9)
    return {
        "radius": (r * (1.0 - spread), r * (1.0 + spread)),
        "density": density,
        "irregularity": rng.uniform(0.0, 0.2),
        "elongation": rng.uniform(0.05, 0.45),
        "cluster_fraction": cluster_fraction,
        "cluster_size": rng.uniform(2.0, 10.0),
        "touching": rng.uniform(0.3, 1.0),
        "intensity_variation": rng.uniform(0.1, 0.6),
        "texture": rng.uniform(0.0, 0.6),
        "nucleoli": rng.uniform(0.0, 1.0),
        "spots": rng.uniform(0.0, 1.0),
        "edge_softness": rng.uniform(0.05, 0.5),
        "mitotic_fraction": rng.uniform(0.0, 0.06),
        "out_of_focus": rng.uniform(0.0, 0.25),
        "background": _loguniform(rng, 0.005, 0.4),
        "haze": rng.uniform(0.0, 0.15),
        "ghosts": rng.uniform(0.0, 0.3),
        "illumination_gradient": rng.uniform(0.0, 0.6),
        "blur_sigma": rng.uniform(0.5, 2.5),
        "photons": _loguniform(rng, 8.0, 5000.0),
        "read_noise": rng.uniform(0.5, 8.0),
        "fill": fill,
        "offset": rng.uniform(0.0, 0.05) * min(fill, 1.0),
        "bit_depth": bit_depth,
    }


def simulate_dataset(
    n: int,
    seed: int | None = 0,
    shape: Sequence[int] = (256, 256),
    vary: bool = True,
    **kwargs: Any,
) -> list[SimulatedScene]:
    """Simulate ``n`` scenes, reproducibly from one seed.

    Parameters
    ----------
    n : int >= 0
        Number of scenes.
    seed : int or None
        Master seed; scene ``k`` uses an independent child seed.
    shape : (Y, X) or (Z, Y, X)
        Size of every scene.
    vary : bool
        Draw each scene's parameters with :func:`random_scene_params`
        (``kwargs`` then override them); otherwise every scene uses ``kwargs``.
    **kwargs
        Parameters of :func:`simulate_cells`.

    Returns
    -------
    list of SimulatedScene
    """
    if isinstance(n, bool) or not float(n).is_integer() or n < 0:
        raise ValueError(f"n: expected a whole number >= 0, got {n!r}.")
    children = np.random.SeedSequence(seed).spawn(int(n))
    out = []
    for child in children:
        rng = np.random.default_rng(child)
        params = {**random_scene_params(rng), **kwargs} if vary else dict(kwargs)
        out.append(simulate_cells(shape, seed=rng, **params))
    return out
