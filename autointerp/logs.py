"""What the CLI prints where: stdout carries only autointerp's own output; third-party progress bars
and advisory messages (Hugging Face, transformers, TransformerLens) are silenced; warnings go to stderr."""

from __future__ import annotations

import os
import sys
import warnings

# Read by huggingface_hub and transformers when they are imported (the CLI imports them later, lazily).
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars use the same switch
    "TRANSFORMERS_VERBOSITY": "error",  # GGUF dtype notes, `past_key_values` deprecation and the like
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}


def quiet_third_party() -> None:
    """Silence library noise for this process (a variable the user set is left as it is)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # Deprecation notices address the authors of the code that calls a library, not its users.
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    if "transformers" in sys.modules:  # imported already (e.g. in tests): the variables came too late
        from transformers.utils import logging as tf_logging

        tf_logging.set_verbosity_error()
        tf_logging.disable_progress_bar()
