"""Small helpers shared by evaluation and timing for any Polygraphy runner."""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator

from polygraphy.backend.base import BaseRunner


@contextlib.contextmanager
def activated(runner: BaseRunner) -> Iterator[BaseRunner]:
    """Use an already active runner as it is; otherwise activate it for the block and deactivate after.

    Lets callers share one activated runner (one engine load) across evaluation and FPS timing.
    """
    if runner.is_active:
        yield runner
        return
    with runner:
        yield runner


def static_batch_size(runner: BaseRunner) -> int | None:
    """The fixed batch of the runner's first input, or None when the batch dimension is dynamic.

    Static-batch models (e.g. YOLOX-Nano exported with batch 1) accept exactly that many images.
    """
    metadata = runner.get_input_metadata(use_numpy_dtypes=False)
    for _, meta in metadata.items():
        shape = meta.shape
        if shape is None or len(shape) == 0:
            return None
        dim = shape[0]
        if isinstance(dim, numbers.Integral) and int(dim) > 0:
            return int(dim)
        return None
    return None
