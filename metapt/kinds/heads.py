"""Task heads: small modules on top of the encoder's hidden states, keyed by `[head].type`.

Every head has the same call: forward(hidden (N, T, H), batch, embedding (V, H)) -> logits.
`embedding` is the encoder's input embedding matrix (the MLM head ties its decoder to it); the
model passes it so tying also holds inside `torch.func.functional_call`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Batch = dict[str, torch.Tensor]


class MLMHead(nn.Module):
    """BERT's prediction head, scoring only the masked positions (labels != -100)."""

    def __init__(self, hidden: int, vocab_size: int, dropout: float = 0.0):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, batch: Batch, embedding: torch.Tensor) -> torch.Tensor:
        selected = hidden[batch["labels"] != -100]  # (M, H): the vocabulary projection is the cost
        x = self.norm(F.gelu(self.dense(selected)))
        return x @ embedding.t() + self.bias  # (M, V)


class Pooled(nn.Module):
    """The first token's state through dense + tanh, as BERT's pooler, then a linear layer."""

    def __init__(self, hidden: int, outputs: int, dropout: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, outputs)

    def forward(self, hidden: torch.Tensor, batch: Batch, embedding: torch.Tensor) -> torch.Tensor:
        pooled = torch.tanh(self.dense(self.dropout(hidden[:, 0])))  # (N, H)
        return self.out(self.dropout(pooled))  # (N, outputs)


class SequenceClassificationHead(Pooled):
    """Pooled classifier: (N, num_labels)."""

    def __init__(self, hidden: int, num_labels: int, dropout: float = 0.1):
        super().__init__(hidden, num_labels, dropout)


class RegressionHead(Pooled):
    """Pooled regressor: (N,)."""

    def __init__(self, hidden: int, num_labels: int = 1, dropout: float = 0.1):
        super().__init__(hidden, 1, dropout)

    def forward(self, hidden: torch.Tensor, batch: Batch, embedding: torch.Tensor) -> torch.Tensor:
        return super().forward(hidden, batch, embedding).squeeze(-1)


class MultipleChoiceHead(Pooled):
    """One score per (context, candidate) sequence, reshaped to (B, C); padded candidates get -inf."""

    def __init__(self, hidden: int, num_labels: int = 1, dropout: float = 0.1):
        super().__init__(hidden, 1, dropout)

    def forward(self, hidden: torch.Tensor, batch: Batch, embedding: torch.Tensor) -> torch.Tensor:
        mask = batch["choice_mask"]  # (B, C) bool: which candidates are real
        scores = super().forward(hidden, batch, embedding).view(mask.shape)  # (B, C)
        return scores.masked_fill(~mask, torch.finfo(scores.dtype).min)


class TokenClassificationHead(nn.Module):
    """A per-token tagger: (N, T, num_labels)."""

    def __init__(self, hidden: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, hidden: torch.Tensor, batch: Batch, embedding: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(hidden))


class PredicateTaggerHead(TokenClassificationHead):
    """SRL tagger: a learned predicate-indicator embedding is added before tagging."""

    def __init__(self, hidden: int, num_labels: int, dropout: float = 0.1):
        super().__init__(hidden, num_labels, dropout)
        self.indicator = nn.Embedding(2, hidden)

    def forward(self, hidden: torch.Tensor, batch: Batch, embedding: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.indicator(batch["predicate_mask"].long())  # (N, T, H)
        return super().forward(hidden, batch, embedding)


class SpanPointerHead(nn.Module):
    """Start/end pointer: (N, T, 2); positions outside the attention mask cannot be chosen."""

    def __init__(self, hidden: int, num_labels: int = 2, dropout: float = 0.0):
        super().__init__()
        self.out = nn.Linear(hidden, 2)

    def forward(self, hidden: torch.Tensor, batch: Batch, embedding: torch.Tensor) -> torch.Tensor:
        logits = self.out(hidden)  # (N, T, 2)
        pad = batch["attention_mask"].unsqueeze(-1) == 0
        return logits.masked_fill(pad, torch.finfo(logits.dtype).min)


class DualEncoderHead(nn.Module):
    """In-batch ranking: the first half of the sequences are contexts, the second their responses.
    Returns (B, B) cosine similarities times a learned inverse temperature (initially 20, as in
    contrastive sentence encoders); row i's correct column is i."""

    def __init__(self, hidden: int, num_labels: int = 1, dropout: float = 0.1):
        super().__init__()
        self.context = nn.Linear(hidden, hidden)
        self.response = nn.Linear(hidden, hidden)
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def forward(self, hidden: torch.Tensor, batch: Batch, embedding: torch.Tensor) -> torch.Tensor:
        contexts, responses = hidden[:, 0].chunk(2)  # (B, H) each
        c = F.normalize(self.context(contexts), dim=-1)
        r = F.normalize(self.response(responses), dim=-1)
        return c @ r.t() * self.log_scale.exp().clamp(max=100.0)  # (B, B)


class EntityPairHead(nn.Module):
    """Relation classifier over the states at the head and tail entity markers: (N, num_labels)."""

    def __init__(self, hidden: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, num_labels)

    def forward(self, hidden: torch.Tensor, batch: Batch, embedding: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        pair = torch.cat([hidden[rows, batch["head_positions"]], hidden[rows, batch["tail_positions"]]], -1)
        return self.out(self.dropout(F.gelu(self.dense(self.dropout(pair)))))  # (N, C)


HEADS: dict[str, type[nn.Module]] = {
    "mlm": MLMHead,
    "sequence_classification": SequenceClassificationHead,
    "regression": RegressionHead,
    "multiple_choice": MultipleChoiceHead,
    "token_classification": TokenClassificationHead,
    "predicate_tagger": PredicateTaggerHead,
    "span_pointer": SpanPointerHead,
    "dual_encoder": DualEncoderHead,
    "entity_pair": EntityPairHead,
}
