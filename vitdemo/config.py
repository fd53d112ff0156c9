"""Application settings: one dataclass, filled from defaults < VITDEMO_* env vars < CLI flags.

Every field has a commented default. `Settings.from_env()` reads the environment,
`add_arguments(parser)` + `Settings.from_args(args)` add the command-line layer on top.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vitdemo.errors import InputError

logger = logging.getLogger(__name__)

QUANT_CHOICES = ("auto", "4bit", "8bit", "none")
DEVICE_CHOICES = ("auto", "cuda", "cpu")
DTYPE_CHOICES = ("auto", "bfloat16", "float16", "float32")
ATTN_CHOICES = ("sdpa", "eager")


def default_home() -> Path:
    """A `vitdemo` folder in the user's cache dir (XDG_CACHE_HOME or ~/.cache)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "vitdemo"


@dataclass
class Settings:
    """Everything the app, the CLI and the engine are configured by."""

    # --- model ---
    model: str | None = None  # Hub id or local folder; None = classroom model, else built-in fallback
    adapter: str | None = None  # PEFT adapter folder applied at start; None = base model
    quant: str = "auto"  # auto (4bit on CUDA, none on CPU) | 4bit | 8bit | none
    device: str = "auto"  # auto (cuda if available) | cuda | cpu
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bfloat16 | float16 | float32
    attn_implementation: str = "sdpa"  # sdpa (fast) | eager (needed for attention maps)
    trust_remote_code: bool = False  # run model code from the Hub repo; off unless asked
    # --- server ---
    host: str = "127.0.0.1"  # bind address; 0.0.0.0 exposes the app to the network
    port: int = 7860  # HTTP port
    auth: str | None = None  # "user:password", or a file of user:password lines, to require a login; None = open
    home: Path = field(default_factory=default_home)  # VITDEMO_HOME: jobs, built models
    # Requests waiting before new ones are refused (with how long to wait): a class of 100
    # has at most about 100 waiting at once; 256 leaves room (docs/reliability.md, bench/load.py).
    queue_size: int = 256
    # Chat requests in progress at once. Twice the scheduler's batch (32): while one batch
    # generates, the next 32 requests are already read and processed, so the next batch
    # starts full the moment the model frees up (docs/reliability.md, "Where a class's CPU
    # goes"). Other tools run one at a time.
    concurrency: int = 64
    job_ttl_hours: int = 168  # fine-tune jobs untouched this long are pruned (see jobs.prune_jobs); 0 = never
    max_sessions: int = 1000  # browser/API sessions whose state is kept; the least recently used go first
    max_loaded_adapters: int = 8  # LoRA adapters kept in memory; loading one more unloads the least recently used
    # --- limits on what one user can ask for ---
    max_new_tokens: int = 256  # default answer length in the settings panel
    max_new_tokens_cap: int = 1024  # the slider's maximum; requests above are clipped
    max_images_per_message: int = 4  # more images in one message is an InputError
    max_image_pixels: int = 4096 * 4096  # larger images are refused (decompression bombs)
    max_upload_mb: int = 20  # per uploaded file, enforced by Gradio
    max_records: int = 5000  # records in one uploaded fine-tune dataset; more is refused (split the data)

    def __post_init__(self) -> None:
        self.home = Path(self.home).expanduser()
        self.validate()

    def validate(self) -> None:
        """Raise InputError naming the bad field and the allowed values."""
        checks = (
            ("quant", self.quant, QUANT_CHOICES),
            ("device", self.device, DEVICE_CHOICES),
            ("dtype", self.dtype, DTYPE_CHOICES),
            ("attn_implementation", self.attn_implementation, ATTN_CHOICES),
        )
        for name, value, allowed in checks:
            if value not in allowed:
                raise InputError(f"{name}={value!r} is not one of {', '.join(allowed)}")
        positive = ("port", "queue_size", "concurrency", "max_sessions", "max_new_tokens", "max_new_tokens_cap",
                    "max_images_per_message", "max_image_pixels", "max_upload_mb", "max_records",
                    "max_loaded_adapters")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name}={value!r} must be a positive integer")
        if not isinstance(self.job_ttl_hours, int) or self.job_ttl_hours < 0:
            raise InputError(f"job_ttl_hours={self.job_ttl_hours!r} must be 0 (keep jobs forever) or more hours")
        if self.max_new_tokens > self.max_new_tokens_cap:
            raise InputError(
                f"max_new_tokens={self.max_new_tokens} is above max_new_tokens_cap={self.max_new_tokens_cap}"
            )
        if self.auth is not None:
            self.auth_pairs  # reads and checks an auth file now, so a bad one fails at start

    @property
    def auth_pair(self) -> tuple[str, str] | None:
        """The first (user, password) login, or None."""
        pairs = self.auth_pairs
        return pairs[0] if pairs else None

    @property
    def auth_pairs(self) -> list[tuple[str, str]]:
        """Every (user, password) for gr.Blocks.launch(auth=...): from "user:password", or
        from a file with one user:password per line (blank lines and # comments skipped)."""
        if not self.auth:
            return []
        path = Path(self.auth).expanduser()
        if ":" not in self.auth or path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise InputError(f"auth must be 'user:password' or a readable file of user:password "
                                 f"lines; cannot read {self.auth!r} ({type(err).__name__})") from None
            entries = [(i, ln.strip()) for i, ln in enumerate(lines, 1) if ln.strip() and not ln.startswith("#")]
        else:
            entries = [(0, self.auth)]
        pairs = []
        for line_no, entry in entries:
            user, sep, password = entry.partition(":")
            if not sep or not user or not password:
                where = f"line {line_no} of {self.auth}" if line_no else "--auth"
                raise InputError(f"{where}: expected user:password with both parts non-empty")
            pairs.append((user, password))
        if not pairs:
            raise InputError(f"auth file {self.auth} has no user:password line")
        return pairs

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then VITDEMO_<FIELD> env vars, then keyword overrides (e.g. CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f"VITDEMO_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, _field_kind(f))
        # Hugging Face Spaces (and other hosts) say where to bind through Gradio's own vars.
        if "host" not in values and env.get("GRADIO_SERVER_NAME"):
            values["host"] = env["GRADIO_SERVER_NAME"]
        if "port" not in values and env.get("GRADIO_SERVER_PORT"):
            values["port"] = _parse("port", env["GRADIO_SERVER_PORT"], "int")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace, env: Mapping[str, str] | None = None) -> "Settings":
        """Settings from parsed `add_arguments` flags on top of the environment."""
        names = {f.name for f in dataclasses.fields(cls)}
        overrides = {k: v for k, v in vars(args).items() if k in names}
        return cls.from_env(env, **overrides)


def _field_kind(f: dataclasses.Field) -> str:
    kind = str(f.type)
    for name in ("bool", "int", "Path"):
        if kind.startswith(name):
            return name
    return "str"


def _parse(name: str, raw: str, kind: str) -> Any:
    if kind == "bool":
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise InputError(f"VITDEMO_{name.upper()}={raw!r} is not a boolean (use 1/0, true/false)")
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise InputError(f"VITDEMO_{name.upper()}={raw!r} is not an integer") from None
    if kind == "Path":
        return Path(raw)
    return raw


def add_arguments(parser: argparse.ArgumentParser, *, server: bool = True) -> None:
    """Add the model flags (and with server=True the server and limit flags) to `parser`.

    Every default is None so that unset flags fall through to env vars and defaults.
    """
    g = parser.add_argument_group("model")
    g.add_argument("--model", help="Hub id or local folder (default: the classroom model in assets/)")
    g.add_argument("--adapter", help="PEFT (LoRA) adapter folder to apply")
    g.add_argument("--quant", choices=QUANT_CHOICES, help="quantization (default auto: 4bit on CUDA, none on CPU)")
    g.add_argument("--device", choices=DEVICE_CHOICES, help="device (default auto)")
    g.add_argument("--dtype", choices=DTYPE_CHOICES, help="weights dtype (default auto)")
    g.add_argument("--attn-implementation", dest="attn_implementation", choices=ATTN_CHOICES,
                   help="attention kernel (default sdpa)")
    g.add_argument("--trust-remote-code", dest="trust_remote_code", action="store_true", default=None,
                   help="allow model code from the Hub repo (off by default)")
    g.add_argument("--home", type=Path, help="folder for jobs and built models (VITDEMO_HOME)")
    if not server:
        return
    s = parser.add_argument_group("server")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="HTTP port (default 7860)")
    s.add_argument("--auth", help="require a login: 'user:password' or a file of user:password lines")
    s.add_argument("--queue-size", dest="queue_size", type=int, help="max waiting requests (default 256)")
    s.add_argument("--concurrency", type=int, help="chat requests in progress at once, batched 32 at a time (default 64)")
    s.add_argument("--job-ttl-hours", type=int, help="prune fine-tune jobs untouched this long (default 168; 0 = never)")
    s.add_argument("--max-sessions", dest="max_sessions", type=int,
                   help="sessions whose state the server keeps; the least recently used go first (default 1000)")
    s.add_argument("--max-loaded-adapters", dest="max_loaded_adapters", type=int,
                   help="fine-tuned adapters kept in memory; the least recently used are unloaded (default 8)")
    s.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, help="default answer length (default 256)")
    s.add_argument("--max-new-tokens-cap", dest="max_new_tokens_cap", type=int, help="max answer length (default 1024)")
    s.add_argument("--max-images-per-message", dest="max_images_per_message", type=int,
                   help="images allowed in one message (default 4)")
    s.add_argument("--max-image-pixels", dest="max_image_pixels", type=int,
                   help="largest image in pixels (default 16777216)")
    s.add_argument("--max-upload-mb", dest="max_upload_mb", type=int, help="largest upload in MB (default 20)")
    s.add_argument("--max-records", dest="max_records", type=int,
                   help="records allowed in one uploaded fine-tune dataset (default 5000)")


# Third-party loggers that print noise a user cannot act on (bitsandbytes' optional CPU
# kernel download hint, per-weight loading bars).
_QUIET_LOGGERS = ("bitsandbytes", "httpx", "transformers.modeling_utils")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: INFO for vitdemo when verbose, WARNING otherwise; quiet noisy libraries."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("vitdemo").setLevel(level)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # transformers missing: load_model reports it properly later
        return
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
