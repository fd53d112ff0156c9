"""FinetuneConfig: every fine-tuning knob, with its checks.

Kept apart from vitdemo.finetune.trainer (which needs torch) so the Fine-tune tab and the job
service can build forms and job folders without importing torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vitdemo.errors import InputError

SCHEDULES = ("cosine", "linear", "constant")
RETENTION_MODES = ("replay", "kl")
PROBE_SETS = ("auto", "classroom", "generic")
MAX_RETENTION_WEIGHT = 10.0  # above this the guard outweighs the upload and nothing new is learned
MAX_PROMPT_CHARS = 300  # a probe prompt longer than this is a paste error, not a question
MAX_USER_PROMPTS = 20  # user probe prompts; each is asked on every probe image


def check_prompts(prompts: Any) -> list[str]:
    """Problems with the user's probe prompts, each naming the prompt and what to do."""
    if not isinstance(prompts, (list, tuple)):
        return [f"probe_prompts must be a list of questions, got {type(prompts).__name__}"]
    problems = []
    if len(prompts) > MAX_USER_PROMPTS:
        problems.append(f"{len(prompts)} probe prompts: at most {MAX_USER_PROMPTS}; keep the ones that matter most")
    for i, p in enumerate(prompts, 1):
        if not isinstance(p, str) or not p.strip():
            problems.append(f"probe prompt {i} is empty: write a question the model answers today, or remove it")
        elif len(p) > MAX_PROMPT_CHARS:
            problems.append(f"probe prompt {i} has {len(p)} characters: at most {MAX_PROMPT_CHARS} (one question)")
    return problems


@dataclass
class FinetuneConfig:
    """Every fine-tuning knob. The defaults serve 50-500 pairs on a small model on a CPU."""

    # --- LoRA ---
    rank: int = 16  # LoRA rank r: capacity of the update; 8-32 is typical
    alpha: float = 32.0  # LoRA alpha: the update is scaled by alpha / rank
    dropout: float = 0.0  # LoRA dropout; small datasets trained briefly do not need it
    target_modules: list[str] | None = None  # None = the language model's attention + MLP linears
    train_projector: bool = False  # also train the vision->text projector in full (modules_to_save)
    train_new_tokens: bool = True  # also train the embedding rows of "new" answer tokens (peft trainable
    #   tokens): words the base model does not produce (a new language) need their rows moved
    new_token_prob: float = 0.01  # an answer token is new if the base gives it less than this mean probability
    # --- optimisation ---
    # passes over the training split ... (bench/finetune_skills.py on the classroom model: 3
    # epochs reached 88% on a new answer language, 10 reached 92% with its old skills >= 90%)
    epochs: float = 10.0
    min_steps: int = 60  # ... but at least this many steps (small datasets need repetition)
    max_steps: int = 0  # > 0: exactly this many optimizer steps (overrides epochs/min_steps)
    batch_size: int = 8  # examples per optimizer step (per process)
    grad_accum: int = 1  # micro-batches accumulated per step (effective batch = batch_size * this)
    # peak learning rate; LoRA tolerates far higher rates than full tuning. 3e-3, not 2e-3: with
    # the retention guard's probes in every batch the new skill learns slower (docs/finetune.md)
    lr: float = 3e-3
    token_lr_scale: float = 10.0  # new-token rows learn this many times faster (they start far off)
    weight_decay: float = 0.0  # AdamW weight decay on the LoRA weights
    warmup_ratio: float = 0.1  # fraction of steps with a linear warm-up
    schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    max_grad_norm: float = 1.0  # gradient clipping (0 = off)
    seed: int = 0  # split, data order and LoRA initialisation
    # --- data ---
    eval_fraction: float = 0.1  # held-out share (at least 1 of >= 10); a file's own "split" field wins
    max_eval_examples: int = 64  # cap on held-out examples generated for exact match
    max_new_tokens: int = 32  # answer length when generating held-out answers
    # --- job ---
    checkpoint_every: int = 50  # save an adapter checkpoint every N steps (0 = only at the end / stop)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    eval_every: int = 0  # held-out loss every N steps (0 = about 10 times per run)
    gradient_checkpointing: bool = False  # trade compute for memory (big models on small GPUs)
    time_limit_s: float = 0.0  # > 0: stop (and checkpoint) after this many seconds of training
    # --- retention guard (vitdemo.finetune.retention): keep the base model's answers elsewhere ---
    # Weight of the probe loss beside the upload's loss (0 = guard off). 0.5: at 1.0 a skill asked
    # like an old question ("Which row is ..." beside "Where is ...") was learned to 85% only;
    # at 0.5 to 95%, keeping 96-97% of the old skills (docs/finetune.md, on a split of its own).
    retention_weight: float = 0.5
    retention_mode: str = "replay"  # replay: learn the base's own answers | kl: KL to the adapter-free base
    probe_set: str = "auto"  # auto: classroom question forms on the classroom model, else generic prompts
    probe_prompts: list[str] = field(default_factory=list)  # the user's own probe questions (asked on every image)
    max_probes: int = 256  # probe (image, question) pairs drawn from the training images
    probe_batch_size: int = 0  # probes per step beside each batch (0 = half of batch_size: measured enough)
    report_probes: int = 160  # probes over held-out images for the forgetting report (0 = no report)

    def validate(self) -> None:
        checks = [
            (self.rank >= 1, f"rank must be >= 1, got {self.rank}"),
            (self.alpha > 0, f"alpha must be > 0, got {self.alpha}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.epochs > 0 or self.max_steps > 0, "epochs or max_steps must be positive"),
            (self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1"),
            (0 < self.lr < 1, f"lr must be in (0, 1), got {self.lr}"),
            (self.token_lr_scale > 0, f"token_lr_scale must be > 0, got {self.token_lr_scale}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.eval_fraction < 1, f"eval_fraction must be in [0, 1), got {self.eval_fraction}"),
        ]
        checks += [
            (0 <= self.retention_weight <= MAX_RETENTION_WEIGHT,
             f"retention_weight must be in [0, {MAX_RETENTION_WEIGHT:g}] (0 turns the guard off), "
             f"got {self.retention_weight}"),
            (self.retention_mode in RETENTION_MODES, f"retention_mode must be one of {', '.join(RETENTION_MODES)}"),
            (self.probe_set in PROBE_SETS, f"probe_set must be one of {', '.join(PROBE_SETS)}"),
            (self.max_probes >= 1, f"max_probes must be >= 1, got {self.max_probes}"),
            (self.probe_batch_size >= 0, f"probe_batch_size must be >= 0, got {self.probe_batch_size}"),
            (self.report_probes >= 0, f"report_probes must be >= 0, got {self.report_probes}"),
        ]
        checks += [(False, problem) for problem in check_prompts(self.probe_prompts)]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FinetuneConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown fine-tune setting(s): {', '.join(sorted(unknown))}")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
