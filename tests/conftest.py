"""Shared fixtures. The real embedded Gemma is loaded once per session, only by slow tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def gemma():
    from autointerp.subject.model import load_subject

    return load_subject("gemma-3-270m")
