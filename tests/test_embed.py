"""The embedded all-MiniLM-L6-v2 embedder (slow: loads the model)."""

import numpy as np
import pytest

from autointerp.embed import DIM, embed

pytestmark = pytest.mark.slow


def test_normalised_and_paraphrases_are_nearest():
    texts = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The stock market fell sharply today.",
        "def add(a, b): return a + b",
    ]
    e = embed(texts)
    assert e.shape == (4, DIM) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    sims = e @ e.T
    assert sims[0, 1] > 0.6  # sentence-transformers gives 0.755 for this pair
    assert sims[0, 1] > 3 * max(sims[0, 2], sims[0, 3])


def test_padding_and_order_do_not_change_a_vector():
    short, long = "Paris", "The capital of France is Paris, a city on the Seine with many museums."
    alone = embed([short])[0]
    together = embed([long, short, long])
    assert np.allclose(together[1], alone, atol=1e-5)
    assert np.allclose(together[0], together[2])


def test_empty_input():
    assert embed([]).shape == (0, DIM)
