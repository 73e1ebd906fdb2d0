"""The CI policy on `../shared`: a test skipped for want of it fails when `CI` is set, skips otherwise."""

from __future__ import annotations

import pytest

from rtq.paths import SHARED_DIR

pytest_plugins = ["pytester"]

SKIPPING_TEST = f"""
import pytest

def test_needs_shared():
    pytest.skip("fixture not found at {SHARED_DIR}/fixtures/nothing")

def test_other_skip():
    pytest.skip("TensorRT not installed")
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makeconftest("from ci_shared import pytest_runtest_makereport, pytest_sessionstart  # noqa\n")
    pytester.makepyfile(SKIPPING_TEST)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider")


def test_a_shared_skip_fails_in_ci(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"{SHARED_DIR} is absent: the session-level CI check covers that case")
    _run(pytester, monkeypatch, "true").assert_outcomes(failed=1, skipped=1)


def test_a_shared_skip_stays_a_skip_outside_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run(pytester, monkeypatch, None).assert_outcomes(skipped=2)
