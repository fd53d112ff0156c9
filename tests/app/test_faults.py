"""Server-level faults: out of memory during generation, a client that disconnects
mid-stream, a server restart with finished fine-tunes on disk. (Training-process faults,
SIGKILL / stop / resume, are tested with the fine-tune job code.)"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

import relserver as rs
from vitdemo.attention.view import ALL_HEADS, MIDDLE_LAYERS
from vitdemo.config import Settings
from vitdemo.attention.heatmaps import DEFAULT_COLORMAP
from vitdemo.core.engine import Engine
from vitdemo.core.loading import load_model
from webapp import free_port, serve

LONG = 200  # tokens a disconnected client would have asked for


@pytest.fixture(scope="module")
def engine(tiny_llava_dir: Path) -> Engine:
    return Engine(load_model(tiny_llava_dir))


@pytest.fixture(scope="module")
def settings(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=4,
                    home=tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def url(engine: Engine, settings: Settings) -> Iterator[str]:
    with serve(settings, engine) as u:
        yield u


@pytest.fixture(scope="module")
def red(tmp_path_factory: pytest.TempPathFactory) -> str:
    return rs.scene(tmp_path_factory.mktemp("img") / "red.png", "red", shape_box=(8, 8, 40, 40))


def _oom(n: int) -> BaseException | None:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB") if n == 1 else None


@pytest.mark.parametrize("api", ["/chat", "/on_ask"])
def test_out_of_memory_gives_a_clear_message_and_the_next_request_works(url: str, engine: Engine, red: str,
                                                                        api: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """/chat answers the API client with the error; the Attention tab shows it as a warning
    toast and keeps its outputs (the page's own event: the message is the one it logs)."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    client = rs.page_client(url)  # /on_ask is the page's own event
    args = (handle_file(red), "What is red?", None) if api == "/chat" else (handle_file(red), None, "What?", 4)
    with rs.ForwardSpy(engine.model, fail=_oom) as spy:
        if api == "/chat":
            with pytest.raises(AppError) as info:
                client.predict(*args, api_name=api)
            message = str(info.value)
        else:
            with caplog.at_level("INFO", logger="vitdemo.ui.attention"):
                client.predict(*args, api_name=api)  # a warning, not an error: no exception
            message = " ".join(r.getMessage() for r in caplog.records if "refused or failed" in r.getMessage())
        assert "out of memory" in message and "Traceback" not in message, message
        assert "lower max new tokens" in message and "4bit" in message, message  # says what to do
        assert rs.wait_unlocked(engine, 10) is not None, "the model lock is still held after the OOM"
        after = client.predict(*args, api_name=api)
        assert spy.calls > 1
    assert after if api == "/chat" else after[2]  # an answer (the attention tab: its answer spans)


@pytest.mark.parametrize("api", ["chat", "on_ask"])
def test_client_disconnect_stops_generation_and_frees_the_model(url: str, engine: Engine, settings: Settings,
                                                                red: str, api: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from gradio_client import Client, handle_file

    monkeypatch.setattr(engine.model.generation_config, "min_new_tokens", LONG)  # no early end of answer
    monkeypatch.setattr(settings, "max_new_tokens", LONG)  # what /chat asks for
    payload = rs.upload(url, red)
    data = [payload, "Talk for a long time.", None] if api == "chat" else [
        payload, None, "Talk for a long time.", LONG, MIDDLE_LAYERS, ALL_HEADS, "image 1", DEFAULT_COLORMAP, 0.5, False,
        None, None, None]  # the last three: this session's adapter choice, attention session, stop signal (gr.State)
    with rs.ForwardSpy(engine.model, delay_s=0.05) as spy:
        streamed = 0
        with rs.sse(url, rs.fn_index(url, api), data) as messages:
            for msg in messages:
                assert msg.get("msg") != "process_completed", f"finished before the disconnect: {msg}"
                streamed += msg.get("msg") == "process_generating"
                if streamed >= 3:
                    break  # leaving the block closes the connection: the client is gone
        calls_at_disconnect = spy.calls
        freed = rs.wait_unlocked(engine, 15)
        assert freed is not None, "the model lock is still held 15 s after the client left"
        calls_after = spy.calls
        time.sleep(1.0)
        assert spy.calls == calls_after, "generation goes on after the client left"
        assert calls_after < LONG // 2, f"{calls_after} forwards for a client that left after {calls_at_disconnect}"
    # Asked again at once: answered.
    monkeypatch.setattr(engine.model.generation_config, "min_new_tokens", 0)
    monkeypatch.setattr(settings, "max_new_tokens", 4)
    start = time.monotonic()
    answer = Client(url, verbose=False).predict(handle_file(red), "What is red?", None, api_name="/chat")
    assert answer.strip() and time.monotonic() - start < 60


def _finished_job(home: Path, model_dir: Path) -> tuple[str, Path]:
    """A job folder as a finished fine-tune leaves it: job.json completed + adapter/ (PEFT)."""
    from peft import LoraConfig, get_peft_model

    job_id = "20260101-120000-a1b2c3"
    folder = home / "jobs" / job_id
    (folder / "data").mkdir(parents=True)
    base = load_model(model_dir).model
    # init_lora_weights=False: random B, so the adapter visibly changes the answers.
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(folder / "adapter")
    # Shared with the class: each server run below is a new browser session, which sees only
    # its own jobs and shared ones.
    (folder / "job.json").write_text(json.dumps({"id": job_id, "status": "completed", "created": time.time(),
                                                 "model": str(model_dir), "pid": None, "error": None,
                                                 "shared": True}))
    return job_id, folder / "adapter"


def test_restart_keeps_finished_adapters_listed_and_loadable(tiny_llava_dir: Path, tmp_path: Path, red: str) -> None:
    """Two servers one after the other on the same VITDEMO_HOME, each with a freshly loaded
    model: nothing of the first survives in memory, only the folder. A new browser session
    (as after a restart) lists the shared job and answers with its adapter."""
    from gradio_client import Client, handle_file

    from vitdemo.finetune import service as svc
    from vitdemo.finetune.jobs import list_jobs

    job_id, adapter = _finished_job(tmp_path, tiny_llava_dir)
    answers = {}
    for run in ("before restart", "after restart"):
        engine = Engine(load_model(tiny_llava_dir))
        settings = Settings(model=str(tiny_llava_dir), port=free_port(), max_new_tokens=8, home=tmp_path)
        with serve(settings, engine) as u:
            assert job_id in [jid for _, jid in svc.job_choices(settings, None)]  # what a new session lists
            listed, _ = svc.adapter_paths(settings, job_id, None)
            assert listed.resolve() == adapter.resolve()
            base = Client(u, verbose=False).predict(handle_file(red), "What is red?", None, api_name="/chat")
            engine.use_adapter(str(listed))  # the server default: what /chat answers with
            tuned = Client(u, verbose=False).predict(handle_file(red), "What is red?", None, api_name="/chat")
            answers[run] = (base, tuned)
        [job] = [j for j in list_jobs(tmp_path) if j["id"] == job_id]
        assert job["status"] == "completed" and job["has_adapter"]
    assert answers["before restart"] == answers["after restart"]  # same base, same adapter, greedy
    base, tuned = answers["after restart"]
    assert tuned != base, "the adapter did not change the answer: was it loaded?"
