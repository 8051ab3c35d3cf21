"""Prompt templates: jinja2 files shipped in autointerp/templates/ (or the folder $AUTOINTERP_PROMPTS),
each naming itself and its version in its first comment.

A chat template separates messages with `### system`, `### user` and `### assistant` lines; a raw
template (for token probabilities) is plain text. Every result records `name@version`.
"""

from __future__ import annotations

import os
import re
from functools import cache
from pathlib import Path

import jinja2

from autointerp.errors import UserError
from autointerp.llm.base import Message

PROMPTS_DIR = Path(os.environ.get("AUTOINTERP_PROMPTS", Path(__file__).resolve().parent / "templates"))
_HEADER = re.compile(r"name:\s*(?P<name>[\w.-]+)\s+version:\s*(?P<version>\w+)")
_ROLE = re.compile(r"^### (system|user|assistant)\s*$", re.MULTILINE)


class Prompt:
    """One template file."""

    def __init__(self, file: str):
        path = PROMPTS_DIR / file
        if not path.exists():
            raise UserError(
                f"Prompt template {path} is missing; reinstall autointerp or set AUTOINTERP_PROMPTS."
            )
        source = path.read_text()
        m = _HEADER.search(source)
        if not m:
            raise UserError(f"{path} does not start with a '{{#- name: NAME version: N' comment; add one.")
        self.name, self.version = m["name"], m["version"]
        env = jinja2.Environment(
            undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
        )
        self.template = env.from_string(source)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def text(self, **values) -> str:
        return self.template.render(**values)

    def messages(self, **values) -> list[Message]:
        """Render and split into chat messages at the `### role` lines."""
        parts = _ROLE.split(self.text(**values))
        return [
            Message(role=role, content=content.strip("\n"))
            for role, content in zip(parts[1::2], parts[2::2], strict=True)
        ]


@cache
def prompt(file: str) -> Prompt:
    return Prompt(file)
