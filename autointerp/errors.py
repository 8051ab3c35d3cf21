"""The one error type a user can cause: its message is one sentence that names the fix."""

from __future__ import annotations

from importlib.util import find_spec

# What running a subject model here needs, from the `local` extra (found by name, nothing is imported).
LOCAL_STACK = ("torch", "transformers", "transformer_lens")
SAE_STACK = (*LOCAL_STACK, "sae_lens")


class UserError(Exception):
    """Bad input or a missing prerequisite; the CLI prints the message and exits non-zero."""


def require_local(what: str, modules: tuple[str, ...] = LOCAL_STACK) -> None:
    """Raise a UserError naming the extra to install when a module `what` needs is not installed."""
    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise UserError(
            f"{what} runs a model here and needs the local extra ({', '.join(missing)} missing): "
            "pip install 'autointerp[local]'."
        )
