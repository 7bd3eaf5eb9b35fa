"""Loss functions for pixel classification and regression (torch).

Conventions
-----------
* ``logits``: raw network output ``(N, C, Y, X)`` or ``(N, C, Z, Y, X)`` (no softmax).
* ``target`` for the classification losses: integer class indices ``(N, Y, X)`` /
  ``(N, Z, Y, X)`` with values in ``0 .. C-1``, or a one-hot / soft target of the same shape
  as ``logits`` (float in [0, 1], summing to 1 over the class axis).
* ``weight``: per-pixel weight map ``(N, Y, X)`` / ``(N, Z, Y, X)``, float, finite, >= 0.
* Every loss returns a scalar tensor (unless ``reduction="none"``) that is finite, with a
  finite gradient, when a class is absent from the batch or when the weight map is all
  zero.

Bad inputs (wrong shapes, class indices out of range, NaN, negative weights, soft targets
not summing to one) raise :class:`ValueError` naming what was expected and what was given.

Sources: thesis **T** eq. 2.5-2.6, 2.14, 3.1 / 4.2 (weighted cross entropy), 5.1-5.3 (Youden
J regulariser), 6.3 (binary cross entropy of the fusion focus map); lecture **L** "Loss
functions for image segmentation" (soft Jaccard); **D** section 5 (MAE for the DDT).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F

from napari_cellfocus.engine.loss_methods import LOSS_METHODS, get_loss_method

__all__ = [
    "LOSSES",
    "REDUCTIONS",
    "bce_loss",
    "ce_youden_loss",
    "default_lambda",
    "get_loss",
    "mae_loss",
    "soft_jaccard_loss",
    "weighted_cross_entropy",
    "youden_j_loss",
]

#: Reductions accepted by the per-pixel losses (see :func:`weighted_cross_entropy`).
REDUCTIONS = ("mean", "sum", "weighted_mean", "none")

_SUM_ATOL = 1e-3


# --------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------
def _check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}.")
    return x


def _check_finite(x: torch.Tensor, name: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or infinite values.")


def _check_logits(logits: torch.Tensor, name: str = "logits") -> torch.Tensor:
    _check_tensor(logits, name)
    if logits.ndim not in (4, 5):
        raise ValueError(
            f"{name}: expected shape (N, C, Y, X) or (N, C, Z, Y, X), got {tuple(logits.shape)}."
        )
    if not logits.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {logits.dtype}.")
    _check_finite(logits, name)
    if logits.dtype in (torch.float16, torch.bfloat16):
        # sums over many pixels overflow / lose precision in half precision (autocast)
        logits = logits.float()
    return logits


def _target_probs(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return the target as class probabilities ``y`` with the shape of ``logits``.

    Integer targets ``(N, *S)`` are one-hot encoded; float targets must already have the
    shape of ``logits`` and lie in [0, 1] summing to one over the class axis.
    """
    _check_tensor(target, "target")
    n_classes = logits.shape[1]
    spatial = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) == spatial:
        if target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(
                f"target: a target of shape {tuple(target.shape)} must hold integer class "
                f"indices, got dtype {target.dtype}; pass a one-hot/soft target of shape "
                f"{tuple(logits.shape)} for probabilities."
            )
        if target.numel():
            lo, hi = int(target.min()), int(target.max())
            if lo < 0 or hi >= n_classes:
                raise ValueError(
                    f"target: class indices must lie in [0, {n_classes - 1}] for "
                    f"{n_classes} logit channels, got range [{lo}, {hi}]."
                )
        y = F.one_hot(target.long(), n_classes).movedim(-1, 1)
        return y.to(logits.dtype)
    if tuple(target.shape) == tuple(logits.shape):
        if not target.is_floating_point():
            target = target.to(logits.dtype)
        _check_finite(target, "target")
        if target.numel():
            lo, hi = float(target.min()), float(target.max())
            if lo < -_SUM_ATOL or hi > 1 + _SUM_ATOL:
                raise ValueError(
                    f"target: one-hot/soft targets must lie in [0, 1], got range [{lo:g}, {hi:g}]."
                )
            worst = float((target.sum(dim=1) - 1).abs().max())
            if worst > _SUM_ATOL:
                raise ValueError(
                    "target: one-hot/soft targets must sum to 1 over the class axis at "
                    f"every pixel; the largest deviation is {worst:g}."
                )
        return target.to(logits.dtype)
    raise ValueError(
        f"target: expected class indices of shape {spatial} or one-hot/soft targets of "
        f"shape {tuple(logits.shape)}, got {tuple(target.shape)}."
    )


def _check_weight(weight: torch.Tensor | None, shape: tuple[int, ...]) -> torch.Tensor | None:
    if weight is None:
        return None
    _check_tensor(weight, "weight")
    if tuple(weight.shape) != tuple(shape):
        raise ValueError(
            f"weight: expected a weight map of shape {tuple(shape)}, got {tuple(weight.shape)}."
        )
    if not weight.is_floating_point():
        weight = weight.float()
    _check_finite(weight, "weight")
    if weight.numel() and float(weight.min()) < 0:
        raise ValueError(f"weight: weights must be >= 0, got minimum {float(weight.min()):g}.")
    return weight


def _reduce(per_pixel: torch.Tensor, weight: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """Weight and reduce a per-pixel loss map ``(N, *S)``.

    ``"mean"``: ``sum(w * l) / |Omega|`` (number of pixels in the batch);
    ``"sum"``: ``sum(w * l)``; ``"weighted_mean"``: ``sum(w * l) / sum(w)``, and 0 (with a
    zero gradient) when ``sum(w) == 0``; ``"none"``: the map ``w * l``.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    weighted = per_pixel if weight is None else per_pixel * weight.to(per_pixel.dtype)
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / max(per_pixel.numel(), 1)
    if weight is None:
        return total / max(per_pixel.numel(), 1)
    norm = weight.to(per_pixel.dtype).sum()
    # w >= 0, so sum(w) == 0 means every w is 0 and total == 0 exactly: 0 / 1 = 0, and the
    # gradient (w * dce = 0) is finite.
    return total / torch.where(norm > 0, norm, torch.ones_like(norm))


# --------------------------------------------------------------------------------------
# cross entropy family
# --------------------------------------------------------------------------------------
def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Pixel-wise (weighted) cross entropy, thesis eq. 3.1 / 4.2 (and 2.5-2.6).

    ``L = - sum_p w(p) sum_l y_l(p) log z_l(p)`` with ``z = softmax(logits)`` over classes
    and ``w`` a weight map (DWM, SAW, W3, class balance, ...). Eq. 3.1 / 4.2 write the plain
    sum over pixels (``reduction="sum"``); eq. 2.5 / 2.6 divide it by the number of pixels
    ``|Omega|``, which is the default here (``reduction="mean"`` = ``mean(w * ce)`` over all
    pixels of the batch) because it keeps the loss scale independent of crop and batch size.

    Parameters
    ----------
    logits : Tensor (N, C, *S), float
        Network output before softmax; ``S`` is (Y, X) or (Z, Y, X).
    target : Tensor (N, *S) integer class indices, or (N, C, *S) one-hot / soft targets.
    weight : Tensor (N, *S), float >= 0, optional
        Per-pixel weights; None = 1 everywhere (plain cross entropy).
    reduction : {"mean", "sum", "weighted_mean", "none"}
        ``"mean"``: ``sum(w*ce) / |Omega|``; ``"sum"``: ``sum(w*ce)`` (eq. 3.1 as written);
        ``"weighted_mean"``: ``sum(w*ce) / sum(w)``, defined as 0 when ``sum(w) == 0``;
        ``"none"``: the map ``w*ce`` of shape (N, *S).

    Returns
    -------
    Tensor
        Scalar (or (N, *S) for ``"none"``), in nats.
    """
    logits = _check_logits(logits)
    y = _target_probs(logits, target)
    w = _check_weight(weight, (logits.shape[0], *logits.shape[2:]))
    ce = -(y * F.log_softmax(logits, dim=1)).sum(dim=1)
    return _reduce(ce, w, reduction)


def default_lambda(n_classes: int) -> torch.Tensor:
    """Default Youden pair-weight matrix: 1 for every ordered class pair ``i != k``, 0 on
    the diagonal.

    The thesis calls lambda "a user-defined weighting matrix" (T 5.2.2) and gives no values.
    Diagonal terms are constant (``alpha_i + beta_ii = 1`` -> ``lambda_ii * log 2``) and carry
    no gradient, so they are left out by default.
    """
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}.")
    return 1.0 - torch.eye(n_classes)


def _check_lambda(lam: torch.Tensor | None, n_classes: int, like: torch.Tensor) -> torch.Tensor:
    if lam is None:
        lam_t = default_lambda(n_classes)
    else:
        lam_t = torch.as_tensor(lam, dtype=torch.float64)
        if tuple(lam_t.shape) != (n_classes, n_classes):
            raise ValueError(
                f"lam: expected a {n_classes}x{n_classes} matrix for {n_classes} classes, "
                f"got shape {tuple(lam_t.shape)}."
            )
        if not bool(torch.isfinite(lam_t).all()) or float(lam_t.min()) < 0:
            raise ValueError("lam: weights must be finite and >= 0.")
    return lam_t.to(device=like.device, dtype=like.dtype)


def youden_j_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    n_classes: int | None = None,
    lam: torch.Tensor | None = None,
    per_image: bool = False,
    eps: float = 1e-7,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Youden-J regulariser over all class pairs, thesis eq. 5.2 / 5.3 ("J3", "J4").

    With ``z = softmax(logits)``, ``y`` the one-hot target and ``n_l = sum_p y_l(p)``, the
    soft rates for positive class ``i`` against negative class ``k`` are

    * ``alpha_i    = sum_p z_i y_i / n_i``        (soft TPR of class i)
    * ``beta_{i,k} = sum_p (1 - z_i) y_k / n_k``  (soft TNR: class-k pixels not called i)

    and, since ``J = TPR*TNR - FPR*FNR = alpha + beta - 1`` for the soft rates (T 5.2.2),

    ``L_J = - sum_{i,k} lambda_{i,k} log((1 + J_{i,k}) / 2)
          = - sum_{i,k} lambda_{i,k} log((alpha_i + beta_{i,k}) / 2)``.

    Each term is 0 for a perfect prediction and grows as the pair is confused; ``(1+J)/2``
    maps J's theoretical range (-1, 1) to (0, 1) (positive loss, sign as in eq. 5.1).

    Parameters
    ----------
    logits : Tensor (N, C, *S)
    target : Tensor (N, *S) integer indices or (N, C, *S) one-hot / soft targets.
    n_classes : int, optional
        Expected number of classes (3 for J3: background / cell / touching; 4 for J4 with
        the gap class). Must equal ``C``; None = take ``C``.
    lam : array-like (C, C), optional
        Pair weights ``lambda_{i,k}`` (>= 0); default :func:`default_lambda`: 1 off the
        diagonal, 0 on it (the thesis leaves lambda to the user).
    per_image : bool
        False (default): the sums over ``p`` run over the whole batch (one ``Omega``), which
        makes absent classes rarer. True: one J per image, averaged over the batch.
    eps : float
        Stabiliser: the log is taken of ``((alpha + beta)/2 + eps) / (1 + eps)``, so the
        loss is exactly 0 at a perfect prediction and finite when ``alpha + beta = 0``.
    mask : Tensor (N, *S), optional
        Pixels that take part (nonzero) or not (0): every sum over ``p`` (``n_l``, the soft
        true and false rates) runs over the pixels of the mask only, as if the others were
        not in ``Omega``. Used for weak labels (pixels far from every annotation) and for
        padding. None = every pixel.

    Returns
    -------
    Tensor
        Scalar, >= 0.

    Notes
    -----
    **Absent classes.** If class ``i`` or ``k`` has no pixel (``n_i = 0`` or ``n_k = 0``)
    in the sum's domain, its rates are 0/0; every pair involving it is **skipped** (counts
    0). The value and the gradient stay finite.
    """
    logits = _check_logits(logits)
    c = logits.shape[1]
    if n_classes is not None and n_classes != c:
        raise ValueError(
            f"youden_j_loss: n_classes={n_classes} but logits have {c} channels "
            f"(shape {tuple(logits.shape)})."
        )
    if c < 2:
        raise ValueError(f"youden_j_loss needs at least 2 classes, got {c}.")
    y = _target_probs(logits, target)
    m = _check_weight(mask, (logits.shape[0], *logits.shape[2:]))
    if m is not None:
        # every sum over p carries a factor y, so zeroing y outside the mask removes those
        # pixels from n_l, sum z_i y_i and sum z_i y_k alike
        y = y * (m > 0).to(y.dtype).unsqueeze(1)
    lam_t = _check_lambda(lam, c, logits)
    z = torch.softmax(logits, dim=1)
    n_img = logits.shape[0]
    z = z.reshape(n_img, c, -1)
    y = y.reshape(n_img, c, -1)
    # sums over pixels (and over images unless per_image); element-wise products, not
    # einsum, so autocast cannot move them to half precision
    sum_dims = (2,) if per_image else (0, 2)
    tp = (z * y).sum(dim=sum_dims)  # sum_p z_i y_i -> (N, C) or (C,)
    # zy[..., i, k] = sum_p z_i(p) y_k(p)
    zy = torch.stack([(z * y[:, k : k + 1]).sum(dim=sum_dims) for k in range(c)], dim=-1)
    n = y.sum(dim=sum_dims)  # (N, C) or (C,)
    if not per_image:
        tp, zy, n = tp.unsqueeze(0), zy.unsqueeze(0), n.unsqueeze(0)
    present = n > 0
    n_safe = torch.where(present, n, torch.ones_like(n))
    alpha = tp / n_safe  # (B, C)
    beta = 1.0 - zy / n_safe.unsqueeze(1)  # (B, C_i, C_k): sum_p (1 - z_i) y_k / n_k
    half_sum = 0.5 * (alpha.unsqueeze(2) + beta)
    log_term = torch.log((half_sum.clamp_min(0.0) + eps) / (1.0 + eps))
    pair_mask = (present.unsqueeze(2) & present.unsqueeze(1)).to(logits.dtype)
    per_batch = -(lam_t.unsqueeze(0) * pair_mask * log_term).sum(dim=(1, 2))
    return per_batch.mean()


def ce_youden_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    lam: torch.Tensor | None = None,
    n_classes: int | None = None,
    per_image: bool = False,
    eps: float = 1e-7,
    reduction: str = "mean",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross entropy plus Youden regulariser, ``L = L_CE + L_J`` (T 5.2.2).

    ``L_CE = -(1/|Omega|) sum_l sum_p y_l log z_l`` (the mean cross entropy of T 5.2.2)
    and ``L_J`` is :func:`youden_j_loss`. With ``n_classes=3`` this is the thesis' "J3",
    with ``n_classes=4`` (gap class) "J4". The thesis trains it with no weight map:
    ``weight=None`` (the default) is its loss.

    Parameters
    ----------
    logits, target, lam, n_classes, per_image, eps
        As in :func:`youden_j_loss`.
    weight : Tensor (N, *S), optional
        Weight map for the cross-entropy term only (an extension; None = plain CE, as in
        the thesis).
    reduction : {"mean", "weighted_mean"}
        Reduction of the CE term (see :func:`weighted_cross_entropy`): ``"mean"`` =
        ``mean(w * ce)``; ``"weighted_mean"`` = ``sum(w * ce) / sum(w)``, which keeps the CE
        term on the scale of a mean cross entropy whatever the scale of ``w`` (for a 0/1
        ``w`` it is the plain mean CE over the pixels where ``w = 1``). This is what the
        :class:`~napari_cellfocus.engine.train.Trainer` uses.
    mask : Tensor (N, *S), optional
        Pixels the Youden term is computed over (see :func:`youden_j_loss`); None = all.
    """
    if reduction not in ("mean", "weighted_mean"):
        raise ValueError(f"reduction must be 'mean' or 'weighted_mean', got {reduction!r}.")
    ce = weighted_cross_entropy(logits, target, weight=weight, reduction=reduction)
    j = youden_j_loss(
        logits, target, n_classes=n_classes, lam=lam, per_image=per_image, eps=eps, mask=mask
    )
    return ce + j


# --------------------------------------------------------------------------------------
# region loss
# --------------------------------------------------------------------------------------
def soft_jaccard_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    squared: bool = True,
) -> torch.Tensor:
    """Soft Jaccard loss (lecture L, "Loss functions for image segmentation").

    For each class ``l`` with ``yhat = z_l`` (softmax, or sigmoid when ``C == 1``) and
    ``y = y_l`` in [0, 1], summing over all pixels of the batch:

    * ``squared=True`` (the slides' variant ``j2``, "works slightly better"):
      ``1 - sum(y yhat) / (sum(y^2) + sum(yhat^2) - sum(y yhat) + eps)``
    * ``squared=False`` (``j``): ``1 - sum(y yhat) / (sum(y) + sum(yhat) - sum(y yhat) + eps)``

    and the loss is the mean over classes.

    Parameters
    ----------
    logits : Tensor (N, C, *S)
        ``C >= 2``: softmax over classes. ``C == 1``: one binary map through a sigmoid, with
        the target a (N, *S) or (N, 1, *S) tensor in [0, 1].
    target : Tensor
        (N, *S) integer indices or (N, C, *S) one-hot / soft targets (see module docs).
    weight : Tensor (N, *S), optional
        Per-pixel weights applied inside every sum (extension; None = the slides' formula).
    eps : float
        Keeps the denominator away from 0 (slides: "typically small").

    Returns
    -------
    Tensor
        Scalar in [0, 1].

    Notes
    -----
    A class absent from the target (``y_l = 0`` everywhere) contributes
    ``1 - 0 / (sum(yhat^2) + eps) = 1`` with a zero gradient: Jaccard is 0 whenever the
    target set is empty. The value stays finite.
    """
    logits = _check_logits(logits)
    if logits.shape[1] == 1:
        probs = torch.sigmoid(logits)
        y = _binary_target(target, logits)
    else:
        probs = torch.softmax(logits, dim=1)
        y = _target_probs(logits, target)
    w = _check_weight(weight, (logits.shape[0], *logits.shape[2:]))
    if w is not None:
        w = w.unsqueeze(1).to(probs.dtype)
    dims = [0, *range(2, logits.ndim)]

    def wsum(t: torch.Tensor) -> torch.Tensor:
        return (t if w is None else t * w).sum(dim=dims)

    inter = wsum(y * probs)
    if squared:
        union = wsum(y * y) + wsum(probs * probs) - inter
    else:
        union = wsum(y) + wsum(probs) - inter
    return (1.0 - inter / (union + eps)).mean()


# --------------------------------------------------------------------------------------
# regression and binary losses
# --------------------------------------------------------------------------------------
def _binary_target(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """Target in [0, 1] with the shape of ``pred`` (N, 1, *S); accepts (N, *S) too."""
    _check_tensor(target, "target")
    if tuple(target.shape) == (pred.shape[0], *pred.shape[2:]) and pred.shape[1] == 1:
        target = target.unsqueeze(1)
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(
            f"target: expected shape {tuple(pred.shape)} (or without the channel axis), "
            f"got {tuple(target.shape)}."
        )
    target = target.to(pred.dtype)
    _check_finite(target, "target")
    if target.numel() and (float(target.min()) < 0 or float(target.max()) > 1):
        raise ValueError(
            f"target: expected values in [0, 1], got range "
            f"[{float(target.min()):g}, {float(target.max()):g}]."
        )
    return target


def mae_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean absolute error (L1, T eq. 2.14), used for the DDT backbone (D section 5).

    ``L = (1 / (C |Omega|)) sum_l sum_p w(p) |y_l(p) - pred_l(p)|``.

    Parameters
    ----------
    pred : Tensor (N, C, *S)
        Prediction in the target's units (for the DDT: the sigmoid output in [0, 1]).
    target : Tensor (N, C, *S), or (N, *S) when C == 1
        Regression target (for the DDT: inverse distance transform normalised to [0, 1]).
    weight : Tensor (N, *S), optional
        Per-pixel weights, shared by all channels.
    reduction : {"mean", "sum", "weighted_mean", "none"}
        As in :func:`weighted_cross_entropy`, applied to the per-pixel error averaged over
        channels.
    """
    pred = _check_logits(pred, "pred")
    _check_tensor(target, "target")
    if pred.shape[1] == 1 and tuple(target.shape) == (pred.shape[0], *pred.shape[2:]):
        target = target.unsqueeze(1)
    if tuple(target.shape) != tuple(pred.shape):
        raise ValueError(
            f"target: expected shape {tuple(pred.shape)} (or without the channel axis when "
            f"C == 1), got {tuple(target.shape)}."
        )
    target = target.to(pred.dtype)
    _check_finite(target, "target")
    w = _check_weight(weight, (pred.shape[0], *pred.shape[2:]))
    per_pixel = (pred - target).abs().mean(dim=1)
    return _reduce(per_pixel, w, reduction)


def bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Binary cross entropy on logits, thesis eq. 6.3 (HF-Seg focus map).

    ``L = -(1/|Omega|) sum_p w(p) [g(p) log z0(p) + (1 - g(p)) log z1(p)]``.

    Two layouts are accepted:

    * ``logits`` (N, 2, *S), the two-channel softmax output of HF-Seg: ``z = softmax``,
      ``z0`` = probability of taking source A (eq. 6.2: ``f = z0 xA + z1 xB``) and the
      target ``g`` (N, *S) in [0, 1] is the focus map of source A, as in eq. 6.3.
      (Computed stably as sigmoid BCE on ``logit0 - logit1``.)
    * ``logits`` (N, 1, *S) with target (N, *S) or (N, 1, *S): ``z0 = sigmoid(logits)``,
      ``z1 = 1 - z0``.

    Parameters
    ----------
    weight : Tensor (N, *S), optional
        Per-pixel weights (C 4.5 trains its network with such a weighted BCE).
    reduction : {"mean", "sum", "weighted_mean", "none"}
        As in :func:`weighted_cross_entropy`.
    """
    logits = _check_logits(logits)
    if logits.shape[1] == 2:
        logit = (logits[:, 0] - logits[:, 1]).unsqueeze(1)
    elif logits.shape[1] == 1:
        logit = logits
    else:
        raise ValueError(
            f"bce_loss: expected 1 or 2 logit channels, got {logits.shape[1]} "
            f"(shape {tuple(logits.shape)})."
        )
    g = _binary_target(target, logit)
    w = _check_weight(weight, (logits.shape[0], *logits.shape[2:]))
    per_pixel = F.binary_cross_entropy_with_logits(logit, g, reduction="none")[:, 0]
    return _reduce(per_pixel, w, reduction)


# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------
LossFn = Callable[..., torch.Tensor]


class _Functions(Mapping):
    """Read-only ``{key: function}`` view of ``engine.loss_methods.LOSS_METHODS``."""

    def __getitem__(self, key: str) -> LossFn:
        return LOSS_METHODS[key].function

    def __iter__(self) -> Iterator[str]:
        return iter(LOSS_METHODS)

    def __len__(self) -> int:
        return len(LOSS_METHODS)


#: Loss functions by name, a view of the registry
#: :data:`napari_cellfocus.engine.loss_methods.LOSS_METHODS` (where each loss is declared,
#: with how training calls it; ``register_loss_method`` adds one). Every entry is called
#: as ``fn(output, target, weight=None)``.
LOSSES: Mapping[str, LossFn] = _Functions()


def get_loss(name: str) -> LossFn:
    """Return the loss function registered under ``name`` (see :data:`LOSSES`).

    Raises
    ------
    ValueError
        Unknown name (the message lists the valid ones).
    """
    return get_loss_method(name).function
