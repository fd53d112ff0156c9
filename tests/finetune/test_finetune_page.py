"""The Fine-tune page as new users meet it, in Chromium, with two users (two browser contexts,
each its own storage): the loss curve is a line on numeric axes while training and for an
earlier job; each user sees only their own jobs until one is shared; every page sees a
running job without reloading; Start is off for data with a bad record until "drop bad
records" is ticked; a text file renamed .png gets a warning; a job that holds nothing out
says why there is no table; the merged model is a download; a finished job's table shows the
base answers it kept and warns when it forgot. Screenshots in tests/artifacts/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from vitdemo.paths import REPO_ROOT

from webapp import upload_file, CHROMIUM, CHROMIUM_ARGS, free_port, serve

pytestmark = [pytest.mark.browser, pytest.mark.slow]

EXAMPLE_ZIP = REPO_ROOT / "assets" / "datasets" / "chinese_colors.zip"
LINE = "#ft-plot svg [aria-roledescription='line mark']"
X_AXIS = "#ft-plot svg [aria-label^='X-axis']"


@pytest.fixture(scope="module")
def app(tiny_llava_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from vitdemo.config import Settings
    from vitdemo.core.engine import Engine
    from vitdemo.core.loading import load_model

    home = tmp_path_factory.mktemp("ft-page-home")
    settings = Settings(model=str(tiny_llava_dir), home=home, device="cpu", quant="none", port=free_port(),
                        max_new_tokens=8)
    engine = Engine(load_model(str(tiny_llava_dir), device="cpu", quant="none"))
    import os

    old = os.environ.get("VITDEMO_TRAIN_THREADS")
    os.environ["VITDEMO_TRAIN_THREADS"] = "1"
    try:
        with serve(settings, engine) as url:
            yield url, settings
    finally:
        if old is None:
            os.environ.pop("VITDEMO_TRAIN_THREADS", None)
        else:
            os.environ["VITDEMO_TRAIN_THREADS"] = old


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _finetune_page(context, url: str):
    page = context.new_page()
    page.goto(url, wait_until="load")
    # the page's session token is in the browser's storage once its load event has run
    page.wait_for_function("() => !!window.localStorage.getItem('vitdemo-session')", timeout=60_000)
    page.get_by_role("tab", name="Fine-tune").click()
    page.locator("#ft-files").wait_for(timeout=90_000)
    return page


def _set_slider(page, elem_id: str, value: str) -> None:
    """Set a slider as a user's drag does (input, then change). A slider that has just appeared (an
    accordion opening) can still take its first value from the server and undo an early set: retry."""
    box = page.locator(f"#{elem_id} input[type='number']")
    for _ in range(5):
        knob = page.locator(f"#{elem_id} input[type='range']")
        knob.fill(value)
        knob.dispatch_event("change")
        page.wait_for_timeout(1000)
        if box.input_value() == value:
            return
    raise AssertionError(f"slider {elem_id} stays at {box.input_value()}, not {value}")


def _check(page, upload: Path, expect_text: str) -> None:
    upload_file(page, "ft-files", upload)  # may drop the file twice: the check counts one copy
    page.locator("#ft-check").click()
    try:
        page.locator("#ft-report").get_by_text(expect_text).wait_for(timeout=90_000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError
        toasts = page.locator(".toast-body").all_inner_texts()
        raise AssertionError(f"no {expect_text!r} after the check; report: "
                             f"{page.locator('#ft-report').inner_text()!r}; toasts: {toasts}") from None


def _options(page, box_id: str, wait_ms: int = 2000) -> list[str]:
    """The labels of a dropdown, as this page's user sees them (choices come on focus)."""
    page.locator(f"#{box_id} input").click()
    page.wait_for_timeout(wait_ms)
    options = page.locator(f"#{box_id} li[role=option]").all_inner_texts()
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")  # leave the box, so the next click opens it again
    return [o.strip() for o in options]


def _job_options(page) -> list[str]:
    return _options(page, "ft-jobs")


def _pick_job(page, job_id: str) -> None:
    page.locator("#ft-jobs input").click()
    page.wait_for_timeout(2000)  # the list is redrawn when this user's choices arrive
    page.locator("#ft-jobs li[role=option]").filter(has_text=job_id).first.click(timeout=45_000)


def _assert_numeric_line(page) -> None:
    """A drawn line over a linear step axis (a categorical axis labels every step: no line),
    with a colour (a line without one is not seen) and its curve in the legend."""
    page.wait_for_function(  # a coloured path through two points or more: "M x,y L x,y ..."
        f"() => Array.from(document.querySelectorAll(\"{LINE}\")).some(p => (p.getAttribute('d') || '').includes('L')"
        " && p.getAttribute('stroke'))", timeout=90_000)
    assert page.locator("#ft-plot svg").get_by_text("train", exact=True).count() >= 1, "no 'train' in the legend"
    label = page.locator(X_AXIS).first.get_attribute("aria-label") or ""
    assert "linear scale" in label, label


def _started(settings) -> set[str]:
    """Ids of the jobs that were started (a check makes a job folder before Start)."""
    root = Path(settings.home) / "jobs"
    if not root.is_dir():
        return set()
    return {p.name for p in root.iterdir() if p.is_dir() and (p / "job.json").is_file()
            and json.loads((p / "job.json").read_text()).get("status") != "created"}


def _new_job_id(settings, before: set[str]) -> str:
    started = _started(settings) - before
    assert len(started) == 1, started
    return started.pop()


def test_curve_owners_and_the_running_note(app, browser, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    url, settings = app
    alice_ctx = browser.new_context(viewport={"width": 1400, "height": 1400})
    bob_ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
    bob = _finetune_page(bob_ctx, url)
    # before any job: nothing to go back from, nothing to ask
    expect(bob.locator("#ft-base")).to_be_disabled()
    expect(bob.locator("#ft-try")).to_be_disabled()

    alice = _finetune_page(alice_ctx, url)
    _check(alice, EXAMPLE_ZIP, "Ready to train.")
    # 50 epochs (1,650 steps): Alice's job must still train when Bob starts his, however slow the
    # browser is; at the default 10 (330 steps, ~15 s here) a slow check can let it end before Bob presses Start
    alice.get_by_text("LoRA settings", exact=True).click()
    _set_slider(alice, "ft-epochs", "50")
    expect(alice.locator("#ft-epochs input[type='number']")).to_have_value("50")  # still, as Start is pressed
    before = _started(settings)
    alice.locator("#ft-start").click()
    alice.get_by_text(re.compile(r"Running: training, step [1-9]\d* of 1650")).first.wait_for(timeout=240_000)
    alice.wait_for_function("() => /step ([5-9]|\\d\\d+) of/.test(document.querySelector('#ft-progress').innerText)",
                            timeout=240_000)
    _assert_numeric_line(alice)  # while training, on a page that started with an empty plot
    alice.screenshot(path=str(artifacts_dir / "ft_page_1_training_curve.png"), full_page=True)
    job_id = _new_job_id(settings, before)

    # Bob's page, never reloaded, learns that a job trains and that a new one would wait its turn
    expect(bob.locator("#ft-busy")).to_contain_text("waits in a queue", timeout=45_000)
    expect(bob.locator("#ft-busy")).to_contain_text("another user's job")
    assert job_id not in bob.locator("#ft-busy").inner_text()
    # Bob starts one anyway: it is queued, not refused, and starts by itself when Alice's ends
    _check(bob, EXAMPLE_ZIP, "Ready to train.")
    bob.locator("#ft-start").click()
    bob.get_by_text("Queued (next in line)").first.wait_for(timeout=60_000)
    expect(alice.locator("#ft-busy")).to_contain_text("1 job waiting", timeout=45_000)
    bob.screenshot(path=str(artifacts_dir / "ft_page_2_other_user_queued.png"), full_page=True)

    alice.locator("#ft-stop").click()
    alice.get_by_text("Stopped at step").first.wait_for(timeout=120_000)
    bob.get_by_text(re.compile(r"Running: ")).first.wait_for(timeout=120_000)  # nobody pressed anything
    expect(alice.locator("#ft-busy")).to_contain_text("another user's job", timeout=45_000)
    bob.locator("#ft-stop").click()
    bob.get_by_text("Stopped at step").first.wait_for(timeout=120_000)
    expect(bob.locator("#ft-busy")).not_to_contain_text("training", timeout=45_000)

    # the same browser, a new page (as after a reload): its job is still its own; the curve draws
    again = _finetune_page(alice_ctx, url)
    assert any(job_id in o for o in _job_options(again))
    _pick_job(again, job_id)
    again.get_by_text("Stopped at step").first.wait_for(timeout=90_000)
    _assert_numeric_line(again)
    again.screenshot(path=str(artifacts_dir / "ft_page_3_earlier_job_curve.png"), full_page=True)

    # the other user does not see it at all
    assert not any(job_id in o for o in _job_options(bob))
    alice_ctx.close()
    bob_ctx.close()


def _bad_record_zip(folder: Path) -> Path:
    """Two good JSONL records and one whose image is missing, zipped."""
    import zipfile

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"image": "a.png", "instruction": "What color is the circle?", "response": "red"},
            {"image": "b.png", "instruction": "What color is the circle?", "response": "blue"},
            {"image": "missing.png", "instruction": "What color is the circle?", "response": "red"}]
    out = folder / "two_good_one_bad.zip"
    with zipfile.ZipFile(out, "w") as zf:
        for name, color in (("a.png", "red"), ("b.png", "blue")):
            Image.new("RGB", (32, 32), color).save(folder / name)
            zf.write(folder / name, name)
        zf.writestr("data.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return out


def test_bad_record_small_job_try_merge_and_share(app, browser, artifacts_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    url, settings = app
    alice_ctx = browser.new_context(viewport={"width": 1400, "height": 1600})
    bob_ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
    alice = _finetune_page(alice_ctx, url)
    _check(alice, _bad_record_zip(tmp_path), "drop bad records")
    report = alice.locator("#ft-report").inner_text()
    assert "the 2 good records only" in report and "(s)" not in report, report
    expect(alice.locator("#ft-start")).to_be_disabled()  # a bad record and "drop" off
    alice.screenshot(path=str(artifacts_dir / "ft_page_4_bad_record.png"), full_page=True)
    alice.locator("#ft-drop input").check()
    expect(alice.locator("#ft-start")).to_be_enabled(timeout=10_000)
    before = _started(settings)
    expect(alice.locator("#ft-busy")).not_to_contain_text("training", timeout=45_000)  # the first test's jobs ended
    alice.locator("#ft-start").click()
    alice.get_by_text("Done:").first.wait_for(timeout=300_000)
    job_id = _new_job_id(settings, before)
    note = alice.locator("#ft-results")
    expect(note).to_contain_text("No before/after table", timeout=45_000)
    expect(note).to_contain_text("2 records")
    expect(alice.locator("#ft-base")).to_be_disabled()  # still on the base model
    expect(alice.locator("#ft-try")).to_be_enabled()
    _assert_numeric_line(alice)  # a job over before the page's first look at it still draws its curve

    # a text file named .png: a warning, no "Error" on the outputs
    fake = tmp_path / "notes.png"
    fake.write_text("this is not a picture\n" * 20)
    alice.locator("#ft-try-image input[type=file]").set_input_files(str(fake))
    alice.wait_for_timeout(1500)
    alice.locator("#ft-try-q textarea").fill("What color is the circle?")
    alice.locator("#ft-try").click()
    toast = alice.locator(".toast-body").filter(has_text="notes.png")
    expect(toast.first).to_be_visible(timeout=90_000)
    toast_text = toast.first.inner_text()
    assert "preprocess" not in toast_text and str(settings.home) not in toast_text, toast_text
    assert alice.locator("#ft-try-base .error, #ft-try-tuned .error").count() == 0
    alice.locator("#ft-try").scroll_into_view_if_needed()
    alice.screenshot(path=str(artifacts_dir / "ft_page_5_not_an_image.png"), full_page=True)

    # Merge: a download, and no server path shown
    alice.get_by_role("button", name="Merge into a full model folder").click()
    merged = alice.locator("#ft-merge-md")
    expect(merged).to_contain_text("Merged", timeout=120_000)
    assert str(settings.home) not in merged.inner_text()
    expect(alice.locator("#ft-merged a").first).to_be_visible(timeout=45_000)
    alice.screenshot(path=str(artifacts_dir / "ft_page_6_merged.png"), full_page=True)

    # not Bob's, until Alice shares it with the class
    bob = _finetune_page(bob_ctx, url)
    assert not any(job_id in o for o in _job_options(bob))
    alice.locator("#ft-share input").check()
    alice.locator(".toast-body").filter(has_text="shared with everyone").first.wait_for(timeout=45_000)
    assert any(job_id in o and "shared" in o for o in _job_options(bob))
    # ... and in Learn section 4
    bob.get_by_role("tab", name="Learn").click()
    bob.get_by_text("4. Before and after fine-tuning").click()
    bob.get_by_role("button", name="Refresh the list").click()
    bob.wait_for_timeout(2000)
    assert any(job_id in o for o in _options(bob, "learn-compare-adapter"))
    bob.screenshot(path=str(artifacts_dir / "ft_page_7_shared_in_learn.png"), full_page=True)
    alice_ctx.close()
    bob_ctx.close()


def test_a_finished_job_shows_what_the_model_kept_and_warns_when_it_forgot(app, browser, artifacts_dir: Path,
                                                                           tmp_path: Path) -> None:
    """The forgetting report in the before/after table, with the guard off: the row of base
    answers kept, what it measured, and the warning with what to do when under 90%."""
    from playwright.sync_api import expect

    from ft_helpers import write_color_dataset, zip_folder

    url, settings = app
    ctx = browser.new_context(viewport={"width": 1400, "height": 1700})
    page = _finetune_page(ctx, url)
    upload = zip_folder(write_color_dataset(tmp_path / "colours", n=30), tmp_path / "colours.zip")
    _check(page, upload, "Ready to train.")
    page.get_by_text("Keep what the model knew (retention guard)").click()
    weight = page.locator("#ft-guard input[type=number]")
    for _ in range(5):  # a value typed while the opening accordion wires its box can be lost: again
        weight.fill("0")
        weight.press("Enter")
        page.wait_for_timeout(500)
        if weight.input_value() == "0":
            break
    expect(weight).to_have_value("0")
    expect(page.locator("#ft-busy")).not_to_contain_text("training", timeout=120_000)  # earlier tests' jobs ended
    page.locator("#ft-start").click()
    page.get_by_text("Done:").first.wait_for(timeout=300_000)
    page.screenshot(path=str(artifacts_dir / "ft_page_7_done.png"), full_page=True)
    results = page.locator("#ft-results")
    expect(results).to_contain_text("base answers kept", timeout=45_000)
    expect(results).to_contain_text("Retention guard: off")
    text = results.inner_text()
    kept = int(re.search(r"base answers kept \((\d+) probe questions on held-out images\)\s+100%\s+(\d+)%", text)
               .group(2))
    if kept < 90:
        assert "forgot part of what it knew" in text and "turn the retention guard on" in text, text
    else:
        assert "forgot" not in text, text
    results.scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts_dir / "ft_page_7_forgetting_report.png"), full_page=True)
    ctx.close()
