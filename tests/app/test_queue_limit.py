"""The app's queue (vitdemo.ui.queue_limit): a full queue says how long to wait, through
/chat-style API calls and the page; the generation group gets one limit; the defaults hold
a class. Tiny Blocks apps with a blocking function stand in for the model."""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest

from vitdemo.config import Settings
from vitdemo.core.scheduler import SchedulerSettings
from vitdemo.serving.waiting import AnswerTimes, busy_message, estimate_wait_s


# --- the estimate (no server) ----------------------------------------------------------------

def test_wait_estimate_drains_slots_at_a_time() -> None:
    assert estimate_wait_s(0, 4, 2.0) == 0
    assert estimate_wait_s(1, 4, 2.0) == 2.0
    assert estimate_wait_s(8, 4, 2.0) == 4.0
    assert estimate_wait_s(9, 4, 2.0) == 6.0
    assert estimate_wait_s(5, 1, 3.0) == 15.0
    assert estimate_wait_s(5, 1, None) is None
    with pytest.raises(ValueError, match="slots=0"):
        estimate_wait_s(1, 0, 1.0)


def test_busy_message_names_the_wait() -> None:
    assert busy_message(40, 32, 3.0).endswith("Please try again in about 10 seconds.")  # 2 rounds x 3 s
    assert "300 requests are waiting" in busy_message(300, 1, 2.0)
    assert busy_message(300, 1, 2.0).endswith("about 10 minutes.")  # 600 s
    assert "try again in a minute" in busy_message(3, 1, None)  # no answer finished yet


def test_answer_times_keep_the_recent_median() -> None:
    times = AnswerTimes(keep=3)
    assert times.typical() is None
    for s in (100.0, 1.0, 2.0, 3.0):  # the first falls out of the window
        times.record(s)
    assert times.typical() == 2.0


def test_defaults_hold_a_class_of_100_and_batch_30() -> None:
    s = Settings()
    assert s.queue_size >= 200, "a class of 100 can have 100 requests waiting, twice with the page"
    assert s.concurrency >= 30, "a class of 30 must reach the batching scheduler together"
    # The next batch is read and processed while one generates (docs/reliability.md).
    assert s.concurrency == 2 * SchedulerSettings().max_batch_size


def test_busy_message_says_how_many_run_at_once() -> None:
    assert "(answers take about 2.0 s, up to 64 in progress at once)" in busy_message(256, 64, 2.0)
    assert "(answers take about 4.0 s, one at a time)" in busy_message(1, 1, 4.0)


# --- a real queue ------------------------------------------------------------------------------

class Gate:
    """A handler that blocks until opened: keeps the one running slot busy."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.started = threading.Semaphore(0)

    def __call__(self, text: str) -> str:
        self.started.release()
        self.open.wait(timeout=60)
        return f"answer to {text}"


def _app(settings: Settings, gate: Gate, *, extra_default_event: bool = False) -> Any:
    import gradio as gr

    from vitdemo.ui.queue_limit import GENERATE_GROUP, configure_queue

    with gr.Blocks() as demo:
        box, out = gr.Textbox(elem_id="q"), gr.Textbox(elem_id="a")
        box.submit(gate, box, out, api_name="chat", concurrency_id=GENERATE_GROUP,
                   concurrency_limit=settings.concurrency)
        if extra_default_event:  # an event in the group left at Gradio's default limit
            gr.Button("x").click(lambda t: t, box, out, api_name="other", concurrency_id=GENERATE_GROUP)
    times = configure_queue(demo, settings)
    return demo, times


def _serve(demo: Any) -> Iterator[str]:
    from webapp import free_port

    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False)
    return f"http://127.0.0.1:{port}/"


def test_full_queue_says_how_long_to_wait_through_the_api() -> None:
    from gradio_client import Client

    gate = Gate()
    demo, times = _app(Settings(queue_size=1, concurrency=1), gate)
    times.record(4.0)  # recent answers took 4 s
    url = _serve(demo)
    try:
        running = Client(url, verbose=False).submit("first", api_name="/chat")
        assert gate.started.acquire(timeout=30)
        waiting = Client(url, verbose=False).submit("second", api_name="/chat")
        time.sleep(1.0)  # the second is in the queue now: 1 waiting = the limit
        start = time.monotonic()
        with pytest.raises(Exception) as refused:
            Client(url, verbose=False).predict("third", api_name="/chat")
        elapsed = time.monotonic() - start
        gate.open.set()
        assert running.result(timeout=30) == "answer to first"
        assert waiting.result(timeout=30) == "answer to second"
    finally:
        gate.open.set()
        demo.close()
    text = str(refused.value)
    assert "Queue is full" not in text
    assert "The server is busy: 1 request is waiting" in text and "try again in about 5 seconds" in text, text
    assert elapsed < 5.0, f"a full queue took {elapsed:.1f}s to say so"


def test_the_generation_group_keeps_its_limit() -> None:
    """Gradio gives a concurrency group the lowest limit of its events: one event left at the
    default (1) would make the whole class wait in single file."""
    from vitdemo.ui.queue_limit import GENERATE_GROUP

    demo, _ = _app(Settings(concurrency=7), Gate(), extra_default_event=True)
    limits = {fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == GENERATE_GROUP}
    assert limits == {7}, limits


def test_the_app_wires_its_events_with_the_limits(tiny_llava_dir: Any, tmp_path: Any) -> None:
    from vitdemo.ui.app import build_ui, launch_kwargs
    from vitdemo.ui.queue_limit import GENERATE_GROUP, TOOL_CONCURRENCY

    settings = Settings(model=str(tiny_llava_dir), home=tmp_path)
    demo = build_ui(settings, defer_load=True)
    generate = [fn for fn in demo.fns.values() if fn.concurrency_id == GENERATE_GROUP]
    assert generate and all(fn.concurrency_limit == settings.concurrency for fn in generate)
    assert any(fn.api_name == "chat" for fn in generate), "/chat is in the generation group"
    # /attend holds the model with eager attention, like the Attention tab: one at a time,
    # waiting in the queue (which shows its place), not with a chat slot each on the lock.
    attend = next(fn for fn in demo.fns.values() if fn.api_name == "attend")
    assert attend.concurrency_id != GENERATE_GROUP
    assert attend.concurrency_limit in ("default", TOOL_CONCURRENCY), attend.concurrency_limit  # None: no limit
    assert demo._queue.default_concurrency_limit == TOOL_CONCURRENCY  # the tabs' model events
    assert demo._queue.max_size is None  # the limit is ours, with its message
    assert launch_kwargs(settings)["max_threads"] >= settings.concurrency + 40


@pytest.mark.browser
def test_full_queue_says_how_long_to_wait_on_the_page(artifacts_dir: Any) -> None:
    from gradio_client import Client

    from webapp import browser_page

    gate = Gate()
    demo, times = _app(Settings(queue_size=1, concurrency=1), gate)
    times.record(12.0)
    url = _serve(demo)
    try:
        Client(url, verbose=False).submit("first", api_name="/chat")
        assert gate.started.acquire(timeout=30)
        Client(url, verbose=False).submit("second", api_name="/chat")
        time.sleep(1.0)
        with browser_page(width=900, height=500) as page:
            page.goto(url)
            box = page.locator("#q textarea")
            box.fill("third")
            box.press("Enter")
            page.get_by_text("Please try again in about 15 seconds").first.wait_for(timeout=20000)
            page.screenshot(path=str(artifacts_dir / "queue-full-page.png"))
    finally:
        gate.open.set()
        demo.close()
