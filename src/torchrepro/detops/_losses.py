"""Deterministic NLL and cross-entropy losses: the target's term picked by a one-hot mask."""

from __future__ import annotations

import torch

from torchrepro.errors import ReplacementError


def _reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return torch.nn._reduction.legacy_get_string(size_average, reduce)
    if reduction not in ("none", "mean", "sum"):
        raise ReplacementError(f"reduction must be 'none', 'mean' or 'sum'; got {reduction!r}.")
    return reduction


def nll_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Deterministic `torch.nn.functional.nll_loss` (any number of spatial dimensions).

    Each target's log-probability is picked with a one-hot mask and an ordinary sum (exact:
    one term is not zero), so no atomic add is needed forward or backward. Like the native
    kernel it raises on a target out of range; that check reads one flag back to the host.

    Examples:
        >>> logp = torch.log_softmax(torch.zeros(2, 4), 1)
        >>> round(nll_loss(logp, torch.tensor([1, 3])).item(), 4)
        1.3863
    """
    how = _reduction(size_average, reduce, reduction)
    if input.dim() == 1:
        out = nll_loss(input[None], target[None], weight, None, ignore_index, None, how)
        return out[0] if how == "none" else out
    classes = input.shape[1]
    if target.shape != input.shape[:1] + input.shape[2:]:
        raise ReplacementError(
            f"nll_loss needs a target of shape {tuple(input.shape[:1] + input.shape[2:])} for "
            f"input of shape {tuple(input.shape)}; got {tuple(target.shape)}."
        )
    valid = target != ignore_index
    if bool((valid & ((target < 0) | (target >= classes))).any()):
        raise ReplacementError(
            f"nll_loss targets must lie in [0, {classes}) or equal ignore_index={ignore_index}; "
            "got a target out of that range. Check the labels and the number of classes."
        )
    shape = (1, classes) + (1,) * (input.dim() - 2)
    mask = target.unsqueeze(1) == torch.arange(classes, device=input.device).view(shape)
    picked = torch.where(mask, input, 0).sum(1)
    if weight is None:
        w = valid.to(input.dtype)
    else:
        w = torch.where(mask, weight.to(input.dtype).view(shape), 0).sum(1) * valid
    loss = -(w * picked)
    if how == "none":
        return loss
    if how == "sum":
        return loss.sum()
    return loss.sum() / w.sum()


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Deterministic `torch.nn.functional.cross_entropy` for class-index targets.

    `log_softmax` followed by the deterministic `nll_loss`, with label smoothing computed as
    ATen's `cross_entropy_loss_label_smoothing` does.

    Examples:
        >>> round(cross_entropy(torch.zeros(2, 4), torch.tensor([1, 3])).item(), 4)
        1.3863
    """
    if target.is_floating_point():
        raise ReplacementError(
            "cross_entropy's replacement takes class-index targets; got floating-point "
            "(probability) targets, which are deterministic already: call "
            "torch.nn.functional.cross_entropy."
        )
    how = _reduction(size_average, reduce, reduction)
    class_dim = 0 if input.dim() == 1 else 1
    logp = torch.log_softmax(input, class_dim)
    nll = nll_loss(logp, target, weight, None, ignore_index, None, how)
    if label_smoothing <= 0.0:
        return nll
    classes = input.shape[class_dim]
    if weight is not None:
        shape = [1] * input.dim()
        shape[class_dim] = classes
        smooth = -(logp * weight.to(logp.dtype).view(shape)).sum(class_dim)
    else:
        smooth = -logp.sum(class_dim)
    ignored = target == ignore_index
    smooth = smooth.masked_fill(ignored, 0.0)
    if how == "sum":
        smooth = smooth.sum()
    elif how == "mean":
        if weight is not None:
            kept = target.masked_select(~ignored).flatten()
            smooth = smooth.sum() / weight.to(logp.dtype).index_select(0, kept).sum()
        else:
            smooth = smooth.sum() / (~ignored).sum()
    return (1 - label_smoothing) * nll + smooth * (label_smoothing / classes)
