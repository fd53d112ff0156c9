"""Dataset ingestion: every format gives the same records; every data problem its message."""

from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from vitdemo.finetune.data.records import DataLimits, ingest_upload, load_dataset, records_from_pairs, save_records
from vitdemo.finetune.data.formats import ParseLimits
from vitdemo.errors import DatasetError

PAIRS = [
    ("img/red.png", "What color is the circle?", "red"),
    ("img/blue.png", "What color is the square?", "blue"),
    ("img/green.png", "Is there a triangle?", "yes"),
]
COLORS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60)}


def _images(root: Path) -> None:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name, rgb in COLORS.items():
        Image.new("RGB", (24, 24), rgb).save(root / "img" / f"{name}.png")


def write_llava(root: Path, pairs=PAIRS) -> Path:
    data = [{"id": f"r{i}", "image": img,
             "conversations": [{"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]}
            for i, (img, q, a) in enumerate(pairs)]
    path = root / "data.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def write_messages(root: Path, pairs=PAIRS) -> Path:
    path = root / "train.jsonl"
    with path.open("w") as fh:
        for img, q, a in pairs:
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]},
                {"role": "assistant", "content": [{"type": "text", "text": a}]}], "images": [img]}) + "\n")
    return path


def write_messages_strings(root: Path, pairs=PAIRS) -> Path:
    path = root / "train.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"<image>{q}"},
                                                       {"role": "assistant", "content": a}], "images": [img]})
                              for img, q, a in pairs))
    return path


def write_simple_jsonl(root: Path, pairs=PAIRS) -> Path:
    path = root / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"image": i, "question": q, "answer": a}) for i, q, a in pairs) + "\n")
    return path


def write_csv(root: Path, pairs=PAIRS) -> Path:
    path = root / "pairs.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "instruction", "response"])
        w.writerows(pairs)
    return path


WRITERS = [write_llava, write_messages, write_messages_strings, write_simple_jsonl, write_csv]


@pytest.mark.parametrize("writer", WRITERS, ids=lambda w: w.__name__)
def test_every_format_gives_the_same_records(tmp_path: Path, writer) -> None:
    _images(tmp_path)
    writer(tmp_path)
    report = load_dataset(tmp_path)
    assert report.ok, report.all_problems()
    expected = records_from_pairs(PAIRS, tmp_path)
    assert expected.ok, expected.all_problems()
    assert [r.canonical() for r in report.records] == [r.canonical() for r in expected.records]
    assert report.records[0].messages == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    assert report.summary()["images"] == 3 and report.summary()["turns"] == 3


def test_format_detection(tmp_path: Path) -> None:
    _images(tmp_path)
    for writer, fmt in [(write_llava, "llava"), (write_messages, "messages"), (write_csv, "simple")]:
        path = writer(tmp_path)
        assert load_dataset(path).format == fmt
        path.unlink()


def test_zip_with_subfolder_and_processor(tmp_path: Path, tiny_llava_dir: Path) -> None:
    from transformers import AutoProcessor

    src = tmp_path / "src"
    _images(src)
    write_llava(src)
    z = tmp_path / "upload.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in src.rglob("*"):
            zf.write(p, "mydata/" + str(p.relative_to(src)))
    job = tmp_path / "job" / "data"
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    report = load_dataset(z, extract_to=job, processor=processor)
    assert report.ok and report.annotation == "mydata/data.json"
    lengths = list(report.token_lengths.values())
    assert len(lengths) == 3 and all(n > 16 for n in lengths)  # 16 image tokens + text
    out = save_records(report.good, report, job.parent / "records.jsonl")
    assert out.read_text().count("\n") == 3
    assert all(str(job.resolve()) in p for line in out.read_text().splitlines()
               for p in json.loads(line)["images"])


def test_multi_turn_llava(tmp_path: Path) -> None:
    _images(tmp_path)
    (tmp_path / "d.json").write_text(json.dumps([{"image": ["img/red.png", "img/blue.png"], "conversations": [
        {"from": "human", "value": "<image>\n<image>\nCompare."}, {"from": "gpt", "value": "red, blue"},
        {"from": "human", "value": "And the first?"}, {"from": "gpt", "value": "red"}]}]))
    report = load_dataset(tmp_path / "d.json")
    assert report.ok, report.all_problems()
    r = report.records[0]
    assert r.n_turns == 2 and len(r.images) == 2 and r.answer == "red"


def _problems(report) -> list[str]:
    return [f"{p.line}:{p.severity}:{p.message} -> {p.fix}" for p in report.all_problems()]


def test_each_record_problem_has_its_message(tmp_path: Path, tiny_llava_dir: Path) -> None:
    from transformers import AutoProcessor

    _images(tmp_path)
    (tmp_path / "img" / "fake.png").write_bytes(b"not an image at all")
    (tmp_path / "img" / "page.png").write_text("<html><body>hello</body></html>")
    rows = [
        {"image": "img/red.png", "instruction": "ok?", "response": "yes"},  # line 1: good
        {"image": "img/missing.png", "instruction": "q", "response": "a"},  # 2
        {"image": "img/fake.png", "instruction": "q", "response": "a"},  # 3
        {"image": "img/red.png", "instruction": "q", "response": ""},  # 4
        {"image": "img/red.png", "instruction": "q", "response": 3},  # 5 wrong type
        {"image": "img/red.png", "instruction": "q"},  # 6 missing field
        {"image": "img/red.png", "instruction": "x" * 9000, "response": "a"},  # 7 huge string
        {"image": "img/red.png", "instruction": "word " * 300, "response": "a"},  # 8 too many tokens
        {"image": "../outside.png", "instruction": "q", "response": "a"},  # 9
        {"image": "/etc/passwd", "instruction": "q", "response": "a"},  # 10
        {"image": "http://example.com/x.png", "instruction": "q", "response": "a"},  # 11
        {"image": "img/page.png", "instruction": "q", "response": "a"},  # 12
    ]
    text = "\n".join(json.dumps(r) for r in rows[:9]) + "\n{not json\n" + "\n".join(json.dumps(r) for r in rows[9:])
    (tmp_path / "d.jsonl").write_text(text)
    processor = AutoProcessor.from_pretrained(tiny_llava_dir)
    report = load_dataset(tmp_path / "d.jsonl", processor=processor, limits=DataLimits(max_tokens=200))
    msgs = _problems(report)
    expect = [
        r"^2:error:image 'img/missing.png' not found -> put the image in the zip",
        r"^3:error:unreadable image: 'fake.png' is not an image",
        r"^4:error:the answer \(response\) is empty",
        r"^5:error:response is a number, not text -> write the response as a string",
        r"^6:error:missing field\(s\): response",
        r"^7:error:instruction is 9,000 characters long; the limit is 8,000",
        r"^8:error:[\d,]+ tokens \(image tokens included\); the cut-off is 200",
        r"^9:error:image path '../outside.png' points outside the dataset",
        r"^10:error:JSON syntax error at column 2",
        r"^11:error:image path '/etc/passwd' is absolute",
        r"^12:error:image 'http://example.com/x.png' is a URL",
        r"^13:error:unreadable image: 'page.png' is SVG/HTML",
    ]
    import re
    for pattern in expect:
        assert any(re.search(pattern, m) for m in msgs), f"{pattern} not in {msgs}"
    assert report.summary()["good"] == 1 and not report.ok
    with pytest.raises(DatasetError, match="drop bad records"):
        report.usable_records()
    good = report.usable_records(drop_bad=True)
    assert [r.line for r in good] == [1]


def test_image_count_mismatch(tmp_path: Path) -> None:
    _images(tmp_path)
    rows = [
        {"image": "img/red.png", "conversations": [{"from": "human", "value": "<image><image> q"},
                                                   {"from": "gpt", "value": "a"}]},
        {"image": ["img/red.png", "img/blue.png"], "conversations": [{"from": "human", "value": "<image> q"},
                                                                     {"from": "gpt", "value": "a"}]},
        {"image": "img/red.png", "conversations": [{"from": "human", "value": "no placeholder"},
                                                   {"from": "gpt", "value": "a"}]},
    ]
    (tmp_path / "d.json").write_text("[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]")  # record i: line i+2
    report = load_dataset(tmp_path / "d.json")
    msgs = _problems(report)
    assert any(m.startswith("2:error:2 <image> placeholder(s) but 1 image(s)") for m in msgs), msgs
    assert any(m.startswith("3:error:1 <image> placeholder(s) but 2 image(s)") for m in msgs), msgs
    assert any(m.startswith("4:warning:no <image> in the text") for m in msgs), msgs
    third = report.records[2]
    assert third.ok and third.messages[0]["content"][0] == {"type": "image"}


def test_json_syntax_error_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text('[\n  {"image": "a.png",\n   "conversations": [}\n]')
    report = load_dataset(tmp_path / "d.json")
    assert report.fatal
    msg = report.all_problems()[0].message
    assert "line 3 column 22" in msg and "JSON syntax error" in msg
    with pytest.raises(DatasetError, match="line 3 column 22"):
        report.usable_records(drop_bad=True)


def test_bom_is_a_warning_and_utf16_accepted(tmp_path: Path) -> None:
    _images(tmp_path)
    path = write_csv(tmp_path)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    report = load_dataset(path)
    assert report.ok and len(report.records) == 3
    assert any("byte-order mark" in p.message and p.severity == "warning" for p in report.all_problems())
    path.write_bytes(path.read_bytes()[3:].decode().encode("utf-16"))
    assert load_dataset(path).ok


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(b'{"a": 1}\n{"b": "\xff\xfe caf\xe9"}\n')
    with pytest.raises(DatasetError, match="line 2: .* not UTF-8"):
        load_dataset(tmp_path / "d.jsonl")


def test_wrong_structure_types(tmp_path: Path) -> None:
    _images(tmp_path)
    (tmp_path / "d.json").write_text(json.dumps([
        {"image": 5, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"image": "img/red.png", "conversations": "hello"},
        {"image": "img/red.png", "conversations": [{"from": "alien", "value": "q"}]},
        {"image": "img/red.png", "conversations": [{"from": "human", "value": "q"}]},
        {"image": "img/red.png", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]},
        "just a string",
    ]))
    msgs = " | ".join(_problems(load_dataset(tmp_path / "d.json")))
    for needle in ['"image" holds a number', '"conversations" is a string, not a list', "role 'alien' is unknown",
                   "no answer", "does not start with the user", "the record is a string, not an object"]:
        assert needle in msgs


def test_too_many_records(tmp_path: Path) -> None:
    rows = [json.dumps({"image": "a.png", "instruction": "q", "response": "a"})] * 10_000
    (tmp_path / "d.jsonl").write_text("\n".join(rows))
    limits = DataLimits(parse=ParseLimits(max_records=5000))
    report = load_dataset(tmp_path / "d.jsonl", limits=limits)
    assert report.fatal
    assert "has 10,000 records; the limit is 5,000" in report.all_problems()[0].message
    (tmp_path / "d.jsonl").unlink()
    (tmp_path / "d.json").write_text("[" + ",".join(rows) + "]")
    report = load_dataset(tmp_path / "d.json", limits=limits)
    assert "more than 5,000 records" in report.all_problems()[0].message


def test_unknown_and_empty_files(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('[{"foo": 1}]')
    assert "no record has conversations" in load_dataset(tmp_path / "a.json").all_problems()[0].message
    (tmp_path / "b.csv").write_text("path,text\nx,y\n")
    assert "missing image, instruction, response" in load_dataset(tmp_path / "b.csv").all_problems()[0].message \
        or "missing" in load_dataset(tmp_path / "b.csv").all_problems()[0].message
    (tmp_path / "c.jsonl").write_text("")
    assert "no records" in load_dataset(tmp_path / "c.jsonl").all_problems()[0].message


def test_folder_annotation_choice(tmp_path: Path) -> None:
    _images(tmp_path)
    with pytest.raises(DatasetError, match="no annotation file"):
        load_dataset(tmp_path)
    write_csv(tmp_path).rename(tmp_path / "mine.csv")
    (tmp_path / "notes.json").write_text("[]")
    with pytest.raises(DatasetError, match="2 annotation files"):
        load_dataset(tmp_path)


def test_ingest_upload_zip_plus_annotation(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _images(src)
    z = tmp_path / "images.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in (src / "img").iterdir():
            zf.write(p, "img/" + p.name)
    ann = write_simple_jsonl(tmp_path)
    data = ingest_upload([z, ann], tmp_path / "job" / "data")
    report = load_dataset(data)
    assert report.ok and len(report.good) == 3
    with pytest.raises(DatasetError, match="no file uploaded"):
        ingest_upload([], tmp_path / "job2")


def test_the_same_upload_twice_counts_once_and_two_zips_that_clash_say_what_to_do(tmp_path: Path) -> None:
    """The page's file box keeps every drop: the same zip dropped twice is one dataset; two
    different zips with the same annotation file name get a message a person can act on."""
    src = tmp_path / "src"
    _images(src)
    write_simple_jsonl(src)
    first = tmp_path / "a" / "colours.zip"
    first.parent.mkdir()
    with zipfile.ZipFile(first, "w") as zf:
        for p in sorted(src.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(src).as_posix())
    again = tmp_path / "b" / "colours.zip"  # a second drop: another temporary copy, same bytes
    again.parent.mkdir()
    again.write_bytes(first.read_bytes())
    report = load_dataset(ingest_upload([first, again], tmp_path / "job" / "data"))
    assert report.ok and len(report.good) == 3

    twin = tmp_path / "b" / "red-twin.png"  # the same bytes under another name is another file
    twin.write_bytes(next((src / "img").iterdir()).read_bytes())
    data = ingest_upload([first, again, twin], tmp_path / "job3" / "data")
    assert (data / "red-twin.png").is_file()

    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr(next(p.relative_to(src).as_posix() for p in src.rglob("*.jsonl")), "{}\n")
    with pytest.raises(DatasetError, match=r"'other.zip' and another upload both hold .*upload one zip at a time"):
        ingest_upload([first, other], tmp_path / "job2" / "data")


def test_typed_pairs_problems(tmp_path: Path) -> None:
    _images(tmp_path)
    report = records_from_pairs([("img/red.png", "What color?", "red"), ("img/none.png", "q", "a"),
                                 ("img/blue.png", "q", "  ")], tmp_path)
    msgs = _problems(report)
    assert any(m.startswith("2:error:image 'img/none.png' not found") for m in msgs)
    assert any(m.startswith("3:error:the answer (response) is empty") for m in msgs)
    assert report.records[1].id == "pair 2"


def test_split_field_sets_held_out(tmp_path: Path) -> None:
    from vitdemo.finetune.trainer import split_records

    _images(tmp_path)
    rows = [{"image": "img/red.png", "question": "q", "answer": "a", "split": s}
            for s in ("train", "test", "validation", None)]
    rows.append({"image": "img/red.png", "question": "q", "answer": "a", "split": "later"})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    report = load_dataset(tmp_path / "d.jsonl")
    assert [r.split for r in report.records[:4]] == ["train", "held_out", "held_out", None]
    assert any("split 'later' is unknown" in p.message for p in report.all_problems())
    train, held = split_records(report.usable_records(drop_bad=True), 0.5, seed=0)
    assert [r.line for r in held] == [2, 3] and [r.line for r in train] == [1, 4]
    assert report.summary()["held_out_in_file"] == 2
