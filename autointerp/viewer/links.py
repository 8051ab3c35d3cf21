"""Links to the viewer's unit pages from pages that live elsewhere (the label and bench reports).

A unit id holds `/` and `:` (`m/blocks.3.attn/head:1`, `m/hook/sae:NAME/7`): the path keeps its
slashes and percent-encodes everything else, so any id survives as one `/unit/...` path."""

from __future__ import annotations

import re
import urllib.parse

from autointerp.errors import UserError

VIEWER_URL = "http://127.0.0.1:8000"  # where `autointerp serve` listens by default
_URL_RE = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


def unit_path(unit_id: str) -> str:
    """The viewer's path of a unit's page: `/unit/` and the id, percent-encoded but for its slashes."""
    return "/unit/" + urllib.parse.quote(unit_id, safe="/")


def unit_url(base: str, unit_id: str) -> str:
    """The unit's page on the viewer at `base` (e.g. http://127.0.0.1:8000)."""
    return base.rstrip("/") + unit_path(unit_id)


def check_viewer_url(url: str | None) -> str | None:
    """A viewer base URL as given on the command line: '' or `none` -> None (no links); else an
    http(s) URL without query or fragment, or a UserError saying so."""
    if url is None or url.strip().lower() in ("", "none"):
        return None
    url = url.strip()
    if not _URL_RE.match(url):
        raise UserError(
            f"--viewer-url {url!r} is not an http(s) address; give e.g. {VIEWER_URL}, or '' for no links."
        )
    return url.rstrip("/")
