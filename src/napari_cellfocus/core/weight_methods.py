"""The loss weight maps, declared once: function, what it is, where it comes from.

:data:`WEIGHT_METHODS` feeds :func:`napari_cellfocus.core.weights.weight_map` (and its
``WEIGHT_MAPS`` view), ``cellfocus train --weights`` (choices and help) and the docs
table of :func:`markdown_table`. Adding a weight map is one function (instance labels
``(Y, X)`` / ``(Z, Y, X)`` first, keyword ``target=`` for the class map the trainer
already built, returning a float32 map of the same shape) and one :class:`WeightMethod`
here or through :func:`register_weight_method`, plus its test.

Standard library only, like :mod:`napari_cellfocus.core.methods`: the command line's
parser is built from it without loading scipy.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "WEIGHT_METHODS",
    "WeightMethod",
    "cli_weight_methods",
    "get_weight_method",
    "register_weight_method",
    "unregister_weight_method",
]


@dataclass(frozen=True)
class WeightMethod:
    """One weight map.

    key : its name (``weight_map(key, labels)``, ``--weights key``), lower case.
    func : the function or ``"module:attr"`` naming it (imported on first use).
    summary : one sentence (``--weights`` help, docs). reference : paper section.
    input : ``"labels"`` (the function takes the instance labels) or ``"target"`` (the
        class map, built from the labels by ``weight_map``).
    cli : whether ``cellfocus train --weights`` offers it (W3 comes with ``--weak``).
    """

    key: str
    func: str | Callable[..., Any]
    summary: str = ""
    reference: str = ""
    input: str = "labels"
    cli: bool = True

    def __post_init__(self) -> None:
        if not self.key or self.key != self.key.lower():
            raise ValueError(f"WeightMethod key {self.key!r}: expected a lower-case name.")
        if self.input not in ("labels", "target"):
            raise ValueError(f"WeightMethod {self.key!r}: input must be 'labels' or 'target'.")

    @property
    def function(self) -> Callable[..., Any]:
        """The function itself (imported now when :attr:`func` names it)."""
        if callable(self.func):
            return self.func
        module, _, attr = self.func.partition(":")
        return getattr(importlib.import_module(module), attr)


_W = "napari_cellfocus.core.weights:"
_BUILT_IN = (
    WeightMethod(
        "saw",
        _W + "shape_aware_weight_map",
        "shape-aware weights: class balance plus contour weights smoothed into the gaps "
        "between cells",
        "T eq. 3.3-3.4",
    ),
    WeightMethod(
        "dwm",
        _W + "distance_weight_map",
        "distance weights: class balance fading with the distance to the nearest cell",
        "T eq. 3.2",
    ),
    WeightMethod(
        "unet",
        _W + "unet_weight_map",
        "U-Net weights: class balance plus a term for the gaps between two close cells",
        "T 4.3 (Ronneberger et al.)",
    ),
    WeightMethod(
        "balance",
        _W + "class_balance_weights",
        "class balance: each class present carries the same total weight",
        "T 3.2.2",
        input="target",
    ),
    WeightMethod(
        "w3",
        _W + "triplex_weight_map",
        "triplex weights for weak labels: the annotated cells and their surroundings only",
        "T eq. 4.3",
        cli=False,
    ),
    WeightMethod(
        "overcrowding",
        _W + "overcrowding_map",
        "overcrowding map: more weight in the background where cells crowd",
        "C 4.2",
    ),
    WeightMethod(
        "none",
        _W + "uniform_weights",
        "no weight map: every pixel counts the same",
    ),
)

_REGISTRY: dict[str, WeightMethod] = {m.key: m for m in _BUILT_IN}
#: The registered weight maps by key (read-only view; :func:`register_weight_method` adds).
WEIGHT_METHODS: Mapping[str, WeightMethod] = MappingProxyType(_REGISTRY)


def register_weight_method(method: WeightMethod, replace: bool = False) -> WeightMethod:
    """Add ``method`` to :data:`WEIGHT_METHODS` (a key taken already: ``ValueError`` unless
    ``replace``); returns it."""
    if method.key in _REGISTRY and not replace:
        raise ValueError(f"weight map {method.key!r} is registered already.")
    _REGISTRY[method.key] = method
    return method


def unregister_weight_method(key: str) -> None:
    """Remove a registered weight map."""
    _REGISTRY.pop(key, None)


def get_weight_method(name: str) -> WeightMethod:
    """The weight map registered as ``name`` (case-insensitive); ``ValueError`` naming
    the registered ones otherwise."""
    key = str(name).lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown weight map {name!r}; expected one of {sorted(_REGISTRY)}.")
    return _REGISTRY[key]


def cli_weight_methods() -> tuple[WeightMethod, ...]:
    """The weight maps ``cellfocus train --weights`` offers, in registration order."""
    return tuple(m for m in _REGISTRY.values() if m.cli)


def markdown_table() -> str:
    """The registry as a Markdown table (method, what it is, source, ``--weights``)."""
    rows = ["| weight map | what it is | source | `--weights` |", "|---|---|---|---|"]
    for m in _REGISTRY.values():
        rows.append(f"| `{m.key}` | {m.summary} | {m.reference} | {'yes' if m.cli else ''} |")
    return "\n".join(rows)
