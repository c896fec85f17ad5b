"""WikiText (Merity et al. 2016) files as documents with titles: format = "wikitext".

An article begins at a level-1 heading line ` = Title = `; section headings (` = = Name = = `,
` = = = Name = = = `) are dropped, and every other non-blank line is a paragraph. The tokenized
variant's number separators are joined back (`3 @,@ 000` -> `3,000`, `0 @.@ 7` -> `0.7`,
`well @-@ known` -> `well-known`); `<unk>` stays. Paragraphs are split into sentences after a
" . ", " ! " or " ? " (the tokenized variant), or after . ! ? and a space before an upper-case
letter (the raw variant). Records:
{"id": "<file>:<k>", "title", "text", "sentences"}; text before the first heading is an article
with an empty title.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import datasets

from metapt.data.files import numbered_lines
from metapt.spec import DataSpec

_TITLE = re.compile(r"^= (?!=)(.*\S) =$")
_SECTION = re.compile(r"^=( =)+ .+?( =)+$")
_JOINS = ((" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."))
# The tokenized variant puts a space before a sentence's final mark (abbreviations keep theirs:
# "H. americanus", "No. 2"); the raw variant does not, so there a capital letter must follow.
_TOKENIZED_END = re.compile(r"(?<= [.!?])\s+")
_RAW_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(]?[A-Z])")


def detokenize(text: str) -> str:
    """The tokenized variant's number and hyphen separators joined back."""
    for old, new in _JOINS:
        text = text.replace(old, new)
    return text


def sentences(paragraph: str) -> list[str]:
    """A paragraph's sentences, separators joined back."""
    paragraph = detokenize(paragraph.strip())
    end = _TOKENIZED_END if re.search(r" [.!?]( |$)", paragraph) else _RAW_END
    return [s.strip() for s in end.split(paragraph) if s.strip()]


def _lines(path: Path) -> Iterator[tuple[str, str]]:
    """("title", text), ("paragraph", text) or ("blank", "") per line. A heading counts only between
    blank lines, as WikiText writes them: a formula line such as ` = 1 <unk> and C = ` is text."""
    previous, pending = "blank", None  # a title line waiting for the blank line that confirms it
    for _, raw in numbered_lines(path):
        line = raw.strip()
        if pending is not None:
            yield ("title", detokenize(pending.group(1))) if not line else ("paragraph", pending.group(0))
            previous, pending = "title" if not line else "paragraph", None
        if not line:
            previous = "blank"
            yield "blank", ""
        elif previous == "blank" and (heading := _TITLE.match(line)):
            pending = heading
        elif not (previous == "blank" and _SECTION.match(line)):
            previous = "paragraph"
            yield "paragraph", line
    if pending is not None:
        yield "title", detokenize(pending.group(1))


def documents(files: list[str]) -> Iterator[dict]:
    """The articles of WikiText files, in order."""
    for name in files:
        path, k, title, sents = Path(name), 0, "", []
        for what, text in _lines(path):
            if what == "title":
                if sents:
                    yield {
                        "id": f"{path.name}:{k}",
                        "title": title,
                        "text": " ".join(sents),
                        "sentences": sents,
                    }
                    k += 1
                title, sents = text, []
            elif what == "paragraph":
                sents += sentences(text)
        if sents:
            yield {"id": f"{path.name}:{k}", "title": title, "text": " ".join(sents), "sentences": sents}


def read_wikitext(files: list[Path], data: DataSpec) -> datasets.Dataset:
    """Articles of the files as a dataset of records."""
    return datasets.Dataset.from_list(list(documents([str(f) for f in files])))
