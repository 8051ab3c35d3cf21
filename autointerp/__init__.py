"""autointerp: record, explain, simulate and score the units of a transformer."""

from autointerp.errors import UserError
from autointerp.record import record_units

__all__ = ["UserError", "record_units"]
