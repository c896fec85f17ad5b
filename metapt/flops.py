"""FLOP estimates per batch, so selection and training costs can be compared and budgeted.

Forward FLOPs ~ 2 x (non-embedding encoder parameters) x tokens + attention (4 x layers x hidden x
sum of squared sequence lengths) + the head's matrix products; a training step is 3 x forward
(the backward pass costs about twice the forward). Counts use real (unpadded) lengths.
"""

from __future__ import annotations

import torch

from metapt.model import MultiTaskModel, count_parameters


class FlopCounter:
    """Estimates for one model; cheap enough to call on every batch."""

    def __init__(self, model: MultiTaskModel):
        cfg = model.encoder.config
        self.layers, self.hidden = cfg.num_hidden_layers, cfg.hidden_size
        self.vocab = cfg.vocab_size
        self.encoder_params = count_parameters(model.encoder, exclude_embeddings=True)
        self.head_params = {t: count_parameters(h) for t, h in model.heads.items()}

    def forward(self, task: str, batch: dict[str, torch.Tensor]) -> int:
        """FLOPs of one forward pass of `task` on `batch`."""
        lengths = batch["attention_mask"].sum(dim=1).double()
        tokens = float(lengths.sum())
        flops = 2 * self.encoder_params * tokens + 4 * self.layers * self.hidden * float((lengths**2).sum())
        return int(flops) + self.head(task, batch)

    def head(self, task: str, batch: dict[str, torch.Tensor]) -> int:
        """FLOPs of `task`'s head alone on `batch` (a forward pass over hidden states computed before)."""
        if (
            "labels" in batch
            and batch["labels"].dim() == 2
            and batch["input_ids"].shape == batch["labels"].shape
        ):
            selected = float((batch["labels"] != -100).sum())  # token-level heads score these positions
        else:
            selected = float(batch["input_ids"].shape[0])
        head = self.head_params[task]
        if self.head_params[task] > self.vocab * self.hidden // 2:  # the MLM decoder is tied: count V x H
            head += self.vocab * self.hidden
        return int(2 * head * selected)

    def train(self, task: str, batch: dict[str, torch.Tensor]) -> int:
        """FLOPs of a forward and backward pass."""
        return 3 * self.forward(task, batch)


def tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (unpadded) tokens in a batch."""
    return int(batch["attention_mask"].sum())
