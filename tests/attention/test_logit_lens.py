"""Logit lens (vitdemo.attention.logit_lens): on tiny LLaVA / Idefics3 / Qwen2-VL the last
layer's decoding is the model's own greedy choice at every answer step; shapes, sorted
probabilities, patch-word grids on the layout, clear errors; on the classroom model the last
layer decodes the answer word, and the patch-word picture is drawn."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from vitdemo.attention.layouts import build_layout
from vitdemo.attention.lens_picture import draw_patch_words
from vitdemo.attention.logit_lens import (
    TOP_K,
    answer_lens,
    cell_positions,
    find_lens_head,
    lens_payload,
    patch_words,
    run_lens,
    token_text,
)
from vitdemo.chat.conversation import build_inputs, user_message
from vitdemo.errors import InputError, UnsupportedModelError
from vitdemo.paths import CLASSROOM_MODEL_DIR

torch.set_num_threads(1)
N_NEW = 6  # greedy answer tokens per model (fewer if it writes EOS)


def _load(folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def _prompt(processor, image: Image.Image, question: str = "What is in the picture?"):
    return build_inputs(processor, [user_message(question, 1)], [image])


def _greedy(model, inputs, n: int = N_NEW) -> tuple[list[int], torch.Tensor]:
    """Greedy ids and the raw logits of each step. The tiny models' generation config
    suppresses unreadable tokens; the lens reads the raw distribution, so suppress nothing."""
    config = copy.deepcopy(model.generation_config)
    config.update(suppress_tokens=[], max_new_tokens=n, do_sample=False, output_logits=True,
                  return_dict_in_generate=True)
    out = model.generate(**inputs, generation_config=config)
    ids = out.sequences[0, inputs["input_ids"].shape[1]:].tolist()
    return ids, torch.cat(out.logits).float()  # (n, vocab)


@pytest.fixture(scope="module", params=["llava", "idefics3", "qwen2vl"])
def tiny(request):
    folder = request.getfixturevalue(f"tiny_{request.param}_dir")
    return _load(folder)


@pytest.fixture(scope="module")
def classroom():
    if not (CLASSROOM_MODEL_DIR / "config.json").is_file():
        pytest.skip("assets/classroom is not built")
    from vitdemo.classroom.report import load_classroom

    return load_classroom(CLASSROOM_MODEL_DIR)


def test_last_layer_is_the_greedy_choice_and_probabilities_are_sorted(tiny):
    model, processor = tiny
    image = Image.new("RGB", (64, 48), (200, 30, 30))
    inputs = _prompt(processor, image)
    ids, raw_logits = _greedy(model, inputs)
    lens = run_lens(model, inputs, ids)
    n_layers = model.config.text_config.num_hidden_layers
    assert lens.n_layers == n_layers and len(lens.hidden_states) == n_layers + 1
    tokens = answer_lens(lens, processor.tokenizer)
    assert [t.index for t in tokens] == list(range(len(ids))) and 1 <= len(ids) <= N_NEW
    for k, t in enumerate(tokens):
        assert t.position == inputs["input_ids"].shape[1] - 1 + k
        assert t.top_ids.shape == t.top_probs.shape == (n_layers + 1, TOP_K)
        assert len(t.top_tokens) == n_layers + 1 and all(len(row) == TOP_K for row in t.top_tokens)
        assert (t.top_probs >= 0).all() and (t.top_probs.sum(axis=1) <= 1 + 1e-5).all()
        assert (np.diff(t.top_probs, axis=1) <= 0).all()  # most probable first
        # The real check: the last layer's top-1 is what greedy decoding wrote at that step.
        assert int(t.top_ids[-1, 0]) == ids[k], (k, t.top_ids[-1], ids)
        assert t.token_probs[-1] == pytest.approx(float(t.top_probs[-1, 0]), abs=1e-6)
    # And the whole last-layer distribution is generate's own (cached, step by step) one.
    last = lens.probs(-1, [t.position for t in tokens]).cpu()
    assert torch.allclose(last, raw_logits.softmax(-1), atol=1e-5)


def test_patch_words_fill_the_layout_grid(tiny):
    model, processor = tiny
    image = Image.new("RGB", (64, 48), (30, 30, 200))
    inputs = _prompt(processor, image)
    layout = build_layout(model.config, processor, inputs, [image])
    lens = run_lens(model, inputs, [])
    cells = cell_positions(layout, 0)
    grid = layout.grid(0)
    assert cells.shape == (grid.rows, grid.cols)
    # Every local image token has exactly one cell; a global view (Idefics3) has none.
    local = [t for t in layout.tiles if not t.is_global] or layout.tiles
    expected = np.sort(np.concatenate([t.positions for t in local]))
    assert np.array_equal(np.sort(cells.reshape(-1)), expected)
    for layer in (0, 1, -1):
        (words,) = patch_words(lens, processor.tokenizer, layout, layer)
        assert words.shape == (grid.rows, grid.cols) and words.layer == lens.layer_index(layer)
        assert ((words.probs > 0) & (words.probs <= 1)).all()
        for r in range(grid.rows):
            for c in range(grid.cols):
                top = lens.probs(layer, [int(cells[r, c])])[0].argmax().item()
                assert words.token_ids[r, c] == top
                assert words.words[r][c] == token_text(processor.tokenizer, top).strip()


def test_payload_shape(tiny_llava_dir):
    model, processor = _load(tiny_llava_dir)
    image = Image.new("RGB", (40, 40), (30, 200, 30))
    inputs = _prompt(processor, image)
    ids, _ = _greedy(model, inputs, n=3)
    layout = build_layout(model.config, processor, inputs, [image])
    payload = lens_payload(run_lens(model, inputs, ids), processor.tokenizer, layout)
    n = model.config.text_config.num_hidden_layers + 1
    assert payload["layers"] == n and payload["layer_names"][0] == "embeddings"
    assert [t["id"] for t in payload["tokens"]] == ids
    assert all(len(top) == TOP_K and len(top[0]) == 2 for top in payload["tokens"][0]["top"])
    assert len(payload["tokens"][0]["token_prob"]) == n
    rows, cols = payload["patch_words"]["grid"]
    assert (rows, cols) == (4, 4)
    assert [len(layer["words"]) for layer in payload["patch_words"]["layers"]] == [rows] * n


def test_unsupported_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=32)).eval()
    with pytest.raises(UnsupportedModelError, match=r"'gpt2'.*supported: .*llava"):
        find_lens_head(model)
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        run_lens(model, {"input_ids": torch.tensor([[1, 2, 3]])}, [4])


def test_a_missing_norm_is_named(tiny_llava_dir):
    model, _ = _load(tiny_llava_dir)
    del model.model.language_model.norm
    with pytest.raises(UnsupportedModelError, match=r"model\.language_model\.norm"):
        find_lens_head(model)


def test_logits_the_lens_cannot_reproduce_are_refused(tiny_llava_dir):
    """A model that rescales its logits after lm_head (as soft-capping models do) would make
    the lens show the wrong distribution: the head check refuses it."""
    model, processor = _load(tiny_llava_dir)
    inputs = _prompt(processor, Image.new("RGB", (32, 32), "white"))

    def rescale(module, args, output):
        output.logits = output.logits * 0.5
        return output

    model.register_forward_hook(rescale)
    with pytest.raises(UnsupportedModelError, match="do not reproduce the model's logits"):
        run_lens(model, inputs, [5, 6])


def test_bad_input_is_an_input_error(tiny_llava_dir):
    model, processor = _load(tiny_llava_dir)
    inputs = _prompt(processor, Image.new("RGB", (32, 32), "white"))
    with pytest.raises(InputError, match="outside the vocabulary"):
        run_lens(model, inputs, [10 ** 6])
    batch = {k: torch.cat([v, v]) for k, v in inputs.items()}
    with pytest.raises(InputError, match="one prompt at a time"):
        run_lens(model, batch, [5])
    lens = run_lens(model, inputs, [5])
    with pytest.raises(InputError, match="layer 9 does not exist"):
        lens.logits(9, [0])
    with pytest.raises(InputError, match="answer token 1 does not exist"):
        answer_lens(lens, processor.tokenizer, indices=[1])
    with pytest.raises(InputError, match="rectangular"):
        draw_patch_words(Image.new("RGB", (32, 32)), [["a", "b"], ["c"]])


def _red_circle(size: int = 192) -> Image.Image:
    from vitdemo.classroom import scenes

    rng = np.random.default_rng(3)
    return scenes.generate_scene(rng, size=size, layout=[("red", "circle", 4), ("blue", "square", 0)]).image


def test_classroom_last_layer_decodes_the_answer_word(classroom, artifacts_dir):
    model, processor = classroom
    image = _red_circle()
    inputs = _prompt(processor, image, "What color is the circle?")
    ids, _ = _greedy(model, inputs, n=1)
    assert processor.tokenizer.decode(ids).strip() == "red"  # the classroom model knows this scene
    lens = run_lens(model, inputs, ids)
    (first,) = answer_lens(lens, processor.tokenizer, indices=[0])
    assert first.top_tokens[-1][0].strip() == "red" and first.top_probs[-1, 0] > 0.5
    # The embeddings alone cannot know the answer: the decoders make it.
    assert first.token_probs[0] < first.token_probs[-1]
    layout = build_layout(model.config, processor, inputs, [image])
    (words,) = patch_words(lens, processor.tokenizer, layout, -1)
    picture = draw_patch_words(image, words.words, words.box, words.probs)
    assert picture.mode == "RGB" and picture.width >= image.width
    assert picture.width / words.shape[1] >= 30  # cells enlarged to hold a word
    before = np.asarray(image.resize(picture.size)).astype(int)
    assert np.abs(np.asarray(picture).astype(int) - before).mean() > 5  # the words are drawn
    picture.save(artifacts_dir / "logit_lens_red_circle.png")


def test_attend_cli_logit_lens_flag(tiny_llava_dir, tmp_path):
    """`attend --json --logit-lens` adds the key (the plain payload, shared with /attend, does not
    have it); `--out` adds one patch-words picture per layer."""
    import json
    import os
    import subprocess
    import sys

    from vitdemo.paths import REPO_ROOT

    image = tmp_path / "red.png"
    Image.new("RGB", (48, 48), (200, 30, 30)).save(image)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "vitdemo", "attend", "--model", str(tiny_llava_dir), "--image",
                           str(image), "--question", "What colour?", "--max-new-tokens", "3", "--device", "cpu",
                           "--json", "--logit-lens", "--out", str(tmp_path / "out")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(proc.stdout)
    lens = payload["logit_lens"]
    assert payload["logit_lens_notice"] is None
    assert [t["token"] for t in lens["tokens"]] == payload["tokens"]
    assert lens["patch_words"]["grid"] == payload["grid"][0]
    assert sorted(p.name for p in (tmp_path / "out").glob("lens_*.png")) == [
        f"lens_layer{i}_image0.png" for i in range(lens["layers"])]
