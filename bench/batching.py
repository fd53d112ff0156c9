"""The batcher's own cost: N requests through the scheduler vs one bare batched generate.

    python bench/batching.py [--sizes 1,16,30] [--tokens 32] [--runs 3]
    python bench/batching.py --spread-ms 400 --sizes 16   # arrivals spread over 400 ms

In-process, on a random-weight LLaVA of about 76M parameters built in code (answers are
exactly --tokens tokens: min_new_tokens). N users, each with their own image and the same
question: the scheduler's time is from N threads calling chat's `answer` at once to the
last answer (per-request processing included); the bare time is one
`model.generate` of the same N rows, inputs prepared beforehand by the processor's own
batching (left padding). Throughput ratio = bare / scheduler (target >= 0.85). Greedy
answers are compared with the bare batch's. Runs alternate which goes first; figures are medians.

With --spread-ms the N requests arrive evenly over that window instead, and the script
compares scheduler settings side by side (gathering window, rejoining a young batch):
time to the last answer and the p95 of each user's wait, beside N answers one at a time.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUESTION = "What is in the picture?"


def build_model(out: Path, tokens: int) -> Path:
    """~76M parameters: CLIP tower 6 x 384 at 96 px, Llama 13 x 768, vocabulary 2,048."""
    from transformers import GenerationConfig

    from tiny_models import TinyLlavaSpec, build_tiny_llava

    spec = TinyLlavaSpec(image_size=96, patch_size=12, vision_hidden=384, vision_layers=6, vision_heads=6,
                         text_hidden=768, text_layers=13, text_heads=12, text_kv_heads=4, vocab_size=2048)
    build_tiny_llava(out, seed=0, spec=spec)
    config = GenerationConfig.from_pretrained(out)
    config.min_new_tokens = tokens  # every answer has exactly `tokens` tokens
    config.save_pretrained(out)
    return out


def images(n: int) -> list:
    import random

    from PIL import Image

    rng = random.Random(0)
    return [Image.new("RGB", (96 + 8 * (i % 3), 96), tuple(rng.randrange(256) for _ in range(3))) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,16,30", help="numbers of simultaneous requests")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--spread-ms", type=float, default=0.0, help="arrivals spread evenly over this window")
    parser.add_argument("--model", help="a model folder (default: build the ~76M LLaVA)")
    args = parser.parse_args()

    import torch

    from vitdemo.chat import conversation as C
    from vitdemo.config import setup_logging
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model

    setup_logging()
    folder = Path(args.model) if args.model else build_model(Path(tempfile.mkdtemp()) / "llava76m", args.tokens)
    engine = Engine(load_model(folder))
    model, processor = engine.model, engine.processor
    n_params = sum(p.numel() for p in model.parameters())
    conv = [C.user_message(QUESTION, 1)]
    gen = C.GenerationSettings(max_new_tokens=args.tokens)
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1)  # bare generate on a long-lived thread too

    def bare(imgs: list) -> tuple[float, list[str]]:
        prompt = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        processor.tokenizer.padding_side = "left"
        inputs = processor(text=[prompt] * len(imgs), images=imgs, return_tensors="pt", padding=True)

        def work() -> tuple[float, list[str]]:
            start = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=args.tokens, do_sample=False)
            took = time.perf_counter() - start
            new = out[:, inputs["input_ids"].shape[1]:]
            return took, [processor.tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]

        return worker.submit(work).result()

    def scheduled(imgs: list, spread_s: float = 0.0) -> tuple[float, list[float], list[str]]:
        answers: list[str] = [""] * len(imgs)
        waits: list[float] = [0.0] * len(imgs)
        barrier = threading.Barrier(len(imgs) + 1)

        def user(i: int) -> None:
            barrier.wait()
            time.sleep(spread_s * i / max(len(imgs) - 1, 1))
            start = time.perf_counter()
            answers[i] = C.answer(engine, conv, [imgs[i]], gen)
            waits[i] = time.perf_counter() - start

        threads = [threading.Thread(target=user, args=(i,)) for i in range(len(imgs))]
        for t in threads:
            t.start()
        barrier.wait()
        start = time.perf_counter()
        for t in threads:
            t.join()
        return time.perf_counter() - start, waits, answers

    print(f"model: ~{n_params / 1e6:.0f}M-parameter random LLaVA, {args.tokens} tokens per answer, "
          f"{os.cpu_count()} CPUs, {args.runs} runs, medians", flush=True)
    bare(images(2)), scheduled(images(2))  # warm-up
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.spread_ms > 0:
        spread(args, sizes, engine, scheduled, C, conv, gen)
        return
    print(f"{'N':>4} {'bare generate s':>16} {'scheduler s':>12} {'throughput ratio':>17} {'answers equal':>14}")
    for n in sizes:
        imgs = images(n)
        bare_s, sched_s, equal = [], [], True
        for run in range(args.runs):
            if run % 2:  # alternate which goes first, so neither always meets a warm or cold allocator
                total, _, answers = scheduled(imgs)
                took, reference = bare(imgs)
            else:
                took, reference = bare(imgs)
                total, _, answers = scheduled(imgs)
            bare_s.append(took)
            sched_s.append(total)
            equal &= answers == reference
        b, s = statistics.median(bare_s), statistics.median(sched_s)
        print(f"{n:>4} {b:>16.2f} {s:>12.2f} {b / s:>17.2f} {'yes' if equal else 'NO':>14}", flush=True)


def spread(args: argparse.Namespace, sizes: list[int], engine, scheduled, C, conv, gen) -> None:
    """Scheduler settings side by side when arrivals are spread over --spread-ms."""
    settings = engine.scheduler.settings
    variants = {
        "static, no gathering": dict(gather_s=0.0, rejoin_steps=0, prepare_wait_s=0.0),
        "gather 30 ms": dict(gather_s=0.03, rejoin_steps=0, prepare_wait_s=0.0),
        "gather 100 ms": dict(gather_s=0.1, rejoin_steps=0, prepare_wait_s=0.0),
        "rejoin <= 4 steps": dict(gather_s=0.0, rejoin_steps=4, prepare_wait_s=0.0),
        "gather 30 ms + rejoin 4": dict(gather_s=0.03, rejoin_steps=4, prepare_wait_s=0.0),
        "+ wait 0.2 s for those prepared (default)": dict(gather_s=0.03, rejoin_steps=4, prepare_wait_s=0.2),
    }
    spread_s = args.spread_ms / 1000
    for n in sizes:
        imgs = images(n)
        start = time.perf_counter()
        C.answer(engine, conv, [imgs[0]], gen)
        one = time.perf_counter() - start
        print(f"N={n}, arrivals over {args.spread_ms:.0f} ms; one answer alone {one:.2f} s, "
              f"N one at a time ~{n * one:.1f} s")
        print(f"  {'setting':<42} {'last answer s':>14} {'p95 wait s':>11} {'p95 / alone':>12}")
        for name, values in variants.items():
            for key, value in values.items():
                setattr(settings, key, value)
            totals, p95s = [], []
            for _ in range(args.runs):
                total, waits, _ = scheduled(imgs, spread_s)
                totals.append(total)
                p95s.append(sorted(waits)[max(0, int(round(0.95 * len(waits))) - 1)])
            t, p = statistics.median(totals), statistics.median(p95s)
            print(f"  {name:<42} {t:>14.2f} {p:>11.2f} {p / one:>12.1f}", flush=True)


if __name__ == "__main__":
    main()
