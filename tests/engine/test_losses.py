"""Tests for napari_cellfocus.engine.losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from napari_cellfocus.engine.losses import (
    LOSSES,
    bce_loss,
    ce_youden_loss,
    default_lambda,
    get_loss,
    mae_loss,
    soft_jaccard_loss,
    weighted_cross_entropy,
    youden_j_loss,
)

LN2 = math.log(2.0)
LN3 = math.log(3.0)


def _val(t: torch.Tensor) -> float:
    """Python float of a (possibly grad-requiring) scalar tensor."""
    return float(t.detach())


def _logits(values, shape) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape).requires_grad_(True)


def _two_pixel_case() -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Logits (1, 3, 1, 2): pixel a = (1, 2, 3) with class 2, pixel b = (0, 0, 0) class 0.

    softmax(a)_2 = e^3 / (e + e^2 + e^3) -> ce_a = log(e + e^2 + e^3) - 3
    softmax(b)_0 = 1/3                   -> ce_b = log 3
    """
    # layout (N, C, Y, X): channel c holds [a_c, b_c]
    logits = _logits([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], (1, 3, 1, 2))
    target = torch.tensor([[[2, 0]]])
    ce_a = math.log(math.e + math.e**2 + math.e**3) - 3.0
    ce_b = LN3
    return logits, target, ce_a, ce_b


# --------------------------------------------------------------------------------------
# weighted cross entropy
# --------------------------------------------------------------------------------------
def test_wce_unweighted_is_mean_ce():
    """No weight: mean over the 2 pixels, (ce_a + ce_b) / 2 (eq. 2.5)."""
    logits, target, ce_a, ce_b = _two_pixel_case()
    loss = weighted_cross_entropy(logits, target)
    assert _val(loss) == pytest.approx((ce_a + ce_b) / 2, rel=1e-6)


def test_wce_weight_reductions():
    """w = (2, 0.5): sum = 2 ce_a + 0.5 ce_b (eq. 3.1); mean = that / 2 pixels;
    weighted_mean = that / (2 + 0.5); none = the map (2 ce_a, 0.5 ce_b)."""
    logits, target, ce_a, ce_b = _two_pixel_case()
    w = torch.tensor([[[2.0, 0.5]]])
    s = 2 * ce_a + 0.5 * ce_b
    assert _val(weighted_cross_entropy(logits, target, w, "sum")) == pytest.approx(s, rel=1e-6)
    assert _val(weighted_cross_entropy(logits, target, w, "mean")) == pytest.approx(
        s / 2, rel=1e-6
    )
    assert _val(weighted_cross_entropy(logits, target, w, "weighted_mean")) == pytest.approx(
        s / 2.5, rel=1e-6
    )
    m = weighted_cross_entropy(logits, target, w, "none")
    assert m.shape == (1, 1, 2)
    assert m.flatten().tolist() == pytest.approx([2 * ce_a, 0.5 * ce_b], rel=1e-6)


def test_wce_one_hot_and_soft_targets():
    """One-hot float targets give the integer-target value; a soft target (0.5, 0.5, 0) on
    the uniform pixel b gives -(0.5 log 1/3 + 0.5 log 1/3) = log 3 again."""
    logits, _, ce_a, ce_b = _two_pixel_case()
    one_hot = torch.zeros(1, 3, 1, 2)
    one_hot[0, 2, 0, 0] = 1
    one_hot[0, 0, 0, 1] = 1
    assert _val(weighted_cross_entropy(logits, one_hot)) == pytest.approx(
        (ce_a + ce_b) / 2, rel=1e-6
    )
    soft = one_hot.clone()
    soft[0, :, 0, 1] = torch.tensor([0.5, 0.5, 0.0])
    assert _val(weighted_cross_entropy(logits, soft)) == pytest.approx((ce_a + LN3) / 2, rel=1e-6)


def test_wce_3d():
    """3D (1, 2, 1, 1, 2): pixel a logits (0, log 3) -> z_1 = 3/4, class 1: ce = log(4/3);
    pixel b logits (0, 0), class 0: ce = log 2. Mean = (log(4/3) + log 2) / 2."""
    logits = _logits([[0.0, 0.0], [LN3, 0.0]], (1, 2, 1, 1, 2))
    target = torch.tensor([[[[1, 0]]]])
    loss = weighted_cross_entropy(logits, target)
    assert _val(loss) == pytest.approx((math.log(4 / 3) + LN2) / 2, rel=1e-6)


def test_wce_all_zero_weight_is_finite():
    """sum(w) = 0: every reduction gives 0 and a finite (zero) gradient."""
    logits, target, _, _ = _two_pixel_case()
    w = torch.zeros(1, 1, 2)
    for reduction in ("mean", "sum", "weighted_mean"):
        loss = weighted_cross_entropy(logits, target, w, reduction)
        assert _val(loss) == 0.0
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all()
        assert _val(grad.abs().max()) == 0.0


@pytest.mark.parametrize(
    ("target", "weight", "match"),
    [
        (torch.tensor([[[3, 0]]]), None, "class indices"),
        (torch.tensor([[[-1, 0]]]), None, "class indices"),
        (torch.tensor([[[0, 0, 0]]]), None, "expected class indices of shape"),
        (torch.tensor([[[0.0, 1.0]]]), None, "integer class"),
        (torch.tensor([[[2, 0]]]), torch.tensor([[[1.0, -1.0]]]), ">= 0"),
        (torch.tensor([[[2, 0]]]), torch.ones(1, 2, 1), "weight map of shape"),
        (torch.tensor([[[2, 0]]]), torch.tensor([[[1.0, float("nan")]]]), "NaN"),
        (torch.full((1, 3, 1, 2), 0.5), None, "sum to 1"),
    ],
)
def test_wce_bad_input(target, weight, match):
    logits, _, _, _ = _two_pixel_case()
    with pytest.raises(ValueError, match=match):
        weighted_cross_entropy(logits, target, weight)


def test_wce_bad_logits_and_reduction():
    logits, target, _, _ = _two_pixel_case()
    with pytest.raises(ValueError, match="NaN"):
        weighted_cross_entropy(torch.full((1, 3, 1, 2), float("nan")), target)
    with pytest.raises(ValueError, match=r"\(N, C, Y, X\)"):
        weighted_cross_entropy(torch.zeros(3, 2), target)
    with pytest.raises(ValueError, match="reduction"):
        weighted_cross_entropy(logits, target, reduction="avg")


# --------------------------------------------------------------------------------------
# Youden J
# --------------------------------------------------------------------------------------
def _eq53(z, y, lam) -> float:
    """Eq. 5.3 evaluated in plain Python on nested lists z[c][p], y[c][p]:
    -sum_{i,k} lam[i][k] log(1/2 + sum_p z_i(p) (y_i(p)/(2 n_i) - y_k(p)/(2 n_k)))."""
    n = [sum(row) for row in y]
    c = len(z)
    total = 0.0
    for i in range(c):
        for k in range(c):
            if lam[i][k] == 0:
                continue
            s = 0.5 + sum(
                z[i][p] * (y[i][p] / (2 * n[i]) - y[k][p] / (2 * n[k])) for p in range(len(z[i]))
            )
            total -= lam[i][k] * math.log(s)
    return total


def _softmax_cols(cols):
    """Softmax of each pixel's logit vector; returns z[c][p]."""
    out = []
    for col in cols:
        e = [math.exp(v) for v in col]
        s = sum(e)
        out.append([v / s for v in e])
    return [list(r) for r in zip(*out, strict=True)]


def test_youden_uniform_prediction_j3_j4():
    """Uniform softmax z = 1/C: alpha_i = 1/C, beta_ik = 1 - 1/C, (alpha+beta)/2 = 1/2, so
    each of the C(C-1) off-diagonal pairs adds log 2: J3 -> 6 log 2, J4 -> 12 log 2."""
    l3 = torch.zeros(1, 3, 1, 3, requires_grad=True)
    t3 = torch.tensor([[[0, 1, 2]]])
    assert _val(youden_j_loss(l3, t3, n_classes=3)) == pytest.approx(6 * LN2, rel=1e-5)
    l4 = torch.zeros(1, 4, 2, 2, requires_grad=True)
    t4 = torch.tensor([[[0, 1], [2, 3]]])
    assert _val(youden_j_loss(l4, t4, n_classes=4)) == pytest.approx(12 * LN2, rel=1e-5)


def test_youden_matches_eq_5_3_general_case():
    """Random-looking logits for 4 pixels of 3 classes (targets 0, 1, 1, 2) and a non-uniform
    lambda: the loss (computed from alpha and beta, eq. 5.2) equals eq. 5.3 evaluated in
    plain Python."""
    cols = [(0.3, -1.0, 2.0), (1.5, 0.2, -0.4), (-0.7, 0.9, 0.1), (0.0, -0.5, 1.2)]
    labels = [0, 1, 1, 2]
    logits = _logits([[col[c] for col in cols] for c in range(3)], (1, 3, 1, 4))
    target = torch.tensor([[labels]])
    lam = [[0.0, 1.0, 0.5], [2.0, 0.0, 1.0], [0.5, 3.0, 0.0]]
    z = _softmax_cols(cols)
    y = [[1.0 if lab == c else 0.0 for lab in labels] for c in range(3)]
    expected = _eq53(z, y, lam)
    loss = youden_j_loss(logits, target, lam=torch.tensor(lam))
    assert _val(loss) == pytest.approx(expected, rel=1e-5)


def test_youden_absent_class_is_skipped_and_finite():
    """Class 2 absent. Pixel a: logits (2, 0, 0), class 0; pixel b: (0, 1, 0), class 1.
    alpha_0 = e^2/(e^2+2), beta_01 = 1 - 1/(e+2); alpha_1 = e/(e+2), beta_10 = 1 - 1/(e^2+2).
    Only the pairs (0,1) and (1,0) count:
    L = -log((alpha_0 + beta_01)/2) - log((alpha_1 + beta_10)/2)."""
    e = math.e
    logits = _logits([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]], (1, 3, 1, 2))
    target = torch.tensor([[[0, 1]]])
    a0, b01 = e**2 / (e**2 + 2), 1 - 1 / (e + 2)
    a1, b10 = e / (e + 2), 1 - 1 / (e**2 + 2)
    expected = -math.log((a0 + b01) / 2) - math.log((a1 + b10) / 2)
    loss = youden_j_loss(logits, target, n_classes=3)
    assert _val(loss) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_youden_single_class_batch_is_zero():
    """Only one class present: no pair has both classes, every term is skipped -> 0."""
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = youden_j_loss(logits, torch.zeros(1, 2, 2, dtype=torch.long))
    assert _val(loss) == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_youden_per_image():
    """per_image=True averages one J per image. Image 1: uniform logits, classes (0, 1, 2)
    -> 6 log 2. Image 2: uniform logits, classes (0, 0, 1) (class 2 absent) -> alpha = 1/3,
    beta = 2/3 for the two pairs (0,1), (1,0) -> 2 log 2. Mean = 4 log 2.
    Over the whole batch instead (per_image=False) all three classes are present and the
    logits are uniform -> 6 log 2."""
    logits = torch.zeros(2, 3, 1, 3)
    target = torch.tensor([[[0, 1, 2]], [[0, 0, 1]]])
    assert _val(youden_j_loss(logits, target, per_image=True)) == pytest.approx(4 * LN2, rel=1e-5)
    assert _val(youden_j_loss(logits, target)) == pytest.approx(6 * LN2, rel=1e-5)


def test_youden_perfect_prediction_is_zero_and_diagonal_is_constant():
    """Saturated correct logits: alpha = beta = 1 -> every term log 1 = 0.
    lambda = identity: alpha_i + beta_ii = 1 for any prediction -> 3 log 2, zero gradient."""
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = 30.0 * torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float() - 15.0
    assert _val(youden_j_loss(logits, target)) == pytest.approx(0.0, abs=1e-5)
    rand = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = youden_j_loss(rand, target, lam=torch.eye(3))
    assert _val(loss) == pytest.approx(3 * LN2, rel=1e-5)
    loss.backward()
    assert _val(rand.grad.abs().max()) < 1e-5


def test_youden_3d():
    """3D uniform prediction over 3 present classes -> 6 log 2, like the 2D case."""
    logits = torch.zeros(1, 3, 2, 1, 2)
    target = torch.tensor([[[[0, 1]], [[2, 2]]]])
    assert _val(youden_j_loss(logits, target)) == pytest.approx(6 * LN2, rel=1e-5)


def test_youden_default_lambda():
    lam = default_lambda(4)
    assert lam.shape == (4, 4)
    assert torch.equal(lam, 1 - torch.eye(4))
    with pytest.raises(ValueError, match="n_classes"):
        default_lambda(1)


def test_youden_bad_input():
    logits = torch.zeros(1, 3, 1, 3)
    target = torch.tensor([[[0, 1, 2]]])
    with pytest.raises(ValueError, match="n_classes=4"):
        youden_j_loss(logits, target, n_classes=4)
    with pytest.raises(ValueError, match="3x3"):
        youden_j_loss(logits, target, lam=torch.ones(4, 4))
    with pytest.raises(ValueError, match=">= 0"):
        youden_j_loss(logits, target, lam=-torch.ones(3, 3))


def test_ce_youden_is_ce_plus_j():
    """Uniform logits over 3 present classes: CE = log 3, J = 6 log 2; J4 registry entry on
    4 uniform classes: log 4 + 12 log 2."""
    logits = torch.zeros(1, 3, 1, 3, requires_grad=True)
    target = torch.tensor([[[0, 1, 2]]])
    assert _val(ce_youden_loss(logits, target)) == pytest.approx(LN3 + 6 * LN2, rel=1e-5)
    assert _val(get_loss("j3")(logits, target)) == pytest.approx(LN3 + 6 * LN2, rel=1e-5)
    l4 = torch.zeros(1, 4, 1, 4)
    t4 = torch.tensor([[[0, 1, 2, 3]]])
    assert _val(get_loss("j4")(l4, t4)) == pytest.approx(math.log(4) + 12 * LN2, rel=1e-5)
    with pytest.raises(ValueError, match="n_classes=4"):
        get_loss("j4")(logits, target)


def test_ce_youden_weight_applies_to_ce_only():
    """weight = (1, 1, 0) on uniform logits: CE term = mean(w * log 3) = 2 log 3 / 3; the J
    term is unweighted (6 log 2)."""
    logits = torch.zeros(1, 3, 1, 3)
    target = torch.tensor([[[0, 1, 2]]])
    w = torch.tensor([[[1.0, 1.0, 0.0]]])
    assert _val(ce_youden_loss(logits, target, weight=w)) == pytest.approx(
        2 * LN3 / 3 + 6 * LN2, rel=1e-5
    )


# --------------------------------------------------------------------------------------
# soft Jaccard
# --------------------------------------------------------------------------------------
def test_jaccard_binary_sigmoid():
    """C = 1, logits (0, 0) -> yhat = (1/2, 1/2), y = (1, 0).
    squared: inter = 1/2, sum y^2 = 1, sum yhat^2 = 1/2, union = 1 -> loss = 1/2.
    plain:   union = 1 + 1 - 1/2 = 3/2 -> loss = 1 - 1/3 = 2/3."""
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[1.0, 0.0]]])
    assert _val(soft_jaccard_loss(logits, target)) == pytest.approx(0.5, rel=1e-5)
    assert _val(soft_jaccard_loss(logits, target, squared=False)) == pytest.approx(2 / 3, rel=1e-5)


def test_jaccard_two_classes():
    """Pixel a logits (0, log 3) -> z = (1/4, 3/4), class 1; pixel b (0, 0) -> (1/2, 1/2),
    class 0.
    class 0: y = (0, 1), yhat = (1/4, 1/2): inter 1/2, union 1 + 5/16 - 1/2 = 13/16 -> 5/13
    class 1: y = (1, 0), yhat = (3/4, 1/2): inter 3/4, union 1 + 13/16 - 3/4 = 17/16 -> 5/17
    loss = (5/13 + 5/17) / 2."""
    logits = _logits([[0.0, 0.0], [LN3, 0.0]], (1, 2, 1, 2))
    target = torch.tensor([[[1, 0]]])
    loss = soft_jaccard_loss(logits, target)
    assert _val(loss) == pytest.approx((5 / 13 + 5 / 17) / 2, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_jaccard_3d_and_absent_class():
    """3D, 3 classes, class 2 absent: its term is 1 - 0 / (sum yhat^2 + eps) = 1.
    Uniform logits on 2 pixels (classes 0 and 1): for classes 0 and 1, inter = 1/3,
    sum y^2 = 1, sum yhat^2 = 2/9 -> union = 1 + 2/9 - 1/3 = 8/9, loss 1 - 3/8 = 5/8.
    Mean = (5/8 + 5/8 + 1) / 3 = 3/4."""
    logits = torch.zeros(1, 3, 1, 1, 2, requires_grad=True)
    target = torch.tensor([[[[0, 1]]]])
    loss = soft_jaccard_loss(logits, target)
    assert _val(loss) == pytest.approx(0.75, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_jaccard_weight_zero_pixel_is_ignored():
    """A zero weight removes pixel b from every sum: with y = (1, 0), yhat = (1/2, 1/2),
    w = (1, 0): inter = 1/2, sum y^2 = 1, sum yhat^2 = 1/4, union = 3/4 -> loss 1/3."""
    logits = torch.zeros(1, 1, 1, 2)
    target = torch.tensor([[[1.0, 0.0]]])
    w = torch.tensor([[[1.0, 0.0]]])
    assert _val(soft_jaccard_loss(logits, target, weight=w)) == pytest.approx(1 / 3, rel=1e-5)


# --------------------------------------------------------------------------------------
# MAE and BCE
# --------------------------------------------------------------------------------------
def test_mae():
    """pred (0.2, 0.9), target (0, 1): |d| = (0.2, 0.1); mean = 0.15.
    w = (1, 3): mean = (0.2 + 0.3)/2 = 0.25; weighted_mean = 0.5 / 4 = 0.125."""
    pred = torch.tensor([[[[0.2, 0.9]]]], requires_grad=True)
    target = torch.tensor([[[0.0, 1.0]]])
    assert _val(mae_loss(pred, target)) == pytest.approx(0.15, rel=1e-6)
    w = torch.tensor([[[1.0, 3.0]]])
    assert _val(mae_loss(pred, target, w)) == pytest.approx(0.25, rel=1e-6)
    assert _val(mae_loss(pred, target, w, "weighted_mean")) == pytest.approx(0.125, rel=1e-6)
    # same target given with the channel axis
    assert _val(mae_loss(pred, target[:, None])) == pytest.approx(0.15, rel=1e-6)


def test_mae_3d_and_bad_shape():
    """3D: pred 0.5 everywhere on 4 voxels, target (0, 1, 0.5, 0.25) -> (0.5+0.5+0+0.25)/4."""
    pred = torch.full((1, 1, 2, 1, 2), 0.5)
    target = torch.tensor([[[[0.0, 1.0]], [[0.5, 0.25]]]])
    assert _val(mae_loss(pred, target)) == pytest.approx(1.25 / 4, rel=1e-6)
    with pytest.raises(ValueError, match="expected shape"):
        mae_loss(pred, torch.zeros(1, 3, 3))


def test_bce_two_channel_eq_6_3():
    """Eq. 6.3 with the 2-channel softmax: pixel a logits (log 3, 0) -> z0 = 3/4, g = 1:
    -log(3/4); pixel b logits (0, 0) -> z0 = z1 = 1/2, g = 0.25: -(0.25 + 0.75) log(1/2) =
    log 2. Mean = (log(4/3) + log 2) / 2."""
    logits = _logits([[LN3, 0.0], [0.0, 0.0]], (1, 2, 1, 2))
    g = torch.tensor([[[1.0, 0.25]]])
    expected = (math.log(4 / 3) + LN2) / 2
    loss = bce_loss(logits, g)
    assert _val(loss) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_bce_one_channel_weighted_and_bad_input():
    """One channel, logit log 3 -> sigmoid 3/4. g = 1 -> log(4/3); g = 0 -> log 4.
    weights (2, 0): sum = 2 log(4/3); weighted_mean = 2 log(4/3) / 2 = log(4/3)."""
    logits = torch.tensor([[[[LN3, LN3]]]])
    g = torch.tensor([[[1.0, 0.0]]])
    assert _val(bce_loss(logits, g)) == pytest.approx(
        (math.log(4 / 3) + math.log(4)) / 2, rel=1e-6
    )
    w = torch.tensor([[[2.0, 0.0]]])
    assert _val(bce_loss(logits, g, w, "sum")) == pytest.approx(2 * math.log(4 / 3), rel=1e-6)
    assert _val(bce_loss(logits, g, w, "weighted_mean")) == pytest.approx(
        math.log(4 / 3), rel=1e-6
    )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bce_loss(logits, torch.tensor([[[2.0, 0.0]]]))
    with pytest.raises(ValueError, match="1 or 2 logit channels"):
        bce_loss(torch.zeros(1, 3, 1, 2), g)


# --------------------------------------------------------------------------------------
# registry and gradients
# --------------------------------------------------------------------------------------
def test_registry_names():
    assert set(LOSSES) == {"wce", "j3", "j4", "jaccard", "mae", "bce"}
    assert get_loss("WCE") is weighted_cross_entropy
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("dice")


def _inputs_for(name: str, dims: int):
    torch.manual_seed(0)
    spatial = (4, 5) if dims == 2 else (2, 3, 4)
    if name in ("wce", "j3", "jaccard"):
        logits = torch.randn(2, 3, *spatial, requires_grad=True)
        target = torch.randint(0, 2, (2, *spatial))  # class 2 absent
    elif name == "j4":
        logits = torch.randn(2, 4, *spatial, requires_grad=True)
        target = torch.randint(0, 3, (2, *spatial))  # gap class 3 absent
    elif name == "mae":
        logits = torch.rand(2, 1, *spatial, requires_grad=True)
        target = torch.rand(2, *spatial)
    else:
        logits = torch.randn(2, 2, *spatial, requires_grad=True)
        target = torch.rand(2, *spatial)
    return logits, target, spatial


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("zero_weight", [False, True])
def test_every_loss_has_finite_value_and_gradient(name, dims, zero_weight):
    """Absent class in the target (and optionally an all-zero weight map): finite loss and
    finite gradient for every registered loss in 2D and 3D."""
    logits, target, spatial = _inputs_for(name, dims)
    weight = torch.zeros(2, *spatial) if zero_weight else torch.rand(2, *spatial)
    loss = get_loss(name)(logits, target, weight)
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_saturated_logits_stay_finite():
    """Extreme logits (+-80, softmax probabilities of exactly 0 / 1 in float32) on wrong
    classes: every classification loss stays finite with a finite gradient."""
    target = torch.tensor([[[0, 1, 2, 2]]])
    wrong = torch.nn.functional.one_hot((target + 1) % 3, 3).movedim(-1, 1).float()
    logits = (160.0 * wrong - 80.0).requires_grad_(True)
    for name in ("wce", "j3", "jaccard"):
        loss = get_loss(name)(logits, target)
        assert torch.isfinite(loss), name
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(grad).all(), name


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_logits_are_summed_in_float32(dtype):
    """Mixed-precision logits over 90,000 pixels (more than float16's maximum 65504): class
    counts and sums are done in float32, so every loss is finite and equals the float32
    value. Uniform logits with 3 present classes: J = 6 log 2, CE = log 3."""
    logits = torch.zeros(1, 3, 300, 300, dtype=dtype)
    target = torch.zeros(1, 300, 300, dtype=torch.long)
    target[0, :100] = 1
    target[0, 100:200] = 2
    assert _val(youden_j_loss(logits, target)) == pytest.approx(6 * LN2, rel=1e-4)
    assert _val(weighted_cross_entropy(logits, target, reduction="sum")) == pytest.approx(
        90_000 * LN3, rel=1e-4
    )
    assert torch.isfinite(soft_jaccard_loss(logits, target))


def test_youden_mask_leaves_pixels_out_of_every_sum():
    """A mask of (1, 1, 1, 0) gives the value of the batch without pixel 3; the CE+J
    ``weighted_mean`` reduction is sum(w ce) / sum(w). Uniform logits on 4 pixels with
    classes (0, 1, 2, 2): CE = log 3 and J = 6 log 2 whatever the mask keeps of them, but
    masking the only class-0 pixel drops the 4 pairs involving class 0: J = 2 log 2."""
    logits = torch.zeros(1, 3, 1, 4)
    target = torch.tensor([[[0, 1, 2, 2]]])
    keep = torch.tensor([[[1.0, 1.0, 1.0, 0.0]]])
    assert _val(youden_j_loss(logits, target, mask=keep)) == pytest.approx(6 * LN2, rel=1e-5)
    no_bg = torch.tensor([[[0.0, 1.0, 1.0, 1.0]]])
    assert _val(youden_j_loss(logits, target, mask=no_bg)) == pytest.approx(2 * LN2, rel=1e-5)
    torch.manual_seed(0)
    rnd = torch.randn(1, 3, 1, 4)
    assert _val(youden_j_loss(rnd, target, mask=keep)) == pytest.approx(
        _val(youden_j_loss(rnd[..., :3], target[..., :3])), rel=1e-6
    )
    w = torch.tensor([[[2.0, 1.0, 1.0, 0.0]]])
    assert _val(
        ce_youden_loss(logits, target, weight=w, reduction="weighted_mean", mask=w > 0)
    ) == pytest.approx(LN3 + 6 * LN2, rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        ce_youden_loss(logits, target, reduction="sum")
