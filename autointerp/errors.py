"""The one error type a user can cause: its message is one sentence that names the fix."""

from __future__ import annotations

import errno
from importlib.util import find_spec

# What running a subject model here needs, from the `local` extra (found by name, nothing is imported).
LOCAL_STACK = ("torch", "transformers", "transformer_lens")
SAE_STACK = (*LOCAL_STACK, "sae_lens")
VIEWER_STACK = ("fastapi", "uvicorn", "jinja2")  # the `viewer` extra: autointerp serve


class UserError(Exception):
    """Bad input or a missing prerequisite; the CLI prints the message and exits non-zero."""


def require_local(what: str, modules: tuple[str, ...] = LOCAL_STACK, extra: str = "local") -> None:
    """Raise a UserError naming the extra to install when a module `what` needs is not installed."""
    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        needs = "runs a model here and needs" if extra == "local" else "needs"
        raise UserError(
            f"{what} {needs} the {extra} extra ({', '.join(missing)} missing): "
            f"pip install 'autointerp[{extra}]'."
        )


# An OSError's errno, or an SQLite message fragment, -> the sentence a user can act on.
_ERRNO_HINTS = {
    errno.ENOSPC: "the disk is full; free some space and run the same command again",
    errno.EDQUOT: "the disk quota is exhausted; free some space and run the same command again",
    errno.EROFS: "the file system is read-only; pass a path on a writable disk",
    errno.EACCES: "permission denied; pass a path you can write to, or fix its permissions",
    errno.EPERM: "permission denied; pass a path you can write to, or fix its permissions",
}
_SQLITE_HINTS = {
    "database or disk is full": errno.ENOSPC,
    "attempt to write a readonly database": errno.EACCES,
    "unable to open database file": errno.EACCES,
}


def environment_error(e: BaseException, path: object = None) -> UserError | None:
    """A full disk, a read-only or unwritable path, as one UserError; None for any other error."""
    code = getattr(e, "errno", None)
    if code not in _ERRNO_HINTS:
        code = next((c for msg, c in _SQLITE_HINTS.items() if msg in str(e)), None)
    if code is None:
        return None
    where = getattr(e, "filename", None) or path
    return UserError(f"Cannot write{f' {where}' if where else ''}: {_ERRNO_HINTS[code]}.")
