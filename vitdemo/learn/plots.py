"""Pictures for the Learn tab, drawn with matplotlib (Agg) into PIL images."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vitdemo.classroom.zero_shot import CaptionMatch  # noqa: E402
from vitdemo.learn.inside import HeadWalkthrough  # noqa: E402
from vitdemo.learn.stages import StageRecord  # noqa: E402


def _to_image(fig) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def loss_curves(stages: list[StageRecord]) -> Image.Image:
    """One panel per stage: training loss against step (the last stage's is weighted: its short
    answers weigh more, BuildSettings.backgrounds_answer_weights)."""
    fig, axes = plt.subplots(1, len(stages), figsize=(3.2 * len(stages), 2.6), squeeze=False)
    for number, (ax, stage) in enumerate(zip(axes[0], stages), start=1):
        steps, losses = zip(*stage.curve) if stage.curve else ((), ())
        ax.plot(steps, losses, color="#3465a4")
        ax.set_title(f"{number}. {stage.name}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("loss")
    fig.tight_layout()
    return _to_image(fig)


def caption_similarity(match: CaptionMatch) -> Image.Image:
    """Softmax over captions of one image (bars), the picked caption highlighted."""
    probs = match.probs[0]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(probs) + 0.8))
    colors = ["#4e9a06" if i == match.picked[0] else "#888a85" for i in range(len(probs))]
    labels = [c if len(c) <= 60 else c[:57] + "..." for c in match.captions]
    ax.barh(range(len(probs)), probs, color=colors)
    ax.set_yticks(range(len(probs)), labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability = softmax(cosine / tau)")
    for i, (p, c) in enumerate(zip(probs, match.cosine[0])):
        ax.text(min(p + 0.01, 0.8), i, f"{p:.2f}  (cos {c:+.2f})", va="center", fontsize=8)
    fig.tight_layout()
    return _to_image(fig)


def attention_rows(walk: HeadWalkthrough, queries: list[int], keys: list[int]) -> Image.Image:
    """The softmax weights of a few query tokens over a few key tokens, numbers written in."""
    sub = walk.weights[np.ix_(queries, keys)]  # (n_queries, n_keys)
    fig, ax = plt.subplots(figsize=(0.6 * len(keys) + 1.8, 0.5 * len(queries) + 1.2))
    ax.imshow(sub, cmap="Blues", vmin=0, vmax=max(1e-6, float(sub.max())))
    ax.set_xticks(range(len(keys)), [repr(walk.tokens[k])[1:-1][:8] for k in keys], rotation=60, fontsize=8)
    ax.set_yticks(range(len(queries)), [repr(walk.tokens[q])[1:-1][:12] for q in queries], fontsize=8)
    for i in range(len(queries)):
        for j in range(len(keys)):
            ax.text(j, i, f"{sub[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("key token")
    ax.set_ylabel("query token")
    fig.tight_layout()
    return _to_image(fig)
