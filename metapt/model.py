"""One encoder plus an `nn.ModuleDict` of heads keyed by task name; forward(task, batch) -> (loss, logits)."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from metapt.errors import MetaptError
from metapt.kinds.losses import LOSSES
from metapt.spec import ModelSpec

Batch = dict[str, torch.Tensor]
POOLER = "metapt_pooler"  # encoder attribute: the pooler weights it was loaded with (see saved_state)


def new_encoder(spec: ModelSpec, vocab_size: int, pad_id: int) -> nn.Module:
    """A randomly initialised BERT or RoBERTa encoder (no pooler: heads pool themselves)."""
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    common = dict(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.intermediate_size,
        hidden_dropout_prob=spec.dropout,
        attention_probs_dropout_prob=spec.dropout,
        pad_token_id=pad_id,
    )
    if spec.architecture == "roberta":
        # RoBERTa offsets positions by pad_id + 1, so it needs that many extra rows.
        config = RobertaConfig(
            max_position_embeddings=spec.max_length + pad_id + 2, type_vocab_size=2, **common
        )
        return RobertaModel(config, add_pooling_layer=False)
    return BertModel(BertConfig(max_position_embeddings=spec.max_length, **common), add_pooling_layer=False)


def load_encoder(name_or_dir: str) -> nn.Module:
    """A pretrained encoder by hub id or local folder (a metapt checkpoint is such a folder)."""
    from transformers import AutoModel

    name_or_dir = os.path.expanduser(name_or_dir)  # "~/ckpt" is a folder (no hub id starts with ~)
    try:
        encoder = AutoModel.from_pretrained(name_or_dir)
    except (OSError, ValueError) as e:
        raise MetaptError(
            f"cannot load an encoder from {name_or_dir!r}: {e}. Give a folder with config.json "
            "and model.safetensors (e.g. a metapt checkpoint), or a hub id while online."
        ) from None
    except Exception as e:  # safetensors' and torch's own errors for a truncated or corrupt file
        raise MetaptError(
            f"cannot load an encoder from {name_or_dir!r}: its weights are corrupt or truncated "
            f"({type(e).__name__}: {e}). Restore model.safetensors, or use another checkpoint."
        ) from None
    if getattr(encoder, "pooler", None) is not None:  # heads pool themselves: an unused pooler
        # would only add parameters that never get a gradient; its weights are kept aside (a plain
        # dict, not parameters) so that a checkpoint saves them back unchanged
        setattr(
            encoder,
            POOLER,
            {f"pooler.{k}": v.detach().cpu().clone() for k, v in encoder.pooler.state_dict().items()},
        )
        encoder.pooler = None
    return encoder


def saved_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint writes of an encoder: its weights plus the pooler its architecture expects,
    so `AutoModel.from_pretrained` finds every weight. The pooler is the one the encoder was loaded
    with, else an untrained one as the architecture initialises it (normal(0, initializer_range)
    weight, zero bias; seeded, so saving twice writes the same)."""
    state = encoder.state_dict()
    if not hasattr(encoder, "pooler") or encoder.pooler is not None:  # no pooler slot, or it is saved
        return state
    if kept := getattr(encoder, POOLER, None):
        return {**state, **kept}
    config = encoder.config
    if config.model_type not in ("bert", "roberta"):  # pooler.dense is BERT's and RoBERTa's layout
        return state
    h = config.hidden_size
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(h, h, generator=g) * config.initializer_range  # (H, H)
    return {**state, "pooler.dense.weight": weight, "pooler.dense.bias": torch.zeros(h)}


class MultiTaskModel(nn.Module):
    """The shared encoder and one head per task; each task's loss type and label smoothing."""

    def __init__(self, encoder: nn.Module, heads: dict[str, nn.Module], losses: dict[str, tuple[str, float]]):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict(heads)
        self.losses = dict(losses)

    def encode(self, batch: Batch) -> torch.Tensor:
        """Hidden states (N, T, H) of the batch's sequences."""
        types = batch.get("token_type_ids")
        if getattr(self.encoder.config, "type_vocab_size", 2) < 2:  # pretrained RoBERTa has one segment type
            types = None
        out = self.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=types
        )
        return out.last_hidden_state

    def forward(
        self, task: str, batch: Batch, detach_encoder: bool = False, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits) of one task on one batch; `detach_encoder` trains the head alone, on the
        encoder's `hidden` states (N, T, H) when they were computed before."""
        if hidden is not None:
            detach_encoder = True
        elif detach_encoder:
            with torch.no_grad():
                hidden = self.encode(batch)
        else:
            hidden = self.encode(batch)
        embedding = self.encoder.get_input_embeddings().weight  # (V, H): tied MLM decoder
        if detach_encoder:  # the tied decoder is the encoder's too: a head-only step must not train it
            embedding = embedding.detach()
        logits = self.heads[task](hidden, batch, embedding)
        loss_type, smoothing = self.losses[task]
        return LOSSES[loss_type](logits, batch, smoothing), logits

    def encoder_parameters(self) -> dict[str, nn.Parameter]:
        """The encoder's parameters by their names in this model."""
        return {f"encoder.{k}": p for k, p in self.encoder.named_parameters()}

    def head_parameters(self, task: str) -> dict[str, nn.Parameter]:
        """One head's parameters by their names in this model."""
        return {f"heads.{task}.{k}": p for k, p in self.heads[task].named_parameters()}


def count_parameters(module: nn.Module, exclude_embeddings: bool = False) -> int:
    """Number of parameters (optionally without the embedding tables, as FLOP estimates use)."""
    total = 0
    for name, p in module.named_parameters():
        if exclude_embeddings and "embeddings" in name:
            continue
        total += p.numel()
    return total


def batch_to(batch: Batch, device: Any) -> Batch:
    """Move every tensor of a batch to `device`."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
