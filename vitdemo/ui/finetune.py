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

from vitdemo.finetune import service as svc
from vitdemo.chat.conversation import GenerationSettings, answer, user_message
from vitdemo.core.images import open_image
from vitdemo.errors import VitdemoError
from vitdemo.finetune.config import FinetuneConfig
from vitdemo.finetune.forgetting import prompts_from_text
from vitdemo.ui import adapter_choice

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


def _curve(points: list[tuple[int, float, str]]) -> pd.DataFrame:
    return pd.DataFrame(points or [], columns=["step", "loss", "curve"])


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
    if not zip_file:
        return None
    from pathlib import Path

    from gradio.processing_utils import save_bytes_to_cache
    from gradio.utils import get_upload_folder

    return save_bytes_to_cache(Path(zip_file).read_bytes(), f"adapter-{jid}.zip", get_upload_folder())


def _error(err: VitdemoError) -> None:
    raise gr.Error(str(err), print_exception=False)


def create_finetune_tab(engine: Any, settings: Any, adapter_state: gr.State | None = None) -> dict[str, Any]:
    adapter_state = adapter_state if adapter_state is not None else adapter_choice.new_state()
    checked = gr.State(None)  # svc.CheckResult of this user's last check
    job_id = gr.State(None)  # the job this user is watching

    gr.Markdown(HELP)
    busy = svc.running_job_note(settings)
    busy_md = gr.Markdown(busy, visible=bool(busy), elem_id="ft-busy")
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
                epochs = gr.Slider(0.5, 50, value=DEFAULTS.epochs, step=0.5, label="epochs")
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
            jobs = gr.Dropdown(choices=svc.job_choices(settings), label="Earlier jobs", value=None,
                               allow_custom_value=False, elem_id="ft-jobs")

    report_md = gr.Markdown(elem_id="ft-report")
    with gr.Row():
        gallery = gr.Gallery(label="Records (first 24)", columns=6, height=260, elem_id="ft-gallery")
        problems = gr.Dataframe(headers=PROBLEM_HEADERS, label="Problems", interactive=False, wrap=True,
                                max_height=260, elem_id="ft-problems")
    progress_html = gr.HTML(_bar(0, "Not started."), elem_id="ft-progress-box")
    plot = gr.LinePlot(_curve([]), x="step", y="loss", color="curve", title="Loss (answer tokens)", height=260,
                       elem_id="ft-plot")
    results_md = gr.Markdown(elem_id="ft-results")
    results = gr.Dataframe(headers=RESULT_HEADERS, label="Held-out examples: base vs tuned", interactive=False,
                           wrap=True, max_height=360, column_widths=["9%", "31%", "12%", "20%", "20%", "8%"],
                           elem_id="ft-answers")
    with gr.Row():
        use_btn = gr.Button("Chat with this adapter (Chat and Attention tabs)", interactive=False, elem_id="ft-use")
        base_btn = gr.Button("Back to the base model", elem_id="ft-base")
        download = gr.DownloadButton("Download adapter (zip)", interactive=False, elem_id="ft-download")
        merge_btn = gr.Button("Merge into a full model folder", interactive=False)
    merge_md = gr.Markdown()
    with gr.Accordion("Try the tuned model", open=True):
        with gr.Row():
            try_image = gr.Image(type="filepath", label="Image", height=180, elem_id="ft-try-image")
            with gr.Column():
                try_q = gr.Textbox(label="Question", elem_id="ft-try-q")
                try_btn = gr.Button("Ask base and tuned", elem_id="ft-try")
                try_base = gr.Textbox(label="Base model says", interactive=False, elem_id="ft-try-base")
                try_tuned = gr.Textbox(label="Tuned model says", interactive=False, elem_id="ft-try-tuned")
    timer = gr.Timer(1.0, active=False)

    # ---------------------------------------------------------------- handlers
    def show_report(result: svc.CheckResult) -> tuple:
        rep = result.report
        can_start = not rep.fatal and bool(rep.good)
        return (result, svc.report_markdown(rep), _thumbnails(svc.gallery_items(rep)), svc.problem_rows(rep),
                gr.Button(interactive=can_start))

    def on_check(paths: list[str] | None, previous: Any) -> tuple:
        try:
            prev_id = previous.job.id if previous else None
            return show_report(svc.check_upload(engine, settings, [str(p) for p in paths or []], prev_id))
        except VitdemoError as err:
            _error(err)

    def on_check_pairs(images: list[str] | None, table: Any, previous: Any) -> tuple:
        rows = table.values.tolist() if isinstance(table, pd.DataFrame) else (table or [])
        try:
            prev_id = previous.job.id if previous else None
            return show_report(svc.check_pairs(engine, settings, [str(p) for p in images or []], rows, prev_id))
        except VitdemoError as err:
            _error(err)

    def on_pair_images(images: list[str] | None, table: Any) -> Any:
        from pathlib import Path

        names = [Path(p).name for p in images or []]
        return pd.DataFrame([[n, "", ""] for n in names] or [["", "", ""]],
                            columns=["image file", "instruction", "answer"])

    def on_start(result: Any, drop: bool, r: float, a: float, rate: float, ep: float, ms: float, bs: float,
                 ef: float, do: float, proj: bool, gw: float, probes: str) -> tuple:
        if result is None:
            raise gr.Error("check the data first", print_exception=False)
        config = {"rank": int(r), "alpha": float(a), "lr": float(rate), "epochs": float(ep),
                  "min_steps": int(ms), "batch_size": int(bs), "eval_fraction": float(ef), "dropout": float(do),
                  "train_projector": bool(proj), "retention_weight": float(gw),
                  "probe_prompts": prompts_from_text(probes)}
        try:
            job = svc.start_checked(engine, settings, result, config, drop)
        except VitdemoError as err:
            _error(err)
        gr.Info(f"job {job.id} started")
        return job.id, gr.Timer(active=True), gr.Button(interactive=False), gr.Button(interactive=True)

    def on_tick(jid: str | None) -> tuple:
        if not jid:
            return (gr.Timer(active=False),) + (gr.skip(),) * 10
        try:
            p = svc.progress(settings, jid)
        except VitdemoError as err:
            return (gr.Timer(active=False), _bar(0, str(err))) + (gr.skip(),) * 9
        running = p.status in ("running", "stopping")
        frac = p.step / p.total if p.total else 0.0
        done = p.status == "completed"
        has_ckpt = p.status in ("stopped", "failed")
        note = svc.running_job_note(settings)
        return (gr.Timer(active=running), _bar(frac, p.message), _curve(p.curve), svc.results_markdown(p.results),
                svc.results_rows(p.results), gr.Button(interactive=running), gr.Button(interactive=has_ckpt),
                gr.Button(interactive=done),
                gr.DownloadButton(value=_download(jid, svc.zip_path(settings, jid)) if done else None,
                                  interactive=done),
                gr.Button(interactive=done), gr.Markdown(note, visible=bool(note)))

    tick_outputs = [timer, progress_html, plot, results_md, results, stop_btn, resume_btn, use_btn, download,
                    merge_btn, busy_md]

    def on_stop(jid: str | None) -> None:
        if jid:
            try:
                svc.stop(settings, jid)
            except VitdemoError as err:
                _error(err)
            gr.Info("stopping after the current step; the checkpoint is kept")

    def on_resume(jid: str | None) -> tuple:
        try:
            svc.resume(settings, jid or "")
        except VitdemoError as err:
            _error(err)
        return gr.Timer(active=True), gr.Button(interactive=False)

    def on_pick(jid: str | None) -> tuple:
        return jid, gr.Timer(active=bool(jid))

    def on_use(jid: str | None) -> str:
        try:
            adapter, _ = svc.adapter_paths(settings, jid or "")
            with engine.locked(adapter=str(adapter)):  # loads it now: a broken adapter fails here
                pass
        except VitdemoError as err:
            _error(err)
        gr.Info("the Chat and Attention tabs now answer you with this adapter (other users keep theirs)")
        return str(adapter)

    def on_base() -> str:
        gr.Info("the Chat and Attention tabs answer you with the base model again")
        return adapter_choice.BASE_MODEL

    def on_merge(jid: str | None) -> str:
        try:
            return f"Merged model written to `{svc.merge(settings, jid or '')}`"
        except VitdemoError as err:
            _error(err)

    def on_try(jid: str | None, image: str | None, question: str) -> tuple[str, str]:
        if not image or not (question or "").strip():
            raise gr.Error("give an image and a question", print_exception=False)
        try:
            adapter, _ = svc.adapter_paths(settings, jid or "")
            img = open_image(image, max_pixels=settings.max_image_pixels)
            conv = [user_message(question, 1)]
            gen = GenerationSettings(max_new_tokens=32)
            base = answer(engine, conv, [img], gen, adapter=None)
            tuned = answer(engine, conv, [img], gen, adapter=str(adapter))
        except VitdemoError as err:
            _error(err)
        return base, tuned

    check_btn.click(on_check, [files, checked], [checked, report_md, gallery, problems, start_btn])
    check_pairs_btn.click(on_check_pairs, [pair_images, pairs, checked],
                          [checked, report_md, gallery, problems, start_btn])
    pair_images.upload(on_pair_images, [pair_images, pairs], [pairs])
    start_btn.click(on_start, [checked, drop_bad, rank, alpha, lr, epochs, min_steps, batch, eval_frac, dropout,
                               projector, guard_weight, probe_text], [job_id, timer, start_btn, stop_btn])
    timer.tick(on_tick, [job_id], tick_outputs, show_progress="hidden")
    stop_btn.click(on_stop, [job_id], None)
    resume_btn.click(on_resume, [job_id], [timer, resume_btn])
    jobs.focus(lambda: gr.Dropdown(choices=svc.job_choices(settings)), None, [jobs])
    jobs.change(on_pick, [jobs], [job_id, timer])
    use_btn.click(on_use, [job_id], [adapter_state], concurrency_id="vitdemo-generate")
    base_btn.click(on_base, None, [adapter_state])
    merge_btn.click(on_merge, [job_id], [merge_md])
    try_btn.click(on_try, [job_id, try_image, try_q], [try_base, try_tuned], concurrency_id="vitdemo-generate")
    return {"files": files, "check": check_btn, "start": start_btn, "stop": stop_btn, "plot": plot,
            "results": results, "timer": timer}
