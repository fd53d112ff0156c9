"""Safe zip extraction: every hostile archive is refused and nothing lands outside the folder."""

from __future__ import annotations

import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from vitdemo.finetune.data.archive import ArchiveLimits, extract_zip
from vitdemo.errors import DatasetError


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture()
def box(tmp_path: Path) -> tuple[Path, Path]:
    """(dest folder, its parent) so tests can check nothing was written next to dest."""
    dest = tmp_path / "job" / "data"
    dest.mkdir(parents=True)
    return dest, tmp_path


def test_normal_archive_extracts(box, tmp_path: Path) -> None:
    dest, _ = box
    z = _zip(tmp_path / "ok.zip", {"ds/a.png": b"A", "ds/sub/b.png": b"B", "ds/data.json": b"[]",
                                   "__MACOSX/ds/._a.png": b"junk", "ds/.DS_Store": b"junk"})
    written = extract_zip(z, dest)
    assert sorted(str(p.relative_to(dest)) for p in written) == ["ds/a.png", "ds/data.json", "ds/sub/b.png"]
    assert (dest / "ds" / "sub" / "b.png").read_bytes() == b"B"
    assert not (dest / "__MACOSX").exists()


@pytest.mark.parametrize("name, match", [
    ("../evil.png", r"outside the archive"),
    ("ds/../../evil.png", r"outside the archive"),
    ("/etc/evil.png", r"absolute path"),
    ("C:/evil.png", r"absolute path"),
    ("..\\evil.png", r"outside the archive"),
    ("bad\x01name.png", r"control characters"),
])
def test_zip_slip_refused(box, tmp_path: Path, name: str, match: str) -> None:
    dest, parent = box
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("good.png", b"ok")
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo would normalise some names; write the raw one
        zf.writestr(info, b"owned")
    before = _snapshot(parent)
    with pytest.raises(DatasetError, match=match):
        extract_zip(z, dest)
    assert _snapshot(parent) == before  # nothing written anywhere, not even good.png


def test_symlink_refused(box, tmp_path: Path) -> None:
    dest, parent = box
    z = tmp_path / "link.zip"
    with zipfile.ZipFile(z, "w") as zf:
        info = zipfile.ZipInfo("passwd.png")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DatasetError, match="symbolic link"):
        extract_zip(z, dest)
    assert not any(dest.iterdir())


def test_zip_bomb_ratio_refused(box, tmp_path: Path) -> None:
    dest, _ = box
    z = _zip(tmp_path / "bomb.zip", {"big.png": b"\0" * (8 * 1024 * 1024)})
    with pytest.raises(DatasetError, match="zip bomb"):
        extract_zip(z, dest)
    assert not any(dest.iterdir())


def test_member_and_total_size_limits(box, tmp_path: Path) -> None:
    dest, _ = box
    z = _zip(tmp_path / "big.zip", {f"{i}.png": bytes(range(256)) * 40 for i in range(5)})  # 10 KB each
    with pytest.raises(DatasetError, match="limit per file is 5,000"):
        extract_zip(z, dest, ArchiveLimits(max_member_bytes=5_000))
    with pytest.raises(DatasetError, match="expands to more than 30,000 bytes"):
        extract_zip(z, dest, ArchiveLimits(max_total_bytes=30_000))
    assert not any(dest.iterdir())


def test_too_many_members(box, tmp_path: Path) -> None:
    dest, _ = box
    z = _zip(tmp_path / "many.zip", {f"{i}.png": b"x" for i in range(30)})
    with pytest.raises(DatasetError, match="more than 20 files"):
        extract_zip(z, dest, ArchiveLimits(max_members=20))


def test_not_a_zip(box, tmp_path: Path) -> None:
    dest, _ = box
    fake = tmp_path / "data.zip"
    fake.write_bytes(b"this is a text file renamed to .zip")
    with pytest.raises(DatasetError, match="not a zip archive"):
        extract_zip(fake, dest)


def test_duplicate_entries_refused(box, tmp_path: Path) -> None:
    dest, _ = box
    z = tmp_path / "dup.zip"
    with pytest.warns(UserWarning, match="Duplicate name"):
        with zipfile.ZipFile(z, "w") as zf:
            zf.writestr("a.png", b"first")
            zf.writestr("a.png", b"second")
    with pytest.raises(DatasetError, match="two entries"):
        extract_zip(z, dest)
    z2 = _zip(tmp_path / "case.zip", {"A.png": b"1", "a.png": b"2"})
    with pytest.raises(DatasetError, match="two entries"):
        extract_zip(z2, dest)


def _overlapping_zip(path: Path) -> Path:
    """Two central-directory entries that share one local file's data (Fifield's construction)."""
    data = b"\0" * 10_000
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = comp.compress(data) + comp.flush()
    crc = zlib.crc32(data)
    name = b"a.png"
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(body), len(data), len(name), 0) + name
    central = b""
    for cname in (b"a.png", b"b.png"):
        central += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(body), len(data),
                               len(cname), 0, 0, 0, 0, 0, 0) + cname
    offset = len(local) + len(body)
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 2, 2, len(central), offset, 0)
    path.write_bytes(local + body + central + end)
    return path


def test_overlapping_entries_refused(box, tmp_path: Path) -> None:
    dest, _ = box
    z = _overlapping_zip(tmp_path / "overlap.zip")
    assert zipfile.is_zipfile(z)
    with pytest.raises(DatasetError, match="overlap"):
        extract_zip(z, dest)
    assert not any(dest.iterdir())


def test_file_and_folder_with_same_name(box, tmp_path: Path) -> None:
    dest, _ = box
    z = _zip(tmp_path / "ff.zip", {"a": b"file", "a/b.png": b"x"})
    with pytest.raises(DatasetError, match="both a file and a folder"):
        extract_zip(z, dest)


def test_existing_file_not_overwritten(box, tmp_path: Path) -> None:
    dest, _ = box
    (dest / "a.png").write_bytes(b"mine")
    z = _zip(tmp_path / "ow.zip", {"a.png": b"theirs"})
    with pytest.raises(DatasetError, match="overwrite"):
        extract_zip(z, dest)
    assert (dest / "a.png").read_bytes() == b"mine"


def test_encrypted_member_refused(box, tmp_path: Path) -> None:
    dest, _ = box
    z = _zip(tmp_path / "enc.zip", {"a.png": b"x"}, zipfile.ZIP_STORED)
    raw = bytearray(z.read_bytes())
    raw[6] |= 1  # local header flag bits: encrypted
    cd = raw.find(b"PK\x01\x02")
    raw[cd + 8] |= 1  # central directory flag bits
    z.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="encrypted"):
        extract_zip(z, dest)
