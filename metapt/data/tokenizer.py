"""Tokenizers: a WordPiece trained on the sources' text, or a pretrained one from the hub or a folder."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from metapt.errors import MetaptError, first_line

log = logging.getLogger(__name__)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[BLANK]"]  # [BLANK]: span selection's gap


def train_wordpiece(texts: Iterable[str], vocab_size: int, lowercase: bool = True) -> Any:
    """A BERT-style WordPiece fast tokenizer whose vocabulary is built from `texts`, deterministically.

    The vocabulary is the special tokens, every character seen (alone and as a ##continuation, so no
    word is ever unknown), then the most frequent words, ties broken alphabetically; it never holds
    more than `vocab_size` entries: when the characters alone do not fit, the rarest are left out
    (they read as [UNK], as with the tokenizers library's `limit_alphabet`) and a warning says so.
    The tokenizers library's own WordPiece trainer is not used because it breaks ties differently in
    every process (huggingface/tokenizers#1794), which would make two runs with the same seed differ.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    splitter = pre_tokenizers.BertPreTokenizer()
    words: Counter[str] = Counter()
    for text in texts:
        words.update(w for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = _alphabet(words, vocab_size)
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


def _alphabet(words: Counter[str], vocab_size: int) -> list[str]:
    """The characters of `words` that fit beside the special tokens, each alone and as a ##piece:
    all of them when they fit, else the most frequent (ties alphabetically); sorted."""
    counts: Counter[str] = Counter()
    for w, n in words.items():
        for c in w:
            counts[c] += n
    room = max(0, (vocab_size - len(SPECIAL)) // 2)
    if len(counts) <= room:
        return sorted(counts)
    kept = sorted(sorted(counts, key=lambda c: (-counts[c], c))[:room])
    log.warning(
        "tokenizer: the text has %d distinct characters, but vocab_size %d holds %d beside the special "
        "tokens; the %d rarest read as [UNK] (raise [tokenizer].vocab_size to %d to keep them all)",
        len(counts),
        vocab_size,
        room,
        len(counts) - room,
        len(SPECIAL) + 2 * len(counts),
    )
    return kept


def load_tokenizer(name_or_dir: str) -> Any:
    """A pretrained fast tokenizer by hub id or local folder; a clear error when it cannot be found."""
    from transformers import AutoTokenizer

    hint = "Give a local folder with tokenizer files, or a hub id while online."
    name_or_dir = os.path.expanduser(name_or_dir)  # "~/tok" is a folder (no hub id starts with ~)
    if not Path(name_or_dir).exists():
        if _is_path(name_or_dir):  # transformers would call it a malformed repo id
            raise MetaptError(f"cannot load a tokenizer from {name_or_dir!r}: no such folder. {hint}")
        # maybe a hub id: say what the hub said, on one line
        try:
            return _fast(AutoTokenizer.from_pretrained(name_or_dir), name_or_dir)
        except (OSError, ValueError) as e:
            raise MetaptError(
                f"cannot load a tokenizer from {name_or_dir!r}: no such folder, and the hub did not "
                f"provide it ({first_line(e).rstrip('.')}). {hint}"
            ) from None
    try:
        tok = AutoTokenizer.from_pretrained(name_or_dir)
    except Exception as e:  # a local folder's tokenizer files that transformers cannot parse
        raise MetaptError(
            f"cannot load a tokenizer from {name_or_dir!r}: {first_line(e).rstrip('.')}. {hint}"
        ) from None
    return _fast(tok, name_or_dir)


def _fast(tok: Any, name_or_dir: str) -> Any:
    if not tok.is_fast:
        raise MetaptError(f"the tokenizer of {name_or_dir!r} is not a fast tokenizer (offsets are needed)")
    return tok


def _is_path(name: str) -> bool:
    """Whether `name` can only be a folder: a hub id is NAME or NAMESPACE/NAME, never ./x, /x, ~/x or a/b/c."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


# The special tokens a task's batches are built with: every kind pads its batches and joins its
# texts with CLS and SEP (kinds/common.py); masked LM also masks.
EVERY_KIND = ("pad", "cls", "sep")
KIND_TOKENS = {"masked_lm": ("mask",)}


def special_token_ids(tokenizer: Any) -> dict[str, int | None]:
    """The ids of the special tokens metapt builds batches with (None: the tokenizer has none)."""
    return {t: getattr(tokenizer, f"{t}_token_id", None) for t in ("cls", "sep", "pad", "mask", "unk")}


def check_special(tokenizer: Any, where: str, kinds: dict[str, str], also: str = "") -> None:
    """MetaptError naming every special token the tasks (name -> kind) need that the tokenizer of
    `where` lacks (`also`: another way out, for the message); without one, batches fail deep inside
    with a TypeError on None."""
    ids, missing = special_token_ids(tokenizer), []
    missing += [f"no {t} token (every task needs one)" for t in EVERY_KIND if ids[t] is None]
    for token in sorted({t for k in kinds.values() for t in KIND_TOKENS.get(k, ())}):
        if ids[token] is None:
            users = [f"{n!r} ({k})" for n, k in kinds.items() if token in KIND_TOKENS.get(k, ())]
            who = f"task {users[0]} needs" if len(users) == 1 else f"tasks {', '.join(users)} need"
            missing.append(f"no {token} token ({who} one)")
    if missing:
        raise MetaptError(
            f"{where}: its tokenizer has {'; '.join(missing)}; give a tokenizer that has them (BERT's "
            f"and RoBERTa's have all){also}"
        )
