"""Download OpenFWI files: resumable, verified, and atomic.

A file is written to `<name>.part`, continued with an HTTP Range request after an
interruption, checked against the manifest's size and sha256 (where known), fsynced and only
then renamed to its final name, so a half or corrupt file never appears under that name.
When the host cannot be reached, the error says which files to fetch, from where, and where
to put them, and that `data.openfwi_root` can point at an existing copy instead.
"""

from __future__ import annotations

import json
import http.client
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from ..files import atomic_file, sha256_of
from .families import get_family
from .openfwi import SPLITS, ManifestEntry, load_manifest

try:  # POSIX advisory locks keep two processes from appending to the same .part file
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, not per file
RETRY_WAIT_S = 2.0  # times the attempt number, between resumes after a dropped connection
USER_AGENT = "wavediffusion-openfwi-download/0.1"
OPENFWI_ROOT_HINT = (
    "If you already have OpenFWI files, set the config key data.openfwi_root to the folder that "
    "holds the family folders (e.g. FlatVel_A/) instead of downloading."
)


class DownloadError(RuntimeError):
    """A download that could not be completed; nothing was placed under the final name."""


class IntegrityError(DownloadError):
    """A file whose size or sha256 is not the expected one."""

    def __init__(self, message: str, path: Path, expected: int | str, got: int | str):
        super().__init__(message)
        self.path, self.expected, self.got = path, expected, got


class ManualDownloadRequired(DownloadError):
    """Files this machine cannot fetch; `files` lists (source URL, destination path)."""

    def __init__(self, message: str, files: Sequence[tuple[str, Path]]):
        super().__init__(message)
        self.files = list(files)


class _Interrupted(Exception):
    """The transfer stopped early; the .part file holds what arrived and can be resumed."""


# --- verification --------------------------------------------------------------------------


def verify_file(path: str | Path, expected_size: int | None, sha256: str | None, label: str | None = None) -> None:
    """Raise IntegrityError unless `path` has the expected size and sha256 (each checked when known)."""
    path = Path(path)
    label = label or str(path)
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        raise IntegrityError(
            f"{label}: size mismatch: expected {expected_size} bytes, got {size}", path, expected_size, size
        )
    if sha256 is not None:
        got = sha256_of(path)
        if got != sha256.lower():
            raise IntegrityError(f"{label}: sha256 mismatch: expected {sha256.lower()}, got {got}", path, sha256, got)


# --- one file ------------------------------------------------------------------------------


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _lock(fh, part: Path) -> None:
    if fcntl is None:  # pragma: no cover
        return
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise DownloadError(f"another process is downloading into {part}; wait for it or stop it") from None


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a crash then leaves the old or the new name, never none."""
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unreachable(url: str, dest: Path, reason: object) -> ManualDownloadRequired:
    host = urlsplit(url).netloc or url
    return ManualDownloadRequired(
        f"Cannot reach {host} to download {dest.name} ({reason}).\n"
        f"Fetch it by hand and save it at the path shown:\n  {url}\n    -> {dest}\n{OPENFWI_ROOT_HINT}",
        [(url, dest)],
    )


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total length) of a Content-Range header such as 'bytes 100-999/1000' or 'bytes */1000'."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _fetch_into(url: str, fh, dest: Path, expected_size: int | None, progress: bool) -> None:
    """One attempt: append the missing bytes of `url` to the open .part file `fh`.

    Raises _Interrupted when the transfer stops early (the caller may resume), and
    IntegrityError when the server's file has another size than expected.
    """
    offset = os.fstat(fh.fileno()).st_size
    if expected_size is not None and offset > expected_size:
        fh.truncate(0)  # longer than the file can be: nothing in it is usable
        offset = 0
    if expected_size is not None and offset == expected_size:
        return  # complete from an earlier attempt; verification follows
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # nothing left after `offset`: complete, or a stale .part
            _, total = _content_range(error.headers.get("Content-Range"))
            if total == offset:
                return
            fh.truncate(0)
            raise _Interrupted(f"server refused to resume at byte {offset}; starting over") from None
        raise DownloadError(
            f"HTTP {error.code} {error.reason} from {url} (for {dest}).\n"
            f"If this URL is wrong or gone, fetch the file by hand and save it at {dest}. {OPENFWI_ROOT_HINT}"
        ) from None
    except urllib.error.URLError as error:
        raise _unreachable(url, dest, error.reason) from None
    except (http.client.HTTPException, ConnectionError, TimeoutError) as error:
        raise _Interrupted(f"no response from {url}: {error!r}") from None

    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None else None
        if offset and response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                fh.truncate(0)
                raise _Interrupted(f"server answered a range from byte {start}, not {offset}; starting over")
            server_total = total if total is not None else (offset + length if length is not None else None)
        else:  # 200: the whole file, also when the server ignores Range
            if offset:
                fh.truncate(0)
                offset = 0
            server_total = length
        if expected_size is not None and server_total is not None and server_total != expected_size:
            raise IntegrityError(
                f"{dest}: size mismatch: {url} serves {server_total} bytes, expected {expected_size}",
                dest,
                expected_size,
                server_total,
            )
        total = expected_size if expected_size is not None else server_total
        with tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=dest.name, disable=not progress, leave=False,
        ) as bar:
            while True:
                try:
                    block = response.read(CHUNK_BYTES)
                except (http.client.HTTPException, OSError) as error:
                    fh.flush()
                    raise _Interrupted(f"connection lost: {error!r}") from None
                if not block:
                    break
                fh.write(block)
                bar.update(len(block))
    fh.flush()
    size = os.fstat(fh.fileno()).st_size
    if total is not None and size < total:
        raise _Interrupted(f"connection closed at byte {size} of {total}")


def download_file(
    url: str,
    dest: str | Path,
    expected_size: int | None = None,
    sha256: str | None = None,
    progress: bool = True,
    retries: int = 3,
) -> Path:
    """Fetch `url` to `dest`, resuming `dest.part`, verifying, and renaming atomically; return `dest`.

    An existing `dest` is verified and kept (no request is made); if it does not verify,
    IntegrityError is raised and the file is left alone for the user to inspect.  After a
    dropped connection the download resumes up to `retries` times.  A .part file that fails
    verification is deleted (resuming it would only repeat the bad bytes).
    """
    dest = Path(dest)
    if dest.exists():
        verify_file(dest, expected_size, sha256, label=f"{dest} (already present; delete it to download again)")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    with open(part, "a+b") as fh:  # append mode never truncates what an earlier run fetched
        _lock(fh, part)
        attempt = 0
        try:
            while True:
                try:
                    _fetch_into(url, fh, dest, expected_size, progress)
                    break
                except _Interrupted as interruption:
                    if attempt >= retries:
                        have = os.fstat(fh.fileno()).st_size
                        raise DownloadError(
                            f"download of {url} interrupted ({interruption}); {have} bytes kept in {part}. "
                            f"Run again to resume."
                        ) from None
                    attempt += 1
                    time.sleep(RETRY_WAIT_S * attempt)
        except BaseException:
            if os.fstat(fh.fileno()).st_size == 0:  # nothing arrived: leave no empty .part behind
                part.unlink(missing_ok=True)
            raise
        fh.flush()
        os.fsync(fh.fileno())
        try:
            verify_file(part, expected_size, sha256, label=f"{dest} (downloaded from {url}; partial file removed)")
        except IntegrityError:
            part.unlink()
            raise
        os.replace(part, dest)
    _fsync_directory(dest.parent)
    return dest


# --- one family ----------------------------------------------------------------------------


def _manual_message(family: str, folder_url: str, reason: str, files: list[tuple[str, Path]]) -> str:
    listing = "\n".join(f"  {source}\n    -> {dest}" for source, dest in files)
    return (
        f"OpenFWI {family}: {len(files)} file(s) cannot be downloaded here: {reason}.\n"
        f"Fetch them by hand and save each at the path shown:\n{listing}\n"
        f"OpenFWI publishes {family} as the Google Drive folder {folder_url} (same file names).\n"
        f"{OPENFWI_ROOT_HINT}"
    )


def download_family(
    family_name: str,
    dest_dir: str | Path,
    splits: Sequence[str] = SPLITS,
    manifest: Sequence[ManifestEntry] | None = None,
    progress: bool = True,
    base_url: str | None = None,
    retries: int = 3,
) -> list[Path]:
    """Download one family into `dest_dir/<family folder>/` in OpenFWI's layout; return its file paths.

    Files already there are verified and kept.  `base_url` fetches from any mirror with
    OpenFWI's layout (`<base_url>/<FlatVel_A>/data/data1.npy`) instead of the manifest's URLs,
    e.g. for families the manifest has no per-file URL for.
    """
    family = get_family(family_name)
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    manifest = manifest if manifest is not None else load_manifest()
    entries = [e for e in manifest if e.family == family.name and e.split in splits]
    if not entries:
        raise ValueError(f"manifest has no files of {family.name} for splits {list(splits)}")
    folder = Path(dest_dir) / family.directory

    def url_of(entry: ManifestEntry) -> str | None:
        return f"{base_url.rstrip('/')}/{entry.relative_path}" if base_url else entry.url

    todo = []
    for entry in entries:
        dest = folder / entry.path
        if dest.exists():
            verify_file(dest, entry.size, entry.sha256, label=f"{dest} (already present; delete it to download again)")
        else:
            todo.append(entry)
    no_url = [e for e in todo if url_of(e) is None]
    if no_url:
        raise ManualDownloadRequired(
            _manual_message(
                family.name, no_url[0].folder_url,
                "no per-file URL is known (OpenFWI publishes it only as a Google Drive folder; "
                "the config key data.download_base_url can name a mirror with OpenFWI's layout)",
                [(e.folder_url, folder / e.path) for e in no_url],
            ),
            [(e.folder_url, folder / e.path) for e in no_url],
        )
    with tqdm(total=len(todo), unit="file", desc=family.name, disable=not progress) as bar:
        for index, entry in enumerate(todo):
            try:
                download_file(url_of(entry), folder / entry.path, entry.size, entry.sha256, progress, retries)
            except ManualDownloadRequired as error:
                remaining = [(url_of(e), folder / e.path) for e in todo[index:]]
                reason = str(error).splitlines()[0].rstrip(".")
                raise ManualDownloadRequired(
                    _manual_message(family.name, entry.folder_url, reason, remaining), remaining
                ) from error
            bar.update(1)
    return [folder / e.path for e in entries]


def write_download_record(family_name: str, dest_dir: str | Path, record: str | Path, base_url: str | None = None) -> None:
    """Download a family (train and test) and then write `record`, a JSON list of the verified files.

    The record is the workflow's proof of a complete download: the data files stay outside
    Snakemake's outputs, so a failed or interrupted job keeps its verified files and its
    .part files, and the retry resumes instead of starting over.
    """
    paths = download_family(family_name, dest_dir, base_url=base_url)
    files = [{"path": str(Path(p).relative_to(dest_dir)), "bytes": Path(p).stat().st_size} for p in paths]
    with atomic_file(record) as tmp:
        Path(tmp).write_text(json.dumps({"family": get_family(family_name).name, "files": files}, indent=1) + "\n")
