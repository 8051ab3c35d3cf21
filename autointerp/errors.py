"""The one error type a user can cause: its message is one sentence that names the fix."""


class UserError(Exception):
    """Bad input or a missing prerequisite; the CLI prints the message and exits non-zero."""
