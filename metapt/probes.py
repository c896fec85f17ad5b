"""Support-batch gradients as flat vectors, for the first-order utilities (selection.py): which
parameters they cover (`[meta].selection_params`), how they are kept (exactly, or folded into a sketch
of `[meta].sketch` numbers), and their inner products.

A gradient of task s covers a *shared* part, the encoder parameters every task has (all of them, or
the top K transformer layers), and s's *own* head. Two gradients of different tasks meet only on the
shared part, so g . h = shared(g) . shared(h) (+ own(g) . own(h) when both are s's). The shared part
is what is large (the heads are small), so it is what a sketch folds: fresh random signs sigma (drawn
per selection) and v -> sum_k (sigma * v)[k d : (k + 1) d]. Then <S a, S b> is an unbiased estimate of
a . b whose error is about |a| |b| / sqrt(d) and independent from one selection to the next, and a
selection keeps d numbers per support batch instead of one model-sized gradient.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from metapt.model import MultiTaskModel

Params = dict[str, torch.Tensor]
LAYER = re.compile(r"\.layer\.(\d+)\.")  # BERT's and RoBERTa's transformer layers: encoder.encoder.layer.N.


def top_layers(rule: str) -> int | None:
    """`all` -> None; `top:K` -> K (K >= 1). Raises ValueError otherwise."""
    if rule == "all":
        return None
    head, _, k = rule.partition(":")
    if head != "top" or not k.isdigit() or int(k) < 1:
        raise ValueError(f"selection_params {rule!r}: expected 'all' or 'top:K' with K >= 1, e.g. 'top:1'")
    return int(k)


def shared_names(model: MultiTaskModel, rule: str) -> list[str]:
    """The encoder parameters a selection's gradients cover, in the model's order: every one (`all`),
    or those of the top K transformer layers (`top:K`; never the embeddings, so the MLM decoder tied
    to the word embeddings stays fixed)."""
    names = list(model.encoder_parameters())
    k = top_layers(rule)
    if k is None:
        return names
    layers = [int(m.group(1)) if (m := LAYER.search(n)) else -1 for n in names]
    first = max(layers) - k + 1
    return [n for n, layer in zip(names, layers) if layer >= first]


def selected(model: MultiTaskModel, task: str, rule: str = "all") -> list[str]:
    """Names of the parameters a selection differentiates for `task`: the shared part and its head."""
    return [*shared_names(model, rule), *model.head_parameters(task)]


@dataclass
class Probe:
    """One batch's gradient: the shared part (flat, or its sketch) and the task's head (flat)."""

    task: str
    shared: torch.Tensor  # (P,) or (d,) float32
    own: torch.Tensor  # (P_head,) float32
    norm: float  # |shared part| before any sketch (float64): the normalized inner step divides by it
    loss: float


class Sketch:
    """Random-sign folding of P numbers into d (module docstring); `dim` = 0 keeps them as they are."""

    def __init__(self, numel: int, dim: int, generator: torch.Generator | None, device: torch.device):
        self.numel, self.dim = numel, dim if 0 < dim < numel else 0
        self.signs = None
        if self.dim:
            bits = torch.randint(0, 2, (numel,), generator=generator, dtype=torch.int8)
            self.signs = bits.to(device=device, dtype=torch.float32).mul_(2).sub_(1)  # (P,) +-1

    @property
    def width(self) -> int:
        """How many numbers a probe's shared part keeps."""
        return self.dim or self.numel

    def fold(self, flat: torch.Tensor, out: torch.Tensor) -> None:
        """out (width,) = the sketch of flat (P,); flat is overwritten when sketching."""
        if not self.dim:
            out.copy_(flat)
            return
        d, whole = self.dim, self.numel // self.dim * self.dim
        flat.mul_(self.signs)
        torch.sum(flat[:whole].view(-1, d), dim=0, out=out)
        out[: self.numel - whole] += flat[whole:]


def flatten(grads: Params, names: list[str], shapes: dict[str, torch.Size], out: torch.Tensor) -> None:
    """Write the gradients of `names` one after another into out (P,); a missing one is zeros."""
    parts = [grads[n].reshape(-1) if n in grads else out.new_zeros(shapes[n].numel()) for n in names]
    torch.cat(parts, out=out)


class Store:
    """The probes of one selection: a (K, width) matrix of shared parts, filled row by row, with one
    model-sized buffer for the batch being flattened. `norms`: also measure |shared part| (for the
    normalized inner step)."""

    def __init__(
        self,
        model: MultiTaskModel,
        rule: str,
        rows: int,
        sketch: int = 0,
        generator: torch.Generator | None = None,
        norms: bool = False,
    ):
        self.model, self.names, self.norms = model, shared_names(model, rule), norms
        self.shapes = {n: p.shape for n, p in model.named_parameters()}
        self.heads: dict[str, list[str]] = {}
        numel = sum(self.shapes[n].numel() for n in self.names)
        device = next(model.parameters()).device
        self.sketch = Sketch(numel, sketch, generator, device)
        self.buffer = torch.empty(numel, device=device) if self.sketch.dim else None
        self.matrix = torch.empty(rows, self.sketch.width, device=device)  # (K, width)
        self.scratch: torch.Tensor | None = None  # the shared part of a probe that is not kept
        self.probes: list[Probe] = []

    def head(self, task: str) -> list[str]:
        """The names of `task`'s head parameters."""
        if task not in self.heads:
            self.heads[task] = list(self.model.head_parameters(task))
        return self.heads[task]

    def selected(self, task: str) -> list[str]:
        """What a probe of `task` differentiates: the shared part and its head."""
        return [*self.names, *self.head(task)]

    def add(self, task: str, grads: Params, loss: float, keep: bool = True) -> Probe:
        """One batch's gradient as a probe (its shared part flattened or sketched, its head
        flattened); kept in the store (a row of the matrix), or in a scratch row the next probe reuses."""
        if keep:
            row = self.matrix[len(self.probes)]
        else:
            if self.scratch is None:
                self.scratch = torch.empty(self.sketch.width, device=self.matrix.device)
            row = self.scratch
        flat = row if self.buffer is None else self.buffer
        flatten(grads, self.names, self.shapes, flat)
        norm = float(torch.sum(flat * flat, dtype=torch.float64)) ** 0.5 if self.norms else float("nan")
        self.sketch.fold(flat, row)
        heads = self.head(task)
        own = torch.empty(sum(self.shapes[n].numel() for n in heads), device=row.device)
        flatten(grads, heads, self.shapes, own)
        probe = Probe(task, row, own, norm, loss)
        if keep:
            self.probes.append(probe)
        return probe

    def add_given(self, probe: Probe) -> None:
        """Keep a probe computed before as a flat, unsketched gradient (e.g. a training batch's)."""
        row = self.matrix[len(self.probes)]
        if self.buffer is None:
            row.copy_(probe.shared)
        else:
            self.buffer.copy_(probe.shared)
            self.sketch.fold(self.buffer, row)
        self.probes.append(Probe(probe.task, row, probe.own, probe.norm, probe.loss))

    def dots(self, probe: Probe) -> torch.Tensor:
        """(K,) float64: probe . every kept probe (the heads count where the tasks are the same)."""
        out = (self.matrix[: len(self.probes)] @ probe.shared).double()
        same = [k for k, other in enumerate(self.probes) if other.task == probe.task]
        if same:
            heads = torch.stack([self.probes[k].own for k in same])  # (k_t, P_head)
            out[same] += (heads.double() @ probe.own.double()).view(-1)
        return out

    def gram(self) -> torch.Tensor:
        """(K, K) float64 inner products of every kept probe with every other."""
        kept = self.matrix[: len(self.probes)]
        out = (kept @ kept.t()).double()
        for task in dict.fromkeys(p.task for p in self.probes):
            rows = [k for k, p in enumerate(self.probes) if p.task == task]
            heads = torch.stack([self.probes[k].own for k in rows]).double()  # (k_t, P_head)
            index = torch.tensor(rows)
            out[index.unsqueeze(1), index] += heads @ heads.t()
        return out


def capture(model: MultiTaskModel, task: str, rule: str, loss: float) -> Probe:
    """The gradients on the model's parameters now (a training step's, before clipping) as a flat
    probe of `task`, as a selection with `rule` would take them (copies)."""
    live = dict(model.named_parameters())

    def flat(names: list[str]) -> torch.Tensor:
        parts = [live[n].grad if live[n].grad is not None else torch.zeros_like(live[n]) for n in names]
        return torch.cat([p.reshape(-1) for p in parts]).float()

    shared = flat(shared_names(model, rule))
    own = flat(list(model.head_parameters(task)))
    return Probe(task, shared, own, float(torch.sum(shared * shared, dtype=torch.float64)) ** 0.5, loss)


def state_of(kept: dict[str, list[Probe]] | None) -> dict:
    """Kept probes as a checkpoint stores them (tensors on CPU, numbers)."""
    return {
        task: [{"shared": p.shared.cpu(), "own": p.own.cpu(), "norm": p.norm, "loss": p.loss} for p in ps]
        for task, ps in (kept or {}).items()
    }


def from_state(state: dict, device: torch.device) -> dict[str, list[Probe]] | None:
    """The inverse of `state_of` (None when nothing was kept)."""
    kept = {
        task: [Probe(task, p["shared"].to(device), p["own"].to(device), p["norm"], p["loss"]) for p in ps]
        for task, ps in state.items()
    }
    return kept or None
