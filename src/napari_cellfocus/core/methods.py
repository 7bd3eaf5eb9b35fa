"""The post-processing methods, declared once: function, label, parameters, search grid.

Everything that offers a post-processing method is generated from :data:`POST_METHODS`:
the dispatcher :func:`napari_cellfocus.core.postprocess.postprocess` and its threshold
search (:func:`~napari_cellfocus.core.postprocess.default_grid`), the Tune widget's
method box and sliders, the Segment widget's "Labels by" line, ``cellfocus predict
--method`` and its ``--param NAME=VALUE`` help, the candidates
:func:`napari_cellfocus.engine.validation.choose_defaults` tries, and the table in
docs/methods.md (:func:`markdown_table`, kept in sync by a test).

Adding a method is one function (class probabilities ``(C, [Z,] Y, X)`` -> ``(int32
labels, count)``) and one :class:`PostMethod` entry here (or
:func:`register_post_method` from anywhere), plus its test::

    register_post_method(PostMethod(
        key="toy", label="TOY: cell map above a level", func="my_module:toy_labels",
        summary="Cells where P(cell) >= level.",
        params=(Param("level", 0.5, help="P(cell) a pixel needs to be cell."), MIN_SIZE),
        grid={"level": (0.3, 0.5, 0.7)},
    ))

This module imports nothing but the standard library: the command line builds its
parser from it without loading scipy. A method's function is named ``"module:attr"``
(imported on first use, like a napari manifest's ``python_name``) or given directly.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "DEFAULT_GAMMA1",
    "DEFAULT_GAMMA2",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_TAU0",
    "DEFAULT_TAU1",
    "DOCS_MARKER",
    "MIN_SIZE",
    "POST_METHODS",
    "Param",
    "PostMethod",
    "app_methods",
    "candidate_settings",
    "default_post_params",
    "get_post_method",
    "markdown_table",
    "register_post_method",
    "replace_docs_section",
    "unregister_post_method",
]

#: TH cell threshold (T Table 5: LSMAX, BWM, UNET).
DEFAULT_GAMMA1 = 0.5
#: TH touching threshold (T Table 5: LSMAX, BWM, UNET, COMB).
DEFAULT_GAMMA2 = 0.1
#: WT background-marker threshold (T Table 5, W3).
DEFAULT_TAU0 = 0.4
#: WT cell-marker threshold (T Table 5, W3).
DEFAULT_TAU1 = 0.9
#: Objects with fewer pixels (voxels) than this are removed (not given in the thesis).
DEFAULT_MIN_SIZE = 16

#: Every class count a probability map may have (background / cell / touching / gap).
ALL_CLASSES = (2, 3, 4)
#: Class counts that hold a touching class (its thresholds are inert with 2 classes).
TOUCHING_CLASSES = (3, 4)


@dataclass(frozen=True)
class Param:
    """One parameter of a post-processing method.

    name : the function's keyword. default : its default (bool, int, float or None).
    low, high, step : the range a widget offers (``None``: unbounded) and its step.
    help : one sentence for tooltips, the command line and the docs.
    label : the widget's row label (default: the name); symbol : the short name in
        summaries and plots, e.g. ``"γ1"`` (default: the name); unit : e.g. ``" px"``.
    classes : the class counts it has an effect on (the Tune widget greys it out and the
        threshold search scores it once on maps with other counts).
    tune : whether the Tune widget shows it (a flag such as ``fill_holes`` is left to
        scripts and ``--param``).
    kind : ``"bool"``, ``"int"`` or ``"float"``; from the default's type when omitted
        (a ``None`` default reads as float).
    """

    name: str
    default: Any
    low: float | None = 0.0
    high: float | None = 1.0
    step: float = 0.01
    help: str = ""
    label: str = ""
    symbol: str = ""
    unit: str = ""
    classes: tuple[int, ...] = ALL_CLASSES
    tune: bool = True
    kind: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            if isinstance(self.default, bool):
                kind = "bool"
            elif isinstance(self.default, int):
                kind = "int"
            else:
                kind = "float"
            object.__setattr__(self, "kind", kind)
        if self.kind not in ("bool", "int", "float"):
            raise ValueError(f"Param {self.name}: kind must be bool, int or float.")
        object.__setattr__(self, "label", self.label or self.name)
        object.__setattr__(self, "symbol", self.symbol or self.name)


@dataclass(frozen=True)
class PostMethod:
    """One post-processing method.

    key : its name everywhere (``postprocess(method=key)``, ``--method key``), lower case.
    label : the Tune widget's method box entry, e.g. ``"TH: thresholds γ1, γ2"``.
    func : the function, or ``"module:attr"`` naming it (imported on first use). It takes
        the probabilities as its first argument and the :attr:`params` as keywords.
    params : the keywords it takes, in its signature's order.
    summary : one sentence saying what it does (tooltip, docs).
    grid : search grid of the thresholds :func:`core.postprocess.search_thresholds` (and
        Tune's "Optimise thresholds") may tune, ``{name: values}``; empty: none.
    candidates : the coarse grid :func:`engine.validation.choose_defaults` tries when it
        picks a model's defaults, ``{name: values}`` (``{}``: the defaults only); ``None``:
        not a candidate.
    reference : where it comes from (paper section), for the docs.
    apps : whether the widgets and ``cellfocus predict`` offer it (a method that needs
        more than class probabilities, such as a foreground map, stays in scripts).
    """

    key: str
    label: str
    func: str | Callable[..., tuple[Any, int]]
    params: tuple[Param, ...]
    summary: str = ""
    grid: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    candidates: Mapping[str, tuple[float, ...]] | None = None
    reference: str = ""
    apps: bool = True

    def __post_init__(self) -> None:
        if not self.key or self.key != self.key.lower():
            raise ValueError(f"PostMethod key {self.key!r}: expected a lower-case name.")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise ValueError(f"PostMethod {self.key!r}: a parameter is declared twice.")
        for what, values in (("grid", self.grid), ("candidates", self.candidates or {})):
            unknown = set(values) - set(names)
            if unknown:
                raise ValueError(
                    f"PostMethod {self.key!r}: {what} names {sorted(unknown)}, which are "
                    f"not among its parameters {names}."
                )

    @property
    def function(self) -> Callable[..., tuple[Any, int]]:
        """The function itself (imported now when :attr:`func` names it)."""
        if callable(self.func):
            return self.func
        module, _, attr = self.func.partition(":")
        return getattr(importlib.import_module(module), attr)

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def defaults(self) -> dict[str, Any]:
        """``{name: default}`` of every parameter, in signature order."""
        return {p.name: p.default for p in self.params}

    def tune_params(self) -> tuple[Param, ...]:
        """The parameters the Tune widget shows."""
        return tuple(p for p in self.params if p.tune)

    def inert(self, n_classes: int) -> set[str]:
        """Parameters that cannot change the result on a map with ``n_classes`` classes."""
        return {p.name for p in self.params if n_classes not in p.classes}


#: Every parameter's ``min_size``: shared by the built-in methods (one box in Tune).
MIN_SIZE = Param(
    "min_size",
    DEFAULT_MIN_SIZE,
    low=0,
    high=None,
    step=1,
    help="Objects smaller than this (pixels, or voxels in 3D) are removed.",
    label="Min size",
    symbol="min size",
    unit=" px",
)
_FILL_HOLES = Param(
    "fill_holes", True, help="Fill the holes of each instance.", tune=False, low=None, high=None
)
_TENTHS = tuple(round(0.1 * i, 2) for i in range(1, 10))

_BUILT_IN = (
    PostMethod(
        key="map",
        label="MAP: most likely class",
        func="napari_cellfocus.core.postprocess:map_labels",
        params=(MIN_SIZE, _FILL_HOLES),
        summary="Each pixel takes its most likely class (a gap pixel the next most likely "
        "one); cells are the connected cell regions, touching pixels go to the nearest cell.",
        candidates={},
        reference="T 5.2.3",
    ),
    PostMethod(
        key="th",
        label="TH: thresholds γ1, γ2",
        func="napari_cellfocus.core.postprocess:threshold_labels",
        params=(
            Param(
                "gamma1",
                DEFAULT_GAMMA1,
                help="TH: a pixel is cell when P(cell) ≥ γ1 (and not touching).",
                label="γ1 cell",
                symbol="γ1",
            ),
            Param(
                "gamma2",
                DEFAULT_GAMMA2,
                help="TH: a pixel is touching when P(touching) ≥ γ2.",
                label="γ2 touching",
                symbol="γ2",
                classes=TOUCHING_CLASSES,
            ),
            MIN_SIZE,
            _FILL_HOLES,
        ),
        summary="Thresholded maps: touching where P(touching) ≥ γ2, cell where P(cell) ≥ γ1 "
        "and not touching; touching pixels go to the nearest cell, equidistant ones to the "
        "background.",
        # steps of 0.1 (gamma2: 0.05): T Table 5's best values lie on them
        grid={"gamma1": _TENTHS, "gamma2": tuple(round(0.05 * i, 2) for i in range(1, 11))},
        candidates={"gamma1": (0.4, 0.5, 0.6), "gamma2": (0.1, 0.5)},
        reference="T eq. 4.4, Algorithm 2",
    ),
    PostMethod(
        key="wt",
        label="WT: watershed τ0, τ1",
        func="napari_cellfocus.core.postprocess:watershed_labels",
        params=(
            Param(
                "tau0",
                DEFAULT_TAU0,
                help="WT: background markers where P(background) ≥ τ0.",
                label="τ0 background",
                symbol="τ0",
            ),
            Param(
                "tau1",
                DEFAULT_TAU1,
                help="WT: cell markers where P(cell) ≥ τ1.",
                label="τ1 cell marker",
                symbol="τ1",
                classes=TOUCHING_CLASSES,
            ),
            MIN_SIZE,
        ),
        summary="Marker-controlled watershed on P(touching) - P(cell), from cell markers "
        "P(cell) ≥ τ1 and background markers P(background) ≥ τ0.",
        grid={"tau0": _TENTHS, "tau1": _TENTHS},
        candidates={"tau0": (0.3, 0.4, 0.5), "tau1": (0.8, 0.9)},
        reference="T 4.2.4, Fig. 24",
    ),
    PostMethod(
        key="binary",
        label="Binary: foreground threshold + distance watershed",
        func="napari_cellfocus.core.postprocess:binary_watershed_labels",
        params=(
            Param(
                "threshold",
                0.5,
                help="Cutoff on the foreground probability.",
                label="threshold",
                symbol="t",
            ),
            Param(
                "mean_cell_size",
                None,
                low=0.0,
                high=None,
                step=1.0,
                help="Typical cell area (px) or volume (voxels); estimated when omitted.",
                unit=" px",
            ),
            MIN_SIZE,
            Param(
                "classes_first",
                None,
                kind="bool",
                low=None,
                high=None,
                help="Whether axis 0 holds classes (guessed when omitted).",
                tune=False,
            ),
        ),
        summary="Foreground threshold, cleaning, and a distance watershed sized by the mean "
        "cell size; takes a foreground map or class probabilities.",
        grid={"threshold": tuple(round(0.05 * i, 2) for i in range(1, 20))},
        reference="C 4.3",
        apps=False,
    ),
)

_REGISTRY: dict[str, PostMethod] = {m.key: m for m in _BUILT_IN}
#: The registered methods by key (read-only view; :func:`register_post_method` adds).
POST_METHODS: Mapping[str, PostMethod] = MappingProxyType(_REGISTRY)


def register_post_method(method: PostMethod, replace: bool = False) -> PostMethod:
    """Add ``method`` to :data:`POST_METHODS` (a key taken already: ``ValueError`` unless
    ``replace``); returns it. Widgets and parsers built afterwards offer it."""
    if method.key in _REGISTRY and not replace:
        raise ValueError(f"post-processing method {method.key!r} is registered already.")
    _REGISTRY[method.key] = method
    return method


def unregister_post_method(key: str) -> None:
    """Remove a registered method (a built-in one too: tests clean up with this)."""
    _REGISTRY.pop(key, None)


def get_post_method(method: str) -> PostMethod:
    """The method registered as ``method`` (case-insensitive); ``ValueError`` naming the
    registered ones otherwise."""
    key = str(method).lower()
    if key not in _REGISTRY:
        raise ValueError(f"method: expected one of {sorted(_REGISTRY)}, got {method!r}.")
    return _REGISTRY[key]


def app_methods() -> tuple[PostMethod, ...]:
    """The methods the widgets and ``cellfocus predict`` offer, in registration order."""
    return tuple(m for m in _REGISTRY.values() if m.apps)


def default_post_params() -> dict[str, Any]:
    """Default of every parameter the widgets offer (shared names have one value)."""
    out: dict[str, Any] = {}
    for m in app_methods():
        for p in m.tune_params():
            out.setdefault(p.name, p.default)
    return out


def candidate_settings() -> tuple[tuple[str, dict[str, float]], ...]:
    """Every ``(method, params)`` :func:`engine.validation.choose_defaults` tries: the
    product of each candidate method's coarse grid, in registration order."""
    out: list[tuple[str, dict[str, float]]] = []
    for m in _REGISTRY.values():
        if m.candidates is None:
            continue
        names = list(m.candidates)
        for values in itertools.product(*(m.candidates[n] for n in names)):
            out.append((m.key, dict(zip(names, values, strict=True))))
    return tuple(out)


# ---------------------------------------------------------------------------- docs

#: The generated table sits between ``<!-- DOCS_MARKER:start -->`` and ``...:end -->``.
DOCS_MARKER = "postprocess-registry"


def _range(p: Param) -> str:
    if p.kind == "bool":
        return "true / false"
    step = f" (step {p.step:g})" if p.tune else ""
    if p.low is None and p.high is None:
        return "any"
    if p.high is None:
        return f"≥ {p.low:g}{step}"
    if p.low is None:
        return f"≤ {p.high:g}{step}"
    return f"{p.low:g} – {p.high:g}{step}"


def _grid_text(values: tuple[float, ...]) -> str:
    steps = {round(b - a, 6) for a, b in itertools.pairwise(values)}
    if len(values) > 2 and len(steps) == 1:
        return f"{values[0]:g} – {values[-1]:g} step {steps.pop():g}"
    return ", ".join(f"{v:g}" for v in values)


def _rows() -> Iterator[str]:
    yield "| method | what it does | parameter | default | range | classes | search grid |"
    yield "|---|---|---|---|---|---|---|"
    for m in _REGISTRY.values():
        where = "" if m.apps else " (scripts only)"
        head = f"`{m.key}`{where}"
        what = f"{m.summary} ({m.reference})" if m.reference else m.summary
        for i, p in enumerate(m.params):
            grid = _grid_text(tuple(m.grid[p.name])) if p.name in m.grid else ""
            classes = ", ".join(str(c) for c in p.classes)
            yield (
                f"| {head if i == 0 else ''} | {what if i == 0 else ''} | `{p.name}`: {p.help} "
                f"| `{p.default}` | {_range(p)} | {classes} | {grid} |"
            )


def markdown_table() -> str:
    """The registry as a Markdown table, one row per parameter (docs/methods.md holds it
    between the :data:`DOCS_MARKER` comments; ``scripts/make_method_docs.py`` writes it)."""
    return "\n".join(_rows())


def replace_docs_section(text: str, table: str | None = None, marker: str = DOCS_MARKER) -> str:
    """``text`` with the part between the ``<!-- marker:start -->`` and ``...:end -->``
    comments replaced by ``table`` (default: this registry's :func:`markdown_table`);
    ``ValueError`` without the markers."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"expected the markers {start} and {end} in the text.")
    body = markdown_table() if table is None else table
    return f"{text[: i + len(start)]}\n{body}\n{text[j:]}"
