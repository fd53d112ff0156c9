"""Can the classroom model's maps be trusted? Causal checks on held-out scenes (`eval-maps`).

- Ablation: remove the object a question asks about (its box) and the answer must change
  ("Is there a red circle?" -> "no"; "What color is the circle?" -> another colour); remove
  another object and it must stay. Per removal method, so the default is chosen by measurement.
- Deletion / insertion (`attention.faithfulness`): the area under the probability curve
  when cells are painted over in the order each map ranks them, against random orders.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import Any

import numpy as np

from vitdemo.attention import faithfulness
from vitdemo.attention.ablation import ablate
from vitdemo.attention.pointing import first_token_result
from vitdemo.attention.interventions import REGION_METHODS
from vitdemo.classroom.evaluate import HELD_OUT_SEED, SceneQuestion, held_out_items
from vitdemo.core.engine import Engine

log = logging.getLogger(__name__)

# The forms whose answer depends on one object, with the answer the removal should give.
ABLATION_FORMS = ("exists", "color")
# A seed of its own, apart from eval-classroom's held-out set and the tests'.
MAP_CHECK_SEED = HELD_OUT_SEED + 20


def _ablation_items(items: list[SceneQuestion]) -> list[SceneQuestion]:
    """Questions about one object that is there: "exists" with answer yes, and "color"."""
    return [i for i in items if i.qa.target is not None and i.qa.form in ABLATION_FORMS
            and (i.qa.form != "exists" or i.qa.answer == "yes")]


def ablation_checks(engine: Engine, n_scenes: int, seed: int = MAP_CHECK_SEED,
                    methods: tuple[str, ...] = REGION_METHODS) -> dict[str, Any]:
    """Per method and form: the share of answers that change when the asked object is removed
    ("exists": to "no") and that stay when another object is removed. Only questions the
    model answers right as asked count."""
    items = _ablation_items(held_out_items(n_scenes, seed))
    counts: dict[str, dict[str, dict[str, list[bool]]]] = {
        m: {f: defaultdict(list) for f in ABLATION_FORMS} for m in methods}
    wrong_before = 0
    for item in items:
        scene, qa = item.scene, item.qa
        target = scene.objects[qa.target]  # type: ignore[index]
        others = [o for o in scene.objects if o is not target]
        for method in methods:
            removed = ablate(engine, scene.image, qa.question, box=target.box, method=method, max_new_tokens=4,
                             with_maps=False)
            if removed.before.answer != qa.answer:
                wrong_before += method == methods[0]
                continue
            stats = counts[method][qa.form]
            change = removed.after.answer == "no" if qa.form == "exists" else removed.changed
            stats["target_changes"].append(change)
            if not any(o.color == target.color for o in others):
                # With another object of the same colour left, "What color is the circle?" may
                # keep its answer by naming that object: counted apart.
                stats["target_changes_colour_unique"].append(change)
            stats["p_drop"].append(removed.p_before - removed.p_after)
            if others:
                kept = ablate(engine, scene.image, qa.question, box=others[0].box, method=method, max_new_tokens=4,
                              with_maps=False)
                stats["other_keeps"].append(kept.after.answer == qa.answer)
    report: dict[str, Any] = {"scenes": n_scenes, "seed": seed, "questions": len(items),
                              "answered_wrong_before_removal": int(wrong_before), "methods": {}}
    for method in methods:
        report["methods"][method] = {
            form: {"n": len(s["target_changes"]),
                   "target_removed_changes_answer": float(np.mean(s["target_changes"])) if s["target_changes"] else None,
                   "other_removed_keeps_answer": float(np.mean(s["other_keeps"])) if s["other_keeps"] else None,
                   "n_other": len(s["other_keeps"]),
                   "target_removed_changes_answer_colour_unique": (
                       float(np.mean(s["target_changes_colour_unique"])) if s["target_changes_colour_unique"] else None),
                   "n_colour_unique": len(s["target_changes_colour_unique"]),
                   "mean_p_drop": float(np.mean(s["p_drop"])) if s["p_drop"] else None}
            for form, s in counts[method].items()}
    return report


def faithfulness_checks(model: Any, processor: Any, n_questions: int, seed: int = MAP_CHECK_SEED,
                        steps: int = faithfulness.DEFAULT_STEPS, extra_maps: dict[str, Any] | None = None
                        ) -> dict[str, Any]:
    """Mean deletion and insertion AUC per map kind over `n_questions` held-out questions about
    one object (colour, shape, where, exists-yes), each map from the first answer token.

    Map kinds: "attention" (the default map), "rollout" (the vision encoder's attention
    rollout from CLS), "random" (mean of random orders) and any `extra_maps`: name ->
    function(model, processor, image, question, prefix_ids, token_id) -> (rows x cols map, box),
    e.g. `causal_view.relevancy_map_maker`."""
    rng = np.random.default_rng(seed)
    items = [i for i in held_out_items(max(1, n_questions), seed + 1)
             if i.qa.target is not None and (i.qa.form != "exists" or i.qa.answer == "yes")]
    scene_count = max(1, n_questions)
    while len(items) < n_questions:  # more scenes until there are enough questions about one object
        scene_count *= 2
        items = [i for i in held_out_items(scene_count, seed + 1)
                 if i.qa.target is not None and (i.qa.form != "exists" or i.qa.answer == "yes")]
    items = items[:n_questions]
    curves: dict[str, list[faithfulness.Curves]] = defaultdict(list)
    started = time.time()
    for item in items:
        image, question = item.scene.image, item.qa.question
        result = first_token_result(model, processor, image, question, vision=True)
        token_id = int(result.answer_ids[0])
        grid = result.grids()[0]
        maps = {"attention": (result.token_maps("answer", 0)[0], grid.box)}
        if result.vision is not None:
            maps["rollout"] = (result.rollout_map(0, "cls"), result.vision_box(0))
        for name, make in (extra_maps or {}).items():
            maps[name] = make(model, processor, image, question, [], token_id)
        for name, (grid_map, box) in maps.items():
            curves[name].append(faithfulness.map_curves(model, processor, image, question, token_id, grid_map, box,
                                                        steps))
        curves["random"].append(faithfulness.random_curves(model, processor, image, question, token_id,
                                                           (grid.rows, grid.cols), grid.box, rng, steps=steps))
    report: dict[str, Any] = {"questions": len(items), "seed": seed, "steps": steps, "kinds": {}}
    for name, runs in curves.items():
        report["kinds"][name] = {
            "deletion_auc": float(np.mean([c.deletion_auc for c in runs])),
            "insertion_auc": float(np.mean([c.insertion_auc for c in runs])),
            "mean_deletion_curve": np.mean([c.deletion for c in runs], axis=0).round(4).tolist(),
            "mean_insertion_curve": np.mean([c.insertion for c in runs], axis=0).round(4).tolist()}
    random_deletion = report["kinds"]["random"]["deletion_auc"]
    report["deletion_ratio_to_random"] = {name: kind["deletion_auc"] / random_deletion
                                          for name, kind in report["kinds"].items() if name != "random"}
    report["seconds"] = round(time.time() - started, 1)
    return report
