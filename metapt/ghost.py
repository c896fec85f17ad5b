"""The "ghost" inner product of two batches' gradients (GREATS, GhostSuite), measured for `metapt
bench`: for a linear layer y = x W^T with inputs a_i and output gradients d_i over a batch's N tokens,
grad W = sum_i d_i a_i^T, so

    <grad_1 W, grad_2 W> = sum_ij (a_i . b_j) (d_i . e_j) = sum((A B^T) * (D E^T))

from the activations and output gradients alone, without forming either gradient. A selection would
keep N (d_in + d_out) numbers per layer and batch instead of d_in d_out, and pay 2 N1 N2 (d_in + d_out)
multiply-adds per pair instead of d_in d_out: it pays when a batch has fewer tokens than
d_in d_out / (d_in + d_out) (e.g. 102 for a 128 x 512 layer, 614 for BERT-base's 768 x 3072), i.e.
per example or for short probes, not for batches of sequences. The measurement takes the
encoder's linear layers on two batches of one source (the model in eval mode, its weights untouched)
and compares bytes, seconds and values with the materialised gradients."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from metapt.model import MultiTaskModel

Batch = dict[str, torch.Tensor]


def _factors(model: MultiTaskModel, task: str, batch: Batch) -> tuple[dict, dict]:
    """(name -> (A (N, d_in), D (N, d_out)) of every encoder linear layer over the batch's N real
    tokens, name -> the gradient of its weight)."""
    layers = {n: m for n, m in model.encoder.named_modules() if isinstance(m, nn.Linear)}
    saved: dict[str, list] = {n: [] for n in layers}

    def hook(name: str) -> Any:
        def forward(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            saved[name].append(inputs[0].detach().reshape(-1, module.in_features))
            output.register_hook(lambda g: saved[name].append(g.detach().reshape(-1, module.out_features)))

        return forward

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        loss = model(task, batch)[0]
        weights = [m.weight for m in layers.values()]
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    # padding positions get no output gradient (nothing reads them), so only real tokens are kept
    real = batch["attention_mask"].reshape(-1).bool()  # (N,)
    factors = {n: (saved[n][0][real], saved[n][1][real]) for n in layers if len(saved[n]) == 2}
    return factors, {n: g for n, g in zip(layers, grads) if g is not None}


def measure(
    model: MultiTaskModel, task: str, first: Batch, second: Batch, repeats: int = 3
) -> dict[str, Any]:
    """Ghost vs materialised inner products of two batches' encoder linear-layer gradients: bytes kept
    per batch, seconds per pair, the largest relative difference, and the tokens per batch below
    which the ghost form keeps fewer numbers (for the largest layer)."""
    model.eval()
    try:
        fa, ga = _factors(model, task, first)
        fb, gb = _factors(model, task, second)
    finally:
        model.train()
    names = [n for n in fa if n in fb and n in ga and n in gb]

    def ghost() -> float:
        return float(sum(torch.sum((fa[n][0] @ fb[n][0].t()) * (fa[n][1] @ fb[n][1].t())) for n in names))

    def materialised() -> float:
        return float(sum(torch.sum(ga[n] * gb[n], dtype=torch.float64) for n in names))

    def timed(fn: Any) -> tuple[float, float]:
        t0 = time.perf_counter()
        for _ in range(repeats):
            value = fn()
        return value, (time.perf_counter() - t0) / repeats

    g_value, g_seconds = timed(ghost)
    m_value, m_seconds = timed(materialised)
    per_layer = [
        abs(_ghost_layer(fa[n], fb[n]) - float(torch.sum(ga[n] * gb[n], dtype=torch.float64))) for n in names
    ]
    scale = float(sum(ga[n].norm() * gb[n].norm() for n in names))
    largest = max(names, key=lambda n: ga[n].numel())
    d_out, d_in = ga[largest].shape
    return {
        "ghost_layers": len(names),
        "ghost_tokens": int(fa[names[0]][0].shape[0]),
        "ghost_factor_bytes": sum(4 * (a.numel() + d.numel()) for a, d in fa.values()),
        "ghost_gradient_bytes": sum(4 * ga[n].numel() for n in names),
        "ghost_pair_seconds": g_seconds,
        "materialised_pair_seconds": m_seconds,
        "ghost_value": g_value,
        "materialised_value": m_value,
        "ghost_max_error": max(per_layer) / scale if scale > 0 else 0.0,
        "ghost_breakeven_tokens": d_in * d_out / (d_in + d_out),
    }


def _ghost_layer(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    return float(torch.sum((a[0] @ b[0].t()).double() * (a[1] @ b[1].t()).double()))
