"""Classroom model speed on this CPU: load time, time to first token, greedy tokens/s.

Targets (issue): load <= 1 s, first token <= 50 ms, >= 100 tokens/s.
Run: python bench/classroom_speed.py [--model assets/classroom]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from vitdemo.classroom import scenes  # noqa: E402
from vitdemo.cli_classroom import CLASSROOM_DIR  # noqa: E402


class FirstTokenTimer(BaseStreamer):
    """generate() calls put() with the prompt, then once per new token: time the first."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.calls = 0
        self.first_token_s: float | None = None

    def put(self, value) -> None:
        self.calls += 1
        if self.calls == 2:
            self.first_token_s = time.perf_counter() - self.t0

    def end(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=CLASSROOM_DIR)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(args.model).eval()
    processor = AutoProcessor.from_pretrained(args.model)
    load_s = time.perf_counter() - start

    scene = scenes.generate_scene(np.random.default_rng(0), n_objects=4)
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}],
        add_generation_prompt=True)
    first, rates = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        inputs = processor(images=[scene.image], text=prompt, return_tensors="pt")
        timer = FirstTokenTimer(t0)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=64, do_sample=False, streamer=timer)
        total = time.perf_counter() - t0
        first.append(timer.first_token_s)
        rates.append((out.shape[1] - inputs["input_ids"].shape[1]) / total)
    # Decoding speed without the end token stopping early: 128 tokens forced.
    with torch.inference_mode():
        inputs = processor(images=[scene.image], text=prompt, return_tensors="pt")
        t0 = time.perf_counter()
        out = model.generate(**inputs, max_new_tokens=128, min_new_tokens=128, do_sample=False)
        forced = (out.shape[1] - inputs["input_ids"].shape[1]) / (time.perf_counter() - t0)
    print(json.dumps({
        "load_s": round(load_s, 3),
        "first_token_ms_median": round(1000 * float(np.median(first)), 1),
        "tokens_per_s_median": round(float(np.median(rates)), 1),
        "tokens_per_s_128_forced": round(forced, 1),
        "repeats": args.repeats,
    }))


if __name__ == "__main__":
    main()
