"""LoRA / QLoRA fine-tuning of any image-text-to-text model on checked records.

- `FinetuneConfig` (vitdemo.finetune.config): every hyperparameter, with its default and why.
- `lora_targets(model)`: the language model's attention + MLP linears (never the vision
  tower or the projector), found by walking the model, so it works per architecture.
- `attach_lora(model, cfg)`: peft LoRA (QLoRA preparation when the base is 4/8-bit).
- `Trainer`: own loop (AdamW, warm-up + cosine/linear schedule, gradient clipping) driven
  by accelerate.Accelerator (so `accelerate launch` spreads it over GPUs), answer-only
  loss, held-out loss during training, atomic adapter-only checkpoints with optimizer and
  scheduler state, resume, graceful stop, before/after evaluation, and the retention guard
  (vitdemo.finetune.retention: a probe batch of the base model's own answers beside every
  batch, on by default) with its forgetting report (`Trainer.retention_report`).
- `merge_adapter`, `zip_adapter`: export.
Progress goes to a callback as JSON-able events (the job runner writes progress.jsonl).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from vitdemo.finetune.data.formats import Record
from vitdemo.errors import InputError, VitdemoError
from vitdemo.finetune.config import FinetuneConfig
from vitdemo.finetune.evaluate import EvalItem, EvalResult, eval_loss, evaluate, generate_answers
from vitdemo.finetune.sft import IGNORE_INDEX, collate, encode_conversation

logger = logging.getLogger(__name__)

VISION_PARTS = ("vision_tower", "vision_model", "visual", "vision_encoder", "image_encoder", "vpm")
PROJECTOR_PARTS = ("multi_modal_projector", "connector", "mm_projector", "merger", "aligner", "resampler")
NEVER_LORA = ("lm_head", "embed_tokens", "score")

EventFn = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------- data

def split_records(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Train / held-out split. The file's own split when it has one ("split": "test" records are
    held out, all others train); else deterministic: round(fraction * n) held out, >= 1 when n >= 10."""
    if any(r.split == "held_out" for r in records):
        return [r for r in records if r.split != "held_out"], [r for r in records if r.split == "held_out"]
    n = len(records)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = int(round(fraction * n))
    if fraction > 0 and n >= 10:
        n_held = max(n_held, 1)
    n_held = min(n_held, n - 1)
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [records[i] for i in train], [records[i] for i in held]


def make_items(processor: Any, records: Sequence[Record], *, encode: bool = True,
               max_pixels: int = 40_000_000) -> list[EvalItem]:
    """Open images and encode every record (answer-only labels) once, up front."""
    from vitdemo.core.images import open_image

    items = []
    for r in records:
        images = [open_image(p, max_pixels=max_pixels) for p in r.images]
        enc = encode_conversation(processor, r.messages, images) if encode else None
        items.append(EvalItem(r.id, r.messages, images, enc))
    return items


# ---------------------------------------------------------------- LoRA

def _is_linear(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def _excluded(name: str) -> bool:
    parts = name.split(".")
    return any(p in VISION_PARTS or p in PROJECTOR_PARTS for p in parts) or parts[-1] in NEVER_LORA


def lora_targets(model: torch.nn.Module) -> str:
    """A regex (peft fullmatch) for the language model's linears; checked to select exactly them."""
    names = [n for n, m in model.named_modules() if _is_linear(m) and not _excluded(n)]
    if not names:
        raise VitdemoError(f"{type(model).__name__}: no language-model linear layers found for LoRA")
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    skip = "|".join(re.escape(p) for p in VISION_PARTS + PROJECTOR_PARTS)
    pattern = rf"^(?!(?:.*\.)?(?:{skip})\.).*\.(?:{'|'.join(map(re.escape, suffixes))})$"
    matched = [n for n, m in model.named_modules() if re.fullmatch(pattern, n)]
    if sorted(matched) != sorted(names):
        raise VitdemoError(f"internal: LoRA target regex selects {len(matched)} modules, expected {len(names)}")
    return pattern


def projector_modules(model: torch.nn.Module) -> list[str]:
    """Names (as peft's modules_to_save wants them) of the vision->text projector."""
    found = []
    for name, _ in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if last in PROJECTOR_PARTS and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    return sorted({n.rsplit(".", 1)[-1] for n in found})


def is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(model, "hf_quantizer", None) is not None)


def attach_lora(model: Any, cfg: FinetuneConfig, answer_token_ids: Sequence[int] = ()) -> Any:
    """Wrap `model` in a PeftModel with fresh LoRA weights (QLoRA prep when it is quantized).

    With cfg.train_new_tokens, the embedding rows of `answer_token_ids` train too."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    torch.manual_seed(cfg.seed)
    if is_quantized(model):
        logger.info("base model is quantized: QLoRA (prepare_model_for_kbit_training)")
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    modules_to_save = projector_modules(model) if cfg.train_projector else None
    if cfg.train_projector and not modules_to_save:
        raise InputError(f"{type(model).__name__}: no projector module found to train")
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules or lora_targets(model),
        modules_to_save=modules_to_save,
        trainable_token_indices=sorted(set(answer_token_ids)) if cfg.train_new_tokens and answer_token_ids else None,
        bias="none",
    )
    peft_model = get_peft_model(model, lora)
    n_train = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in peft_model.parameters())
    logger.info("LoRA r=%d alpha=%g: %d trainable of %d parameters (%.2f%%)", cfg.rank, cfg.alpha, n_train, n_all,
                100.0 * n_train / max(n_all, 1))
    return peft_model


@torch.no_grad()
def new_answer_tokens(model: Any, items: Sequence[EvalItem], pad_id: int, cfg: FinetuneConfig,
                      batch_size: int = 16) -> list[int]:
    """Answer tokens the base model does not produce: mean probability < cfg.new_token_prob.

    One forward pass over the training answers. Only these tokens' rows train, so tokens the
    base already uses (English words, the end-of-turn token) keep their meaning elsewhere.
    """
    from vitdemo.finetune.evaluate import model_device

    was_training = model.training
    model.eval()
    device = model_device(model)
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    for start in range(0, len(items), batch_size):
        batch = collate([it.encoded for it in items[start:start + batch_size]], pad_id)
        labels = batch.pop("labels")[:, 1:]  # (B, T-1): token t is predicted at t-1
        batch = {k: v.to(device) for k, v in batch.items()}
        probs = model(**batch).logits[:, :-1].float().softmax(-1).cpu()  # (B, T-1, V)
        mask = labels != IGNORE_INDEX
        ids = labels[mask]  # (N,)
        p = probs[mask].gather(1, ids[:, None])[:, 0]  # (N,)
        for tok, prob in zip(ids.tolist(), p.tolist()):
            sums[tok] = sums.get(tok, 0.0) + prob
            counts[tok] = counts.get(tok, 0) + 1
    model.train(was_training)
    new = sorted(t for t in sums if sums[t] / counts[t] < cfg.new_token_prob)
    logger.info("%d of %d answer tokens are new to the base model (mean probability < %g)", len(new), len(sums),
                cfg.new_token_prob)
    return new


# ---------------------------------------------------------------- checkpoints

def _atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Write into a temporary sibling folder, then rename it into place (atomic on POSIX)."""
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (step-NNNNNN with state.json), oldest first."""
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step-*") if (p / "state.json").is_file() and
            (p / "adapter_model.safetensors").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


# ---------------------------------------------------------------- training

@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    total_steps: int = 0
    train_seconds: float = 0.0  # time spent in training steps (not evaluation), over all runs
    losses: list[float] = field(default_factory=list)  # train loss per step


class Trainer:
    """One fine-tuning run: model + data + config -> adapter, with events for progress."""

    def __init__(self, model: Any, processor: Any, train_items: Sequence[EvalItem], eval_items: Sequence[EvalItem],
                 cfg: FinetuneConfig, out_dir: str | os.PathLike, on_event: EventFn | None = None,
                 should_stop: Callable[[], bool] | None = None, accelerator: Any = None) -> None:
        cfg.validate()
        if not train_items:
            raise InputError("no training examples: at least 1 record must remain after the held-out split")
        self.cfg = cfg
        self.processor = processor
        self.train_items = list(train_items)
        self.eval_items = list(eval_items)[: cfg.max_eval_examples]
        self.out = Path(out_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self.on_event = on_event or (lambda e: None)
        self.should_stop = should_stop or (lambda: False)
        if accelerator is None:
            from accelerate import Accelerator

            accelerator = Accelerator(cpu=not torch.cuda.is_available())
        self.acc = accelerator
        tok = processor.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.state = TrainState(total_steps=self.planned_steps(len(self.train_items)))
        self.new_tokens = new_answer_tokens(model, self.train_items, self.pad_id, cfg) if cfg.train_new_tokens else []
        self._build_probes(model)  # the base model's own answers, before LoRA touches anything
        self.model = attach_lora(model, cfg, self.new_tokens)
        self.model.train()
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        rows = [p for n, p in named if "trainable_tokens_delta" in n]
        rest = [p for n, p in named if "trainable_tokens_delta" not in n]
        groups = [{"params": rest, "lr": cfg.lr}]
        if rows:
            groups.append({"params": rows, "lr": cfg.lr * cfg.token_lr_scale, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = self._make_scheduler()
        self.model, self.optimizer = self.acc.prepare(self.model, self.optimizer)

    # --- retention guard ---
    def _build_probes(self, model: Any) -> None:
        """Probes over the training images (the guard) and over held-out images (the report)."""
        from vitdemo.finetune.retention import build_probes, is_classroom_model

        cfg = self.cfg
        started = time.perf_counter()
        self.classroom_probes = cfg.probe_set == "classroom" or (cfg.probe_set == "auto" and is_classroom_model(model))
        taught = [it.question for it in self.train_items]
        common = dict(classroom=self.classroom_probes, user_prompts=cfg.probe_prompts, exclude=taught,
                      max_new_tokens=max(cfg.max_new_tokens, 48))
        single = lambda items: [it.images[0] for it in items if len(it.images) == 1]  # noqa: E731 - probes ask about one image
        self.probes = build_probes(model, self.processor, single(self.train_items), limit=cfg.max_probes,
                                   seed=cfg.seed, **common) if cfg.retention_weight > 0 else []
        self.report_probes = build_probes(model, self.processor, single(self.eval_items), limit=cfg.report_probes,
                                          seed=cfg.seed + 1, encode=False, **common) if cfg.report_probes else []
        self.probe_seconds = time.perf_counter() - started
        if cfg.retention_weight > 0 and not self.probes:
            logger.warning("retention guard: no probe could be asked (no single-image training records)")

    def _probe_indices(self, step: int) -> list[int]:
        """This process's probes for optimizer step `step`: a seeded walk over all probes."""
        n = len(self.probes)
        per_proc = self.cfg.probe_batch_size or max(1, self.cfg.batch_size // 2)
        per_step = per_proc * self.acc.num_processes
        start = step * per_step
        out = []
        for k in range(start, start + per_step):
            rnd, pos = divmod(k, n)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + 7 + rnd)).tolist()
            out.append(order[pos])
        return out[self.acc.process_index::self.acc.num_processes]

    def retention_report(self) -> dict[str, Any]:
        """The tuned model's answers to the held-out probes vs the base model's (agreement)."""
        from vitdemo.finetune.retention import agreement_report

        cfg = self.cfg
        after = generate_answers(self.unwrapped(), self.processor, [p.item for p in self.report_probes],
                                 max(cfg.max_new_tokens, 48), max(cfg.batch_size, 32)) if self.report_probes else []
        report = agreement_report(self.report_probes, after)
        report.update(guard=("off" if cfg.retention_weight == 0 else cfg.retention_mode),
                      weight=cfg.retention_weight, n_guard_probes=len(self.probes),
                      probes="classroom question forms" if self.classroom_probes else "generic prompts",
                      probe_seconds=round(self.probe_seconds, 2))
        return report

    # --- plan ---
    def steps_per_epoch(self, n_train: int) -> int:
        per_step = self.cfg.batch_size * self.cfg.grad_accum * max(self.acc.num_processes if hasattr(self, "acc") else 1, 1)
        return max(1, math.ceil(n_train / per_step))

    def planned_steps(self, n_train: int) -> int:
        if self.cfg.max_steps > 0:
            return self.cfg.max_steps
        return max(self.cfg.min_steps, math.ceil(self.cfg.epochs * self.steps_per_epoch(n_train)))

    def _make_scheduler(self) -> Any:
        from transformers import get_scheduler

        total = self.state.total_steps
        warmup = int(self.cfg.warmup_ratio * total)
        name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[self.cfg.schedule]
        return get_scheduler(name, self.optimizer, num_warmup_steps=warmup, num_training_steps=total)

    def _batch_indices(self, step: int) -> list[list[int]]:
        """Micro-batches of example indices for optimizer step `step` (deterministic, resumable)."""
        n = len(self.train_items)
        micro = self.cfg.batch_size
        per_step = micro * self.cfg.grad_accum * self.acc.num_processes
        spe = self.steps_per_epoch(n)
        epoch, offset = divmod(step, spe)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch)).tolist()
        chunk = order[offset * per_step:(offset + 1) * per_step]
        if len(chunk) < per_step:  # last partial batch of an epoch: top up from the start
            chunk += order[: per_step - len(chunk)]
        mine = chunk[self.acc.process_index::self.acc.num_processes]  # this process's share
        return [mine[i:i + micro] for i in range(0, len(mine), micro)]

    # --- events / checkpoints ---
    def emit(self, event: str, **data: Any) -> None:
        if self.acc.is_main_process:
            self.on_event({"event": event, "time": round(time.time(), 3), **data})

    def unwrapped(self) -> Any:
        return self.acc.unwrap_model(self.model)

    def save_checkpoint(self) -> Path | None:
        self.acc.wait_for_everyone()  # every process reaches the same step before the save
        final = self.ckpt_dir / f"step-{self.state.step:06d}"
        if not self.acc.is_main_process or getattr(self, "_saved_step", None) == self.state.step:
            return final  # other processes write nothing; a step is saved once
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path) -> None:
            self.unwrapped().save_pretrained(tmp, safe_serialization=True)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                       tmp / "trainer_state.pt")
            (tmp / "state.json").write_text(json.dumps(asdict(self.state)))

        _atomic_dir(final, write)
        self._saved_step = self.state.step
        for old in list_checkpoints(self.ckpt_dir)[: -max(self.cfg.keep_checkpoints, 1)]:
            shutil.rmtree(old, ignore_errors=True)
        self.emit("checkpoint", step=self.state.step, path=str(final))
        return final

    def load_checkpoint(self, path: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(path / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(self.unwrapped(), weights)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise VitdemoError(f"checkpoint {path.name} does not fit this model: {len(unexpected)} unexpected keys")
        blob = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        saved = TrainState(**json.loads((path / "state.json").read_text()))
        if saved.total_steps != self.state.total_steps:
            raise VitdemoError(f"checkpoint {path.name} planned {saved.total_steps} steps, this run "
                               f"{self.state.total_steps}: resume with the same data and settings")
        self.state = saved
        self.emit("resumed", step=saved.step, path=str(path))
        logger.info("resumed from %s at step %d", path, saved.step)

    # --- evaluation ---
    def evaluate(self, generate: bool = True) -> EvalResult:
        model = self.unwrapped()
        if generate:
            return evaluate(model, self.processor, self.eval_items, max_new_tokens=self.cfg.max_new_tokens,
                            batch_size=self.cfg.batch_size)
        return EvalResult(eval_loss(model, self.eval_items, self.pad_id, self.cfg.batch_size), 0.0,
                          len(self.eval_items))

    # --- the loop ---
    def train(self, resume: bool = False) -> str:
        """Train until done or stopped; returns "completed" or "stopped"."""
        if resume:
            ckpts = list_checkpoints(self.ckpt_dir)
            if not ckpts:
                raise VitdemoError("no checkpoint to resume from: start a new run")
            self.load_checkpoint(ckpts[-1])
        total = self.state.total_steps
        eval_every = self.cfg.eval_every or max(1, total // 10)
        self.emit("train_start", step=self.state.step, total_steps=total, n_train=len(self.train_items),
                  n_eval=len(self.eval_items), batch_size=self.cfg.batch_size, **self._processes())
        device = self.acc.device
        self.model.train()
        run_start = time.perf_counter()
        base_seconds = self.state.train_seconds
        status = "completed"
        while self.state.step < total:
            stop = self.should_stop() or bool(self.cfg.time_limit_s and time.perf_counter() - run_start > self.cfg.time_limit_s)
            if self.any_process(stop):
                status = "stopped"
                break
            t0 = time.perf_counter()
            micro_batches = [collate([self.train_items[i].encoded for i in idx], self.pad_id)
                             for idx in self._batch_indices(self.state.step)]
            # the upload's loss (the curve) and the guard's, apart; each a mean over the step's answer tokens
            step_loss = self._backward_token_mean(micro_batches, lambda batch: self.model(**batch).loss)
            guard_loss = 0.0
            if self.probes:  # the retention guard: the base model's answers beside the upload
                from vitdemo.finetune.retention import probe_loss

                probes = collate([self.probes[i].item.encoded for i in self._probe_indices(self.state.step)],
                                 self.pad_id)
                guard_loss = self._backward_token_mean(
                    [probes], lambda batch: probe_loss(self.model, batch, self.cfg.retention_mode),
                    self.cfg.retention_weight)
            if self.acc.num_processes > 1:  # each process holds its part of the means: add them up
                both = self.acc.reduce(torch.tensor([step_loss, guard_loss], device=device), reduction="sum")
                step_loss, guard_loss = float(both[0]), float(both[1])
            if not math.isfinite(step_loss + guard_loss):
                raise VitdemoError(f"the loss became {step_loss + guard_loss} at step {self.state.step + 1}: lower the learning "
                                   f"rate (now {self.cfg.lr:g})")
            if self.cfg.max_grad_norm > 0:
                self.acc.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.state.step += 1
            self.state.losses.append(round(step_loss, 5))
            self.state.train_seconds = base_seconds + (time.perf_counter() - run_start)
            n_seen = self.state.step * self.cfg.batch_size * self.cfg.grad_accum * self.acc.num_processes
            self.emit("step", step=self.state.step, total_steps=total, loss=round(step_loss, 5),
                      **({"guard_loss": round(guard_loss, 5)} if self.probes else {}),
                      lr=self.scheduler.get_last_lr()[0], seconds=round(time.perf_counter() - t0, 4),
                      elapsed=round(self.state.train_seconds, 2), epoch=round(n_seen / len(self.train_items), 3))
            if self.eval_items and (self.state.step % eval_every == 0 or self.state.step == total):
                self.emit("eval_loss", step=self.state.step, eval_loss=round(self.evaluate(generate=False).loss, 5))
            if self.cfg.checkpoint_every and self.state.step % self.cfg.checkpoint_every == 0 \
                    and self.state.step < total:
                self.save_checkpoint()
        self.save_checkpoint()
        return status

    def _backward_token_mean(self, batches: list[dict[str, torch.Tensor]], loss_of: Callable[[dict], torch.Tensor],
                             weight: float = 1.0) -> float:
        """Backward of `weight` x the mean loss over every answer token of this step's batches,
        on all processes together; returns this process's part of that mean.

        Each batch's loss is a mean over its own answer tokens, so it counts by its share of the
        step's tokens: micro-batches (grad_accum) and processes holding longer answers weigh
        more, and N processes get the gradient one process gets from the whole batch (the
        gradient exchange averages over processes, hence the factor N)."""
        counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches]  # every record has an answer
        total = sum(counts)
        if self.acc.num_processes > 1:
            total = int(self.acc.reduce(torch.tensor([total], device=self.acc.device), reduction="sum")[0])
        part = 0.0
        for batch, n in zip(batches, counts):
            share = n / max(total, 1)
            loss = loss_of({k: v.to(self.acc.device) for k, v in batch.items()}) * (weight * share)
            self.acc.backward(loss * self.acc.num_processes)
            part += float(loss.detach())
        return part

    def _processes(self) -> dict[str, Any]:
        """How many processes train (and over which backend they exchange gradients)."""
        if self.acc.num_processes == 1:
            return {"processes": 1}
        import torch.distributed as dist

        return {"processes": self.acc.num_processes, "backend": dist.get_backend()}

    def any_process(self, flag: bool) -> bool:
        """True if any process says so: data-parallel processes stop at the same step or none
        would reach the next gradient exchange (alone: the flag itself)."""
        if self.acc.num_processes == 1:
            return flag
        return bool(self.acc.reduce(torch.tensor([float(flag)], device=self.acc.device), reduction="sum")[0] > 0)

    def save_adapter(self, folder: Path) -> Path:
        """The final adapter (PEFT format, safetensors), written atomically."""
        if self.acc.is_main_process:
            _atomic_dir(folder, lambda tmp: self.unwrapped().save_pretrained(tmp, safe_serialization=True))
        return folder


# ---------------------------------------------------------------- export

def zip_adapter(adapter_dir: str | os.PathLike, out_zip: str | os.PathLike) -> Path:
    """Zip the adapter folder's files (flat) for download."""
    adapter_dir, out_zip = Path(adapter_dir), Path(out_zip)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise VitdemoError(f"{adapter_dir} is not an adapter folder (no adapter_config.json)")
    tmp = out_zip.with_name(out_zip.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(adapter_dir.iterdir()):
            if p.is_file():
                zf.write(p, p.name)
    os.replace(tmp, out_zip)
    return out_zip


def merge_adapter(model_source: str, adapter_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Base model + adapter -> one full model folder (merge_and_unload + save_pretrained)."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base = AutoModelForImageTextToText.from_pretrained(model_source, dtype=torch.float32)
    if is_quantized(base):
        raise VitdemoError("cannot merge into a 4-bit model: load the base without quantization to merge")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    processor = AutoProcessor.from_pretrained(model_source)

    def write(tmp: Path) -> None:
        merged.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)

    return _atomic_dir(out_dir, write)
