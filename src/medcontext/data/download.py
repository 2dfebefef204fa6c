"""Download and unpack Medical Segmentation Decathlon tasks.

:func:`download_task` fetches ``<task>.tar`` from the MSD mirror on the AWS open-data bucket
(the archives and MD5 checksums MONAI's ``DecathlonDataset`` uses), resumes an interrupted
download from its ``.part`` file with an HTTP ``Range`` request, checks the MD5, unpacks
the archive safely (no absolute paths, no ``..``, no links or devices, no macOS ``._``
files) and records the verified checksum so that a second call returns at once.
Only the standard library's ``urllib`` is used.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medcontext.io.atomic import write_text_atomic

__all__ = ["MSDTask", "MSD_TASKS", "MSD_BASE_URL", "DownloadError", "resolve_task", "download_task"]

MSD_BASE_URL = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
_MARKER = ".medcontext_download.json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class MSDTask:
    """One Decathlon task archive.

    Attributes:
        name: folder and archive name, e.g. ``"Task04_Hippocampus"``.
        md5: MD5 of ``<name>.tar``.
        modality: imaging modality of the task.
    """

    name: str
    md5: str
    modality: str

    @property
    def url(self) -> str:
        """Public archive URL."""
        return f"{MSD_BASE_URL}/{self.name}.tar"


MSD_TASKS: dict[str, MSDTask] = {
    t.name: t
    for t in (
        MSDTask("Task01_BrainTumour", "240a19d752f0d9e9101544901065d872", "MRI"),
        MSDTask("Task02_Heart", "06ee59366e1e5124267b774dbd654057", "MRI"),
        MSDTask("Task03_Liver", "a90ec6c4aa7f6a3d087205e23d4e6397", "CT"),
        MSDTask("Task04_Hippocampus", "9d24dba78a72977dbd1d2e110310f31b", "MRI"),
        MSDTask("Task05_Prostate", "35138f08b1efaef89d7424d2bcc928db", "MRI"),
        MSDTask("Task06_Lung", "8afd997733c7fc0432f71255ba4e52dc", "CT"),
        MSDTask("Task07_Pancreas", "4f7080cfca169fa8066d17ce6eb061e4", "CT"),
        MSDTask("Task08_HepaticVessel", "641d79e80ec66453921d997fbf12a29c", "CT"),
        MSDTask("Task09_Spleen", "410d4a301da4e5b2f6f86ec3ddba524e", "CT"),
        MSDTask("Task10_Colon", "bad7a188931dc2f6acf72b08eb6202d0", "CT"),
    )
}


class DownloadError(RuntimeError):
    """A download failed, did not match its checksum, or its archive is unsafe."""


def resolve_task(task: str) -> MSDTask:
    """``"Task04_Hippocampus"``, ``"Task04"``, ``"4"`` or ``"hippocampus"`` -> the task.

    Raises:
        ValueError: no such task (the message suggests the closest name).
    """
    key = str(task).strip()
    for t in MSD_TASKS.values():
        number, organ = t.name[4:6], t.name[7:]
        if key.lower() in (t.name.lower(), f"task{number}", number, str(int(number)), organ.lower()):
            return t
    close = difflib.get_close_matches(key, list(MSD_TASKS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown MSD task {task!r}{hint}; choose one of {list(MSD_TASKS)}")


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(url: str, part: Path, *, progress: bool, retries: int, timeout: float) -> None:
    """Download ``url`` into ``part``, resuming from its current size; retry cut transfers."""
    from tqdm.auto import tqdm

    last_error: Exception | None = None
    for _attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "medcontext", **({"Range": f"bytes={have}-"} if have else {})})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left to fetch: the part file is complete
                return
            raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
        except (urllib.error.URLError, OSError) as err:
            last_error = err
            time.sleep(min(2.0**_attempt, 30.0))  # the server or network may come back
            continue
        with response:
            status = getattr(response, "status", 200)
            if have and status != 206:  # the server ignored the Range request: start over
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            mode = "ab" if have else "wb"
            try:
                with open(part, mode) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                                   desc=part.name, disable=not progress, leave=False) as bar:
                    while True:
                        block = response.read(_CHUNK)
                        if not block:
                            break
                        out.write(block)
                        bar.update(len(block))
            except (http.client.IncompleteRead, ConnectionError, TimeoutError, OSError) as err:
                last_error = err
                continue
            if total is not None and part.stat().st_size < total:
                last_error = DownloadError(f"{url}: connection closed after {part.stat().st_size} of {total} bytes")
                continue
            return
    raise DownloadError(f"{url}: download failed after {retries + 1} attempts: {last_error}") from last_error


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise DownloadError(f"{archive}: unsafe path {name!r} in archive (absolute or leaving the folder)")
    if not (member.isfile() or member.isdir()):
        raise DownloadError(f"{archive}: member {name!r} is a link or special file; refusing to extract")


def _extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` under ``dest`` after checking every member."""
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            keep = []
            for m in members:
                _check_member(m, archive)
                if PurePosixPath(m.name).name.startswith("._"):
                    continue  # macOS resource forks shipped inside the MSD archives
                keep.append(m)
            root = dest.resolve()
            for m in keep:
                target = (dest / m.name).resolve()
                if root != target and root not in target.parents:
                    raise DownloadError(f"{archive}: member {m.name!r} would be written outside {dest}")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=keep, **kwargs)
    except tarfile.TarError as err:
        raise DownloadError(f"{archive}: not a readable tar archive: {err}") from err


def download_task(
    task: str,
    out_dir: str | Path,
    *,
    base_url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    keep_archive: bool = False,
    retries: int = 3,
    timeout: float = 60.0,
) -> Path:
    """Download, verify and unpack one MSD task; returns ``out_dir/<task>``.

    Args:
        task: task name (``"Task04_Hippocampus"``, ``"Task04"``, ``"4"``, ``"hippocampus"``).
        out_dir: folder receiving ``<task>/`` (and the archive while downloading).
        base_url: mirror serving ``<task>.tar`` (default: :data:`MSD_BASE_URL`).
        md5: expected checksum (default: the task's published one).
        progress: show a byte progress bar.
        keep_archive: keep ``<task>.tar`` after unpacking.
        retries: extra attempts (each resuming) when a transfer is cut.
        timeout: seconds to wait for the server per request.

    Returns:
        The unpacked task folder (``dataset.json``, ``imagesTr/``, ...).

    Raises:
        DownloadError: network failure, checksum mismatch (the bad archive is deleted so the
            next call starts afresh), unsafe archive, or an archive without ``<task>/``.
    """
    info = resolve_task(task)
    expected = (md5 or info.md5).lower()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    final = out / info.name
    if _already_unpacked(final, expected):
        return final
    url = f"{(base_url or MSD_BASE_URL).rstrip('/')}/{info.name}.tar"
    archive = _verified_archive(out, info.name, url, expected, progress=progress, retries=retries, timeout=timeout)
    _unpack(archive, out, info.name, {"task": info.name, "md5": expected, "url": url})
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return final


def _already_unpacked(final: Path, expected_md5: str) -> bool:
    """Whether ``final`` holds a verified download of the archive with ``expected_md5``.

    Raises:
        DownloadError: ``final`` exists but no verified download made it.
    """
    marker = final / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("md5") == expected_md5:
                return True
        except (OSError, json.JSONDecodeError):
            pass
    if final.exists():
        raise DownloadError(
            f"{final} exists but was not unpacked by a verified download; remove it or point "
            "load_dataset at it directly"
        )
    return False


def _verified_archive(out: Path, name: str, url: str, expected_md5: str, *, progress: bool, retries: int,
                      timeout: float) -> Path:
    """``out/<name>.tar``, fetched (resuming ``.tar.part``) unless present, with its MD5 checked.

    Raises:
        DownloadError: the transfer failed, or the checksum differs (the archive is then deleted).
    """
    archive = out / f"{name}.tar"
    part = out / f"{name}.tar.part"
    if not archive.is_file():
        _fetch(url, part, progress=progress, retries=retries, timeout=timeout)
        part.replace(archive)
    got = _md5(archive)
    if got != expected_md5:
        archive.unlink(missing_ok=True)
        raise DownloadError(f"{archive} from {url} has MD5 {got}, expected {expected_md5}; deleted it, retry the download")
    return archive


def _unpack(archive: Path, out: Path, name: str, marker: dict) -> None:
    """Extract ``archive`` into a staging folder of ``out``, then move its ``<name>/`` to ``out/<name>``
    with the marker of a verified download (the task folder appears whole or not at all)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))
    try:
        _extract(archive, staging)
        unpacked = staging / name
        if not unpacked.is_dir():
            found = sorted(p.name for p in staging.iterdir())
            raise DownloadError(f"{archive} does not contain a top-level {name}/ folder (found {found})")
        write_text_atomic(unpacked / _MARKER, json.dumps(marker) + "\n")
        unpacked.replace(out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
