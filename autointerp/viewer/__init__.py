"""The browser viewer (`autointerp serve`): an index of every unit with search, a page per unit, and
with `--live` the subject model on any text. FastAPI + Jinja2 templates + plain CSS/JS, read-only on the
store. Modules: `pages` (page models built from the store), `app` (routes), `decoder` (SAE neighbours),
`live` (the loaded model)."""
