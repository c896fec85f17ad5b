"""Tokenizers: a WordPiece trained on the sources' text, or a pretrained one from the hub or a folder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from metapt.errors import MetaptError

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BLANK]"]  # [BLANK]: span selection's gap


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> Any:
    """A BERT-style WordPiece fast tokenizer whose vocabulary is built from `texts`, deterministically.

    The vocabulary is the special tokens, every character seen (alone and as a ##continuation, so no
    word is ever unknown), then the most frequent words, ties broken alphabetically. The tokenizers
    library's own WordPiece trainer is not used because it breaks ties differently in every process
    (huggingface/tokenizers#1794), which would make two runs with the same seed differ.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = list(dict.fromkeys([*SPECIAL, *chars, *(f"##{c}" for c in chars)]))
    ranked = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))
    vocab += [w for w, _ in ranked if w not in vocab][: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, splitter
    tok.add_special_tokens(SPECIAL)
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        additional_special_tokens=["[BLANK]"],
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def load_tokenizer(name_or_dir: str) -> Any:
    """A pretrained fast tokenizer by hub id or local folder; a clear error when it cannot be found."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name_or_dir)
    except Exception as e:  # a local folder's tokenizer files that transformers cannot parse
        if not isinstance(e, (OSError, ValueError)) and not Path(name_or_dir).is_dir():
            raise
        raise MetaptError(
            f"cannot load a tokenizer from {name_or_dir!r}: {e}. Give a local folder "
            "with tokenizer files, or a hub id while online."
        ) from None
    if not tok.is_fast:
        raise MetaptError(f"the tokenizer of {name_or_dir!r} is not a fast tokenizer (offsets are needed)")
    return tok
