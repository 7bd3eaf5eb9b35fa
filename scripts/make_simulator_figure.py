"""Draw the simulator figures of docs/simulator.md.

Writes (relative to the repository root):

- ``docs/images/simulator_vs_real.png``: simulated images at several settings
  (sparse, crowded, crowded with ground-truth outlines, low SNR, 16-bit, a
  focus-stack slice and its all-in-focus image) beside ``skimage.data.cell()``,
  a real image shown for visual comparison only (it was not used for tuning);
- ``docs/images/simulator_crowded.png``: one crowded scene alone;
- ``docs/images/simulator_variety.png``: scenes drawn with ``random_scene_params``
  (what the default model is trained on);
- ``docs/images/simulator_focus_stack.png``: the slices of a focus stack, its
  all-in-focus image and depth map.

Usage: ``python scripts/make_simulator_figure.py [--out docs/images]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from skimage import data
from skimage.segmentation import find_boundaries

from napari_cellfocus.core.simulate import (
    random_scene_params,
    simulate_cells,
    simulate_focus_stack,
)

ROOT = Path(__file__).resolve().parents[1]


def _stretch(img: np.ndarray, lo: float = 0.3, hi: float = 99.8) -> np.ndarray:
    """Percentile contrast stretch to [0, 1], as an image viewer's auto-contrast."""
    img = np.asarray(img, dtype=np.float32)
    a, b = np.percentile(img, [lo, hi])
    return np.clip((img - a) / max(b - a, 1e-6), 0.0, 1.0)


def _show(ax, img, title, outlines=None):
    rgb = np.repeat(_stretch(img)[..., None], 3, axis=-1)
    if outlines is not None:
        edge = find_boundaries(outlines, mode="inner")
        rgb[edge] = (1.0, 0.85, 0.0)
    ax.imshow(rgb, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def make_comparison(out: Path) -> None:
    shape = (256, 256)
    sparse = simulate_cells(shape, density=0.07, cluster_fraction=0.2, seed=1)
    crowded = simulate_cells(
        shape, density=0.55, cluster_fraction=1.0, cluster_size=8, radius=(7, 11), seed=2
    )
    low = simulate_cells(shape, density=0.25, photons=12, read_noise=4, blur_sigma=1.3, seed=3)
    deep = simulate_cells(
        shape,
        radius=(16, 24),
        density=0.4,
        texture=0.4,
        bit_depth=16,
        fill=0.06,
        background=0.12,
        illumination_gradient=0.4,
        seed=4,
    )
    stack = simulate_focus_stack(
        shape, n_slices=5, defocus_per_slice=1.5, radius=(8, 13), density=0.3, seed=5
    )
    fig, axes = plt.subplots(2, 4, figsize=(16, 8.6))
    _show(axes[0, 0], sparse.image, "sparse (density 0.07), 8-bit")
    _show(axes[0, 1], crowded.image, "crowded clumps (density 0.55)")
    crop = (slice(64, 192), slice(64, 192))
    _show(
        axes[0, 2],
        crowded.image[crop],
        "crowded, zoom, ground-truth outlines",
        outlines=crowded.labels[crop],
    )
    _show(axes[0, 3], low.image, "low SNR (12 photons/px, read noise 4 e-)")
    _show(
        axes[1, 0],
        deep.image,
        f"16-bit, large nuclei, uneven light (max {int(deep.image.max())} ADU)",
    )
    _show(axes[1, 1], stack.stack[0], "focus stack: slice 0 of 5")
    _show(axes[1, 2], stack.all_in_focus, "focus stack: all-in-focus (ground truth)")
    _show(
        axes[1, 3], data.cell(), "real: skimage.data.cell()\n(quantitative phase, comparison only)"
    )
    fig.suptitle(
        "napari-cellfocus simulator (display: 0.3-99.8 percentile stretch per panel)", fontsize=11
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out / "simulator_vs_real.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 6))
    _show(ax, crowded.image, "")
    ax.axis("off")
    fig.tight_layout(pad=0)
    fig.savefig(out / "simulator_crowded.png", dpi=100)
    plt.close(fig)


def make_variety(out: Path, n: int = 12, seed: int = 12) -> None:
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(3, 4, figsize=(16, 12.6))
    for k, ax in enumerate(axes.flat[:n]):
        p = random_scene_params(rng)
        s = simulate_cells((256, 256), seed=k, **p)
        title = (
            f"r≈{np.mean(p['radius']):.0f}px  density {p['density']:.2f}  "
            f"{p['photons']:.0f} ph/px  {p['bit_depth']}-bit"
        )
        _show(ax, s.image, title)
    fig.suptitle("random_scene_params: training scenes (percentile stretch per panel)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(out / "simulator_variety.png", dpi=60)
    plt.close(fig)


def make_focus_stack(out: Path) -> None:
    st = simulate_focus_stack(
        (192, 192), n_slices=5, defocus_per_slice=1.5, radius=(8, 13), density=0.3, seed=5
    )
    fig, axes = plt.subplots(1, 7, figsize=(21, 3.6))
    for z in range(5):
        _show(axes[z], st.stack[z], f"slice {z}")
    _show(axes[5], st.all_in_focus, "all-in-focus (noiseless)")
    depth = np.ma.masked_less(st.depth, 0)
    im = axes[6].imshow(depth, cmap="viridis", vmin=0, vmax=4, interpolation="nearest")
    axes[6].set_facecolor("black")
    axes[6].set_title("depth (in-focus slice), background -1", fontsize=9)
    axes[6].set_xticks([])
    axes[6].set_yticks([])
    fig.colorbar(im, ax=axes[6], fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "simulator_focus_stack.png", dpi=70)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    make_comparison(args.out)
    make_variety(args.out)
    make_focus_stack(args.out)
    print(f"wrote figures to {args.out}")


if __name__ == "__main__":
    main()
