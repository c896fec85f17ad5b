"""Loss functions keyed by `[loss].type`: (logits, batch, label_smoothing) -> scalar tensor."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Batch = dict[str, torch.Tensor]


def cross_entropy(logits: torch.Tensor, batch: Batch, smoothing: float) -> torch.Tensor:
    """Cross-entropy over the last dimension; label -100 is ignored."""
    labels = batch["labels"]
    if logits.shape[:-1] != labels.shape:  # the MLM head scores only the masked positions
        labels = labels[labels != -100]
    if not (labels != -100).any():  # nothing to learn here (e.g. no candidate matches): zero, not NaN
        return logits.sum() * 0.0
    return F.cross_entropy(
        logits.flatten(0, -2).float(), labels.flatten(), ignore_index=-100, label_smoothing=smoothing
    )


def mse(logits: torch.Tensor, batch: Batch, smoothing: float) -> torch.Tensor:
    """Mean squared error of a regression head's (N,) outputs."""
    return F.mse_loss(logits.float(), batch["labels"].float())


def contrastive(logits: torch.Tensor, batch: Batch, smoothing: float) -> torch.Tensor:
    """In-batch ranking: row i of the (B, B) scores should pick column i. Columns marked in
    batch["same_response"] (another row's response identical to row i's) are no negatives and left
    out, label smoothing included."""
    scores = logits.float()
    target = torch.arange(scores.shape[0], device=scores.device)
    same = batch.get("same_response")
    if same is None or not same.any():  # the usual batch: plain cross-entropy, bit for bit
        return F.cross_entropy(scores, target, label_smoothing=smoothing)
    allowed = ~same.to(scores.device)  # (B, B)
    logp = scores.masked_fill(~allowed, float("-inf")).log_softmax(-1)  # (B, B)
    nll = -logp[target, target]  # (B,)
    uniform = -logp.masked_fill(~allowed, 0.0).sum(-1) / allowed.sum(-1)  # (B,): smoothing's part
    return ((1 - smoothing) * nll + smoothing * uniform).mean()


def span_cross_entropy(logits: torch.Tensor, batch: Batch, smoothing: float) -> torch.Tensor:
    """Mean of the start and end pointers' cross-entropies over (N, T, 2) logits."""
    start, end = logits.float().unbind(-1)  # (N, T) each
    return (
        F.cross_entropy(start, batch["start_positions"], label_smoothing=smoothing)
        + F.cross_entropy(end, batch["end_positions"], label_smoothing=smoothing)
    ) / 2


LOSSES: dict[str, Callable[[torch.Tensor, Batch, float], torch.Tensor]] = {
    "cross_entropy": cross_entropy,
    "mse": mse,
    "contrastive": contrastive,
    "span_cross_entropy": span_cross_entropy,
}
