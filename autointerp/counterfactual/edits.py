"""The text side of LLM-written edits: the prompts, the marked snippet shown, and parsing the answer."""

from __future__ import annotations

import difflib
import re

from pydantic import BaseModel

from autointerp.errors import UserError


class EditPrompt(BaseModel):
    """A counterfactual chat template (loaded by `autointerp.prompts`), tagged name@version."""

    file: str
    tag: str

    def messages(self, **values: object) -> list:
        from autointerp.prompts import prompt

        msgs = prompt(self.file).messages(**values)
        if not msgs or msgs[-1].role != "user":
            raise UserError(f"Prompt {self.file} must end with a '### user' block; fix the template.")
        return msgs


def load_prompt(name: str) -> EditPrompt:
    """The template NAME.j2 (its first comment names it and its version)."""
    from autointerp.prompts import prompt

    return EditPrompt(file=f"{name}.j2", tag=prompt(f"{name}.j2").id)


class ParsedEdit(BaseModel):
    text: str | None
    error: str = ""


_WORD = re.compile(r"\w+|[^\w\s]")


def edit_fraction(a: str, b: str) -> float:
    """Share of words (and punctuation) changed between two texts: 0 identical, 1 nothing in common."""
    wa, wb = _WORD.findall(a), _WORD.findall(b)
    if not wa and not wb:
        return 0.0
    same = sum(m.size for m in difflib.SequenceMatcher(a=wa, b=wb, autojunk=False).get_matching_blocks())
    return 1 - 2 * same / (len(wa) + len(wb))


def parse_edit(answer: str, original: str, max_edit_frac: float = 0.5) -> ParsedEdit:
    """The edited text from an answer `EDITED: ...`, or the reason it is not a usable minimal edit."""
    m = re.search(r"EDITED\s*:", answer, flags=re.I)
    if not m:
        return ParsedEdit(text=None, error="no 'EDITED:' line in the answer")
    text = answer[m.end() :]
    text = re.split(r"\n\s*(?:EDITED|TEXT|EXAMPLES)\s*:|\n###|\n```", text, maxsplit=1, flags=re.I)[0]
    if "\n" not in original.strip():
        text = text.strip().split("\n")[0]
    text = text.replace("[[", "").replace("]]", "").strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`" and original.strip()[:1] != text[0]:
        text = text[1:-1].strip()
    if not text:
        return ParsedEdit(text=None, error="empty edit")
    if " ".join(text.split()) == " ".join(original.split()):
        return ParsedEdit(text=None, error="the edit is identical to the original")
    frac = edit_fraction(original, text)
    if frac > max_edit_frac:
        return ParsedEdit(text=None, error=f"not a minimal edit ({frac:.0%} of words changed)")
    return ParsedEdit(text=text)


def marked_snippet(tokens: list[str], lo: int, p: int, hi: int) -> tuple[str, str]:
    """(plain text, text with the peak token marked [[like this]]) of tokens[lo:hi]."""
    tok = tokens[p]
    lead = tok[: len(tok) - len(tok.lstrip())]
    mark = f"{lead}[[{tok.strip()}]]" if tok.strip() else f"[[{tok}]]"
    plain = "".join(tokens[lo:hi])
    return plain, "".join(tokens[lo:p]) + mark + "".join(tokens[p + 1 : hi])
