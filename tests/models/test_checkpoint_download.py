"""Checkpoint downloads against a loopback server: resume by Range, size check, one-line failures."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from loopback_http import LoopbackServer, closed_port_url

from rtq.errors import UserError
from rtq.models.checkpoint_download import fetch_file

HINT = "set model.checkpoint=PATH"
PAYLOAD = os.urandom(3 << 20)
PROGRESS = re.compile(r"w\.pth: 100%\|[#]+\| 3\.00M/3\.00M \[[\d:]+<[\d:]+, +[\d.]+[kMG]?B/s\]")


def cached_files(folder: Path) -> list[str]:
    """Files under the cache folder besides the lock files."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and ".locks" not in p.parts)


def test_an_interrupted_transfer_resumes_with_a_range_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "cache" / "w.pth"
    with LoopbackServer({"/w.pth": PAYLOAD}, drops=[1_000_000]) as server:
        fetch_file(f"{server.url}/w.pth", dest, HINT, retry_delay_s=0)
    assert server.requests == [("/w.pth", None), ("/w.pth", "bytes=1000000-")]
    assert dest.read_bytes() == PAYLOAD
    assert cached_files(tmp_path / "cache") == ["w.pth"]
    assert PROGRESS.search(capsys.readouterr().err)


def test_a_partial_file_is_kept_and_the_next_run_continues_it(tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    with LoopbackServer({"/w.pth": PAYLOAD}, drops=[700_000, 500_000]) as server:
        with pytest.raises(UserError) as err:
            fetch_file(f"{server.url}/w.pth", dest, HINT, attempts=2, retry_delay_s=0)
    part = tmp_path / "w.pth.part"
    assert str(err.value) == (
        f"download of {server.url}/w.pth stopped at 1200000 of {len(PAYLOAD)} bytes 2 times "
        f"(the connection closed early); run again to resume from {part}, or {HINT}"
    )
    assert part.read_bytes() == PAYLOAD[:1_200_000] and not dest.exists()
    with LoopbackServer({"/w.pth": PAYLOAD}) as server:
        fetch_file(f"{server.url}/w.pth", dest, HINT)
    assert server.requests == [("/w.pth", "bytes=1200000-")]
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_fewer_bytes_than_announced_from_a_server_that_cannot_resume_are_refused(tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    with LoopbackServer({"/w.pth": PAYLOAD}, drops=[2_000_000] * 3, ranges=False) as server:
        with pytest.raises(UserError) as err:
            fetch_file(f"{server.url}/w.pth", dest, HINT, retry_delay_s=0)
    assert [r for _, r in server.requests] == [None, "bytes=2000000-", "bytes=2000000-"]
    assert str(err.value) == (
        f"refused {server.url}/w.pth: received 2000000 bytes of the {len(PAYLOAD)} its Content-Length "
        f"announced and the server cannot resume (the connection closed early); nothing was cached; {HINT}"
    )
    assert cached_files(tmp_path) == []


def test_a_cached_file_is_used_without_the_network(tmp_path: Path) -> None:
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"cached")
    assert fetch_file(f"{closed_port_url()}/w.pth", dest, HINT) == dest


def test_http_errors_and_refused_connections_are_one_line(tmp_path: Path) -> None:
    with LoopbackServer({}) as server, pytest.raises(UserError) as err:
        fetch_file(f"{server.url}/gone.pth", tmp_path / "gone.pth", HINT)
    assert str(err.value) == f"cannot download {server.url}/gone.pth: HTTP 404 Not Found; {HINT}"
    url = f"{closed_port_url()}/w.pth"
    with pytest.raises(UserError) as err:
        fetch_file(url, tmp_path / "w.pth", HINT)
    assert str(err.value) == f"cannot download {url} (Connection refused): offline or unreachable; {HINT}"
    assert cached_files(tmp_path) == []
