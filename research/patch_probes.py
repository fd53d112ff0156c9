"""What the classroom encoder's patch tokens say about each object: linear probes.

    python research/patch_probes.py [ENCODER ...] [--layer N ...]
    (default: assets/classroom/contrastive, layer -1)

For every object of generated scenes, its patch tokens as the LLaVA projector reads them
(a hidden state of the vision tower, CLS dropped: -1 the last layer, 0 the embeddings)
are pooled with the object's mask weights; a linear classifier is fitted on 600 scenes'
objects and scored on 300 other scenes' objects, for its colour (6 classes), shape (3) and
grid cell (9). Prints one JSON line per encoder and layer (a `contrastive/` folder: a
CLIPModel saved by the build).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers import AutoProcessor, CLIPModel  # noqa: E402

from vitdemo.classroom import scenes  # noqa: E402
from vitdemo.classroom.batches import BatchMaker  # noqa: E402

CLASSES = {"color": len(scenes.COLORS), "shape": len(scenes.SHAPES), "cell": len(scenes.POSITIONS)}


def pooled_objects(clip: CLIPModel, maker: BatchMaker, n_scenes: int, seed: int, layers: list[int]
                   ) -> tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]:
    """Per layer, (objects, width) mask-pooled patch tokens; each object's colour, shape and cell.

    All layers come from one pass over the scenes, so the scenes are drawn once."""
    rng = np.random.default_rng(seed)
    colors = list(scenes.COLORS)
    pooled: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    labels: dict[str, list[int]] = {name: [] for name in CLASSES}
    for _ in range(0, n_scenes, 50):
        batch = [scenes.generate_scene(rng) for _ in range(50)]
        pixels = maker.processor.image_processor([s.image for s in batch], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            hidden = clip.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
        for index, scene in enumerate(batch):
            for obj in scene.objects:
                weights = maker.patch_weights(obj.mask)
                for layer in layers:
                    pooled[layer].append(weights @ hidden[layer][index, 1:])
                labels["color"].append(colors.index(obj.color))
                labels["shape"].append(scenes.SHAPES.index(obj.shape))
                labels["cell"].append(obj.cell)
    return ({layer: torch.stack(tokens) for layer, tokens in pooled.items()},
            {name: torch.tensor(values) for name, values in labels.items()})


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   n_classes: int) -> float:
    """Test accuracy of a softmax classifier on standardised features (300 Adam steps)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    linear = torch.nn.Linear(train_x.shape[1], n_classes)
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(train_x), train_y).backward()
        optimizer.step()
    with torch.no_grad():
        return (linear(test_x).argmax(1) == test_y).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("encoders", type=Path, nargs="*", default=[ROOT / "assets" / "classroom" / "contrastive"])
    parser.add_argument("--layer", type=int, action="append",
                        help="hidden state to probe (repeatable; default -1, the last layer)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    processor = AutoProcessor.from_pretrained(ROOT / "assets" / "classroom")
    maker = BatchMaker(processor, np.random.default_rng(0))
    for encoder in args.encoders:
        clip = CLIPModel.from_pretrained(encoder).eval()
        layers = args.layer or [-1]
        train_x, train_y = pooled_objects(clip, maker, 600, seed=11, layers=layers)
        test_x, test_y = pooled_objects(clip, maker, 300, seed=12, layers=layers)
        for layer in layers:
            scores = {name: round(probe_accuracy(train_x[layer], train_y[name], test_x[layer], test_y[name], k), 3)
                      for name, k in CLASSES.items()}
            print(json.dumps({"encoder": str(encoder), "layer": layer, "objects": len(test_y["cell"]), **scores}))


if __name__ == "__main__":
    main()
