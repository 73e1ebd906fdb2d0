"""In CI (`CI` set) a missing `../shared` is a failure, not a skip; elsewhere its tests skip clearly.

Tests that need the shared data, models or fixtures skip with a reason naming the path they miss.
Where CI runs, `../shared` is always laid beside the project, so such a skip means the test did
not run where it must: this plugin turns it into a failure, and a missing `../shared` as a whole
stops the session at once with one line.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

from rtq.paths import SHARED_DIR

SHARED_MARKERS = (str(SHARED_DIR), "../shared")


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def pytest_sessionstart(session: pytest.Session) -> None:
    if in_ci() and not SHARED_DIR.is_dir():
        pytest.exit(f"CI is set but {SHARED_DIR} does not exist: CI needs ../shared beside the project", 3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and any(marker in str(report.longrepr) for marker in SHARED_MARKERS):
        report.outcome = "failed"
        report.longrepr = f"skipped for want of ../shared, which CI must have: {report.longrepr}"
