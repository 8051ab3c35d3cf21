"""Text sources and the fixed-length token windows the recorder streams through the subject model.

A source is `default` (Wikipedia summaries interleaved with Python standard-library code), `wiki`,
`code`, a path (a .txt/.md/.py file, a .jsonl file with a "text" field, or a directory of those),
or `hf:DATASET[:SPLIT[:FIELD]]` (a Hugging Face dataset, for a user who has it or network access).
Files are read as UTF-8 (or the codec the user names); a file that does not decode, or holds NUL bytes
(binary, UTF-16), is refused in one sentence rather than recorded as garbage tokens.
"""

from __future__ import annotations

import codecs
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
CHECK_BYTES = 1 << 20  # `check_sources` decodes this much of each file; streaming decodes the rest


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


def _not_text(path: Path, encoding: str, why: str) -> UserError:
    return UserError(
        f"Corpus file {path} is not {encoding} text ({why}); convert it, or name its encoding with "
        "--encoding (e.g. latin-1, utf-16)."
    )


def decode(data: bytes, path: Path, encoding: str = "utf-8", partial: bool = False) -> str:
    """`data` as text, or a UserError saying the file is binary or in another encoding.

    `partial`: `data` is a file's head, so a multi-byte character cut at its end is not an error."""
    try:
        text = codecs.getincrementaldecoder(encoding)().decode(data, final=not partial)
    except UnicodeDecodeError as e:
        raise _not_text(path, encoding, f"undecodable byte at offset {e.start}") from None
    if "\0" in text:
        raise _not_text(path, encoding, "it holds NUL characters: binary or UTF-16")
    return text


def check_encoding(encoding: str) -> str:
    """The codec's canonical name, or a UserError for an unknown one."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise UserError(
            f"--encoding {encoding!r} is not a codec Python knows; use e.g. utf-8 or latin-1."
        ) from None


def _file_texts(path: Path, encoding: str = "utf-8") -> Iterator[str]:
    try:
        if path.suffix != ".jsonl":
            yield decode(path.read_bytes(), path, encoding)
            return
        with path.open(encoding=encoding) as f:  # streamed: a .jsonl file may be large
            for n, line in enumerate(f, 1):
                if "\0" in line:
                    raise _not_text(path, encoding, f"line {n} holds NUL characters: binary or UTF-16")
                if line.strip():
                    try:
                        text = json.loads(line).get("text")
                    except (json.JSONDecodeError, AttributeError) as e:
                        raise UserError(
                            f'{path}:{n} is not a JSON object with a "text" field; fix that line.'
                        ) from e
                    if text:
                        yield text
    except UnicodeDecodeError as e:
        raise _not_text(path, encoding, f"undecodable byte {e.object[e.start : e.start + 1]!r}") from None
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


def _source_files(src: str) -> list[Path] | None:
    """The files of a path source (None for a named or hf: source); a UserError when there are none."""
    if src in ("default", "wiki", "code") or src.startswith("hf:"):
        return None
    path = Path(src)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES | {".jsonl"} and p.is_file())
    if path.is_file():
        return [path]
    raise UserError(
        f"Corpus source {src!r} is neither a file, a directory, 'default', 'wiki', 'code' nor "
        "hf:NAME; check the path."
    )


def check_sources(sources: Iterable[str], encoding: str = "utf-8") -> None:
    """Fail fast, before any model loads: every path exists and its files' heads decode as text, every
    hf: dataset yields a first row."""
    encoding = check_encoding(encoding)
    for src in sources:
        if src.startswith("hf:"):
            next(_hf_texts(src[3:]), None)
        for f in _source_files(src) or []:
            try:
                with f.open("rb") as fh:
                    head = fh.read(CHECK_BYTES)
            except OSError as e:
                raise UserError(f"Cannot read corpus file {f} ({e.strerror}); check the path.") from e
            decode(head, f, encoding, partial=len(head) == CHECK_BYTES)


def texts(sources: Iterable[str], encoding: str = "utf-8") -> Iterator[str]:
    """All texts of the given sources, in order (files decoded with `encoding`)."""
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
            for f in _source_files(src) or []:
                yield from _file_texts(f, encoding)


def windows(
    sources: Iterable[str],
    tokenizer,
    ctx: int,
    bos_id: int | None,
    encoding: str = "utf-8",  # noqa: ANN001
) -> Iterator[list[int]]:
    """Fixed windows of `ctx` tokens: BOS, then the next ctx-1 tokens of the concatenated texts.

    Texts are joined by a blank line, so a window may span two documents; every window has the same
    length, which keeps the batch shape fixed and needs no padding.
    """
    body = ctx - 1 if bos_id is not None else ctx
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    buf: list[int] = []
    seen_text = False
    for text in texts(sources, encoding):
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
