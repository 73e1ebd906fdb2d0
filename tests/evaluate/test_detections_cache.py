"""An interrupted COCO evaluation continues where it stopped, with the AP of an uninterrupted one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rtq.evaluate.detections_cache import DetectionsCache
from tests.yolox_model import dynamic_yolox, mini_coco_images, needs_yolox


def test_cache_keeps_finished_images_drops_a_cut_line_and_ignores_another_key(tmp_path: Path) -> None:
    cache = DetectionsCache(tmp_path, "key1")
    cache.open({})
    cache.add(1, [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}])
    cache.add(2, [])
    cache.close(completed=False)
    with open(cache.path, "a", encoding="utf-8") as handle:
        handle.write('{"image_id": 3, "detec')  # the interruption cut this line
    done = DetectionsCache(tmp_path, "key1").load()
    assert sorted(done) == [1, 2] and done[1][0]["category_id"] == 3
    assert DetectionsCache(tmp_path, "key2").load() == {}  # another model or setting: start over
    again = DetectionsCache(tmp_path, "key1")
    again.open(again.load())
    again.close(completed=True)
    assert not again.path.exists()  # nothing left to resume once complete


class _Interrupted(Exception):
    pass


class _StopsAfter:
    """Wraps a real runner and raises on its Nth call, like a Ctrl-C or a pre-empted job."""

    def __init__(self, runner: Any, calls: int) -> None:
        self.runner, self.calls = runner, calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)

    def __enter__(self) -> Any:
        self.runner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runner.__exit__(*exc)

    def infer(self, feed: Any) -> Any:
        self.calls -= 1
        if self.calls < 0:
            raise _Interrupted
        return self.runner.infer(feed)


@needs_yolox
def test_an_interrupted_evaluation_resumes_with_the_same_ap(tmp_path: Path) -> None:
    from rtq.backends.onnxruntime import make_onnxrt_runner
    from rtq.data.coco import CocoDataset
    from rtq.evaluate.loop import evaluate_detector
    from rtq.models.adapters.yolox import YoloxIO

    images = mini_coco_images()
    model = dynamic_yolox(tmp_path)
    dataset, io = CocoDataset(images, max_images=6), YoloxIO()
    whole = evaluate_detector(make_onnxrt_runner(model), io, dataset, 1, progress=False)
    cache = DetectionsCache(tmp_path / "cache", "run")
    with pytest.raises(_Interrupted):  # warm-up call + 3 images, then the 4th image stops it
        evaluate_detector(
            _StopsAfter(make_onnxrt_runner(model), 4), io, dataset, 1, progress=False, cache=cache
        )
    assert sorted(cache.load()) == dataset.image_ids[:3]
    resumed = evaluate_detector(make_onnxrt_runner(model), io, dataset, 1, progress=False, cache=cache)
    assert resumed.resumed_images == 3 and resumed.timed_images == 3
    assert resumed.stats == whole.stats
    assert not cache.path.exists()
