"""COCOeval's `accumulate`, fed one chunk of images at a time, so memory holds only the detections.

`COCOeval.accumulate` needs the per-image match results (`evalImgs`) of every image at once: one
Python dict per image x category x area range, about 640,000 dicts for 2,000 images, whatever the
number of detections. This keeps, per (category, area range), only what `accumulate` reads of them
(each detection's score, its rank in its image, whether it matched at each IoU threshold, whether it
is ignored) as a few flat arrays per chunk, and the count of ground truths that are not ignored.
`result()` then computes precision, recall and scores exactly as pycocotools does (same stable
sort, same interpolation), so `COCOeval.summarize` prints and returns the same numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class _Group:
    """What `accumulate` reads of one (category, area range) over the images seen so far."""

    def __init__(self) -> None:
        self.scores: list[np.ndarray] = []  # float64 [D]
        self.ranks: list[np.ndarray] = []  # int32 [D]: position in its image's score-sorted list
        self.matched: list[np.ndarray] = []  # [T, D] booleans packed along T (uint8 [ceil(T/8), D])
        self.ignored: list[np.ndarray] = []  # the same packing
        self.ground_truths = 0  # not-ignored ground truths

    def add(self, entries: list[dict[str, Any]], num_thresholds: int) -> None:
        """One chunk's `evalImgs` entries of this group, in image order, as one array each."""
        if not entries:
            return
        self.ground_truths += sum(int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)) for e in entries)
        scores = [np.asarray(e["dtScores"], dtype=np.float64) for e in entries]
        self.scores.append(np.concatenate(scores))
        self.ranks.append(np.concatenate([np.arange(len(s), dtype=np.int32) for s in scores]))
        for flags, key in ((self.matched, "dtMatches"), (self.ignored, "dtIgnore")):
            joined = np.concatenate([_flags(e[key], num_thresholds) for e in entries], 1)
            flags.append(np.packbits(joined, axis=0))

    def merged(self, num_thresholds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All chunks' arrays joined in image order (the order pycocotools concatenates them in)."""
        if not self.scores:
            flags = np.zeros((num_thresholds, 0), bool)
            return np.zeros((0,), np.float64), np.zeros((0,), np.int32), flags, flags
        return (
            np.concatenate(self.scores),
            np.concatenate(self.ranks),
            np.unpackbits(np.concatenate(self.matched, 1), axis=0, count=num_thresholds).astype(bool),
            np.unpackbits(np.concatenate(self.ignored, 1), axis=0, count=num_thresholds).astype(bool),
        )


class StreamingAccumulator:
    """Collects chunks of `COCOeval.evalImgs` and produces the `COCOeval.eval` of all of them."""

    def __init__(self, params: Any) -> None:
        self.params = params  # COCOeval.params of the whole evaluation (all image ids)
        self.num_thresholds = len(params.iouThrs)
        self.groups = [[_Group() for _ in params.areaRng] for _ in params.catIds]

    def add_chunk(self, eval_images: list[Any], num_images: int) -> None:
        """`evalImgs` of one COCOeval pass over `num_images` images (laid out category, area, image)."""
        num_areas = len(self.params.areaRng)
        for k, row in enumerate(self.groups):
            for a, group in enumerate(row):
                start = (k * num_areas + a) * num_images
                entries = [e for e in eval_images[start : start + num_images] if e is not None]
                group.add(entries, self.num_thresholds)

    def result(self) -> dict[str, Any]:
        """`COCOeval.eval` (precision, recall, scores) as `COCOeval.accumulate` would compute it."""
        p = self.params
        num_t, num_r, num_k = len(p.iouThrs), len(p.recThrs), len(p.catIds)
        num_a, num_m = len(p.areaRng), len(p.maxDets)
        precision = -np.ones((num_t, num_r, num_k, num_a, num_m))
        recall = -np.ones((num_t, num_k, num_a, num_m))
        scores = -np.ones((num_t, num_r, num_k, num_a, num_m))
        for k, row in enumerate(self.groups):
            for a, group in enumerate(row):
                if group.ground_truths == 0:
                    continue
                all_scores, ranks, matched, ignored = group.merged(num_t)
                for m, max_det in enumerate(p.maxDets):
                    keep = ranks < max_det
                    precision[:, :, k, a, m], recall[:, k, a, m], scores[:, :, k, a, m] = _curves(
                        all_scores[keep], matched[:, keep], ignored[:, keep], group.ground_truths, p.recThrs
                    )
        return {
            "params": p,
            "counts": [num_t, num_r, num_k, num_a, num_m],
            "precision": precision,
            "recall": recall,
            "scores": scores,
        }


def _flags(values: Any, num_thresholds: int) -> np.ndarray:
    """A [T, D] match-id or ignore array as booleans (a matched ground-truth id is never 0)."""
    return np.asarray(values).reshape(num_thresholds, -1) != 0


def _curves(
    det_scores: np.ndarray, matched: np.ndarray, ignored: np.ndarray, ground_truths: int, rec_thrs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Interpolated precision [T, R], final recall [T] and scores [T, R] of one group (pycocotools'
    arithmetic: a stable descending sort, cumulative sums, the right-to-left precision envelope)."""
    order = np.argsort(-det_scores, kind="mergesort")
    sorted_scores = det_scores[order]
    matched, ignored = matched[:, order], ignored[:, order]
    true_pos = np.cumsum(np.logical_and(matched, ~ignored), axis=1).astype(dtype=float)
    false_pos = np.cumsum(np.logical_and(~matched, ~ignored), axis=1).astype(dtype=float)
    num_t, num_r = matched.shape[0], len(rec_thrs)
    precision, recall, scores = np.zeros((num_t, num_r)), np.zeros(num_t), np.zeros((num_t, num_r))
    for t in range(num_t):
        tp, fp = true_pos[t], false_pos[t]
        rc = tp / ground_truths
        pr = tp / (fp + tp + np.spacing(1))
        recall[t] = rc[-1] if len(tp) else 0
        envelope = np.maximum.accumulate(pr[::-1])[::-1]
        found = np.searchsorted(rc, rec_thrs, side="left")
        valid = found < len(envelope)  # pycocotools stops at the first recall level out of reach
        reached = int(np.argmin(valid)) if not valid.all() else num_r
        precision[t, :reached] = envelope[found[:reached]]
        scores[t, :reached] = sorted_scores[found[:reached]]
    return precision, recall, scores
