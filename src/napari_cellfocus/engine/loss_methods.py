"""The training losses, declared once: function, what it is, how training uses it.

:data:`LOSS_METHODS` feeds :func:`napari_cellfocus.engine.losses.get_loss` (and its
``LOSSES`` view), ``cellfocus train --loss`` (choices and help) and the docs table of
:func:`markdown_table`. Adding a loss is one function in ``engine/losses.py`` (logits
``(N, C, *S)``, integer target ``(N, *S)``, keyword ``weight=`` a map ``(N, *S)`` or
None; a scalar tensor) and one :class:`LossMethod` here or through
:func:`register_loss_method`, plus its test.

This module imports no torch (only the standard library): the command line builds its
parser from it and stays quick to start.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

__all__ = [
    "LOSS_METHODS",
    "LossMethod",
    "cli_loss_methods",
    "get_loss_method",
    "register_loss_method",
    "unregister_loss_method",
]


@dataclass(frozen=True)
class LossMethod:
    """One loss.

    key : its name (``get_loss(key)``, ``TrainConfig(loss=key)``, ``--loss key``).
    func : the function or ``"module:attr"`` naming it (imported on first use);
        ``kwargs`` are bound to it (``j3`` is ``ce_youden_loss`` with ``n_classes=3``).
    summary : one sentence (``--loss`` help, docs). reference : paper section.
    classes : the class counts it can train (``j3``: 3 only).
    call : how the trainer calls it: ``"weighted"`` (``fn(logits, y, weight=w)``),
        ``"youden"`` (the weighted mean of the CE term, the J term on ``w > 0``),
        ``"unweighted"`` (``fn(logits, y)``, no weight map).
    default_weights : the weight map training uses when none is given.
    cli : whether ``cellfocus train --loss`` offers it (the fusion and DDT losses are
        used by their own trainers).
    """

    key: str
    func: str | Callable[..., Any]
    summary: str = ""
    reference: str = ""
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    classes: tuple[int, ...] = (2, 3, 4)
    call: str = "weighted"
    default_weights: str = "none"
    cli: bool = True

    def __post_init__(self) -> None:
        if not self.key or self.key != self.key.lower():
            raise ValueError(f"LossMethod key {self.key!r}: expected a lower-case name.")
        if self.call not in ("weighted", "youden", "unweighted"):
            raise ValueError(
                f"LossMethod {self.key!r}: call must be 'weighted', 'youden' or 'unweighted'."
            )

    @property
    def function(self) -> Callable[..., Any]:
        """The function (imported now when :attr:`func` names it), ``kwargs`` bound."""
        func = self.func
        if not callable(func):
            module, _, attr = func.partition(":")
            func = getattr(importlib.import_module(module), attr)
        return partial(func, **self.kwargs) if self.kwargs else func


_L = "napari_cellfocus.engine.losses:"
_BUILT_IN = (
    LossMethod(
        "wce",
        _L + "weighted_cross_entropy",
        "weighted cross entropy (with the SAW weight map unless --weights says otherwise)",
        "T eq. 3.1 / 4.2",
        default_weights="saw",
    ),
    LossMethod(
        "j3",
        _L + "ce_youden_loss",
        "cross entropy + Youden J regulariser, 3 classes",
        "T eq. 5.1-5.3",
        kwargs={"n_classes": 3},
        classes=(3,),
        call="youden",
    ),
    LossMethod(
        "j4",
        _L + "ce_youden_loss",
        "cross entropy + Youden J regulariser, 4 classes",
        "T eq. 5.1-5.3",
        kwargs={"n_classes": 4},
        classes=(4,),
        call="youden",
    ),
    LossMethod(
        "jaccard",
        _L + "soft_jaccard_loss",
        "soft Jaccard loss, unweighted",
        'L "Loss functions for image segmentation"',
        call="unweighted",
    ),
    LossMethod(
        "mae",
        _L + "mae_loss",
        "mean absolute error of the DDT distance output",
        "D section 5",
        cli=False,
    ),
    LossMethod(
        "bce",
        _L + "bce_loss",
        "binary cross entropy of the fusion focus map",
        "T eq. 6.3",
        cli=False,
    ),
)

_REGISTRY: dict[str, LossMethod] = {m.key: m for m in _BUILT_IN}
#: The registered losses by key (read-only view; :func:`register_loss_method` adds).
LOSS_METHODS: Mapping[str, LossMethod] = MappingProxyType(_REGISTRY)


def register_loss_method(method: LossMethod, replace: bool = False) -> LossMethod:
    """Add ``method`` to :data:`LOSS_METHODS` (a key taken already: ``ValueError`` unless
    ``replace``); returns it."""
    if method.key in _REGISTRY and not replace:
        raise ValueError(f"loss {method.key!r} is registered already.")
    _REGISTRY[method.key] = method
    return method


def unregister_loss_method(key: str) -> None:
    """Remove a registered loss."""
    _REGISTRY.pop(key, None)


def get_loss_method(name: str) -> LossMethod:
    """The loss registered as ``name`` (case-insensitive); ``ValueError`` naming the
    registered ones otherwise."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(_REGISTRY)}.")
    return _REGISTRY[key]


def cli_loss_methods() -> tuple[LossMethod, ...]:
    """The losses ``cellfocus train --loss`` offers, in registration order."""
    return tuple(m for m in _REGISTRY.values() if m.cli)


def markdown_table() -> str:
    """The registry as a Markdown table (loss, what it is, source, classes, weights)."""
    rows = [
        "| loss | what it is | source | classes | default weights | `--loss` |",
        "|---|---|---|---|---|---|",
    ]
    for m in _REGISTRY.values():
        classes = ", ".join(str(c) for c in m.classes)
        weights = "none (unweighted)" if m.call == "unweighted" else m.default_weights
        rows.append(
            f"| `{m.key}` | {m.summary} | {m.reference} | {classes} | {weights} | "
            f"{'yes' if m.cli else ''} |"
        )
    return "\n".join(rows)
