"""Browser test of the Attention tab's causal checks (issue 20) on the classroom model: click two
corners around the asked object, ask again without it, see the answer flip; draw the deletion
curves, the relevancy map and the logit lens; a bad box is a warning, not an error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vitdemo.classroom.scenes import generate_scene
from vitdemo.paths import CLASSROOM_MODEL_DIR
from webapp import browser_page, serve_tab

pytestmark = pytest.mark.browser


@pytest.fixture()
def attention_app():
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model
    from vitdemo.ui.attention import create_attention_tab

    engine = Engine(load_model(str(CLASSROOM_MODEL_DIR), device="cpu"))
    with serve_tab(create_attention_tab, engine, None, "How it sees") as url:
        yield url


def _click_image_at(page, selector: str, x: float, y: float, size: tuple[int, int]) -> None:
    """Click the displayed image at pixel (x, y) of the original image (the picture is drawn
    centred in its frame, as large as fits)."""
    img = page.locator(f"{selector} img").first
    box = img.bounding_box()
    assert box is not None
    scale = min(box["width"] / size[0], box["height"] / size[1])
    left = (box["width"] - size[0] * scale) / 2
    top = (box["height"] - size[1] * scale) / 2
    img.click(position={"x": left + x * scale, "y": top + y * scale})
    page.wait_for_timeout(700)  # the picture is sent again with the corner drawn


def test_remove_the_object_curves_relevancy_and_lens(attention_app, artifacts_dir: Path, tmp_path: Path):
    scene = generate_scene(np.random.default_rng(3), size=192, n_objects=3)
    target = scene.objects[0]
    path = tmp_path / "scene.png"
    scene.image.save(path)
    with browser_page(1300, 1400) as page:
        page.goto(attention_app)
        page.locator("#attn-image input[type=file]").set_input_files(str(path))
        page.locator("#attn-image img").first.wait_for(timeout=20_000)
        page.locator("#attn-question textarea").fill(f"Is there a {target.color} {target.shape}?")
        page.locator("#attn-ask").click()
        page.get_by_text("Done. Click a word").wait_for(timeout=60_000)

        page.locator("#abl-accordion").click()
        page.locator("#abl-pick img").first.wait_for(timeout=20_000)
        x0, y0, x1, y1 = target.box
        _click_image_at(page, "#abl-pick", x0 + 1, y0 + 1, scene.image.size)
        _click_image_at(page, "#abl-pick", x1 - 1, y1 - 1, scene.image.size)
        box_field = page.locator("#abl-box textarea")
        page.wait_for_function("() => document.querySelector('#abl-box textarea').value.split(',').length === 4",
                               timeout=20_000)
        corners = [float(v) for v in box_field.input_value().split(",")]
        assert abs(corners[0] - x0) <= 4 and abs(corners[3] - y1) <= 4, corners
        page.locator("#abl-run").click()
        page.get_by_text("The answer changed.").wait_for(timeout=60_000)
        summary = page.locator("#abl-summary").inner_text()
        assert "before: yes" in summary and "after: no" in summary, summary
        page.locator("#abl-after img").first.wait_for(timeout=20_000)
        page.screenshot(path=str(artifacts_dir / "causal_ablation.png"), full_page=True)

        # A box that is inverted: a warning toast; the result shown stays.
        box_field.fill("120, 120, 10, 10")
        page.locator("#abl-run").click()
        page.get_by_text("empty or inverted").first.wait_for(timeout=20_000)
        assert "after: no" in page.locator("#abl-summary").inner_text()

        page.locator("#faith-accordion").click()
        page.locator("#faith-run").click()
        page.locator("#faith-plot img").first.wait_for(timeout=120_000)
        table = page.locator("#faith-table").inner_text()
        for kind in ("attention", "rollout", "relevancy", "random"):
            assert kind in table, table
        page.locator("#rel-accordion").click()
        page.locator("#rel-run").click()
        page.locator("#rel-img img").first.wait_for(timeout=60_000)
        page.locator("#lens-accordion").click()
        page.locator("#lens-run").click()
        page.locator("#lens-img img").first.wait_for(timeout=60_000)
        assert "layer 3" in page.locator("#lens-table").inner_text()
        page.screenshot(path=str(artifacts_dir / "causal_checks.png"), full_page=True)
