"""Whose fine-tune jobs a page may see and change.

A job belongs to whoever started it: the logged-in user when --auth gives personal logins
(several users), else the browser session (one shared class login names nobody). A browser session is named by a random token the page keeps in the browser's
storage (it survives a reload there); job.json stores only a hash of it, so nothing the
server shows or writes lets one person act as another. Shipped example adapters and jobs
marked shared are visible to all. The teacher (the first of several --auth users, "the
server's own") sees every job and may share any; anyone may share their own.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from vitdemo.errors import InputError

TOKEN_BYTES = 32  # secrets.token_urlsafe(32): 43 URL-safe characters, 256 random bits
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class Owner:
    """Who is asking: `id` is what job.json stores; `teacher` may see and share every job."""

    id: str
    teacher: bool = False

    @property
    def label(self) -> str:
        return self.id.split(":", 1)[1] if self.id.startswith("user:") else "this browser"


def new_token() -> str:
    """A fresh browser-session token (kept only in that browser)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def valid_token(token: Any) -> bool:
    return isinstance(token, str) and bool(_TOKEN_RE.match(token))


def owner_for(token: Any, username: str | None, teacher_user: str | None = None) -> Owner:
    """The Owner of a request: the login name if there is one, else the browser token's hash."""
    if username:
        return Owner(f"user:{username}", teacher=bool(teacher_user) and username == teacher_user)
    if not valid_token(token):
        raise InputError("this page has no session yet: reload the page (your browser must allow site storage)")
    return Owner("browser:" + hashlib.sha256(token.encode()).hexdigest()[:32])


def can_see(job: dict[str, Any], owner: Owner | None) -> bool:
    """Shared jobs are everyone's; others only their owner's (and the teacher's)."""
    if job.get("shared"):
        return True
    if owner is None:
        return False
    return owner.teacher or (bool(job.get("owner")) and job.get("owner") == owner.id)


def can_change(job: dict[str, Any], owner: Owner | None) -> bool:
    """Stop, resume, merge and share: the owner and the teacher only, shared or not."""
    if owner is None:
        return False
    return owner.teacher or (bool(job.get("owner")) and job.get("owner") == owner.id)


def browser_secret(home: Any) -> str:
    """The key the page's stored session token is kept under, the same across server restarts
    (a new key would give every browser a new session, and lose it its jobs). Not a password:
    the token itself is the secret."""
    from pathlib import Path

    path = Path(home).expanduser() / ".browser-state-key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(16)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(key)
    tmp.replace(path)
    return path.read_text().strip()  # whoever renamed last wins; both read the same
