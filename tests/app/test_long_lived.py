"""The server's start-up objects leave the garbage collector's full collections."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_freezing_start_up_objects_leaves_full_collections_little_to_walk() -> None:
    # gc.freeze acts on the whole process: run it in its own, as the server does.
    script = textwrap.dedent("""
        import gc
        import gradio, torch, transformers  # what a server has loaded
        from vitdemo.serving.long_lived import freeze_start_up_objects

        before = len(gc.get_objects())
        frozen = freeze_start_up_objects()
        after = len(gc.get_objects())
        garbage = [[] for _ in range(3)]
        for pair in garbage:
            pair.append(pair)  # a reference cycle made after start-up
        del garbage, pair
        print(before, frozen, after, gc.collect())
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    before, frozen, after, collected = (int(x) for x in out.stdout.split())
    assert before > 50_000 and frozen >= before // 2  # torch, transformers and Gradio: tens of thousands
    assert after < 1_000  # what a full collection still walks
    assert collected >= 3  # objects made later are still collected
