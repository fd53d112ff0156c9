"""The forgetting report as the page and the CLI show it (no torch: the page imports it).

`summary["retention"]` (vitdemo.finetune.retention.agreement_report plus the guard's
settings) says how many of the base model's own answers to probe questions over held-out
images the tuned model still gives. Below RETENTION_WARN the page warns, with what to do.
"""

from __future__ import annotations

from typing import Any

from vitdemo.finetune.config import FinetuneConfig

RETENTION_WARN = 0.90  # below this share of kept answers the tuned model has forgotten too much to ship


def retention_warning(report: dict[str, Any] | None) -> str:
    """A warning with what to do, or "" when retention is fine or was not measured."""
    if not report or report.get("agreement") is None or report["agreement"] >= RETENTION_WARN:
        return ""
    worst = sorted((report.get("per_form") or {}).items(), key=lambda kv: kv[1])[:2]
    worst_txt = ", ".join(f"{form!r} {100 * v:.0f}%" for form, v in worst)
    if report.get("guard") == "off":
        fix = f"turn the retention guard on (retention weight {FinetuneConfig().retention_weight:g}, the default)"
    else:
        fix = (f"raise the retention weight (now {report.get('weight'):g}, at most 10), add probe questions "
               f"the model must keep answering, or train fewer epochs")
    return (f"**Warning: the tuned model forgot part of what it knew.** It gives the base model's answer to only "
            f"{100 * report['agreement']:.0f}% of {report['n']} probe questions on held-out images (below "
            f"{100 * RETENTION_WARN:.0f}%; weakest: {worst_txt}). To keep more: {fix}, then train again.")


def retention_row(report: dict[str, Any] | None) -> str:
    """A before/after table row (with its newline): the base model's answers kept, 100% before."""
    if not report or not report.get("n"):
        return ""
    return (f"| base answers kept ({report['n']} probe questions on held-out images) | 100% | "
            f"{100 * report['agreement']:.0f}% |\n")


def retention_notes(report: dict[str, Any] | None) -> str:
    """What the row measured (guard, per-question-form agreement), then the warning if any."""
    if not report or not report.get("n"):
        return ""
    forms = " · ".join(f"{form} {100 * v:.0f}%" for form, v in (report.get("per_form") or {}).items())
    guard = "off" if report.get("guard") == "off" else f"{report.get('guard')}, weight {report.get('weight'):g}"
    text = f"Retention guard: {guard}; probes: {report.get('probes')}. Base answers kept per question: {forms}."
    warning = retention_warning(report)
    return text + ("\n\n" + warning if warning else "")


def prompts_from_text(text: str | None) -> list[str]:
    """The page's probe questions: one per line; blank lines are spacing, not empty questions."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]
