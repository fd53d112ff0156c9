"""The Fine-tune tab: wiring only. The logic lives in vitdemo.finetune.service (and data, jobs, finetune).

Upload (or type pairs) -> Check -> report (counts, tokens, thumbnails, problems) -> LoRA
settings -> Start / Stop / Resume -> progress bar + live loss curve (a gr.Timer polls the
job's progress.jsonl; training runs in its own process, so chat stays usable) -> results
(before/after, side-by-side answers) -> try the tuned model, use it in Chat, download, merge.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr
import pandas as pd

from vitdemo.finetune import job_queue
from vitdemo.finetune import service as svc
from vitdemo.chat.conversation import GenerationSettings, answer, user_message
from vitdemo.core.images import open_image
from vitdemo.errors import VitdemoError
from vitdemo.config import Settings
from vitdemo.core.engine import Engine
from vitdemo.finetune.config import FinetuneConfig
from vitdemo.finetune.forgetting import prompts_from_text
from vitdemo.ui import adapter_choice, identity
from vitdemo.ui.image_path import ImagePath

logger = logging.getLogger(__name__)

DEFAULTS = FinetuneConfig()
PROBLEM_HEADERS = ["line", "severity", "record", "what is wrong", "what to do"]
RESULT_HEADERS = ["image", "question", "reference", "base model", "tuned model", "tuned right"]
HELP = """Upload a **zip** with images and one annotation file, or an annotation file with a zip of images.
Accepted: LLaVA JSON (`conversations` with `<image>`), messages JSONL (`messages` + `images`, as TRL writes it),
or JSONL / CSV with `image`, `instruction`, `response`. Or type pairs below. Nothing trains until the data is
checked; training runs in its own process, so the Chat tab keeps working."""


def _bar(fraction: float, text: str) -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<div id="ft-progress" style="border:1px solid #bbb;border-radius:6px;height:22px;position:relative">'
            f'<div style="background:#4a90e2;height:100%;width:{pct:.1f}%;border-radius:6px"></div>'
            f'<span style="position:absolute;left:8px;top:1px;font-size:13px">{text}</span></div>')


CURVE_COLORS = {"train": "#4a90e2", "held-out": "#e8833a"}


def _curve(points: list[tuple[int, float, str]]) -> pd.DataFrame:
    """Typed columns even when empty: an untyped empty frame reads as text, which makes both axes
    categorical (every step and every loss a label, no line)."""
    frame = pd.DataFrame(points or [], columns=["step", "loss", "curve"])
    return frame.astype({"step": "int64", "loss": "float64", "curve": "str"})


def _plot_update(points: list[tuple[int, float, str]], shown: Any) -> tuple[Any, Any]:
    """The plot's new value, and the curves it now shows (None: no frame drawn).

    The page's plot fixes its axis types and its set of curves when it draws its frame, and
    redraws the frame only when a setting such as the colour map changes; a new value alone
    just moves the points. So the colour map is sent again exactly when the set of curves
    changes (a job's first points, the first held-out point, another job), and plain values
    in between. Before a job has points the plot gets no value at all: after an empty value,
    the next value with its colour map drew axes without a line (a job over before the
    page's first look at it kept that picture: nothing came after)."""
    frame = _curve(points)
    if frame.empty:
        return (gr.skip(), None) if shown is None else (gr.LinePlot(value=None), None)
    curves = sorted(set(frame["curve"]))
    if curves == list(shown or []):
        return frame, gr.skip()
    return gr.LinePlot(value=frame, color_map={c: CURVE_COLORS.get(c, "#888888") for c in curves}), curves


def _thumbnails(items: list[tuple[str, str]]) -> list[tuple[Any, str]]:
    """PIL thumbnails (Gradio caches them itself; job folders are never served directly)."""
    out = []
    for path, caption in items:
        img = open_image(path)
        img.thumbnail((128, 128))
        out.append((img, caption))
    return out


def _download(jid: str, zip_file: str | None) -> str | None:
    """The adapter zip, copied into Gradio's own upload cache (the only folder it serves)."""
    return _copy_to_cache(zip_file, f"adapter-{jid}.zip") if zip_file else None


def _copy_to_cache(path: Any, name: str) -> str:
    """A copy in Gradio's own upload cache (the only folder it serves; job folders never are)."""
    from pathlib import Path

    from gradio.processing_utils import save_bytes_to_cache
    from gradio.utils import get_upload_folder

    return save_bytes_to_cache(Path(path).read_bytes(), name, get_upload_folder())


def _error(err: VitdemoError) -> None:
    # A user's mistake: a line in the log (no traceback), the message in the page.
    logger.info("fine-tune refused: %s", err)
    raise gr.Error(str(err), print_exception=False)


def _unexpected(action: str, err: Exception) -> None:
    # Not a user's mistake: the traceback goes to the log (so the cause can be found), and the
    # page says what to do instead of a bare "Error".
    logger.exception("fine-tune: %s failed unexpectedly", action)
    # Only the kind of error on the page: its text can hold server paths a remote user must not see.
    raise gr.Error(f"{action} failed unexpectedly ({type(err).__name__}). Try again; if it keeps failing, "
                   "the server log has the details.", print_exception=False)


def create_finetune_tab(engine: Engine, settings: Settings, adapter_state: gr.State | None = None,
                        session: gr.BrowserState | None = None) -> dict[str, Any]:
    """`session`: the page's identity token (vitdemo.ui.identity); made here when the tab stands alone."""
    adapter_state = adapter_state if adapter_state is not None else adapter_choice.new_state()
    session = session if session is not None else identity.new_state(settings)
    checked = gr.State(None)  # svc.CheckResult of this user's last check
    job_id = gr.State(None)  # the job this user is watching
    job_queue.ensure_worker(settings.home)  # jobs queued before a restart start again in turn

    gr.Markdown(HELP)
    busy_md = gr.Markdown("", elem_id="ft-busy")  # filled per page (a page built once serves every user)
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Tab("Upload"):
                files = gr.File(label="Dataset (zip, or annotation file + zip of images)", file_count="multiple",
                                file_types=[".zip", ".json", ".jsonl", ".csv", ".tsv"], elem_id="ft-files")
                check_btn = gr.Button("Check the data", variant="secondary", elem_id="ft-check")
            with gr.Tab("Type pairs"):
                pair_images = gr.File(label="Images", file_count="multiple", file_types=["image"])
                pairs = gr.Dataframe(headers=["image file", "instruction", "answer"], datatype=["str"] * 3,
                                     row_count=3, interactive=True, label="One row per pair")
                check_pairs_btn = gr.Button("Check the pairs", variant="secondary")
        with gr.Column(scale=2):
            with gr.Accordion("LoRA settings", open=False):
                rank = gr.Slider(1, 128, value=DEFAULTS.rank, step=1, label="rank r")
                alpha = gr.Slider(1, 256, value=DEFAULTS.alpha, step=1, label="alpha (update scale alpha/r)")
                lr = gr.Number(value=DEFAULTS.lr, label="learning rate")
                epochs = gr.Slider(0.5, 50, value=DEFAULTS.epochs, step=0.5, label="epochs", elem_id="ft-epochs")
                min_steps = gr.Slider(0, 2000, value=DEFAULTS.min_steps, step=10,
                                      label="at least this many steps (small datasets)")
                batch = gr.Slider(1, 64, value=DEFAULTS.batch_size, step=1, label="batch size")
                eval_frac = gr.Slider(0.0, 0.5, value=DEFAULTS.eval_fraction, step=0.05, label="held-out share")
                dropout = gr.Slider(0.0, 0.5, value=DEFAULTS.dropout, step=0.05, label="LoRA dropout")
                projector = gr.Checkbox(value=DEFAULTS.train_projector, label="also train the projector")
            with gr.Accordion("Keep what the model knew (retention guard)", open=False):
                guard_weight = gr.Slider(0, 10, value=DEFAULTS.retention_weight, step=0.5, elem_id="ft-guard",
                                         label="retention weight (0 = off): the base model's own answers train beside yours")
                probe_text = gr.Textbox(lines=3, label="questions it must keep answering (one per line; optional)",
                                        elem_id="ft-probes")
            drop_bad = gr.Checkbox(False, label="drop bad records (train on the good ones)", elem_id="ft-drop")
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", interactive=False, elem_id="ft-start")
                stop_btn = gr.Button("Stop", interactive=False, elem_id="ft-stop")
                resume_btn = gr.Button("Resume", interactive=False, elem_id="ft-resume")
            # Choices are filled per user (on load and on focus): the page itself is the same for all.
            jobs = gr.Dropdown(choices=[], label="Earlier jobs (yours and shared ones)", value=None,
                               allow_custom_value=False, elem_id="ft-jobs")
            share_box = gr.Checkbox(False, label="shared with the class (everyone on this server can see and use it)",
                                    interactive=False, elem_id="ft-share")

    report_md = gr.Markdown(elem_id="ft-report")
    with gr.Row():
        gallery = gr.Gallery(label="Records (first 24)", columns=6, height=260, elem_id="ft-gallery")
        problems = gr.Dataframe(headers=PROBLEM_HEADERS, label="Problems", interactive=False, wrap=True,
                                max_height=260, elem_id="ft-problems")
    progress_html = gr.HTML(_bar(0, "Not started."), elem_id="ft-progress-box")
    # No value until a job is shown: the first real value then draws the frame (see _plot_update).
    plot = gr.LinePlot(None, x="step", y="loss", color="curve", title="Loss (answer tokens)", height=260,
                       elem_id="ft-plot")
    plot_curves = gr.State(None)  # the curves the plot's frame was drawn for
    results_md = gr.Markdown(elem_id="ft-results")
    results = gr.Dataframe(headers=RESULT_HEADERS, label="Held-out examples: base vs tuned", interactive=False,
                           wrap=True, max_height=360, column_widths=["9%", "31%", "12%", "20%", "20%", "8%"],
                           elem_id="ft-answers")
    with gr.Row():
        use_btn = gr.Button("Chat with this adapter (Chat and Attention tabs)", interactive=False, elem_id="ft-use")
        base_btn = gr.Button("Back to the base model", interactive=bool(getattr(engine, "default_adapter", None)),
                             elem_id="ft-base")
        download = gr.DownloadButton("Download adapter (zip)", interactive=False, elem_id="ft-download")
        merge_btn = gr.Button("Merge into a full model folder", interactive=False)
    merge_md = gr.Markdown(elem_id="ft-merge-md")
    merged_file = gr.File(label="Merged model (zip)", visible=False, interactive=False, elem_id="ft-merged")
    with gr.Accordion("Try the tuned model", open=True):
        with gr.Row():
            try_image = ImagePath(type="filepath", label="Image", height=180, elem_id="ft-try-image")
            with gr.Column():
                try_q = gr.Textbox(label="Question", elem_id="ft-try-q")
                try_btn = gr.Button("Ask base and tuned", interactive=False, elem_id="ft-try")
                try_base = gr.Textbox(label="Base model says", interactive=False, elem_id="ft-try-base")
                try_tuned = gr.Textbox(label="Tuned model says", interactive=False, elem_id="ft-try-tuned")
    timer = gr.Timer(1.0, active=False)
    busy_timer = gr.Timer(3.0)  # every page sees a job start and end without reloading

    # ---------------------------------------------------------------- handlers
    def who(token: Any, request: gr.Request | None) -> Any:
        try:
            return identity.owner(settings, token, request)
        except VitdemoError as err:
            _error(err)

    def show_report(result: svc.CheckResult, drop: bool) -> tuple:
        rep = result.report
        return (result, svc.report_markdown(rep), _thumbnails(svc.gallery_items(rep)), svc.problem_rows(rep),
                gr.Button(interactive=svc.can_start(result, drop)))

    def on_check(paths: list[str] | None, previous: Any, drop: bool, token: Any, request: gr.Request) -> tuple:
        owner = who(token, request)
        try:
            prev_id = previous.job.id if previous else None
            return show_report(svc.check_upload(engine, settings, [str(p) for p in paths or []], owner, prev_id), drop)
        except VitdemoError as err:
            _error(err)
        except Exception as err:  # noqa: BLE001 - logged with its traceback, the page gets a message
            _unexpected("Checking the data", err)

    def on_check_pairs(images: list[str] | None, table: Any, previous: Any, drop: bool, token: Any,
                       request: gr.Request) -> tuple:
        owner = who(token, request)
        rows = table.values.tolist() if isinstance(table, pd.DataFrame) else (table or [])
        try:
            prev_id = previous.job.id if previous else None
            return show_report(svc.check_pairs(engine, settings, [str(p) for p in images or []], rows, owner,
                                               prev_id), drop)
        except VitdemoError as err:
            _error(err)
        except Exception as err:  # noqa: BLE001 - logged with its traceback, the page gets a message
            _unexpected("Checking the pairs", err)

    def on_drop(result: Any, drop: bool) -> Any:
        return gr.Button(interactive=svc.can_start(result, drop))

    def on_pair_images(images: list[str] | None, table: Any) -> Any:
        from pathlib import Path

        names = [Path(p).name for p in images or []]
        return pd.DataFrame([[n, "", ""] for n in names] or [["", "", ""]],
                            columns=["image file", "instruction", "answer"])

    def on_start(result: Any, drop: bool, r: float, a: float, rate: float, ep: float, ms: float, bs: float,
                 ef: float, do: float, proj: bool, gw: float, probes: str, token: Any,
                 request: gr.Request) -> tuple:
        owner = who(token, request)
        if result is None:
            raise gr.Error("check the data first", print_exception=False)
        config = {"rank": int(r), "alpha": float(a), "lr": float(rate), "epochs": float(ep),
                  "min_steps": int(ms), "batch_size": int(bs), "eval_fraction": float(ef), "dropout": float(do),
                  "train_projector": bool(proj), "retention_weight": float(gw),
                  "probe_prompts": prompts_from_text(probes)}
        try:
            job = svc.start_checked(engine, settings, result, config, drop, owner)
        except VitdemoError as err:
            _error(err)
        if job.read().get("status") == "queued":
            gr.Info(f"job {job.id} is queued: another job is training; yours starts by itself when it ends")
        else:
            gr.Info(f"job {job.id} started")
        return (job.id, gr.Timer(active=True), gr.Button(interactive=False), gr.Button(interactive=True),
                svc.running_job_note(settings, owner))

    def on_tick(jid: str | None, shown: Any, token: Any, request: gr.Request) -> tuple:
        if not jid:
            return (gr.Timer(active=False),) + (gr.skip(),) * 13
        try:
            owner = identity.owner(settings, token, request)
            p = svc.progress(settings, jid, owner)
        except VitdemoError as err:
            return (gr.Timer(active=False), _bar(0, str(err))) + (gr.skip(),) * 12
        running = p.status in ("running", "stopping", "queued")  # a queued job is followed until it runs and ends
        frac = p.step / p.total if p.total else 0.0
        done = p.status == "completed"
        has_ckpt = p.status in ("stopped", "failed")
        results_text = svc.results_markdown(p.results) or p.results_note
        curve, curves = _plot_update(p.curve, shown)
        return (gr.Timer(active=running), _bar(frac, p.message), curve, curves, results_text,
                svc.results_rows(p.results), gr.Button(interactive=running and p.changeable),
                gr.Button(interactive=has_ckpt and p.changeable),
                gr.Button(interactive=done),
                gr.DownloadButton(value=_download(jid, svc.zip_path(settings, jid, owner)) if done else None,
                                  interactive=done),
                gr.Button(interactive=done and p.changeable), gr.Button(interactive=done),
                gr.Checkbox(value=p.shared, interactive=p.changeable and p.status != "created"),
                svc.running_job_note(settings, owner))

    tick_outputs = [timer, progress_html, plot, plot_curves, results_md, results, stop_btn, resume_btn, use_btn,
                    download, merge_btn, try_btn, share_box, busy_md]

    def on_busy(token: Any, request: gr.Request) -> str:
        try:
            owner = identity.owner(settings, token, request)
        except VitdemoError:
            owner = None  # the page is still getting its token
        return svc.running_job_note(settings, owner)

    def on_stop(jid: str | None, token: Any, request: gr.Request) -> None:
        owner = who(token, request)
        if jid:
            try:
                data = svc.stop(settings, jid, owner)
            except VitdemoError as err:
                _error(err)
            if data.get("taken_out_of_queue"):
                gr.Info("taken out of the queue before it started")
            elif data.get("status") in ("stopping", "stopped"):
                gr.Info("stopping after the current step; the checkpoint is kept")

    def on_resume(jid: str | None, token: Any, request: gr.Request) -> tuple:
        owner = who(token, request)
        try:
            svc.resume(settings, jid or "", owner)
        except VitdemoError as err:
            _error(err)
        return gr.Timer(active=True), gr.Button(interactive=False)

    def on_jobs_focus(shown: Any, token: Any, request: gr.Request) -> tuple:
        """This user's jobs; new choices are sent only when they changed."""
        try:
            choices = svc.job_choices(settings, identity.owner(settings, token, request))
        except VitdemoError:
            return gr.skip(), gr.skip()
        if choices == shown:
            return gr.skip(), gr.skip()
        return gr.Dropdown(choices=choices), choices

    def on_pick(jid: str | None, token: Any, request: gr.Request) -> tuple:
        if not jid:
            return None, gr.Timer(active=False)
        try:
            svc.progress(settings, jid, who(token, request))  # only a job this user may see
        except VitdemoError as err:
            gr.Warning(str(err))
            return gr.skip(), gr.skip()
        return jid, gr.Timer(active=True)

    def on_share(jid: str | None, shared: bool, token: Any, request: gr.Request) -> Any:
        """Runs on a user's click only (.input), never when a tick shows the flag."""
        if not jid:
            return gr.skip()
        try:
            svc.share(settings, jid, who(token, request), bool(shared))
        except VitdemoError as err:
            gr.Warning(str(err))
            return not shared  # put the box back
        gr.Info("shared with everyone on this server" if shared else "no longer shared: only you see it")
        return gr.skip()

    def on_use(jid: str | None, token: Any, request: gr.Request) -> tuple:
        try:
            adapter, _ = svc.adapter_paths(settings, jid or "", who(token, request))
            with engine.locked(adapter=str(adapter)):  # loads it now: a broken adapter fails here
                pass
        except VitdemoError as err:
            _error(err)
        gr.Info("the Chat and Attention tabs now answer you with this adapter (other users keep theirs)")
        return str(adapter), gr.Button(interactive=True)

    def on_base() -> tuple:
        gr.Info("the Chat and Attention tabs answer you with the base model again")
        return adapter_choice.BASE_MODEL, gr.Button(interactive=False)

    def on_merge(jid: str | None, token: Any, request: gr.Request) -> tuple:
        try:
            merged = svc.merge(settings, jid or "", who(token, request))
            zipped = svc.merged_zip(merged)
        except VitdemoError as err:
            _error(err)
        value = _copy_to_cache(zipped, f"merged-{jid}.zip") if zipped else None
        return svc.merge_markdown(merged, zipped), gr.File(value=value, visible=value is not None)

    def on_try(jid: str | None, image: str | None, question: str, token: Any, request: gr.Request) -> tuple:
        if not image or not (question or "").strip():
            gr.Warning("Give an image and a question.")
            return gr.skip(), gr.skip()
        try:
            adapter, _ = svc.adapter_paths(settings, jid or "", who(token, request))
            img = open_image(image, max_pixels=settings.max_image_pixels)
            conv = [user_message(question, 1)]
            gen = GenerationSettings(max_new_tokens=32)
            base = answer(engine, conv, [img], gen, adapter=None)
            tuned = answer(engine, conv, [img], gen, adapter=str(adapter))
        except VitdemoError as err:  # a user's mistake (not an image, no job): a warning, outputs kept
            gr.Warning(str(err))
            return gr.skip(), gr.skip()
        return base, tuned

    check_btn.click(on_check, [files, checked, drop_bad, session], [checked, report_md, gallery, problems, start_btn])
    check_pairs_btn.click(on_check_pairs, [pair_images, pairs, checked, drop_bad, session],
                          [checked, report_md, gallery, problems, start_btn])
    drop_bad.change(on_drop, [checked, drop_bad], [start_btn], show_progress="hidden")
    pair_images.upload(on_pair_images, [pair_images, pairs], [pairs])
    start_btn.click(on_start, [checked, drop_bad, rank, alpha, lr, epochs, min_steps, batch, eval_frac, dropout,
                               projector, guard_weight, probe_text, session],
                    [job_id, timer, start_btn, stop_btn, busy_md])
    timer.tick(on_tick, [job_id, plot_curves, session], tick_outputs, show_progress="hidden")
    busy_timer.tick(on_busy, [session], [busy_md], show_progress="hidden", queue=False)
    stop_btn.click(on_stop, [job_id, session], None)
    resume_btn.click(on_resume, [job_id, session], [timer, resume_btn])
    jobs_shown = gr.State(None)  # the job choices this page has
    jobs.focus(on_jobs_focus, [jobs_shown, session], [jobs, jobs_shown], show_progress="hidden")
    jobs.change(on_pick, [jobs, session], [job_id, timer])
    share_box.input(on_share, [job_id, share_box, session], [share_box])
    use_btn.click(on_use, [job_id, session], [adapter_state, base_btn], concurrency_id="vitdemo-generate")
    base_btn.click(on_base, None, [adapter_state, base_btn])
    merge_btn.click(on_merge, [job_id, session], [merge_md, merged_file])
    try_btn.click(on_try, [job_id, try_image, try_q, session], [try_base, try_tuned],
                  concurrency_id="vitdemo-generate")
    return {"files": files, "check": check_btn, "start": start_btn, "stop": stop_btn, "plot": plot,
            "results": results, "timer": timer}
