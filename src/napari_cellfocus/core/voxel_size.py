"""The z scale of a volume (z step / pixel size) as its file's metadata gives it.

A stack's planes are usually farther apart than its pixels are wide (0.5 um pixels, 1-2 um
planes): ``--z-mode ortho`` resamples the side views by that ratio so nuclei look round in
them. Where the file records both sizes it need not be typed:

* **ImageJ TIFF**: ``spacing`` (the z step, in the file's ``unit``) in the ImageJ
  description and the ``XResolution`` tag (pixels a unit), so the ratio is
  ``spacing * XResolution``;
* **OME-TIFF**: ``PhysicalSizeZ`` / ``PhysicalSizeX`` of the first ``Pixels`` element, in
  their units (``PhysicalSizeZUnit`` / ``PhysicalSizeXUnit``, micrometres by default);
* **OME-Zarr**: the ``scale`` transformations of the first multiscale's full-resolution
  dataset (and of the multiscale itself, if any) on its ``z`` and ``x`` axes.

Anything missing, unreadable or outside :data:`Z_SCALE_RANGE` gives ``None`` (the caller
then uses 1, or what the user gave).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

#: Z scales taken from metadata (the range ``--z-scale`` accepts).
Z_SCALE_RANGE = (0.05, 50.0)

#: Length units of OME metadata, in micrometres.
_UNITS_UM = {
    "pm": 1e-6,
    "Å": 1e-4,
    "nm": 1e-3,
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
}


def _checked(ratio: float | None) -> float | None:
    if ratio is None or not math.isfinite(ratio):
        return None
    lo, hi = Z_SCALE_RANGE
    return float(ratio) if lo <= ratio <= hi else None


def _imagej_ratio(tif: Any) -> float | None:
    meta = tif.imagej_metadata or {}
    spacing = meta.get("spacing")
    tag = tif.pages[0].tags.get("XResolution")
    if spacing is None or tag is None:
        return None
    num, den = tag.value
    if not num or not den:
        return None
    pixels_per_unit = num / den
    return float(spacing) * pixels_per_unit


def _ome_tiff_ratio(xml: str) -> float | None:
    root = ET.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Z", "X"):
        value = pixels.get(f"PhysicalSize{axis}")
        unit = _UNITS_UM.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if value is None or unit is None:
            return None
        sizes.append(float(value) * unit)
    return sizes[0] / sizes[1] if sizes[1] > 0 else None


def _axis_scales(transforms: list[dict[str, Any]] | None, n: int) -> list[float]:
    scale = [1.0] * n
    for t in transforms or []:
        if t.get("type") == "scale" and len(t.get("scale", ())) == n:
            scale = [a * float(b) for a, b in zip(scale, t["scale"], strict=True)]
    return scale


def _omezarr_ratio(path: Path) -> float | None:
    import zarr

    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    attrs = attrs.get("ome", attrs)  # OME-Zarr 0.5 nests its keys under "ome"
    multiscale = (attrs.get("multiscales") or [None])[0]
    if not multiscale:
        return None
    axes = multiscale["axes"]
    names = [(a["name"] if isinstance(a, dict) else str(a)).lower() for a in axes]
    if "z" not in names or "x" not in names:
        return None
    n = len(names)
    scale = _axis_scales(multiscale["datasets"][0].get("coordinateTransformations"), n)
    outer = _axis_scales(multiscale.get("coordinateTransformations"), n)
    z, x = names.index("z"), names.index("x")
    dz, dx = scale[z] * outer[z], scale[x] * outer[x]
    return dz / dx if dx > 0 else None


def z_scale_from_metadata(path: str | Path) -> float | None:
    """Z step / pixel size of the volume in ``path`` (TIFF or OME-Zarr), or ``None``."""
    from napari_cellfocus.core.omezarr import is_zarr

    path = Path(path)
    try:
        if is_zarr(path):
            return _checked(_omezarr_ratio(path))
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                return _checked(_ome_tiff_ratio(tif.ome_metadata))
            if tif.is_imagej:
                return _checked(_imagej_ratio(tif))
    except Exception:  # unreadable metadata is no metadata: the pixels say what is wrong
        return None
    return None
