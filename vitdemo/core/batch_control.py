"""Per-row control of one batched `generate`: each row samples and stops on its own.

`generate` runs the batch greedy. `RowLogits`, the last logits processor, applies each
row's repetition penalty and, for a row that samples, draws its token from that row's
own torch.Generator (seeded by the request) and leaves only that token possible, so
greedy selection picks it. A seeded request thus draws the same tokens alone or beside
others. `RowStop`, the stopping criterion, runs after every step: it hands each live
row its new token and ends the row at its end of sequence, its max_new_tokens, its Stop
button or its client leaving; `generate` pads ended rows until the last one ends.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import torch
from transformers import LogitsProcessor, StoppingCriteria

if TYPE_CHECKING:
    from vitdemo.core.scheduler import Row


class RowLogits(LogitsProcessor):
    """Repetition penalty and sampling per row; greedy rows pass through untouched."""

    def __init__(self, rows: Sequence[Row], pads: Sequence[int], device: torch.device) -> None:
        self.rows = rows
        self.pads = pads  # left padding of each row: its prompt starts there
        self.active = [i for i, r in enumerate(rows) if r.temperature > 0 or r.repetition_penalty != 1.0]
        self.generators = {
            i: torch.Generator(device=device).manual_seed(rows[i].seed)
            for i in self.active if rows[i].temperature > 0
        }

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i in self.active:
            row = self.rows[i]
            if row.attempt_done:
                continue
            if row.repetition_penalty != 1.0:
                seen = input_ids[i, self.pads[i]:]  # (T_i,) the row's own tokens, no padding
                picked = scores[i].gather(0, seen)
                picked = torch.where(picked < 0, picked * row.repetition_penalty, picked / row.repetition_penalty)
                scores[i].scatter_(0, seen, picked)
            if row.temperature > 0:
                token = _sample(scores[i], row.temperature, row.top_p, self.generators[i])
                scores[i].fill_(float("-inf"))
                scores[i, token] = 0.0
        return scores


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from softmax(logits / temperature), restricted to the top-p nucleus."""
    probs = torch.softmax(logits / temperature, dim=-1)  # (V,)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Drop a token once the mass before it already reaches top_p (the first always stays).
        sorted_probs[(sorted_probs.cumsum(0) - sorted_probs) >= top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class RowStop(StoppingCriteria):
    """Streams each live row's new token to it and says which rows have ended.

    `restart(steps)` is asked after every step; if it says yes, every row stops for now
    (none ends) and `restarted` tells the scheduler to run them again with newcomers.
    """

    def __init__(self, rows: Sequence[Row], eos_ids: set[int], restart: Callable[[int], bool] | None = None) -> None:
        self.rows = rows
        self.eos_ids = eos_ids
        self.restart = restart
        self.steps = 0
        self.restarted = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()  # (B,) one sync per step, as a streamer needs anyway
        self.steps += 1
        done = []
        for row, token in zip(self.rows, last):
            if not row.attempt_done:
                row.step(token, token in self.eos_ids)
            done.append(row.attempt_done)
        if not all(done) and self.restart is not None and self.restart(self.steps):
            self.restarted = True
            done = [True] * len(done)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)
