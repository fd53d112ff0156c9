"""Unpack an uploaded zip into one folder, and only there.

Every member is checked before a byte is written, and again while it is written:
- not a zip (whatever its name), encrypted members: refused;
- absolute paths, drive letters, `..` components, control characters: refused (zip-slip);
- symbolic links and other special files: refused;
- duplicate names and members whose data overlap (the "overlapping entries" zip bomb): refused;
- too many members, too large a member, too large a total, too high a compression ratio:
  refused, with the declared sizes checked first and the real decompressed bytes counted
  while streaming (the header's sizes can lie).
Files are written under a temporary name and renamed, so a failed extraction leaves no
half-written file behind; on any failure, everything written so far is removed.
"""

from __future__ import annotations

import logging
import lzma
import os
import shutil
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vitdemo.errors import DatasetError

logger = logging.getLogger(__name__)


class MemberClash(DatasetError):
    """An archive member would land on a file that is already there (another upload's)."""

    def __init__(self, member: str) -> None:
        self.member = member
        super().__init__(f"archive member {member!r} would overwrite an existing file")

_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # 30 bytes: signature ... name length, extra length
_LOCAL_SIGNATURE = b"PK\x03\x04"
_CHUNK = 1 << 20
# Folders and files that zip tools add and that are never data.
_JUNK_PREFIXES = ("__MACOSX/",)
_JUNK_NAMES = (".DS_Store", "Thumbs.db", "desktop.ini")


@dataclass(frozen=True)
class ArchiveLimits:
    """What one uploaded archive may contain."""

    max_members: int = 5000  # files in the archive (folders not counted)
    max_member_bytes: int = 64 * 1024 * 1024  # one uncompressed file
    max_total_bytes: int = 512 * 1024 * 1024  # all uncompressed files together
    max_ratio: float = 200.0  # uncompressed / compressed size of one member (zip bomb guard)
    ratio_floor_bytes: int = 1024 * 1024  # members smaller than this skip the ratio check


def _safe_member_path(name: str) -> PurePosixPath:
    """The member's relative path, or DatasetError if it could land outside the folder."""
    if not name or "\x00" in name or any(ord(c) < 32 for c in name):
        raise DatasetError(f"archive member {name!r} has control characters in its name; rename it")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise DatasetError(
            f"archive member {name!r} has an absolute path; zip the files with paths relative "
            "to the dataset folder"
        )
    parts = PurePosixPath(unified).parts
    if any(part == ".." for part in parts):
        raise DatasetError(f"archive member {name!r} points outside the archive ('..'); remove it")
    clean = [p for p in parts if p not in ("", ".")]
    if not clean:
        raise DatasetError(f"archive member {name!r} has an empty path")
    return PurePosixPath(*clean)


def _is_junk(rel: PurePosixPath) -> bool:
    text = str(rel) + "/"
    return text.startswith(_JUNK_PREFIXES) or rel.name in _JUNK_NAMES or rel.name.startswith("._")


def _check_overlaps(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Each member's local header + data must end before the next member starts."""
    fp = zf.fp
    assert fp is not None
    fp.seek(0, os.SEEK_END)
    archive_end = fp.tell()
    spans: list[tuple[int, int, str]] = []
    for info in infos:
        fp.seek(info.header_offset)
        header = fp.read(_LOCAL_HEADER.size)
        if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_SIGNATURE:
            raise DatasetError(f"archive member {info.filename!r} has a damaged header; re-create the zip")
        fields = _LOCAL_HEADER.unpack(header)
        name_len, extra_len = fields[-2], fields[-1]
        end = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len + info.compress_size
        if end > archive_end:
            raise DatasetError(f"archive member {info.filename!r} runs past the end of the file (truncated zip)")
        spans.append((info.header_offset, end, info.filename))
    spans.sort()
    for (start_a, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise DatasetError(
                f"archive members {name_a!r} and {name_b!r} overlap (a zip-bomb construction); "
                "re-create the zip with a normal tool"
            )


def _plan(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Validate every member; return (info, relative path) for the files to extract."""
    infos = zf.infolist()
    seen: dict[str, str] = {}
    files: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    total = 0
    for info in infos:
        rel = _safe_member_path(info.filename)
        unix_mode = info.external_attr >> 16
        if unix_mode and stat.S_ISLNK(unix_mode):
            raise DatasetError(f"archive member {info.filename!r} is a symbolic link; links are not allowed")
        file_type = stat.S_IFMT(unix_mode)  # 0 when the tool did not record a type
        if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
            raise DatasetError(f"archive member {info.filename!r} is not a regular file")
        key = str(rel).casefold()  # a.png and A.PNG would collide on some file systems
        if key in seen:
            raise DatasetError(
                f"archive has two entries for {str(rel)!r} ({seen[key]!r} and {info.filename!r}); keep one"
            )
        seen[key] = info.filename
        if info.is_dir() or _is_junk(rel):
            continue
        if info.flag_bits & 0x1:
            raise DatasetError(f"archive member {info.filename!r} is encrypted; upload an unencrypted zip")
        if len(files) >= limits.max_members:
            raise DatasetError(
                f"archive has more than {limits.max_members:,} files; the limit is {limits.max_members:,}"
            )
        if info.file_size > limits.max_member_bytes:
            raise DatasetError(
                f"archive member {info.filename!r} is {info.file_size:,} bytes uncompressed; the limit "
                f"per file is {limits.max_member_bytes:,}"
            )
        if info.file_size > limits.ratio_floor_bytes and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise DatasetError(
                f"archive member {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f}x "
                f"(limit {limits.max_ratio:.0f}x): this looks like a zip bomb"
            )
        total += info.file_size
        if total > limits.max_total_bytes:
            raise DatasetError(
                f"archive expands to more than {limits.max_total_bytes:,} bytes; the limit is "
                f"{limits.max_total_bytes:,}: upload fewer or smaller files"
            )
        files.append((info, rel))
    # Files named like a folder of another member ("a" and "a/b.png") cannot both exist.
    names = {str(rel) for _, rel in files}
    for _, rel in files:
        for parent in rel.parents:
            if str(parent) in names:
                raise DatasetError(f"archive has both a file and a folder named {str(parent)!r}")
    _check_overlaps(zf, infos)
    return files


def _extract_one(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, limits: ArchiveLimits,
                 budget: list[int]) -> None:
    """Stream one member to `target` via a temporary file, counting the real bytes."""
    tmp = target.with_name(f".{target.name}.part")
    written = 0
    try:
        with zf.open(info) as src, open(tmp, "xb") as dst:
            while chunk := src.read(_CHUNK):
                written += len(chunk)
                budget[0] += len(chunk)
                if written > min(info.file_size, limits.max_member_bytes):
                    raise DatasetError(
                        f"archive member {info.filename!r} decompresses to more than its declared "
                        f"{info.file_size:,} bytes: the zip is corrupt or hostile"
                    )
                if budget[0] > limits.max_total_bytes:
                    raise DatasetError(f"archive expands to more than {limits.max_total_bytes:,} bytes")
                dst.write(chunk)
        os.replace(tmp, target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError,
            zlib.error, lzma.LZMAError, OSError) as exc:  # corrupt deflate/lzma/bz2 streams
        raise DatasetError(f"archive member {info.filename!r} cannot be read: {exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def extract_zip(archive: str | os.PathLike, dest: str | os.PathLike,
                limits: ArchiveLimits = ArchiveLimits()) -> list[Path]:
    """Extract `archive` into the existing folder `dest`; return the files written.

    Raises DatasetError (and removes what it wrote) if anything in the archive is unsafe.
    """
    archive = Path(archive)
    dest = Path(dest)
    if not dest.is_dir():
        raise DatasetError(f"extraction folder {dest} does not exist")
    root = dest.resolve()
    if not archive.is_file():
        raise DatasetError(f"archive {archive.name!r} not found")
    if not zipfile.is_zipfile(archive):
        raise DatasetError(f"{archive.name!r} is not a zip archive (it may be renamed or damaged); upload a .zip")
    written: list[Path] = []
    created_dirs: list[Path] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            files = _plan(zf, limits)
            budget = [0]
            for info, rel in files:
                target = root.joinpath(*rel.parts)
                # Belt and braces: the resolved parent must still be inside dest.
                parent = target.parent
                missing = [p for p in [parent, *parent.parents] if not p.exists() and root in p.parents]
                parent.mkdir(parents=True, exist_ok=True)
                created_dirs.extend(reversed(missing))
                if parent.resolve() != root and root not in parent.resolve().parents:
                    raise DatasetError(f"archive member {info.filename!r} resolves outside the folder")
                if target.exists() or target.is_symlink():
                    raise MemberClash(info.filename)
                _extract_one(zf, info, target, limits, budget)
                written.append(target)
    except zipfile.BadZipFile as exc:
        _cleanup(written, created_dirs)
        raise DatasetError(f"{archive.name!r} is a damaged zip archive: {exc}") from None
    except BaseException:
        _cleanup(written, created_dirs)
        raise
    logger.info("extracted %d files from %s into %s", len(written), archive.name, root)
    return written


def _cleanup(written: list[Path], created_dirs: list[Path]) -> None:
    for path in written:
        path.unlink(missing_ok=True)
    for folder in sorted(set(created_dirs), key=lambda p: len(p.parts), reverse=True):
        shutil.rmtree(folder, ignore_errors=True)
