"""Input intensity normalisation shared by training and prediction.

Fluorescence images come as 8-, 12- or 16-bit with arbitrary offsets and gains.
The network sees them after a percentile stretch: ``(x - p_low) / (p_high - p_low)``
with the percentiles taken over the whole image (or a given reference), so an
8-bit and a 16-bit recording of the same scene give the same input. The
parameters travel inside every model checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: Largest number of pixels used to estimate percentiles (a strided subsample beyond).
MAX_SAMPLES = 4_000_000


@dataclass(frozen=True)
class PercentileNormalization:
    """Stretch intensities so that ``low`` -> 0 and ``high`` -> 1 (percentiles, in %).

    Values outside are not clipped (bright cells above the high percentile stay > 1),
    which keeps the mapping linear as in the papers' zero-to-one scaling.
    """

    low: float = 1.0
    high: float = 99.8

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(
                f"normalisation percentiles must satisfy 0 <= low < high <= 100, "
                f"got low={self.low}, high={self.high}."
            )

    def limits(self, image: np.ndarray) -> tuple[float, float]:
        """The intensities at the low and high percentiles of ``image``."""
        flat = np.asarray(image).reshape(-1)
        if flat.size > MAX_SAMPLES:
            flat = flat[:: flat.size // MAX_SAMPLES + 1]
        lo, hi = np.percentile(flat, [self.low, self.high])
        return float(lo), float(hi)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Return ``image`` as float32 scaled to roughly [0, 1]. A flat image gives zeros."""
        arr = np.asarray(image, dtype=np.float32)
        lo, hi = self.limits(arr)
        scale = hi - lo
        if scale <= 0:
            return np.zeros_like(arr)
        return (arr - np.float32(lo)) * np.float32(1.0 / scale)

    def to_dict(self) -> dict:
        return {"kind": "percentile", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> PercentileNormalization:
        if data.get("kind", "percentile") != "percentile":
            raise ValueError(f"unknown normalisation kind {data.get('kind')!r}.")
        return cls(low=float(data["low"]), high=float(data["high"]))


@dataclass(frozen=True)
class FixedRange:
    """The stretch of a :class:`PercentileNormalization` with its limits already known:
    ``lo`` -> 0 and ``hi`` -> 1 for every part of an image.

    Used when an image is predicted in parts (blocks of a huge image): each part must see
    the whole image's percentiles, not its own (a block of background stretched to its
    own 1-99.8 % would show noise as nuclei).
    """

    lo: float
    hi: float

    @classmethod
    def of(cls, image: np.ndarray, normalization: PercentileNormalization) -> FixedRange:
        """The limits ``normalization`` takes on the whole of ``image``."""
        return cls(*normalization.limits(image))

    def limits(self, image: np.ndarray | None = None) -> tuple[float, float]:
        """``(lo, hi)`` whatever the image."""
        return float(self.lo), float(self.hi)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        arr = np.asarray(image, dtype=np.float32)
        if self.hi <= self.lo:
            return np.zeros_like(arr)
        return (arr - np.float32(self.lo)) * np.float32(1.0 / (self.hi - self.lo))
