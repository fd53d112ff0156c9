"""build_ui(): the Gradio Blocks app: a header and one tab per capability.

Each tab lives in its own module under vitdemo/ui and exposes
`create_<name>_tab(engine, settings, adapter_state)`, called inside a gr.Tab.
"""

from __future__ import annotations

import logging
import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Gradio's queue keeps a record of every event (10000 by default) and, after each event,
# rebuilds a pandas summary of them all for its monitoring page: CPU and memory that grow
# with every request a long-running server answers. Keep few records; summarise rarely.
ANALYTICS_MAX_EVENTS = 200
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", str(ANALYTICS_MAX_EVENTS))
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

import gradio as gr  # noqa: E402

from vitdemo.config import Settings  # noqa: E402
from vitdemo.core.engine import Engine  # noqa: E402
from vitdemo.errors import InputError, VitdemoError  # noqa: E402
from vitdemo.paths import short_model_name  # noqa: E402
from vitdemo.core.fallback import FALLBACK_DIRNAME  # noqa: E402
from vitdemo.serving.warmup import import_event_guard_modules, warm_up  # noqa: E402
from vitdemo.serving.long_lived import freeze_start_up_objects  # noqa: E402
from vitdemo.ui import adapter_choice, api  # noqa: E402
from vitdemo.ui.attention import create_attention_tab  # noqa: E402
from vitdemo.ui.chat import create_chat_tab  # noqa: E402
from vitdemo.ui import identity  # noqa: E402
from vitdemo.ui.finetune import create_finetune_tab  # noqa: E402
from vitdemo.ui.learn import create_learn_tab  # noqa: E402
from vitdemo.serving.join import join_url  # noqa: E402
from vitdemo.ui.join import create_join_panel  # noqa: E402
from vitdemo.ui.queue_limit import configure_queue  # noqa: E402
from vitdemo.ui.session_cost import cache_init_signatures, share_session_configs  # noqa: E402

logger = logging.getLogger(__name__)


CSS = """
#vitdemo-chatbot img { max-height: 220px; width: auto; }
footer { display: none !important; }
"""


TITLE = "# vitdemo: chat with images"


def _loading_header(engine: Engine) -> str:
    return f"{TITLE}\n\nModel: `{short_model_name(engine.source)}` (loading...)"


def _header(engine: Engine) -> str:
    """The title and what is loaded; waits for a background load to finish."""
    try:
        loaded = engine.loaded
    except VitdemoError as err:
        return f"{TITLE}\n\n> **The model did not load.** {err}"
    lines = [TITLE,
             f"Model: `{short_model_name(loaded.source)}` on **{loaded.device}**, quantization "
             f"**{loaded.quantized}**, {loaded.dtype}."]
    if FALLBACK_DIRNAME in loaded.source:
        lines.append("> The classroom model's files are missing (assets/classroom/), so this is the built-in "
                     "fallback: a tiny LLaVA with **random weights**. Its answers are nonsense; it shows "
                     "the machinery. Start with `--model <hub id or folder>` for a real model.")
    return "\n\n".join(lines)


def build_ui(settings: Settings | None = None, engine: Engine | None = None, *,
             defer_load: bool = False) -> gr.Blocks:
    """The whole app. Loads the model (settings.model, else the default) unless `engine` is given.

    The model loads in a background thread, so the page is served while torch imports;
    the header fills in (and the first request waits) once it is there. defer_load=True
    starts that thread only when `launch` has the server answering (or on first use).
    """
    settings = settings or Settings.from_env()
    engine = engine or Engine.load_in_background(settings, start=not defer_load)
    with gr.Blocks(title="vitdemo", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as demo:
        ready = engine.is_loaded  # read once: the load may finish while the tabs are built
        header = gr.Markdown(_header(engine) if ready else _loading_header(engine))
        create_join_panel(settings)  # only when serving beyond loopback
        adapter_state = adapter_choice.new_state()  # this user's adapter, shared by the tabs
        session = identity.new_state(settings)  # whose fine-tune jobs this page sees (token kept in the browser)
        with gr.Tab("Chat"):
            create_chat_tab(engine, settings, adapter_state)
        with gr.Tab("Attention"):
            create_attention_tab(engine, settings, adapter_state)
        with gr.Tab("Fine-tune"):
            create_finetune_tab(engine, settings, adapter_state, session)
        with gr.Tab("Learn"):
            create_learn_tab(engine, settings, session)
        api.create_attend_endpoint(engine, settings)  # /chat is wired by the Chat tab
        if not ready:
            demo.load(lambda: _header(engine), None, header, queue=False, show_progress="hidden")
    api.restrict_api(demo)  # only the documented endpoints are on the API page
    cache_init_signatures(demo)  # halves the cost of each block config Gradio builds
    demo.vitdemo_answer_times = configure_queue(demo, settings)  # type: ignore[attr-defined]
    demo.vitdemo_engine = engine  # type: ignore[attr-defined]  # for tests and tabs
    return demo


def launch_kwargs(settings: Settings) -> dict[str, Any]:
    """Arguments for demo.launch(): safe defaults (no SSR, local bind, upload limit)."""
    return {
        "server_name": settings.host,
        "server_port": settings.port,
        "auth": settings.auth_pairs or None,
        "ssr_mode": False,  # Gradio 6.27-6.32: auth bypass via a forged Host header with SSR on
        "max_file_size": f"{settings.max_upload_mb}mb",
        # Every session (a browser tab, an API client) keeps its states and its own copy of each
        # block config it changed until evicted; the library's default of 10000 lets memory grow for days.
        "state_session_capacity": settings.max_sessions,
        "show_error": True,
        # A streaming answer holds a worker thread while it waits for its next token: room for
        # every generation that runs at once, plus Gradio's default 40 for everything else.
        "max_threads": settings.concurrency + 40,
        "css": CSS,
    }


def launch(demo: gr.Blocks, settings: Settings, **overrides: Any) -> Any:
    """Start the server (blocking unless prevent_thread_lock=True is passed)."""
    kwargs = launch_kwargs(settings)
    kwargs.update(overrides)
    if kwargs.get("share") and not kwargs.get("auth"):
        raise InputError("a public share link needs a login: start with --auth user:password (or a file)")
    if kwargs.get("server_name") not in ("127.0.0.1", "localhost", "::1") and not kwargs.get("auth"):
        logger.warning("serving on %s without --auth: anyone who can reach this address can use the app",
                       kwargs.get("server_name"))
    logger.info("serving on http://%s:%d", settings.host, settings.port)
    url = join_url(settings.host, settings.port)  # the address configured, as on the page
    if url and not kwargs.get("quiet"):
        print(f"Students join at: {url}", flush=True)  # the teacher reads it off the terminal
    engine = getattr(demo, "vitdemo_engine", None)
    blocking = not kwargs.get("prevent_thread_lock")
    # Serve at once, but a model that cannot load still ends a blocking start with its error.
    wait_for_model = blocking and engine is not None and not engine.is_loaded
    result = demo.launch(**{**kwargs, "prevent_thread_lock": True})
    if not share_session_configs(demo):  # a new session then costs ~0.01 ms instead of ~12 ms of the event loop
        logger.debug("new sessions build their own block configs (Gradio's way)")
    if engine is not None:
        engine.start_loading()
    if blocking:  # while the model loads, rather than on the event loop at the first question
        import_event_guard_modules()
    if wait_for_model:
        try:
            engine.wait_loaded()
        except VitdemoError:
            demo.close()
            raise
        logger.info("model ready: %s", engine.describe())
        warm_up(engine)  # before the first class asks, not during its first wave
    if blocking:  # this process is the server: what it has built by now lives as long as it does
        freeze_start_up_objects()
        demo.block_thread()
    return result
