"""Downloading a checkpoint file once: resumable, checked against the server's size, with progress.

Release files are large and links drop, so a transfer writes `<name>.part` beside its target and
continues it with an HTTP Range request (within one call, and again on the next run); the file takes
its final name only when its byte count equals what the server announced, so a file under the final
name is always complete and a later run uses it without touching the network. A lock per file keeps
parallel jobs (sweeps) from writing one `.part` together.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from filelock import FileLock
from tqdm import tqdm

from rtq.errors import UserError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
ATTEMPTS = 3
TIMEOUT_S = (15.0, 60.0)  # connect, and the longest silence while reading


@dataclass
class _Interrupted(Exception):
    """The transfer stopped before the announced size; the `.part` holds what arrived."""

    received: int
    total: int | None
    resumable: bool  # the server honours Range requests, so the `.part` is worth keeping
    reason: str


def fetch_file(url: str, dest: Path, hint: str, attempts: int = ATTEMPTS, retry_delay_s: float = 1.0) -> Path:
    """`dest`, downloaded from `url` first unless it is already there (then no network at all).

    `hint` ends every error line: how to do without this download (a local file, a mirror).
    """
    if dest.is_file():
        log.info("checkpoint %s: cache hit %s (no download)", url, dest)
        return dest
    locks = dest.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{dest.name}.lock")):
        if dest.is_file():  # another job finished it while this one waited
            log.info("checkpoint %s: cache hit %s (no download)", url, dest)
            return dest
        _download(url, dest, hint, attempts, retry_delay_s)
    return dest


def _download(url: str, dest: Path, hint: str, attempts: int, retry_delay_s: float) -> None:
    """Transfer `url` into `dest.part`, resuming after interruptions, then rename it to `dest`."""
    part = dest.with_name(dest.name + ".part")
    log.info("checkpoint %s: downloading to %s", url, dest)
    stop: _Interrupted | None = None
    for attempt in range(1, attempts + 1):
        try:
            received, total = _transfer(url, part, hint)
        except _Interrupted as err:
            stop = err
            if attempt < attempts:
                log.warning(
                    "checkpoint %s: transfer stopped at %d of %s bytes (%s); %s (attempt %d of %d)",
                    url,
                    err.received,
                    err.total,
                    err.reason,
                    "resuming" if err.resumable else "starting again",
                    attempt + 1,
                    attempts,
                )
                time.sleep(retry_delay_s)
            continue
        if total is None:
            log.warning("checkpoint %s: no size announced, the %d bytes are unchecked", url, received)
        elif received != total:
            part.unlink(missing_ok=True)
            raise UserError(
                f"refused {url}: received {received} bytes but the server announced {total}; "
                f"nothing was cached; {hint}"
            )
        os.replace(part, dest)
        log.info("checkpoint %s: %d bytes verified, cached at %s", url, received, dest)
        return
    assert stop is not None
    if stop.resumable:
        raise UserError(
            f"download of {url} stopped at {stop.received} of {stop.total} bytes {attempts} times "
            f"({stop.reason}); run again to resume from {part}, or {hint}"
        )
    part.unlink(missing_ok=True)
    raise UserError(
        f"refused {url}: received {stop.received} bytes of the {stop.total} its Content-Length announced "
        f"and the server cannot resume ({stop.reason}); nothing was cached; {hint}"
    )


def _transfer(url: str, part: Path, hint: str) -> tuple[int, int | None]:
    """One request appending to `part` (from its current size); bytes held and the announced total."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_S)
    except requests.RequestException as err:
        reason = short_reason(err)
        raise UserError(f"cannot download {url} ({reason}): offline or unreachable; {hint}") from None
    with response:
        if response.status_code == 416 and offset:  # the `.part` is not a prefix of this file: start over
            part.unlink()
            return _transfer(url, part, hint)
        if response.status_code >= 400:
            raise UserError(f"cannot download {url}: HTTP {response.status_code} {response.reason}; {hint}")
        start, total = _announced_range(response)
        if start != offset:
            if offset:
                log.info("checkpoint %s: the server sent the whole file, not the rest; starting again", url)
            offset = 0
        resumable = response.status_code == 206 or response.headers.get("Accept-Ranges") == "bytes"
        # urllib3 would drop the last partial chunk of a short body with its IncompleteRead: keep every
        # byte that arrived (the resume point) and compare the count with the announced size below.
        response.raw.enforce_content_length = False
        received = offset
        with open(part, "ab" if offset else "wb") as handle, _progress(part, total, offset) as bar:
            try:
                for chunk in response.iter_content(CHUNK_BYTES):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except requests.RequestException as err:
                raise _Interrupted(received, total, resumable, short_reason(err)) from None
    if total is not None and received < total:
        raise _Interrupted(received, total, resumable, "the connection closed early")
    return received, total


def _announced_range(response: requests.Response) -> tuple[int, int | None]:
    """Where the body starts in the file and the file's whole size (None when not announced)."""
    length = response.headers.get("Content-Length")
    if response.status_code == 206:
        match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", response.headers.get("Content-Range", ""))
        if match:
            start = int(match.group(1))
            if match.group(2) != "*":
                return start, int(match.group(2))
            return start, start + int(length) if length and length.isdigit() else None
    return 0, int(length) if length and length.isdigit() else None


def _progress(part: Path, total: int | None, initial: int) -> tqdm:
    """A byte progress bar on stderr (size, rate, ETA); redrawn less often off a terminal."""
    terminal = sys.stderr.isatty()
    return tqdm(
        total=total,
        initial=initial,
        desc=part.name.removesuffix(".part"),
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        mininterval=0.1 if terminal else 5.0,
        ascii=not terminal,
    )


def short_reason(err: BaseException) -> str:
    """The operating system's words for a network failure ('Connection refused'), else the error type.

    requests nests the cause in a long repr (pool, retries, the socket object); one line needs the cause.
    """
    match = re.search(r"\[Errno -?\d+\] ([^'\"\)\]]+)", str(err))
    return match.group(1).strip() if match else type(err).__name__
