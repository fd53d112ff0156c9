"""Training sequences of the classroom model match the chat template the app uses."""

import numpy as np
import pytest
import torch

from vitdemo.classroom import scenes
from vitdemo.classroom.batches import IGNORE, BatchMaker, object_names
from vitdemo.classroom.model import build_processor


@pytest.fixture(scope="module")
def processor():
    return build_processor()


def test_piecewise_ids_equal_chat_template_ids(processor):
    maker = BatchMaker(processor, np.random.default_rng(0))
    turns = [("What color is the circle?", "red"), ("Where is the red circle?", "top left"),
             ("用中文回答", "红色")]
    seq, labels = maker.dialogue(turns, with_image=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": turns[0][0]}]}]
    for i, (q, a) in enumerate(turns):
        if i:
            messages.append({"role": "user", "content": [{"type": "text", "text": q}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    text = processor.apply_chat_template(messages)
    image = scenes.generate_scene(np.random.default_rng(1)).image
    ids = processor(images=[image], text=text, return_tensors="pt")["input_ids"][0].tolist()
    assert ids == seq
    # Loss only on the answers and their end tokens.
    supervised = processor.tokenizer.decode([t for t in labels if t != IGNORE])
    assert supervised == "red<|end|>top left<|end|>红色<|end|>"


def test_instruction_batch_shapes(processor):
    maker = BatchMaker(processor, np.random.default_rng(0))
    batch = maker.instruction_batch(4, max_turns=3, form_weights={f: 1.0 for f in scenes.FORMS})
    size = processor.image_processor.size["height"]
    assert batch["pixel_values"].shape == (4, 3, size, size)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert ((batch["input_ids"] == image_id).sum(1) == 64).all()
    assert ((batch["labels"] != IGNORE).sum(1) > 0).all()


def test_contrastive_batch_has_near_miss_twins(processor):
    maker = BatchMaker(processor, np.random.default_rng(0))
    batch = maker.contrastive_batch(8, twin_fraction=0.5)
    texts = processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    for a, b in ((0, 1), (2, 3)):
        first, second = scenes.parse_description(texts[a]), scenes.parse_description(texts[b])
        assert first != second and len(first) == len(second)
        # Exactly one attribute of one object differs, or the places are swapped.
        assert len(first - second) == 1 or {(c, s) for c, s, _ in first} == {(c, s) for c, s, _ in second}


def test_region_weights_sit_on_each_object(processor):
    """The region term pools each object's own patches, labelled with its own name."""
    maker = BatchMaker(processor, np.random.default_rng(3))
    batch = maker.contrastive_batch(6, twin_fraction=0.0)
    texts = processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
    weights, images, labels = batch["object_weights"], batch["object_image"], batch["object_label"]
    assert weights.shape == (len(labels), 64) and torch.allclose(weights.sum(1), torch.ones(len(labels)))
    names = object_names()
    for w, i, k in zip(weights, images.tolist(), labels.tolist()):
        color, shape = names[k].split()[1:]
        cell = {(c, s): pos for c, s, pos in scenes.parse_description(texts[i])}[(color, shape)]
        grid = w.view(8, 8)  # the weights' centre of mass lies in the object's grid cell
        centre_row = float((grid.sum(1) * (torch.arange(8) + 0.5)).sum()) / 8
        centre_col = float((grid.sum(0) * (torch.arange(8) + 0.5)).sum()) / 8
        assert scenes.POSITIONS.index(cell) == int(centre_row * 3) * 3 + int(centre_col * 3)


def test_region_term_raises_the_loss_when_labels_are_wrong(processor):
    from vitdemo.classroom.model import build_clip
    from vitdemo.classroom.train import contrastive_loss

    maker = BatchMaker(processor, np.random.default_rng(4))
    clip = build_clip(processor)
    batch = maker.contrastive_batch(4, twin_fraction=0.5)
    names = maker.names_batch()
    with torch.no_grad():
        image_only = contrastive_loss(clip, batch, names, region_weight=0.0)
        both = contrastive_loss(clip, batch, names, region_weight=1.0)
    # An untrained model scores every name alike: the region term adds about log(18).
    assert torch.isfinite(both) and 0.5 * np.log(18) < (both - image_only).item() < 2 * np.log(18)


def test_confusable_objects_share_a_colour_or_a_shape():
    layout = [("red", "circle", 0), ("red", "square", 4), ("blue", "triangle", 8)]
    scene = scenes.generate_scene(np.random.default_rng(0), layout=layout)
    assert scenes.confusable_objects(scene) == [0, 1]  # the two red ones; the blue triangle is alone
    qa = scenes.question_for(scene, "where", np.random.default_rng(0), target=1)
    assert (qa.question, qa.answer, qa.target) == ("Where is the red square?", "center", 1)


def test_where_questions_lean_to_confusable_objects(processor, monkeypatch):
    """where_confusable=1: every "where" asked in a scene with a confusable object is about one."""
    maker = BatchMaker(processor, np.random.default_rng(5))
    asked = []
    original = scenes.question_for

    def spy(scene, form, rng, canonical=True, target=None):
        qa = original(scene, form, rng, canonical, target)
        if form == "where":
            asked.append((qa.target, scenes.confusable_objects(scene)))
        return qa

    monkeypatch.setattr(scenes, "question_for", spy)
    maker.instruction_batch(24, max_turns=3, form_weights={"where": 1.0}, where_confusable=1.0)
    with_confusable = [(t, hard) for t, hard in asked if hard]
    assert with_confusable and all(t in hard for t, hard in with_confusable)


def test_object_weights_shape_how_crowded_instruction_scenes_are(processor, monkeypatch):
    drawn = []
    original = scenes.generate_scene

    def spy(*args, **kwargs):
        scene = original(*args, **kwargs)
        drawn.append(len(scene.objects))
        return scene

    monkeypatch.setattr(scenes, "generate_scene", spy)
    maker = BatchMaker(processor, np.random.default_rng(3))
    maker.instruction_batch(40, max_turns=1, form_weights={"count": 1.0}, object_weights=(0, 0, 1, 3))
    assert set(drawn) == {3, 4} and drawn.count(4) > drawn.count(3)
    with pytest.raises(ValueError, match="4 weights"):
        maker.instruction_batch(2, max_turns=1, form_weights={"count": 1.0}, object_weights=(1, 1))


def test_varied_share_draws_some_images_on_other_backgrounds(processor):
    maker = BatchMaker(processor, np.random.default_rng(3), varied_share=0.5)
    corners = [np.asarray(maker.scene().image)[:2, :2].mean() for _ in range(60)]
    dark = sum(c < 200 for c in corners)
    assert 10 < dark < 55  # standard paper is 225-255; about half the varied ones are darker
    with pytest.raises(ValueError, match="varied_share"):
        BatchMaker(processor, np.random.default_rng(3), varied_share=1.5)


def test_answer_weights_weigh_each_reply_and_leave_the_batch_as_it_was(processor):
    from transformers.loss.loss_utils import ForCausalLMLoss

    from vitdemo.classroom.batches import weighted_loss

    # "where" and absent questions often, so every batch has both
    weights = {f: 1.0 for f in scenes.FORMS} | {"where": 4.0, scenes.ABSENT: 4.0}
    plain = BatchMaker(processor, np.random.default_rng(3)).instruction_batch(16, 3, weights)
    batch = BatchMaker(processor, np.random.default_rng(3)).instruction_batch(
        16, 3, weights, answer_weights={"where": 4.0, scenes.ABSENT: 3.0})
    # the same random draws: the same sequences and images, with token weights on top
    assert all(torch.equal(plain[k], batch[k]) for k in plain)
    lw, labels = batch["loss_weights"], batch["labels"]
    assert torch.equal(lw > 0, labels != IGNORE)
    assert set(lw.unique().tolist()) == {0.0, 1.0, 3.0, 4.0}
    tok = processor.tokenizer
    end = tok.convert_tokens_to_ids("<|end|>")
    # every reply carries one weight; the 4x replies are positions, the 3x ones "no ..."
    for row_labels, row_weights in zip(labels.tolist(), lw.tolist()):
        replies: list[tuple[list[int], set[float]]] = []
        for k, (label, w) in enumerate(zip(row_labels, row_weights)):
            if label == IGNORE:
                continue
            if k == 0 or row_labels[k - 1] == IGNORE:
                replies.append(([], set()))
            replies[-1][0].append(label)
            replies[-1][1].add(w)
        for ids, ws in replies:
            assert len(ws) == 1, (tok.decode(ids), ws)
            text = tok.decode([t for t in ids if t != end])
            if ws == {4.0}:
                assert text in scenes.POSITIONS, text
            elif ws == {3.0}:
                assert text.startswith("no ") and text != "no", text
            else:
                assert text not in scenes.POSITIONS and not (text.startswith("no ") and text != "no"), text

    # all weights 1: transformers' own causal-LM loss (what the model returns); weights move it
    logits = torch.randn(*labels.shape, len(tok))
    ones = (labels != IGNORE).float()
    reference = ForCausalLMLoss(logits, labels, vocab_size=len(tok))
    assert torch.allclose(weighted_loss(logits, labels, ones), reference, atol=1e-5)
    only_where = (lw == 4.0).float()
    per_token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, len(tok)), labels[:, 1:].reshape(-1),
                                                  ignore_index=IGNORE, reduction="none").reshape(labels[:, 1:].shape)
    assert torch.allclose(weighted_loss(logits, labels, only_where), per_token[only_where[:, 1:] > 0].mean(), atol=1e-5)


def test_answer_weights_for_a_form_never_asked_are_refused(processor):
    maker = BatchMaker(processor, np.random.default_rng(0))
    with pytest.raises(ValueError, match="abscent"):
        maker.instruction_batch(2, 3, {f: 1.0 for f in scenes.FORMS}, answer_weights={"abscent": 3.0})
