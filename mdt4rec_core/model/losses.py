"""Losses of MDT4Rec."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expectile_loss(target: torch.Tensor, prediction: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mean of |alpha - 1[u < 0]| * u^2 with u = target - prediction (any matching shapes).

    alpha > 0.5 penalises under-estimates more, so the prediction tracks an upper expectile of the target: the
    maximum return reachable in the data. At alpha = 0.5 it is half the mean squared error.
    """
    u = target - prediction
    weight = torch.abs(alpha - (u < 0).to(u.dtype))
    return (weight * u.square()).mean()


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``logits`` (..., C) against ``targets`` (...) over the positions where ``mask`` is true."""
    chosen = mask.reshape(-1)
    if not chosen.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1])[chosen], targets.reshape(-1)[chosen])


def return_bins(returns: torch.Tensor, max_return: float, bins: int) -> torch.Tensor:
    """Bin index of each return over [0, max_return] in ``bins`` equal bins (values outside are clipped)."""
    scaled = (returns.clamp(0, max_return) / max_return * bins).long()
    return scaled.clamp(max=bins - 1)


def trajectory_losses(output, batch, config, shape) -> dict[str, torch.Tensor]:
    """The trajectory part of the MDT4Rec loss for a ModelOutput and its TrajectoryBatch under a ModelConfig and the
    DataShape the network was sized by.

    Returns ``action`` (cross-entropy of the logged action, read from R_t, over every window), ``max_return``
    (expectile regression of the max-return head, read from s_t, towards R_t) and ``return_bin`` (cross-entropy of
    R_t's bin), both over the windows without targets (``batch.conditioned`` false: a head that saw the window's
    past returns-to-go could read R_t off R_{t-1} minus the last reward instead of estimating it), and ``total``
    (weighted as in ``config.loss``; the language-model term is added by the trainer).
    """
    mask = batch.step_mask
    action = masked_cross_entropy(output.action_logits, batch.actions.clamp(max=shape.items - 1), mask)
    head_mask = mask & ~batch.conditioned[:, None]
    scale = shape.max_return  # regress in [0, 1] units, so the term's size does not depend on episode length
    if head_mask.any():
        max_return = expectile_loss(
            batch.returns_to_go[head_mask] / scale, output.max_return[head_mask] / scale, config.loss.expectile
        )
    else:
        max_return = output.max_return.sum() * 0.0
    bins = return_bins(batch.returns_to_go, shape.max_return, config.return_bins)
    return_bin = masked_cross_entropy(output.return_bin_logits, bins, head_mask)
    total = action + config.loss.max_weight * max_return + config.loss.bin_weight * return_bin
    return {"action": action, "max_return": max_return, "return_bin": return_bin, "total": total}
