"""The warm-up answer at server start (vitdemo.serving.warmup)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from vitdemo.core.engine import Engine
from vitdemo.core.loading import load_model
from vitdemo.serving.warmup import warm_up

ROOT = Path(__file__).resolve().parents[2]


def test_warm_up_answers_and_leaves_the_engine_free(tiny_llava_dir: Path) -> None:
    engine = Engine(load_model(tiny_llava_dir))
    seconds = warm_up(engine)
    assert seconds is not None and seconds > 0
    with engine.locked():  # nothing left holding the model
        pass


def test_a_failing_warm_up_is_logged_not_raised(tiny_llava_dir: Path, monkeypatch, caplog) -> None:
    engine = Engine(load_model(tiny_llava_dir))

    def broken(*args, **kwargs):
        raise RuntimeError("no memory for the warm-up")

    monkeypatch.setattr("vitdemo.serving.warmup.stream_answer", broken)
    assert warm_up(engine) is None
    assert "warm-up answer failed" in caplog.text and "no memory for the warm-up" in caplog.text


def _modules_gradio_event_guard_imports(warm: bool, config_dir: Path) -> list[str]:
    """The modules Gradio's per-event matplotlib guard imports, in a fresh process (after
    the start-up import when `warm`)."""
    script = textwrap.dedent(f"""
        import sys
        from gradio.utils import MatplotlibBackendMananger  # what Gradio enters around every event
        from vitdemo.serving.warmup import import_event_guard_modules
        if {warm}:
            assert import_event_guard_modules()
        before = set(sys.modules)
        with MatplotlibBackendMananger():
            pass
        print(" ".join(sorted(set(sys.modules) - before)))
    """)
    # matplotlib's defaults: a backend named by the environment or a user's matplotlibrc
    # would spare the guard its pyplot import
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**env, "MPLCONFIGDIR": str(config_dir)})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_the_start_up_import_leaves_gradios_event_guard_nothing_to_import(tmp_path: Path) -> None:
    # launch() calls it before serving the first question; without it that question's event
    # imported matplotlib and pyplot on the event loop
    assert "matplotlib.pyplot" in _modules_gradio_event_guard_imports(warm=False, config_dir=tmp_path)
    assert _modules_gradio_event_guard_imports(warm=True, config_dir=tmp_path) == []
