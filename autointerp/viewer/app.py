"""The viewer's web app (FastAPI + Jinja2): HTML pages and the JSON API beside them, read-only on the
store."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import jinja2
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field, ValidationError

from autointerp.errors import UserError
from autointerp.store import Store
from autointerp.types import Unit, UnitQuery
from autointerp.viewer.chat import ChatAsk, ChatReply, ChatRooms
from autointerp.viewer.decoder import neighbours
from autointerp.viewer.links import unit_path
from autointerp.viewer.live import LiveModel
from autointerp.viewer.pages import IndexPage, UnitPage, index_page, unit_page


class LiveRequest(BaseModel):
    text: str


class SteerRequest(BaseModel):
    text: str
    clamp: float | None = None  # default: the unit's max activation
    max_new_tokens: int = Field(default=24, ge=1, le=128)


class NotFound(Exception):
    """An unknown unit id: a 404 page (or JSON under /api)."""


class BadRequest(Exception):
    """Invalid query parameters or live input: a 400 page (or JSON under /api)."""


def create_app(db: str | Path, live: LiveModel | None = None, chat: ChatRooms | None = None) -> FastAPI:
    """The app over the store `db` (read-only connections, each lent to one request at a time and kept
    warm between requests); `live`: a subject model for the live text box, steering and output tokens
    (None: those panels say so); `chat`: the agent's conversations (the only writer of the store)."""
    db = Path(db)
    idle: queue.SimpleQueue[Store] = queue.SimpleQueue()
    idle.put(Store.reader(db))  # fail now, not on the first request

    def borrow() -> Iterator[Store]:
        try:
            store = idle.get_nowait()
        except queue.Empty:  # as many connections as requests at once, no more
            store = Store.reader(db)
        try:
            yield store
        finally:
            idle.put(store)

    lend = Depends(borrow)  # a parameter default: the annotations here are strings (PEP 563)

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("autointerp.viewer", "templates"),
        autoescape=True,  # every token and explanation is text, never markup
        undefined=jinja2.StrictUndefined,
    )
    env.filters["num"] = _num
    env.globals["unit_url"] = unit_path
    templates = Jinja2Templates(env=env)
    app = FastAPI(title="autointerp viewer", docs_url="/api/docs", redoc_url=None)
    app.mount("/static", StaticFiles(packages=[("autointerp.viewer", "static")]), name="static")

    def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        context |= {"db": db.name, "live": live is not None, "chat": chat.agent if chat else None}
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _error(request, page, 404, str(exc))

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> Response:
        return _error(request, page, 400, str(exc))

    def get_unit(store: Store, unit_id: str) -> Unit:
        unit = store.get_unit(unit_id)
        if unit is None:
            raise NotFound(f"No unit {unit_id!r} in {db.name}.")
        return unit

    def index_data(request: Request, store: Store) -> IndexPage:
        params = {k: v for k, v in request.query_params.items() if v != ""}
        try:
            q = UnitQuery.model_validate(params)
        except ValidationError as e:
            first = e.errors()[0]
            raise BadRequest(f"Bad value for {'.'.join(map(str, first['loc']))}: {first['msg']}.") from None
        return index_page(store, q)

    def unit_data(store: Store, unit_id: str) -> UnitPage:
        unit = get_unit(store, unit_id)
        data = unit_page(store, unit)
        data.neighbours, data.neighbours_note = neighbours(store, unit)
        data.logits_note = "" if live else "top output tokens need the model: run `autointerp serve --live`"
        return data

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, store: Store = lend) -> HTMLResponse:
        return page(request, "index.html", data=index_data(request, store))

    @app.get("/api/units")
    def api_units(request: Request, store: Store = lend) -> IndexPage:
        return index_data(request, store)

    @app.get("/unit/{unit_id:path}", response_class=HTMLResponse)
    def unit(request: Request, unit_id: str, store: Store = lend) -> Response:
        if store.get_unit(unit_id) is None and len(found := store.find_unit_ids(unit_id)) == 1:
            return RedirectResponse(unit_path(found[0]))
        return page(request, "unit.html", data=unit_data(store, unit_id))

    @app.get("/api/unit/{unit_id:path}")
    def api_unit(unit_id: str, store: Store = lend) -> UnitPage:
        return unit_data(store, unit_id)

    def need_live() -> LiveModel:
        if live is None:
            raise NotFound("The live model is off; run `autointerp serve --live` to read units on new text.")
        return live

    def user_input(fn, *args):  # noqa: ANN001, ANN002, ANN202
        try:
            return fn(*args)
        except UserError as e:
            raise BadRequest(str(e)) from None

    @app.post("/api/live/{unit_id:path}")
    def api_live(unit_id: str, body: LiveRequest, store: Store = lend):  # noqa: ANN201
        model = need_live()
        return user_input(model.activations, store, get_unit(store, unit_id), body.text)

    @app.post("/api/steer/{unit_id:path}")
    def api_steer(unit_id: str, body: SteerRequest, store: Store = lend):  # noqa: ANN201
        model, unit = need_live(), get_unit(store, unit_id)
        clamp = unit.stats.max if body.clamp is None else body.clamp
        return user_input(model.steer, store, unit, body.text, clamp, body.max_new_tokens)

    @app.post("/api/chat/{unit_id:path}")
    def api_chat(unit_id: str, body: ChatAsk, store: Store = lend) -> ChatReply:
        if chat is None:
            raise NotFound("The chat is off; run `autointerp serve --live` to talk with the agent.")
        return user_input(chat.ask, store, get_unit(store, unit_id), body)

    @app.get("/api/logits/{unit_id:path}")
    def api_logits(unit_id: str, store: Store = lend) -> dict:
        model, unit = need_live(), get_unit(store, unit_id)
        promoted, suppressed, note = user_input(model.output_tokens, store, unit)
        return {"promoted": promoted, "suppressed": suppressed, "note": note}

    return app


def _error(request: Request, page, status: int, message: str) -> Response:  # noqa: ANN001
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status)
    return page(request, "error.html", status=status, code=status, message=message)


def _num(x: float | None, digits: int = 3) -> str:
    """A number for a table cell: 3 significant digits, '–' for none."""
    if x is None:
        return "–"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"
