"""Text sources and the fixed-length token windows the recorder streams through the subject model.

A source is `default` (Wikipedia summaries interleaved with Python standard-library code), `wiki`,
`code`, a path (a .txt/.md/.py file, a .jsonl file with a "text" field, or a directory of those),
or `hf:DATASET[:SPLIT[:FIELD]]` (a Hugging Face dataset, for a user who has it or network access).
"""

from __future__ import annotations

import itertools
import json
import random
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from autointerp import assets
from autointerp.errors import UserError

TEXT_SUFFIXES = {".txt", ".md", ".py", ".rst", ".text"}
CODE_CHUNK_CHARS = 2000  # stdlib files are long: cut them into pieces a window can hold a few of


def wiki_texts() -> Iterator[str]:
    data = json.loads(assets.ensure_asset("wiki-summaries", full_check=False).read_text())
    items = sorted(data.items())
    random.Random(0).shuffle(items)
    for _, entry in items:
        text = (entry.get("extract") or "").strip()
        if text:
            yield text


def code_texts() -> Iterator[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.is_file())
    random.Random(0).shuffle(files)
    for path in files:
        text = path.read_text(errors="replace")
        for i in range(0, len(text), CODE_CHUNK_CHARS):
            chunk = text[i : i + CODE_CHUNK_CHARS].strip()
            if chunk:
                yield chunk


def default_texts() -> Iterator[str]:
    """Three Wikipedia summaries, then one piece of code, and so on (prose-heavy, with code)."""
    wiki, code = wiki_texts(), code_texts()
    while True:
        batch = list(itertools.islice(wiki, 3)) + list(itertools.islice(code, 1))
        if not batch:
            return
        yield from batch


def _file_texts(path: Path) -> Iterator[str]:
    try:
        if path.suffix == ".jsonl":
            with path.open() as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            text = json.loads(line).get("text")
                        except (json.JSONDecodeError, AttributeError) as e:
                            raise UserError(
                                f'{path}:{n} is not a JSON object with a "text" field; fix that line.'
                            ) from e
                        if text:
                            yield text
        else:
            yield path.read_text(errors="replace")
    except OSError as e:
        raise UserError(f"Cannot read corpus file {path} ({e.strerror}); check the path.") from e


def _hf_texts(spec: str) -> Iterator[str]:
    name, split, field = (
        (spec.split(":") + ["train", "text"])[1:4] if spec.count(":") else (spec, "train", "text")
    )
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split, streaming=True)
        for row in ds:
            yield row[field]
    except Exception as e:  # noqa: BLE001 - any failure to reach the dataset is the user's to fix
        raise UserError(
            f"Could not load Hugging Face dataset {name!r} ({type(e).__name__}); it needs network access "
            "or a local copy in the HF cache; use a local file or directory instead."
        ) from e


def texts(sources: Iterable[str]) -> Iterator[str]:
    """All texts of the given sources, in order."""
    for src in sources:
        if src == "default":
            yield from default_texts()
        elif src == "wiki":
            yield from wiki_texts()
        elif src == "code":
            yield from code_texts()
        elif src.startswith("hf:"):
            yield from _hf_texts(src[3:])
        else:
            path = Path(src)
            if path.is_dir():
                files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES | {".jsonl"})
                for f in files:
                    yield from _file_texts(f)
            elif path.is_file():
                yield from _file_texts(path)
            else:
                raise UserError(
                    f"Corpus source {src!r} is neither a file, a directory, 'default', 'wiki', 'code' nor "
                    "hf:NAME; check the path."
                )


def windows(sources: Iterable[str], tokenizer, ctx: int, bos_id: int | None) -> Iterator[list[int]]:  # noqa: ANN001
    """Fixed windows of `ctx` tokens: BOS, then the next ctx-1 tokens of the concatenated texts.

    Texts are joined by a blank line, so a window may span two documents; every window has the same
    length, which keeps the batch shape fixed and needs no padding.
    """
    body = ctx - 1 if bos_id is not None else ctx
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    buf: list[int] = []
    seen_text = False
    for text in texts(sources):
        if not text.strip():
            continue
        seen_text = True
        buf.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        buf.extend(sep)
        while len(buf) >= body:
            head, buf = buf[:body], buf[body:]
            yield ([bos_id] if bos_id is not None else []) + head
    if not seen_text:
        raise UserError("The corpus holds no text; point --corpus at a non-empty file or directory.")
