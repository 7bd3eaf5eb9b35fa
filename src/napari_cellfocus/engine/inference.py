"""Inference copies of the segmentation networks: the same function, computed faster.

A trained network is kept as it was trained (batch norm as its own layer, NCHW tensors),
because training, fine-tuning and checkpoints need it that way. For prediction,
:func:`inference_copy` builds an equivalent copy:

* **batch norm folded into the convolution before it** (eval mode: ``BN(conv(x))`` is an
  affine map of ``conv(x)``, so it folds into the convolution's weights and bias,
  :func:`torch.nn.utils.fusion.fuse_conv_bn_eval`); this removes one full pass over every
  feature map per convolution;
* **ReLU in place** on the folded convolution's fresh output (no extra tensor);
* for 2D networks on the CPU, **channels-last** (NHWC) weights and activations: oneDNN's
  convolutions run on that layout directly, where NCHW tensors are reordered to a blocked
  layout and back at every layer. Measured on a 2-core AMD EPYC (AVX2), the default U-Net
  on a 512² input: 0.85-0.94 s eager, 0.54-0.60 s folded and channels-last
  (``benchmarks/bench_engine.py`` has the current figures).

The copy's outputs equal the original's to float32 rounding (max |difference| of the
logits ~1e-5, tested in ``tests/engine/test_inference.py``). ``CELLFOCUS_INFERENCE=eager``
turns the copy off (prediction then runs the trained module itself), for diagnosis.
"""

from __future__ import annotations

import copy
import os

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from napari_cellfocus.engine.networks import DDTModel, ResidualUNet, UNet

__all__ = ["ENV_VAR", "fold_batch_norms", "inference_copy", "inference_enabled"]

#: Environment variable: ``eager`` predicts with the trained module as it is.
ENV_VAR = "CELLFOCUS_INFERENCE"

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

#: (convolution, normalisation) attribute pairs of the blocks whose forward applies the
#: normalisation straight to that convolution's output (``networks._DoubleConv``).
_FOLDABLE_PAIRS = (("conv1", "norm1"), ("conv2", "norm2"))


def inference_enabled() -> bool:
    """False when ``CELLFOCUS_INFERENCE=eager`` asks for the trained module itself."""
    return os.environ.get(ENV_VAR, "").strip().lower() != "eager"


def fold_batch_norms(model: nn.Module) -> int:
    """Fold, in place, every batch norm that directly follows a convolution of a block.

    Only the pairs named in :data:`_FOLDABLE_PAIRS` are folded: blocks whose forward is
    ``norm(conv(x))`` (the U-Net double convolution, also inside the DDT pair). Batch norms
    elsewhere (e.g. the residual counting U-Net's pre-activation units, where the norm comes
    before the convolution) are left as they are. ``model`` must be in eval mode (the
    running statistics are folded). Returns the number of folded pairs.
    """
    if model.training:
        raise ValueError("fold_batch_norms: the model must be in eval mode (model.eval()).")
    folded = 0
    for block in model.modules():
        before = folded
        for conv_name, norm_name in _FOLDABLE_PAIRS:
            conv = getattr(block, conv_name, None)
            norm = getattr(block, norm_name, None)
            if not (isinstance(conv, _CONVS) and isinstance(norm, _BATCH_NORMS)):
                continue
            if not norm.track_running_stats or norm.running_mean is None:
                continue  # batch statistics at inference: not an affine map, keep it
            setattr(block, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(block, norm_name, nn.Identity())
            folded += 1
        act = getattr(block, "act", None)
        if folded > before and isinstance(act, nn.ReLU):
            act.inplace = True
    return folded


def inference_copy(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """An eval-mode copy of ``model`` that computes the same logits faster.

    Parameters
    ----------
    model : a segmentation network of :mod:`.networks` (U-Net, residual U-Net, DDT pair);
        it is not changed. Any other module (a wrapper, a test double) is returned as it
        is, in eval mode: only these architectures are known to fold safely.
    device : where the copy runs (default: the model's device); channels-last is used for
        2D networks on the CPU only (on CUDA the layout is left to cuDNN's heuristics; 3D
        networks keep NCDHW until measured otherwise).

    Returns
    -------
    torch.nn.Module
        The copy (or ``model`` itself, in eval mode, when :func:`inference_enabled` is
        False or the architecture is not one of those above). Inputs keep their usual
        (N, C, *spatial) shape; outputs too.
    """
    if not inference_enabled() or not isinstance(model, (UNet, ResidualUNet, DDTModel)):
        return model.eval()
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    fast = copy.deepcopy(model).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    fold_batch_norms(fast)
    if device.type == "cpu" and int(getattr(fast, "dims", 2)) == 2:
        fast = fast.to(memory_format=torch.channels_last)
    return fast
