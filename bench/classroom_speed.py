"""Classroom model speed on this CPU, through the app's own chat path (Engine + stream_answer):
load time, time to first token, greedy tokens/s.

Targets (issue): load <= 1 s, first token <= 50 ms, >= 100 tokens/s.
Run: python bench/classroom_speed.py [--model assets/classroom] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from vitdemo.chat import conversation  # noqa: E402
from vitdemo.classroom import scenes  # noqa: E402
from vitdemo.paths import CLASSROOM_MODEL_DIR  # noqa: E402
from vitdemo.core.engine import Engine  # noqa: E402
from vitdemo.core.loading import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=CLASSROOM_MODEL_DIR)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    # The first load also imports transformers' LLaVA/CLIP/Llama modules (lazy imports);
    # the second is the load itself, as when a process that already imported them loads it.
    start = time.perf_counter()
    engine = Engine(load_model(str(args.model)))
    first_load_s = time.perf_counter() - start
    start = time.perf_counter()
    engine = Engine(load_model(str(args.model)))
    load_s = time.perf_counter() - start

    image = scenes.generate_scene(np.random.default_rng(0), n_objects=4).image
    conv = [conversation.user_message("Describe the image.", n_images=1)]
    first, rates, lengths = [], [], []
    for _ in range(args.repeats + 1):  # the first run warms up and is dropped
        stats = conversation.AnswerStats()
        "".join(conversation.stream_answer(engine, conv, [image], conversation.GenerationSettings(max_new_tokens=64),
                                   stats=stats))
        first.append(stats.first_token_s)
        rates.append(stats.new_tokens / stats.total_s)
        lengths.append(stats.new_tokens)
    print(json.dumps({
        "first_load_s_with_module_imports": round(first_load_s, 3),
        "load_s": round(load_s, 3),
        "first_token_ms_median": round(1000 * float(np.median(first[1:])), 1),
        "tokens_per_s_median": round(float(np.median(rates[1:])), 1),
        "answer_tokens": int(np.median(lengths[1:])),
        "repeats": args.repeats,
    }))


if __name__ == "__main__":
    main()
