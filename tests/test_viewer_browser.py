"""The viewer in a real browser: Playwright drives Debian's chromium against `serve`'s app on a free port.

No subject model: the live panels run on a stand-in whose reading is fixed, so the page's script (posting
text, drawing tokens, the steer box, the output tokens) is what is tested here; the real model's
endpoints have a slow test of their own.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import uvicorn

from autointerp.store import Store
from autointerp.types import Unit
from autointerp.viewer.app import create_app
from autointerp.viewer.live import LiveActs, LiveModel, SteerResult
from autointerp.viewer.pages import OutputToken, tokens_view
from tests.viewer_stores import SCRIPT, explained_store

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (`make test` installs it)"
)


class StandIn(LiveModel):
    """Reads a word's length as its activation; steering appends a fixed phrase."""

    def activations(self, store: Store, unit: Unit, text: str) -> LiveActs:
        words = [" " + w for w in text.split()]
        acts = [float(len(w) - 1) for w in words]
        peak = acts.index(max(acts))
        return LiveActs(unit_id=unit.id, tokens=tokens_view(words, acts, 4.0, peak), max_act=max(acts))

    def steer(
        self, store: Store, unit: Unit, text: str, clamp: float, max_new_tokens: int = 24
    ) -> SteerResult:
        return SteerResult(unit_id=unit.id, prompt=text, clamp=clamp, plain=" and so on", steered=" in March")

    def output_tokens(self, store: Store, unit: Unit, k: int = 10):  # noqa: ANN201
        return [OutputToken(token=" March", value=2.5)], [OutputToken(token=" the", value=-1.0)], ""


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    yield from serving(explained_store(tmp_path / "v.db"), StandIn())


def serving(store: Store, live: LiveModel | None, chat=None) -> Iterator[tuple[str, Store]]:  # noqa: ANN001
    """The app on `store` served by uvicorn on a free port of 127.0.0.1, until the generator closes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(store.path, live, chat), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the viewer did not start"
    yield f"http://127.0.0.1:{port}", store
    server.should_exit = True
    thread.join(10)


def test_search_open_a_unit_hover_and_read_live_text(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, store = served
    dialogs: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url + "/")
            expect(page.locator("#total")).to_have_text("3")
            page.fill("#search", "months")
            page.press("#search", "Enter")
            expect(page.locator("#total")).to_have_text("1")
            expect(page.locator("td.expl")).to_have_text("months of the year")
            page.screenshot(path=str(tmp_path / "index.png"), full_page=True)

            page.click("a.unit")
            expect(page.locator("#unit-id")).to_have_attribute("data-unit", store.units()[0].id)
            top = page.locator("#ex-top .tok")
            assert top.count() == 12 * 20  # BOS left out of every window
            peak = page.locator("#ex-top .tok.peak").first
            expect(peak).to_have_text(" March")
            colour = peak.evaluate("el => getComputedStyle(el).backgroundColor")
            assert colour == "rgb(255, 140, 0)", colour  # full strength at the unit's max
            quiet = page.locator("#ex-top .tok:not(.peak)").first.evaluate(
                "el => getComputedStyle(el).backgroundColor"
            )
            assert quiet == "rgba(255, 140, 0, 0)", quiet
            peak.hover()
            expect(page.locator("#tip")).to_be_visible()
            expect(page.locator("#tip")).to_contain_text("4.0")
            bars = page.locator("#hist rect")
            assert bars.count() == 2 and all(bars.nth(i).bounding_box()["height"] > 0 for i in range(2))
            # the markup-looking token is text on the page, and nothing ran
            expect(page.locator("#ex-top .tok", has_text=SCRIPT)).to_have_count(1)
            assert dialogs == []
            # the stand-in's output tokens, filled in by the page's script
            expect(page.locator("#promoted li")).to_have_text('" March"  2.5')

            page.fill("#live-text", "in the month of September")
            page.click("#live-form button")
            live = page.locator("#live-out .tok")
            expect(live).to_have_count(5)
            expect(page.locator("#live-out .tok.peak")).to_have_text(" September")
            assert float(live.nth(4).get_attribute("data-act")) == 9.0
            page.fill("#steer-text", "It happened")
            page.click("#steer-form button")
            expect(page.locator("#steer-out .completion").nth(1)).to_have_text("It happened in March")
            page.screenshot(path=str(tmp_path / "unit.png"), full_page=True)

            page.goto(url + "/unit/m/blocks.0.mlp.hook_post/77")
            expect(page.locator("h1")).to_have_text("404")
        finally:
            browser.close()
    assert (tmp_path / "unit.png").stat().st_size > 10_000


@contextlib.contextmanager
def browser_page(store: Store, live: LiveModel | None, chat=None) -> Iterator[tuple[str, Page]]:  # noqa: ANN001
    """A page of Debian's chromium, and the URL of the app on `store` served meanwhile."""
    from playwright.sync_api import sync_playwright

    gen = serving(store, live, chat)
    url, _ = next(gen)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            try:
                yield url, browser.new_page()
            finally:
                browser.close()
    finally:
        gen.close()


def test_hovering_a_head_token_highlights_its_sources_and_a_click_pins_them(tmp_path):
    from playwright.sync_api import expect

    from tests.viewer_stores import HEAD, head_store

    with browser_page(head_store(tmp_path / "h.db"), None) as (url, page):
        page.goto(url + "/unit/" + HEAD.replace(":", "%3A"))
        toks = page.locator("#ex-top .tok")
        expect(toks).to_have_count(7)  # " Harry" " Potter" " met" " Harry" " Potter" " and" " <b>"
        src = page.locator("#ex-top .tok.src")
        expect(src).to_have_count(0)
        toks.nth(4).hover()  # the second " Potter": looks back at the first " Potter" and " Harry"
        expect(src).to_have_count(2)
        expect(src.nth(0)).to_have_text(" Harry")
        expect(src.nth(0)).to_have_attribute("data-w", "0.20")
        expect(src.nth(1)).to_have_text(" Potter")
        expect(src.nth(1)).to_have_attribute("data-w", "0.70")
        first = src.nth(1).evaluate("el => el.previousSibling.textContent")
        assert first == " Harry"  # the first " Potter", not the hovered one
        expect(toks.nth(4)).to_have_class("tok peak dst")
        strong = src.nth(1).evaluate("el => getComputedStyle(el).backgroundColor")
        weak = src.nth(0).evaluate("el => getComputedStyle(el).backgroundColor")
        assert strong != weak and strong.startswith("rgba(22, 163, 74"), (strong, weak)
        tip = page.locator("#tip")
        expect(tip).to_contain_text('attends to " Potter" 0.70, " Harry" 0.20')  # strongest first
        page.screenshot(path=str(tmp_path / "head.png"), full_page=True)

        toks.nth(6).hover()  # " <b>" attends to " and" only
        expect(src).to_have_count(1)
        expect(src).to_have_text(" and")
        page.locator("h1").hover()  # leaving the example clears the highlight
        expect(src).to_have_count(0)

        toks.nth(4).click()  # pinned: moving away keeps it
        page.locator("h1").hover()
        expect(src).to_have_count(2)
        toks.nth(1).hover()
        expect(src).to_have_count(2)
        toks.nth(4).click()  # a second click unpins
        expect(src).to_have_count(0)
    assert (tmp_path / "head.png").stat().st_size > 5_000


def test_the_chat_panel_asks_the_agent_and_shows_its_tool_calls_and_answer(tmp_path, scripted, monkeypatch):
    from playwright.sync_api import expect

    from autointerp.agent.loop import AgentSettings
    from autointerp.viewer.chat import ChatRooms
    from tests.conftest import build_month_store
    from tests.test_agent import UNIT, WordTokenizer, act

    monkeypatch.setattr("autointerp.agent.reader.load_tokenizer", lambda model: WordTokenizer())
    store = build_month_store(tmp_path / "synth.db", n_units=1, hook="synthetic.months")
    llm = scripted("agent")
    llm.enqueue(
        act("activations", "Try French.", texts=["Il est né en juillet.", "Born in <July>."]),
        act("answer", text="English <b>month</b> names only.", hypothesis="English month names"),
    )
    live = StandIn()
    rooms = ChatRooms(store.path, AgentSettings(agent=llm.spec, max_steps=4), live.reader)
    with browser_page(store, live, rooms) as (url, page):
        page.goto(url + "/unit/" + UNIT)
        expect(page.locator("#chat")).to_contain_text(llm.spec)
        page.fill("#chat-text", "does it fire on French month names?")
        page.click("#chat-form button")
        expect(page.locator("#chat-log .chat-a")).to_have_text("English <b>month</b> names only.")
        expect(page.locator("#chat-log .chat-q")).to_have_text("does it fire on French month names?")
        steps = page.locator("#chat-log .chat-step")
        expect(steps).to_have_count(1)  # the answer is shown as the answer, not as a step
        expect(steps.locator("summary")).to_contain_text('e1 activations {"texts":["Il est né')
        steps.locator("summary").click()
        seen = "'Born in <July>.': max 1.00; fires on 'July' 1.00"  # markup stays text
        expect(steps.locator("pre")).to_contain_text(seen)
        expect(page.locator("#chat-log .chat-h")).to_have_text("hypothesis: English month names")
        (inv,) = Store(store.path).investigations(UNIT)
        expect(page.locator("#chat-conversation")).to_have_text("conversation " + inv.id)
        page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)

        llm.enqueue(act("answer", text="Yes, May fires."))
        page.fill("#chat-text", "and May?")
        page.click("#chat-form button")
        expect(page.locator("#chat-log .chat-a")).to_have_count(2)
        expect(page.locator("#chat-log .chat-a").nth(1)).to_have_text("Yes, May fires.")
        assert len(Store(store.path).investigations(UNIT)) == 1  # the same conversation went on
