"""Parse annotation files of every supported format into one record type.

Formats (detected from the content, not the name):
- "llava":    JSON list (or JSONL) of {"id", "image": path | [paths], "conversations":
              [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}
- "messages": JSONL (or JSON list) of {"messages": [{"role", "content": str | [parts]}],
              "images": [paths]} as TRL and LLaMA-Factory (sharegpt) write it
- "simple":   JSONL / JSON list / CSV / TSV with image, instruction, response columns
              (aliases: question/prompt/query/input, answer/output/completion, image_path/file)

Every record becomes a `Record` whose messages use the app's chat format
(`{"role", "content": [{"type": "image"} | {"type": "text", "text": str}]}`). Anything
wrong becomes a `Problem` with the line number, what is wrong and what to do; parsing
never raises for bad data, only `DatasetError` for a file that cannot be read at all.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

from vitdemo.errors import DatasetError

logger = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ROLE_ALIASES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "bot": "assistant",
    "system": "system",
}
IMAGE_KEYS = ("image", "images", "image_path", "image_file", "file", "filename", "img", "path")
INSTRUCTION_KEYS = ("instruction", "question", "prompt", "query", "input", "text")
RESPONSE_KEYS = ("response", "answer", "output", "completion", "target", "label")


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on what one annotation file may hold (enforced while parsing)."""

    max_records: int = 5000  # records per file; more is refused (split the data)
    max_file_bytes: int = 32 * 1024 * 1024  # annotation file size
    max_text_chars: int = 8000  # one instruction or answer
    max_images_per_record: int = 8  # images in one record
    max_messages: int = 32  # messages in one record (user + assistant + system)


@dataclass
class Problem:
    """One thing wrong with the data, said so that a person can fix it."""

    line: int | None  # 1-based line in the annotation file; None = the whole file
    message: str  # what is wrong
    fix: str  # what to do about it
    severity: str = "error"  # "error": the record cannot be used; "warning": it can
    record_id: str = ""

    def as_row(self) -> list[Any]:
        return [self.line if self.line is not None else "-", self.severity, self.record_id, self.message, self.fix]


@dataclass
class Record:
    """One training example in the app's chat format."""

    messages: list[dict]  # [{"role", "content": [{"type": "image"} | {"type": "text", "text"}]}]
    images: list[str]  # image paths as written in the file, one per {"type": "image"} entry
    line: int  # 1-based line where the record starts
    id: str = ""
    problems: list[Problem] = field(default_factory=list)
    split: str | None = None  # "train" | "held_out" when the file says so; None = the job decides

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    @property
    def n_turns(self) -> int:
        return sum(m["role"] == "assistant" for m in self.messages)

    def texts(self, role: str) -> list[str]:
        return ["".join(p["text"] for p in m["content"] if p["type"] == "text")
                for m in self.messages if m["role"] == role]

    @property
    def instruction(self) -> str:
        users = self.texts("user")
        return users[-1] if users else ""

    @property
    def answer(self) -> str:
        answers = self.texts("assistant")
        return answers[-1] if answers else ""

    def canonical(self) -> dict:
        """Format-independent form (for comparing the same data written in two formats)."""
        return {"messages": self.messages, "images": list(self.images)}


@dataclass
class ParseResult:
    format: str  # llava | messages | simple
    records: list[Record]  # every record that could be read as a record (with its problems)
    problems: list[Problem]  # file-level problems and lines that are not records at all
    n_seen: int  # records (or lines) found in the file

    @property
    def fatal(self) -> bool:
        return any(p.line is None and p.severity == "error" for p in self.problems)


# ---------------------------------------------------------------- text decoding

def decode_text(data: bytes, name: str) -> tuple[str, list[Problem]]:
    """UTF-8 (a BOM is removed with a warning; UTF-16 with a BOM is accepted)."""
    problems: list[Problem] = []
    if data.startswith(b"\xef\xbb\xbf"):
        problems.append(Problem(None, f"{name} starts with a UTF-8 byte-order mark (BOM)",
                                "nothing: it was ignored", "warning"))
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        problems.append(Problem(None, f"{name} is UTF-16 text", "nothing: it was converted; UTF-8 is preferred",
                                "warning"))
        try:
            return data.decode("utf-16"), problems
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{name} is not valid UTF-16 text at byte {exc.start}") from None
    try:
        return data.decode("utf-8"), problems
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"{name} line {line}: byte {exc.start} is not UTF-8 text; save the file as UTF-8"
        ) from None


# ---------------------------------------------------------------- helpers

def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
            bool: "true/false", type(None): "null"}.get(type(value), type(value).__name__)


def _find_key(obj: dict, keys: tuple[str, ...]) -> str | None:
    lowered = {str(k).lower(): k for k in obj}
    for key in keys:
        if key in lowered:
            return lowered[key]
    return None


def _text_parts(text: str) -> list[dict]:
    """'<image>\\nWhat is it?' -> [{"type": "image"}, {"type": "text", "text": "What is it?"}]."""
    parts: list[dict] = []
    pieces = text.split(IMAGE_PLACEHOLDER)
    for i, piece in enumerate(pieces):
        if i > 0:
            parts.append({"type": "image"})
        piece = piece.strip()
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts


class _RecordBuilder:
    """Collects one record's messages and problems while a format reader walks it."""

    def __init__(self, line: int, record_id: str, limits: ParseLimits) -> None:
        self.line = line
        self.id = record_id
        self.limits = limits
        self.messages: list[dict] = []
        self.images: list[str] = []
        self.problems: list[Problem] = []
        self.split: str | None = None

    def set_split(self, value: Any) -> None:
        """An optional "split" field: train, or test/eval/validation/held_out (kept for evaluation)."""
        if value in (None, ""):
            return
        key = str(value).strip().lower()
        if key in ("train", "training"):
            self.split = "train"
        elif key in ("test", "eval", "evaluation", "validation", "val", "dev", "held_out", "heldout", "held-out"):
            self.split = "held_out"
        else:
            self.error(f"split {value!r} is unknown", 'use "train" or "test" (held out for evaluation)')

    def error(self, message: str, fix: str) -> None:
        self.problems.append(Problem(self.line, message, fix, "error", self.id))

    def warn(self, message: str, fix: str) -> None:
        self.problems.append(Problem(self.line, message, fix, "warning", self.id))

    def check_text(self, what: str, value: Any) -> str | None:
        if not isinstance(value, str):
            self.error(f"{what} is {_type_name(value)}, not text", f'write the {what} as a string in quotes')
            return None
        if len(value) > self.limits.max_text_chars:
            self.error(f"{what} is {len(value):,} characters long; the limit is {self.limits.max_text_chars:,}",
                       f"shorten the {what}")
            return None
        return value

    def set_images(self, value: Any, key: str) -> None:
        paths = value if isinstance(value, list) else [value]
        clean: list[str] = []
        for p in paths:
            if not isinstance(p, str) or not p.strip():
                self.error(f'"{key}" holds {_type_name(p)}, not an image path',
                           f'write "{key}" as a path string or a list of path strings')
                return
            if p.startswith(("http://", "https://", "data:")):
                self.error(f"image {p[:60]!r} is a URL; images are not downloaded",
                           "put the image file in the zip and write its relative path")
                return
            clean.append(p.strip())
        if len(clean) > self.limits.max_images_per_record:
            self.error(f"{len(clean)} images in one record; the limit is {self.limits.max_images_per_record}",
                       "split the record or use fewer images")
            return
        self.images = clean

    def add_message(self, role_raw: Any, content: Any, where: str) -> None:
        if not isinstance(role_raw, str) or role_raw.lower() not in ROLE_ALIASES:
            self.error(f"{where}: role {role_raw!r} is unknown",
                       'use "user"/"human", "assistant"/"gpt" or "system"')
            return
        role = ROLE_ALIASES[role_raw.lower()]
        if isinstance(content, str):
            text = self.check_text(f"{where} text", content)
            if text is None:
                return
            parts = _text_parts(text)
        elif isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "image":
                    parts.append({"type": "image"})
                    inline = _find_key(part, ("image", "path", "url"))
                    if inline is not None and isinstance(part[inline], str):
                        self.images.append(part[inline])
                elif kind == "text":
                    text = self.check_text(f"{where} part {j + 1}", part.get("text"))
                    if text is None:
                        return
                    parts.extend(_text_parts(text))
                else:
                    self.error(f"{where} part {j + 1} is {_type_name(part)} without a known type",
                               '{"type": "text", "text": ...} or {"type": "image"}')
                    return
        else:
            self.error(f"{where} content is {_type_name(content)}", "write the content as text")
            return
        if role == "assistant" and any(p["type"] == "image" for p in parts):
            self.error(f"{where}: an answer contains an image", "images belong in the user's messages")
            return
        self.messages.append({"role": role, "content": parts})

    def finish(self, placeholders_expected: bool) -> Record:
        self._check_structure(placeholders_expected)
        return Record(self.messages, self.images, self.line, self.id, self.problems, self.split)

    def _check_structure(self, placeholders_expected: bool) -> None:
        if any(p.severity == "error" for p in self.problems):
            return
        msgs = self.messages
        if len(msgs) > self.limits.max_messages:
            self.error(f"{len(msgs)} messages; the limit is {self.limits.max_messages}", "split the conversation")
            return
        if msgs and msgs[0]["role"] == "system":
            msgs = msgs[1:]
        roles = [m["role"] for m in msgs]
        if not roles or "assistant" not in roles:
            self.error("no answer (no assistant / gpt message)", "add the answer the model should give")
            return
        if roles[0] != "user":
            self.error("the conversation does not start with the user", "start with the user's instruction")
            return
        for i in range(1, len(roles)):
            if roles[i] == roles[i - 1] or roles[i] == "system":
                self.error(f"messages {i} and {i + 1} are both from {roles[i]!r}",
                           "alternate user and assistant messages")
                return
        if roles[-1] != "assistant":
            self.error("the last message is not an answer", "end the conversation with the assistant's answer")
            return
        for k, m in enumerate(msgs):
            text = "".join(p["text"] for p in m["content"] if p["type"] == "text").strip()
            if m["role"] == "assistant" and not text:
                self.error(f"answer {k // 2 + 1} is empty", "write the answer, or remove the record")
                return
            if m["role"] == "user" and not text and not m["content"]:
                self.error(f"instruction {k // 2 + 1} is empty", "write the instruction")
                return
        n_slots = sum(p["type"] == "image" for m in self.messages for p in m["content"])
        n_images = len(self.images)
        if n_slots == n_images:
            return
        if n_slots == 0:
            # Simple formats have no placeholders: the image goes before the instruction.
            self._place_images_first()
            if placeholders_expected:
                self.warn(f"no {IMAGE_PLACEHOLDER} in the text for {n_images} image(s)",
                          f"nothing: the image(s) were put before the first instruction; write "
                          f"{IMAGE_PLACEHOLDER} to place them yourself")
            return
        self.error(f"{n_slots} {IMAGE_PLACEHOLDER} placeholder(s) but {n_images} image(s)",
                   f"write one {IMAGE_PLACEHOLDER} in the text for each image")

    def _place_images_first(self) -> None:
        for m in self.messages:
            if m["role"] == "user":
                m["content"] = [{"type": "image"} for _ in self.images] + m["content"]
                return


# ---------------------------------------------------------------- format readers

def _record_from_llava(obj: dict, b: _RecordBuilder) -> None:
    key = _find_key(obj, ("image", "images"))
    if key is not None and obj[key] is not None:
        b.set_images(obj[key], key)
    conv = obj.get("conversations")
    if not isinstance(conv, list):
        b.error(f'"conversations" is {_type_name(conv)}, not a list', "write a list of {\"from\", \"value\"} turns")
        return
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            b.error(f"turn {i + 1} of \"conversations\" is not {{\"from\": ..., \"value\": ...}}",
                    'write each turn as {"from": "human" or "gpt", "value": "..."}')
            return
        b.add_message(turn["from"], turn["value"], f"turn {i + 1}")
        if any(p.severity == "error" for p in b.problems):
            return


def _record_from_messages(obj: dict, b: _RecordBuilder) -> None:
    key = _find_key(obj, ("images", "image"))
    if key is not None and obj[key] is not None:
        b.set_images(obj[key], key)
    msgs = obj.get("messages")
    if not isinstance(msgs, list):
        b.error(f'"messages" is {_type_name(msgs)}, not a list', 'write a list of {"role", "content"} messages')
        return
    for i, msg in enumerate(msgs):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            b.error(f"message {i + 1} is not {{\"role\": ..., \"content\": ...}}",
                    'write each message as {"role": "user" or "assistant", "content": "..."}')
            return
        b.add_message(msg["role"], msg["content"], f"message {i + 1}")
        if any(p.severity == "error" for p in b.problems):
            return


def _record_from_simple(obj: dict, b: _RecordBuilder) -> None:
    keys = {"image": _find_key(obj, IMAGE_KEYS), "instruction": _find_key(obj, INSTRUCTION_KEYS),
            "response": _find_key(obj, RESPONSE_KEYS)}
    missing = [name for name, key in keys.items() if key is None]
    if missing:
        b.error(f"missing field(s): {', '.join(missing)} (found: {', '.join(map(str, obj)) or 'nothing'})",
                "give every record image, instruction and response")
        return
    image = obj[keys["image"]]
    if image not in (None, ""):
        b.set_images(image, str(keys["image"]))
    instruction = b.check_text("instruction", obj[keys["instruction"]])
    response = obj[keys["response"]]
    if response is None or (isinstance(response, str) and not response.strip()):
        b.error("the answer (response) is empty", "write the answer, or remove the record")
        return
    response = b.check_text("response", response)
    if instruction is None or response is None:
        return
    b.add_message("user", instruction, "instruction")
    b.add_message("assistant", response, "response")


_READERS = {"llava": _record_from_llava, "messages": _record_from_messages, "simple": _record_from_simple}


def _detect(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if "conversations" in obj:
        return "llava"
    if "messages" in obj:
        return "messages"
    if _find_key(obj, INSTRUCTION_KEYS) or _find_key(obj, RESPONSE_KEYS):
        return "simple"
    return None


def _iter_json_list(text: str, name: str) -> Iterator[tuple[int, Any]]:
    """(line, object) for each element of a top-level JSON array, with its line number."""
    decoder = json.JSONDecoder()
    n = len(text)

    def skip(pos: int) -> int:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        return pos

    def fail(pos: int, what: str) -> DatasetError:
        line = _line_of(text, pos)
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return DatasetError(f"{name} line {line} column {col}: JSON syntax error: {what}; fix the file "
                            "(a JSON validator shows the spot)")

    pos = skip(0)
    if pos >= n or text[pos] != "[":
        raise fail(pos, "expected a list [...] of records")
    pos = skip(pos + 1)
    if pos < n and text[pos] == "]":
        return
    while True:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.pos, exc.msg) from None
        except RecursionError:
            raise fail(pos, "nested too deeply") from None
        yield _line_of(text, pos), obj
        pos = skip(end)
        if pos < n and text[pos] == ",":
            pos = skip(pos + 1)
            continue
        if pos < n and text[pos] == "]":
            if skip(pos + 1) < n:
                raise fail(skip(pos + 1), "extra data after the closing ]")
            return
        raise fail(pos, "expected ',' or ']' after a record")


def _too_many(name: str, limits: ParseLimits, counted: str) -> Problem:
    return Problem(None, f"{name} has {counted} records; the limit is {limits.max_records:,}",
                   "split the data into smaller files (or raise the record limit in the settings)")


def parse_annotation_text(text: str, name: str, limits: ParseLimits = ParseLimits()) -> ParseResult:
    """Parse decoded annotation text; the format is detected from the content."""
    suffix = name.lower().rsplit(".", 1)[-1] if "." in name else ""
    stripped = text.lstrip()
    problems: list[Problem] = []
    entries: list[tuple[int, Any]] = []
    n_seen = 0
    if suffix in ("csv", "tsv"):
        return _parse_csv(text, name, limits, "\t" if suffix == "tsv" else ",")
    if stripped.startswith("["):
        try:
            items = _iter_json_list(text, name)
            for line, obj in items:
                n_seen += 1
                if n_seen > limits.max_records:
                    break
                entries.append((line, obj))
        except DatasetError as exc:
            return ParseResult("unknown", [], [Problem(None, str(exc), "fix the JSON syntax and upload again")], 0)
        if n_seen > limits.max_records:
            return ParseResult("unknown", [], [_too_many(name, limits, f"more than {limits.max_records:,}")], n_seen)
    elif stripped.startswith("{") or suffix == "jsonl":
        lines = text.splitlines()
        n_lines = sum(1 for ln in lines if ln.strip())
        if n_lines > limits.max_records:
            return ParseResult("unknown", [], [_too_many(name, limits, f"{n_lines:,}")], n_lines)
        for i, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            n_seen += 1
            try:
                entries.append((i, json.loads(raw)))
            except json.JSONDecodeError as exc:
                problems.append(Problem(i, f"JSON syntax error at column {exc.colno}: {exc.msg}",
                                        "fix this line (each line must be one JSON object)"))
            except RecursionError:
                problems.append(Problem(i, "JSON nested too deeply", "fix this line"))
        if n_seen == len(problems) and n_seen > 1 and stripped.startswith("{"):
            # Perhaps one pretty-printed JSON object rather than JSON lines.
            problems.append(Problem(None, f"no line of {name} is a JSON object on its own",
                                    "write one record per line (JSONL) or a JSON list [...]"))
    else:
        return ParseResult("unknown", [], [Problem(
            None, f"{name} is neither JSON, JSONL nor CSV", "upload a .json, .jsonl or .csv annotation file")], 0)

    fmt = next((f for _, obj in entries if (f := _detect(obj))), None)
    if fmt is None:
        if not entries and not problems:
            problems.append(Problem(None, f"{name} has no records", "add records to the file"))
        elif entries:
            problems.append(Problem(None, f"{name}: no record has conversations, messages or instruction/response "
                                          "fields", "see the accepted formats in the page's help"))
        return ParseResult("unknown", [], problems, n_seen)
    records = []
    for line, obj in entries:
        b = _RecordBuilder(line, _record_id(obj, line), limits)
        if not isinstance(obj, dict):
            b.error(f"the record is {_type_name(obj)}, not an object", "write each record as {...}")
        else:
            b.set_split(obj.get("split"))
            _READERS[fmt](obj, b)
        records.append(b.finish(placeholders_expected=fmt != "simple"))
    return ParseResult(fmt, records, problems, n_seen)


def _record_id(obj: Any, line: int) -> str:
    if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)):
        return str(obj["id"])[:80]
    return f"line {line}"


def _parse_csv(text: str, name: str, limits: ParseLimits, delimiter: str) -> ParseResult:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return ParseResult("simple", [], [Problem(None, f"{name} is empty", "add a header row and records")], 0)
    except csv.Error as exc:
        return ParseResult("simple", [], [Problem(None, f"{name} line 1: {exc}", "fix the header row")], 0)
    header = [h.strip() for h in header]
    cols = {h.lower(): i for i, h in enumerate(header)}
    need = {"image": IMAGE_KEYS, "instruction": INSTRUCTION_KEYS, "response": RESPONSE_KEYS}
    found = {k: next((cols[a] for a in aliases if a in cols), None) for k, aliases in need.items()}
    missing = [k for k, v in found.items() if v is None]
    if missing:
        return ParseResult("simple", [], [Problem(
            None, f"{name} has columns {', '.join(header) or '(none)'}; missing {', '.join(missing)}",
            "name the columns image, instruction, response in the first row")], 0)
    records: list[Record] = []
    problems: list[Problem] = []
    n_seen = 0
    line = 1
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(Problem(start, f"CSV error: {exc}", "fix this row (quotes, very long fields)"))
            n_seen += 1
            continue
        line = start
        if not any(c.strip() for c in row):
            continue
        n_seen += 1
        if n_seen > limits.max_records:
            return ParseResult("simple", [], [_too_many(name, limits, f"more than {limits.max_records:,}")], n_seen)
        b = _RecordBuilder(line, f"line {line}", limits)
        if len(row) != len(header):
            b.error(f"{len(row)} columns, the header has {len(header)}",
                    "quote fields that contain the delimiter; give every row all columns")
            records.append(b.finish(False))
            continue
        obj = {"image": row[found["image"]], "instruction": row[found["instruction"]],
               "response": row[found["response"]]}
        if "split" in cols:
            b.set_split(row[cols["split"]])
        _record_from_simple(obj, b)
        records.append(b.finish(False))
    return ParseResult("simple", records, problems, n_seen)
