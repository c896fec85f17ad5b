"""A selection's utilities as an estimate with error bars: the per-(support batch, target batch) terms
behind each u(s), and the standard errors of one utility and of the gap between two, from a two-way
random-effects decomposition, or a jackknife for the shared (agnostic) estimate."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Estimate:
    """One selection's utilities, as Algorithm 1 sums them, and the per-batch terms behind them."""

    values: dict[str, float]  # u(s)
    terms: dict[str, torch.Tensor]  # s -> (M, J) float64: u(s) = M * offset + terms[s].sum()
    columns: list[str]  # the target task of each of the J columns
    target_loss: float  # mean target loss at theta (what the run logs as target_loss)
    floor: float | None = None  # rounding resolution of a value (exact: a difference of losses)
    gradients: dict[str, dict[str, torch.Tensor]] = field(
        default_factory=dict
    )  # first order: sum_i g_s^i per source
    # shared (agnostic): the terms' part of u(s) recomputed without the m-th support batch of every
    # source, one per m (the target batches are the support batches: rows and columns are not
    # independent draws, so the two-way decomposition does not apply; a jackknife does)
    replicates: dict[str, torch.Tensor] | None = None

    def se(self, source: str) -> float | None:
        """Standard error of u(source) over its support and target batches; None with one support batch
        (with the shared estimate: fewer than three)."""
        if self.replicates is not None:
            return _jackknife(self.replicates.get(source))
        return _standard_error(self.terms[source], None, self.columns)

    def gap_se(self, a: str, b: str) -> float | None:
        """Standard error of u(a) - u(b): the target batches are shared, so their columns pair up."""
        if self.replicates is not None:
            ra, rb = self.replicates.get(a), self.replicates.get(b)
            return None if ra is None or rb is None else _jackknife(ra - rb)
        return _standard_error(self.terms[a], self.terms[b], self.columns)


def _jackknife(replicates: torch.Tensor | None) -> float | None:
    """The delete-one jackknife standard error from M leave-one-out values (None below M = 3)."""
    if replicates is None or len(replicates) < 3:
        return None
    m = len(replicates)
    return float(((m - 1) / m * ((replicates - replicates.mean()) ** 2).sum()) ** 0.5)


def _standard_error(a: torch.Tensor, b: torch.Tensor | None, columns: list[str]) -> float | None:
    """SE of sum(a) - sum(b) for (M, J) term matrices of independent support batches (rows) and
    shared target batches (columns), from a two-way random-effects decomposition: the support side
    M var(row sums), the target side J_t var(column sums) within each target task t, minus the
    interaction that both count. Needs M >= 2 (one support batch says nothing about the next)."""
    m, j = a.shape
    if m < 2:
        return None
    var = m * a.sum(1).var() + (0.0 if b is None else m * b.sum(1).var())
    cols = a.sum(0) - (0.0 if b is None else b.sum(0))  # (J,)
    target_side = 0.0
    for task in dict.fromkeys(columns):
        c = cols[[k for k, t in enumerate(columns) if t == task]]
        target_side += len(c) * c.var() if len(c) > 1 else 0.0
    if j > 1:
        interaction = sum(m * j * _residual(x) for x in (a, b) if x is not None)
        var = max(var + target_side - interaction, var, target_side)
    return float(var) ** 0.5


def _residual(x: torch.Tensor) -> torch.Tensor:
    """The mean square of a two-way additive fit's residual (the interaction variance)."""
    m, j = x.shape
    e = x - x.mean(1, keepdim=True) - x.mean(0, keepdim=True) + x.mean()
    return (e**2).sum() / ((m - 1) * (j - 1))
