"""Shared fixtures. The real embedded Gemma is loaded once per session, only by slow tests."""

from __future__ import annotations

import pytest


class CharTokenizer:
    """A tokenizer for tests: one token per character (ids 3.., wrapping at `vocab`); 0 pad, 1 BOS, 2 EOS."""

    SPECIAL = {0: "<pad>", 1: "<bos>", 2: "<eos>"}
    bos_token_id = 1
    all_special_ids = [0, 1, 2]

    def __init__(self, vocab: int = 200):
        self.vocab = vocab

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = [3 + (ord(c) - 32) % (self.vocab - 3) for c in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def decode(self, ids: list[int], clean_up_tokenization_spaces: bool = False) -> str:
        return "".join(self.SPECIAL.get(i) or chr(32 + i - 3) for i in ids)


@pytest.fixture(scope="session")
def char_tokenizer() -> type[CharTokenizer]:
    return CharTokenizer


@pytest.fixture(scope="session")
def gemma():
    from autointerp.subject.model import load_subject

    return load_subject("gemma-3-270m")
