"""The demo page, driven in headless Chromium against the demo app on a real uvicorn.

These tests need Debian's ``chromium`` binary (Playwright's own browser download is never used).
Without it they are skipped, unless ``RTKIT_REQUIRE_BROWSER=1`` (as in CI) turns that into a
failure, so a CI image that lost its browser cannot pass silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from rtkit import BackendUnavailableError, Hub, Limits, MemoryBackend
from rtkit.demo import create_app
from rtkit.demo.app import DemoSettings
from rtkit.testing import LiveServer

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 5_000
"""How long an expectation waits for the page to catch up; everything here is local."""

OpenPage = Callable[[], Page]


def _chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        reason = "no `chromium` binary on PATH (install Debian's chromium package to run browser tests)"
        if os.environ.get("RTKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RTKIT_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = _chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    # One server for the module: each test uses its own rooms and topics, so they cannot meet.
    with LiveServer(create_app()) as live:
        yield live


@pytest.fixture
def open_page(browser: Browser, server: LiveServer) -> Iterator[OpenPage]:
    """Opens the demo page in a fresh context each call (its own cookies and sockets, like
    another person); the test errors if any page threw an uncaught JavaScript error."""
    contexts: list[BrowserContext] = []
    errors: list[str] = []

    def open_page() -> Page:
        context = browser.new_context()
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server.http_url("/"))
        return page

    yield open_page
    for context in contexts:
        context.close()
    assert errors == []


def join(page: Page, room: str, name: str) -> None:
    page.get_by_test_id("chat-room").fill(room)
    page.get_by_test_id("chat-name").fill(name)
    page.get_by_test_id("chat-join").click()
    # `connected` is shown on the server's `welcome`: from then on the page is in the room.
    expect(page.get_by_test_id("chat-status")).to_have_text("connected", timeout=WAIT_MS)


def say(page: Page, text: str) -> None:
    page.get_by_test_id("chat-text").fill(text)
    page.get_by_test_id("chat-send").click()


def messages(page: Page) -> Locator:
    return page.get_by_test_id("chat-message")


def connect_topics(page: Page) -> None:
    page.get_by_test_id("topics-connect").click()
    expect(page.get_by_test_id("topics-status")).to_have_text("connected", timeout=WAIT_MS)


def subscribe(page: Page, topic: str) -> None:
    page.get_by_test_id("topics-topic").fill(topic)
    page.get_by_test_id("topics-subscribe").click()
    subscriptions = page.get_by_test_id("topics-subscription-name").filter(has_text=topic)
    expect(subscriptions).to_have_count(1, timeout=WAIT_MS)


def publish(page: Page, topic: str, data: str) -> None:
    page.get_by_test_id("topics-topic").fill(topic)
    page.get_by_test_id("topics-data").fill(data)
    page.get_by_test_id("topics-publish").click()


def events(page: Page) -> Locator:
    return page.locator("[data-testid='topics-entry'][data-kind='event']")


def frame(**fields: object) -> str:
    return json.dumps(fields)


def test_chat_between_two_people_stays_in_their_room(open_page: OpenPage) -> None:
    """Two people in one room see each other arrive and talk both ways with authors shown; when
    one leaves the other is told and the member list shrinks; a page in another room receives
    none of it."""
    ann, bob, eve = open_page(), open_page(), open_page()
    join(eve, "elsewhere", "eve")
    join(ann, "garden", "ann")
    expect(ann.get_by_test_id("chat-member")).to_have_text(["ann"], timeout=WAIT_MS)

    join(bob, "garden", "bob")
    expect(ann.get_by_test_id("chat-member")).to_have_text(["ann", "bob"], timeout=WAIT_MS)
    expect(ann.get_by_test_id("chat-notice").filter(has_text="bob joined")).to_have_count(1, timeout=WAIT_MS)
    expect(bob.get_by_test_id("chat-member")).to_have_text(["ann", "bob"], timeout=WAIT_MS)

    say(bob, "hello from bob")
    for page in (ann, bob):
        expect(messages(page)).to_have_count(1, timeout=WAIT_MS)
        expect(page.get_by_test_id("chat-message-author")).to_have_text(["bob"])
        expect(page.get_by_test_id("chat-message-text")).to_have_text(["hello from bob"])

    say(ann, "hi bob")
    expect(bob.get_by_test_id("chat-message-author")).to_have_text(["bob", "ann"], timeout=WAIT_MS)
    expect(bob.get_by_test_id("chat-message-text")).to_have_text(["hello from bob", "hi bob"])

    bob.get_by_test_id("chat-leave").click()
    expect(bob.get_by_test_id("chat-status")).to_have_text("disconnected", timeout=WAIT_MS)
    expect(ann.get_by_test_id("chat-notice").filter(has_text="bob left")).to_have_count(1, timeout=WAIT_MS)
    expect(ann.get_by_test_id("chat-member")).to_have_text(["ann"], timeout=WAIT_MS)

    # eve's own message comes back through the same hub after everything above was fanned
    # out, so by the time it shows, anything leaked from "garden" would have shown too.
    say(eve, "anyone here?")
    expect(eve.get_by_test_id("chat-message-text")).to_have_text(["anyone here?"], timeout=WAIT_MS)
    expect(eve.get_by_test_id("chat-member")).to_have_text(["eve"])
    expect(eve.get_by_test_id("chat-notice-text")).to_have_text(["You joined elsewhere as eve."])


def test_tasks_appear_live_and_rejections_show_the_servers_reason(
    open_page: OpenPage, server: LiveServer
) -> None:
    """The page lists the tasks that existed when it loaded, shows a task created over HTTP
    by someone else without a reload, and shows the server's 422 reason for a bad form."""
    earlier = httpx2.post(server.http_url("/tasks"), json={"title": "written before the page loaded"})
    assert earlier.status_code == 201

    page = open_page()
    # `live` means the page's subscription to the `tasks` topic is confirmed by the server.
    expect(page.get_by_test_id("tasks-status")).to_have_text("live", timeout=WAIT_MS)
    tasks = page.get_by_test_id("task")
    expect(tasks.filter(has_text="written before the page loaded")).to_have_count(1, timeout=WAIT_MS)

    created = httpx2.post(
        server.http_url("/tasks"), json={"title": "water the plants", "description": "the <b>ferns</b> too"}
    )
    assert created.status_code == 201
    live = tasks.filter(has_text="water the plants")
    expect(live).to_have_count(1, timeout=WAIT_MS)
    # Shown as text, not markup: user data is never parsed as HTML.
    expect(live.get_by_test_id("task-description")).to_have_text("the <b>ferns</b> too")
    expect(page.get_by_test_id("task-title").first).to_have_text("water the plants")  # newest first

    # What the server says about an empty title, asked directly, is what the page must show.
    invalid = {"title": "", "description": "no title"}
    rejected = httpx2.post(server.http_url("/tasks"), json=invalid)
    assert rejected.status_code == 422
    page.get_by_test_id("tasks-title").fill(invalid["title"])
    page.get_by_test_id("tasks-description").fill(invalid["description"])
    page.get_by_test_id("tasks-create").click()
    message = page.get_by_test_id("tasks-form-message")
    expect(message).to_contain_text(rejected.json()["detail"], timeout=WAIT_MS)
    expect(message).to_have_attribute("data-state", "error")
    expect(tasks).to_have_count(2)


def test_topic_events_arrive_while_subscribed_and_stop_after(open_page: OpenPage) -> None:
    """An event published from one page reaches another page subscribed to its topic, and no
    longer reaches it once it has unsubscribed; a refused subscription shows the error frame."""
    reader, writer = open_page(), open_page()
    connect_topics(reader)
    connect_topics(writer)
    subscribe(reader, "weather")
    subscribe(reader, "marker")

    publish(writer, "weather", '{"temp": 21}')
    expect(events(reader)).to_have_count(1, timeout=WAIT_MS)
    expect(events(reader).get_by_test_id("topics-entry-topic")).to_have_text(["weather"])
    expect(events(reader).get_by_test_id("topics-entry-data")).to_have_text(['{"temp":21}'])
    # the publisher sent a ref, so the server acknowledged it
    published = writer.locator("[data-testid='topics-entry'][data-kind='published']")
    expect(published).to_have_count(1, timeout=WAIT_MS)

    reader.get_by_test_id("topics-topic").fill("weather")
    reader.get_by_test_id("topics-unsubscribe").click()
    expect(reader.get_by_test_id("topics-subscription-name")).to_have_text(["marker"], timeout=WAIT_MS)

    # The writer publishes to "weather" and then to "marker" in that order; one socket's
    # frames keep their order, so once the marker shows, a leaked event would be there too.
    publish(writer, "weather", '{"temp": 22}')
    expect(published).to_have_count(2, timeout=WAIT_MS)
    publish(writer, "marker", '"done"')
    expect(events(reader).get_by_test_id("topics-entry-topic")).to_have_text(
        ["weather", "marker"], timeout=WAIT_MS
    )
    expect(events(reader).get_by_test_id("topics-entry-data")).to_have_text(['{"temp":21}', '"done"'])

    # A name outside the server's rule is refused with an error frame, shown as it came.
    reader.get_by_test_id("topics-topic").fill("no spaces allowed")
    reader.get_by_test_id("topics-subscribe").click()
    errors = reader.locator("[data-testid='topics-entry'][data-kind='error']")
    expect(errors).to_contain_text(re.compile(r"invalid_topic: .*no spaces allowed"), timeout=WAIT_MS)
    expect(reader.get_by_test_id("topics-subscription-name")).to_have_text(["marker"])


def test_chat_keeps_members_straight_and_shows_errors_gaps_and_closes(open_page: OpenPage) -> None:
    """Against a scripted chat server: a member both listed in ``welcome`` and announced by
    ``joined`` (two people joining at once) is counted once, a second person with the same name
    is listed twice and one of them leaving keeps the other; gap and error frames and an
    unexpected close are shown to the user."""
    page = open_page()

    def chat_server(ws: WebSocketRoute) -> None:
        # Frames the real server only sends in races or faults, scripted here in one go.
        ws.send(frame(type="welcome", room="mock", user="ann", members=["ann", "bob"]))
        ws.send(frame(type="joined", room="mock", user="bob"))  # the same bob, announced late
        ws.send(frame(type="joined", room="mock", user="bob"))  # another person called bob
        ws.send(frame(type="left", room="mock", user="bob"))
        ws.send(frame(type="gap", room="mock", missed=3))
        ws.send(frame(type="error", code="rate_limited", detail="slow down"))
        ws.on_message(lambda _: ws.close(code=1011, reason="server fault"))

    # Only the chat socket is scripted; the rest of the page still talks to the real server.
    page.route_web_socket(re.compile(r"/ws/chat/"), chat_server)

    join(page, "mock", "ann")
    expect(page.get_by_test_id("chat-member")).to_have_text(["ann", "bob"], timeout=WAIT_MS)
    expect(page.get_by_test_id("chat-notice-text")).to_have_text(
        ["You joined mock as ann.", "bob joined", "bob joined", "bob left"], timeout=WAIT_MS
    )
    errors = page.get_by_test_id("chat-error")
    expect(errors).to_have_count(2, timeout=WAIT_MS)
    expect(errors.nth(0)).to_contain_text("3 message(s) were lost")
    expect(errors.nth(1)).to_contain_text("rate_limited: slow down")

    say(page, "anyone?")  # the scripted server closes as a crashed endpoint would
    expect(page.get_by_test_id("chat-status")).to_have_text("disconnected", timeout=WAIT_MS)
    expect(errors.nth(2)).to_contain_text("code 1011: server fault", timeout=WAIT_MS)
    expect(page.get_by_test_id("chat-member")).to_have_count(0)


# -- the page against servers set up otherwise -----------------------------------------------


class _TasksUnannounced(MemoryBackend):
    """The backend takes everything but the tasks topic's announcements (Redis went away)."""

    async def publish(self, channel: str, data: bytes) -> None:
        if channel == "topic:tasks":
            raise BackendUnavailableError("simulated: redis unreachable")
        await super().publish(channel, data)


@pytest.fixture(scope="module")
def strict_hub() -> Hub:
    return Hub(_TasksUnannounced())


@pytest.fixture(scope="module")
def strict_server(strict_hub: Hub) -> Iterator[LiveServer]:
    """An idle timeout of 0.6 s, three tasks kept, and task announcements that fail."""
    settings = DemoSettings(limits=Limits(idle_timeout=0.6), task_limit=3)
    with LiveServer(create_app(hub=strict_hub, settings=settings)) as live:
        yield live


def _open(browser: Browser, url: str, *, fake_clock: bool = False) -> tuple[BrowserContext, Page]:
    context = browser.new_context()
    page = context.new_page()
    if fake_clock:
        page.clock.install()  # the page's timers run only when the test says so
    page.goto(url)
    return context, page


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition on the server's side (the page cannot see it) under a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        time.sleep(0.02)


def test_the_page_keeps_its_sockets_open_through_the_servers_idle_timeout(
    browser: Browser, strict_server: LiveServer, strict_hub: Hub
) -> None:
    context, page = _open(browser, strict_server.http_url("/"))
    try:
        expect(page.locator('meta[name="rtkit-idle-timeout"]')).to_have_attribute("content", "0.6")
        join(page, "quiet-room", "reader")
        connect_topics(page)
        before = strict_hub.metrics.messages_in
        # Three heartbeats per idle timeout on each of the three sockets: after six idle
        # timeouts' worth of them, every socket must still be open.
        _wait_for(lambda: strict_hub.metrics.messages_in >= before + 3 * 3 * 6)
        expect(page.get_by_test_id("chat-status")).to_have_text("connected")
        expect(page.get_by_test_id("topics-status")).to_have_text("connected")
        expect(page.get_by_test_id("tasks-status")).to_have_text("live")
        assert strict_hub.metrics.closes[1001] == 0
    finally:
        context.close()


def test_the_task_list_is_no_longer_than_the_servers(browser: Browser, strict_server: LiveServer) -> None:
    context, page = _open(browser, strict_server.http_url("/"))
    try:
        expect(page.get_by_test_id("tasks-status")).to_have_text("live", timeout=WAIT_MS)
        # Created from the page itself: the announcement fails (503), the task is stored and
        # shown, and the form is cleared so that sending again does not store it twice.
        for n in range(5):
            page.get_by_test_id("tasks-title").fill(f"task {n}")
            page.get_by_test_id("tasks-create").click()
            message = page.get_by_test_id("tasks-form-message")
            expect(message).to_contain_text("other viewers were not told", timeout=WAIT_MS)
            expect(message).to_have_attribute("data-state", "warning")
            expect(page.get_by_test_id("tasks-title")).to_have_value("")
        titles = page.get_by_test_id("task-title")
        expect(titles).to_have_text(["task 4", "task 3", "task 2"], timeout=WAIT_MS)
        expect(page.get_by_test_id("tasks-count")).to_have_text("3")
        listed = httpx2.get(strict_server.http_url("/tasks")).json()
        assert [t["title"] for t in listed] == ["task 2", "task 3", "task 4"]  # stored once each
    finally:
        context.close()


def test_rooms_a_browser_cannot_reach_are_refused_by_the_form(open_page: OpenPage) -> None:
    page = open_page()
    room = page.get_by_test_id("chat-room")
    for name, valid in ((".", False), ("..", False), ("a.b", True), ("...", True), ("a b", False)):
        room.fill(name)
        assert room.evaluate("input => input.validity.valid") is valid, name


def test_a_second_member_of_a_listed_name_is_counted(browser: Browser, server: LiveServer) -> None:
    from websockets.sync.client import connect as ws_connect

    room = server.ws_url("/ws/chat/namesakes")
    with ws_connect(f"{room}?name=bob") as first_bob:
        first_bob.recv()  # welcome: bob is in the room
        context, page = _open(browser, server.http_url("/"), fake_clock=True)
        try:
            join(page, "namesakes", "alice")
            members = page.get_by_test_id("chat-member")
            expect(members).to_have_text(["alice", "bob"], timeout=WAIT_MS)
            page.clock.run_for(3_000)  # past the moment a racing `joined` could still come
            with ws_connect(f"{room}?name=bob") as second_bob:
                second_bob.recv()
                expect(members).to_have_text(["alice", "bob", "bob"], timeout=WAIT_MS)
            expect(members).to_have_text(["alice", "bob"], timeout=WAIT_MS)  # the first bob stays
        finally:
            context.close()


def test_a_refused_join_shows_the_servers_reason(browser: Browser) -> None:
    # One connection at most: the page's live task list holds it, so joining a room is refused.
    settings = DemoSettings(limits=Limits(max_connections=1))
    with LiveServer(create_app(settings=settings)) as server:
        context, page = _open(browser, server.http_url("/"))
        try:
            expect(page.get_by_test_id("tasks-status")).to_have_text("live", timeout=WAIT_MS)
            page.get_by_test_id("chat-room").fill("lobby")
            page.get_by_test_id("chat-join").click()
            notice = page.get_by_test_id("chat-error-text")
            expect(notice).to_have_text(
                "Could not join lobby: refused (HTTP 503: server at capacity).", timeout=WAIT_MS
            )
            expect(page.get_by_test_id("chat-status")).to_have_text("disconnected")
        finally:
            context.close()


README_JS = re.compile(r"^```js\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_client(page: Page) -> None:
    """Loads the README's browser snippet into ``page`` as it stands, and a log for it."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (snippet,) = README_JS.findall(readme)
    page.add_script_tag(content=snippet)
    page.evaluate(
        """() => {
        window.seen = []; window.statuses = [];
        window.openClient = (path) => connect(`ws://${location.host}${path}`, {
          onMessage: (msg) => window.seen.push(msg), onStatus: (s) => window.statuses.push(s) });
    }"""
    )


def test_the_readme_browser_client_talks_refuses_and_reconnects(
    browser: Browser, strict_server: LiveServer
) -> None:
    # The strict server closes a socket idle for 0.6 s (1001): the client must come back.
    context, page = _open(browser, strict_server.http_url("/"))
    try:
        readme_client(page)
        page.evaluate("() => { window.client = window.openClient('/ws/chat/readme-js?name=js'); }")
        page.wait_for_function("() => window.statuses.includes('open')", timeout=WAIT_MS)
        said = page.evaluate("() => window.client.request({ type: 'say', text: 'hi' })")
        assert said == {"type": "said", "room": "readme-js", "ref": 1}
        page.wait_for_function(
            "() => window.statuses.filter((s) => s === 'open').length >= 2", timeout=WAIT_MS
        )
        statuses = page.evaluate("() => window.statuses")
        assert any(status.startswith("reconnecting in ") for status in statuses), statuses
        page.evaluate("() => window.client.close()")

        long_name = "x" * 65
        page.evaluate(
            f"() => {{ window.statuses = []; window.openClient('/ws/chat/readme-js?name={long_name}'); }}"
        )
        page.wait_for_function("() => window.statuses.length > 0", timeout=WAIT_MS)
        assert page.evaluate("() => window.statuses") == ["refused: name too long: at most 64 characters"]
    finally:
        context.close()
