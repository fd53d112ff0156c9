"""Fine-tune data in, checked: uploads -> job folder -> records + a report of every problem.

- `ingest_upload(files, data_dir)`: copy uploaded files into a job's data folder, unpacking
  zips safely (see vitdemo.finetune.data.archive); nothing is written anywhere else.
- `load_dataset(path, processor=...)`: find the annotation file, parse it (any supported
  format, see vitdemo.finetune.data.formats), check every image and, given a processor, the token
  length of every record (image tokens included) against the cut-off.
- `records_from_pairs`: records from pairs typed in the page.
- `DatasetReport`: counts, token lengths, every problem with its line and what to do, and
  the records to train on (all of them, or only the good ones when the user drops the bad).
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from vitdemo.finetune.data.archive import ArchiveLimits, MemberClash, extract_zip
from vitdemo.finetune.data.formats import (
    IMAGE_PLACEHOLDER,
    ParseLimits,
    Problem,
    Record,
    decode_text,
    parse_annotation_text,
)
from vitdemo.errors import DatasetError, ImageError
from vitdemo.core.images import DEFAULT_MAX_PIXELS, open_image

__all__ = [
    "Record", "Problem", "DataLimits", "DatasetReport", "load_dataset", "ingest_upload",
    "records_from_pairs", "find_annotation_file", "save_records", "ArchiveLimits", "IMAGE_PLACEHOLDER",
]

logger = logging.getLogger(__name__)

ANNOTATION_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
# Preferred annotation names when a folder holds several candidates.
_PREFERRED = ("train", "data", "dataset", "annotations", "records", "pairs", "llava", "messages")


@dataclass(frozen=True)
class DataLimits:
    """Limits on one dataset (parsing limits plus what is checked after parsing)."""

    parse: ParseLimits = field(default_factory=ParseLimits)  # records, file size, text length
    max_tokens: int = 1024  # cut-off: longer records (image tokens included) are refused
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # larger images are refused (decompression bombs)
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)  # zip members, sizes, ratio


@dataclass
class DatasetReport:
    """What was found in the data, and everything wrong with it."""

    format: str  # llava | messages | simple | pairs | unknown
    annotation: str  # annotation file name (relative to root)
    root: Path  # folder the image paths are relative to
    records: list[Record]  # every parsed record, good and bad (each has .problems)
    problems: list[Problem]  # file-level problems (line None) and unparseable lines
    n_seen: int  # records or lines found in the file
    token_lengths: dict[int, int] = field(default_factory=dict)  # record index -> tokens
    max_tokens: int = 1024  # the cut-off the lengths were checked against

    @property
    def fatal(self) -> bool:
        """A problem with the whole file: nothing can be trained, even dropping records."""
        return any(p.line is None and p.severity == "error" for p in self.problems)

    @property
    def good(self) -> list[Record]:
        return [r for r in self.records if r.ok]

    @property
    def bad(self) -> list[Record]:
        return [r for r in self.records if not r.ok]

    @property
    def n_errors(self) -> int:
        return sum(p.severity == "error" for p in self.all_problems())

    @property
    def ok(self) -> bool:
        """Every record is usable: training may start without dropping anything."""
        return not self.fatal and self.n_errors == 0 and bool(self.records)

    def all_problems(self) -> list[Problem]:
        out = list(self.problems)
        for r in self.records:
            out.extend(r.problems)
        return sorted(out, key=lambda p: (p.line is not None, p.line or 0))

    def usable_records(self, drop_bad: bool = False) -> list[Record]:
        """Records to train on, image paths made absolute; DatasetError says why there are none
        or why training must not start."""
        if self.fatal:
            first = next(p for p in self.problems if p.line is None and p.severity == "error")
            raise DatasetError(f"{first.message}; {first.fix}")
        if self.n_errors and not drop_bad:
            raise DatasetError(
                f"{self.n_errors} problem(s) in {len(self.bad) + sum(p.line is not None for p in self.problems)} "
                "record(s); fix them or choose 'drop bad records'"
            )
        good = self.good
        if not good:
            raise DatasetError("no usable records: every record has a problem (see the report)")
        return [Record(r.messages, [str(p) for p in self.images_in(r)], r.line, r.id, split=r.split) for r in good]

    def images_in(self, record: Record) -> list[Path]:
        return [resolve_image_path(self.root, self.annotation, p)[0] for p in record.images]

    def summary(self) -> dict[str, Any]:
        lengths = [self.token_lengths[i] for i, r in enumerate(self.records) if r.ok and i in self.token_lengths]
        return {
            "format": self.format,
            "annotation": self.annotation,
            "records": len(self.records),
            "good": len(self.good),
            "bad": len(self.bad) + sum(p.line is not None and p.severity == "error" for p in self.problems),
            "images": len({p for r in self.records for p in r.images}),
            "turns": sum(r.n_turns for r in self.records),
            "held_out_in_file": sum(r.split == "held_out" for r in self.records),
            "errors": self.n_errors,
            "warnings": sum(p.severity == "warning" for p in self.all_problems()),
            "tokens_min": min(lengths) if lengths else None,
            "tokens_max": max(lengths) if lengths else None,
            "tokens_mean": round(sum(lengths) / len(lengths), 1) if lengths else None,
            "max_tokens": self.max_tokens,
        }


# ---------------------------------------------------------------- uploads

def ingest_upload(files: Sequence[str | os.PathLike], data_dir: str | os.PathLike,
                  limits: DataLimits = DataLimits()) -> Path:
    """Copy uploads into `data_dir` (zips are extracted there safely); return data_dir.

    A zip and an annotation file may come together (the file then refers to images in the
    zip). The same file uploaded twice (a second drop of it into the box: same name, same
    bytes) counts once.
    Nothing is written outside `data_dir`.
    """
    dest = Path(data_dir)
    dest.mkdir(parents=True, exist_ok=True)
    if not files:
        raise DatasetError("no file uploaded: upload a zip (images + annotation file) or an annotation file")
    earlier: dict[str, list[Path]] = {}  # uploads by file name, to spot a second drop of one file
    for f in files:
        src = Path(f)
        if not src.is_file():
            raise DatasetError(f"uploaded file {src.name!r} is missing")
        # same name and bytes (compared only when a name repeats): two images alike by chance both stay
        if any(filecmp.cmp(src, other, shallow=False) for other in earlier.get(src.name, [])):
            logger.info("skipped a second copy of the upload %s", src.name)
            continue
        earlier.setdefault(src.name, []).append(src)
        if src.suffix.lower() == ".zip":
            try:
                extract_zip(src, dest, limits.archive)
            except MemberClash as clash:
                raise DatasetError(
                    f"{src.name!r} and another upload both hold {clash.member!r}: upload one zip at a time "
                    "(remove the others from the box) or put everything in one zip") from None
            continue
        name = Path(src.name).name  # never a path from the client
        if not name or name.startswith("."):
            raise DatasetError(f"uploaded file name {src.name!r} is not allowed")
        size = src.stat().st_size
        if size > limits.archive.max_member_bytes:
            raise DatasetError(f"{name} is {size:,} bytes; the limit is {limits.archive.max_member_bytes:,}")
        target = dest / name
        if target.exists():
            raise DatasetError(f"two uploads are named {name!r}; rename one")
        shutil.copyfile(src, target)
    return dest


def find_annotation_file(folder: str | os.PathLike) -> Path:
    """The one annotation file in `folder` (or in its single sub-folder, as zips often have)."""
    root = Path(folder)
    candidates = _annotation_candidates(root)
    if not candidates:
        subdirs = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "__"))]
        if len(subdirs) == 1:
            candidates = _annotation_candidates(subdirs[0])
    if not candidates:
        raise DatasetError(
            "no annotation file (.json, .jsonl, .csv) found next to the images; add one to the zip"
        )
    if len(candidates) > 1:
        preferred = [c for c in candidates if c.stem.lower() in _PREFERRED]
        if len(preferred) == 1:
            return preferred[0]
        names = ", ".join(c.name for c in candidates[:6])
        raise DatasetError(f"{len(candidates)} annotation files found ({names}); keep only one in the upload")
    return candidates[0]


def _annotation_candidates(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in ANNOTATION_SUFFIXES and not p.name.startswith("."))


def resolve_image_path(root: Path, annotation: str, path: str) -> tuple[Path, str | None]:
    """(absolute path, problem or None) for an image path written in the annotation file.

    Tried relative to the annotation file's folder, then the root, then root/images; the
    result must stay inside root.
    """
    root = root.resolve()
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        absolute = Path(path).resolve()
        if root in absolute.parents and absolute.is_file():  # already resolved (saved records)
            return absolute, None
        return root / Path(path).name, f"image path {path!r} is absolute"
    rel = Path(path.replace("\\", "/"))
    base = (root / annotation).parent
    candidates = [base / rel, root / rel, root / "images" / rel]
    for c in candidates:
        resolved = c.resolve()
        if resolved != root and root not in resolved.parents:
            return resolved, f"image path {path!r} points outside the dataset"
        if resolved.is_file():
            return resolved, None
    return candidates[0], f"image {path!r} not found"


# ---------------------------------------------------------------- loading

def load_dataset(path: str | os.PathLike, *, processor: Any = None, limits: DataLimits = DataLimits(),
                 extract_to: str | os.PathLike | None = None) -> DatasetReport:
    """Parse and check a dataset; never raises for bad records (they are in the report).

    `path` is a folder (holding the annotation file and images), an annotation file, or a
    zip (then `extract_to`, a folder inside the job, is required). With a processor, every
    record's token length, image tokens included, is checked against `limits.max_tokens`.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path.name!r} not found")
    if path.is_file() and path.suffix.lower() == ".zip":
        if extract_to is None:
            raise DatasetError("a zip must be unpacked into the job's data folder first (extract_to)")
        path = ingest_upload([path], extract_to, limits)
    if path.is_dir():
        root = path
        annotation = find_annotation_file(root)
    else:
        root = path.parent
        annotation = path
    size = annotation.stat().st_size
    if size > limits.parse.max_file_bytes:
        raise DatasetError(f"{annotation.name} is {size:,} bytes; the limit is {limits.parse.max_file_bytes:,}")
    text, problems = decode_text(annotation.read_bytes(), annotation.name)
    parsed = parse_annotation_text(text, annotation.name, limits.parse)
    report = DatasetReport(
        format=parsed.format,
        annotation=str(annotation.relative_to(root)),
        root=root,
        records=parsed.records,
        problems=problems + parsed.problems,
        n_seen=parsed.n_seen,
        max_tokens=limits.max_tokens,
    )
    check_records(report, processor=processor, limits=limits)
    logger.info("dataset %s: %s", annotation.name, report.summary())
    return report


def check_records(report: DatasetReport, *, processor: Any = None, limits: DataLimits = DataLimits()) -> None:
    """Add image and length problems to each record of `report` (in place)."""
    image_status: dict[Path, str | None] = {}
    for idx, record in enumerate(report.records):
        if not record.ok:
            continue
        images = []
        for p in record.images:
            resolved, problem = resolve_image_path(report.root, report.annotation, p)
            if problem is None:
                if resolved not in image_status:
                    image_status[resolved] = _image_problem(resolved, limits.max_image_pixels)
                problem = image_status[resolved]
            if problem is not None:
                fix = ("put the image in the zip at that path" if "not found" in problem
                       else "use a path relative to the annotation file" if "absolute" in problem or "outside" in problem
                       else "replace the image with a PNG or JPEG")
                record.problems.append(Problem(record.line, problem, fix, "error", record.id))
            else:
                images.append(resolved)
        if not record.images:
            record.problems.append(Problem(record.line, "the record has no image",
                                           "nothing: it trains as text only; add an image if the answer needs one",
                                           "warning", record.id))
        if processor is not None and record.ok:
            try:
                n = count_tokens(processor, record, images, limits.max_image_pixels)
            except Exception as exc:  # the processor's own error, said with the record's line
                record.problems.append(Problem(record.line, f"the model's processor cannot read it: {exc}",
                                               "check the images and the text", "error", record.id))
                continue
            report.token_lengths[idx] = n
            if n > limits.max_tokens:
                record.problems.append(Problem(
                    record.line, f"{n:,} tokens (image tokens included); the cut-off is {limits.max_tokens:,}",
                    "shorten the text, use fewer images, or raise the cut-off", "error", record.id))


def _image_problem(path: Path, max_pixels: int) -> str | None:
    try:
        open_image(path, max_pixels=max_pixels)
    except ImageError as exc:
        return f"unreadable image: {exc}"
    return None


def count_tokens(processor: Any, record: Record, images: Sequence[Path], max_pixels: int) -> int:
    """Tokens of the whole conversation as the model sees it (image tokens expanded)."""
    from vitdemo.finetune.sft import encode_conversation  # torch is only needed with a processor

    pil = [open_image(p, max_pixels=max_pixels) for p in images]
    return len(encode_conversation(processor, record.messages, pil)["input_ids"])


# ---------------------------------------------------------------- typed pairs and saving

def records_from_pairs(pairs: Iterable[tuple[str | None, str, str]], root: str | os.PathLike,
                       limits: DataLimits = DataLimits(), processor: Any = None) -> DatasetReport:
    """A report for (image path relative to root, instruction, answer) pairs typed in the page."""
    rows = [{"image": img or "", "instruction": instr, "response": ans} for img, instr, ans in pairs]
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    parsed = parse_annotation_text(text, "typed pairs.jsonl", limits.parse)
    for r in parsed.records:  # "line" n is pair n
        r.id = f"pair {r.line}"
        for p in r.problems:
            p.record_id = r.id
    report = DatasetReport("pairs", "pairs.jsonl", Path(root), parsed.records, parsed.problems, parsed.n_seen,
                           max_tokens=limits.max_tokens)
    check_records(report, processor=processor, limits=limits)
    return report


def save_records(records: Sequence[Record], report: DatasetReport, out: str | os.PathLike) -> Path:
    """Write records as messages-format JSONL with absolute image paths (the job's input)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps({
                "id": r.id, "line": r.line, "split": r.split, "messages": r.messages,
                "images": [str(p) for p in report.images_in(r)],
            }, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return out


def read_records(path: str | os.PathLike) -> list[Record]:
    """Records written by save_records (image paths absolute)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            obj = json.loads(line)
            out.append(Record(obj["messages"], obj["images"], obj.get("line", 0), obj.get("id", ""),
                              split=obj.get("split")))
    return out
