"""User-facing failures: one line naming the bad value and the fix, exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

EXIT_USER_ERROR = 2

F = TypeVar("F", bound=Callable[..., object])


class UserError(Exception):
    """A mistake in what the user asked for (bad path, unknown name, empty folder...).

    The message must name the offending value and say how to fix it; entry points print it as
    one line and exit with code 2 instead of showing a traceback.
    """


class StageSkipped(Exception):
    """A stage cannot run on this machine (no TensorRT, no GPU); the chain goes on without it."""


def exit_on_user_error(main: F) -> F:
    """Decorate a command-line entry point so a `UserError` ends in one line and exit code 2."""

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> object:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
