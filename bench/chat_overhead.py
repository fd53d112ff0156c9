"""Chat-path overhead: time to first token and tokens/s through chat's stream_answer vs a bare
model.generate on the same model, image and prompt.

    python bench/chat_overhead.py [--model PATH] [--tokens 64] [--runs 5]

Both generate exactly --tokens new tokens greedily (min_new_tokens = max_new_tokens), or
the model's own cap when its generation config declares a lower one, as the chat path does.
Bare time to first token = generate(max_new_tokens=1); the app's = first streamed text
piece. Figures are medians. Target: overhead <= 10%.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or id (default: the app's default model)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import torch

    from vitdemo.chat import conversation
    from vitdemo.config import setup_logging
    from vitdemo.paths import EXAMPLES_DIR
    from vitdemo.core.engine import Engine
    from vitdemo.core.images import open_image
    from vitdemo.core.loading import load_model, resolve_model_source

    setup_logging()
    source = resolve_model_source(args.model, os.environ.get("VITDEMO_HOME") or tempfile.mkdtemp())
    engine = Engine(load_model(source))
    model, n = engine.model, args.tokens
    cap = conversation.GenerationSettings(max_new_tokens=n).within_model_cap(model).max_new_tokens
    if cap < n:  # the chat path asks for no more than the model declares (the classroom model: 55)
        print(f"the model's generation config caps an answer at {cap} tokens: measuring {cap}")
        n = cap
    model.generation_config.min_new_tokens = n  # same token count on both paths
    image = open_image(str(sorted(EXAMPLES_DIR.glob("*.png"))[0]))
    conv = [conversation.user_message("How many shapes are there?", 1)]
    gen = conversation.GenerationSettings(max_new_tokens=n)

    # The bare generate runs on a long-lived worker thread of its own, as the app's does
    # (vitdemo.core.gen_thread): on this machine torch's CPU kernels were far slower in the main
    # thread (shared with another job), and a fresh thread per call starts on cold memory
    # (about 3 ms of the first token), which would flatter one side or the other.
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def bare(max_new: int) -> float:
        def work() -> float:
            t = time.perf_counter()
            inputs = conversation.build_inputs(engine.processor, conv, [image])  # same preprocessing, timed
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=max_new, min_new_tokens=max_new, do_sample=False)
            assert out.shape[-1] - inputs["input_ids"].shape[-1] == max_new
            return time.perf_counter() - t

        return worker.submit(work).result()

    def app() -> tuple[float, float]:
        stats = conversation.AnswerStats()
        for _ in conversation.stream_answer(engine, conv, [image], gen, stats=stats):
            pass
        assert stats.new_tokens == n, stats
        return stats.first_token_s or float("nan"), stats.total_s

    bare(n), app()  # warm-up
    bare_ttft, bare_total, app_ttft, app_total = [], [], [], []
    for _ in range(args.runs):  # interleaved
        bare_ttft.append(bare(1))
        bare_total.append(bare(n))
        f, t = app()
        app_ttft.append(f)
        app_total.append(t)
    med = statistics.median
    bt, bT, at, aT = med(bare_ttft), med(bare_total), med(app_ttft), med(app_total)
    print(f"model: {source} on {engine.device}; {n} new tokens, {args.runs} runs, medians")
    print(f"time to first token: bare {bt * 1000:.1f} ms, app {at * 1000:.1f} ms "
          f"(overhead {100 * (at - bt) / bt:+.1f}%)")
    print(f"tokens/s:            bare {n / bT:.1f}, app {n / aT:.1f} "
          f"(overhead {100 * (aT - bT) / bT:+.1f}% in total time)")


if __name__ == "__main__":
    main()
