"""autointerp: record, explain, simulate and score the units of a transformer."""

from autointerp.errors import UserError
from autointerp.pipeline import label
from autointerp.subject.recorder import record_units

__all__ = ["UserError", "label", "record_units"]
