"""Cut an ONNX model down to a minimal subgraph on which OpenVINO still disagrees with ONNX Runtime.

The way `polygraphy debug reduce` does it, so a compiler bug becomes a small committed repro file.
Marking intermediate tensors as outputs changes what OpenVINO fuses and can hide the bug, so every
trial compiles a cut subgraph with its own single output T; its boundary inputs get the real values
of one unoptimised ONNX Runtime run of the full model, and OpenVINO's T is compared to that run's T.
Search: (1) bisect the topological order for the earliest T whose subgraph from the graph inputs
fails; (2) bisect how far the input boundary can move toward T; (3) try cutting each node still
kept. Bisection assumes a failure persists downstream (true of a wrong kernel, not of one a later
saturation hides); the greedy pass makes up for a boundary bisection that stopped early.
Constant subgraphs (weight Q/DQ) always travel with the nodes that read them.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from rtq.backends.onnxruntime import reference_session
from rtq.backends.openvino.compile import OpenVinoSettings, compile_model
from rtq.compare.metrics import error_stats, normalised_error
from rtq.errors import UserError
from rtq.files import save_onnx_atomic, write_atomic
from rtq.onnx_graph import mark_outputs

log = logging.getLogger(__name__)

ONNX_FILE, INPUTS_FILE = "reduced.onnx", "reduced_inputs.npz"
TRIAL_HEAD = ("#", "stage", "output", "inputs", "nodes", "error", "result")


@dataclass
class Trial:
    """One compile: a subgraph (boundary inputs -> outputs) and OpenVINO's error on it."""

    stage: str
    outputs: list[str]
    inputs: list[str]
    nodes: int
    error: float
    max_abs: float
    ref_max_abs: float
    fails: bool
    note: str = ""
    worst: str = ""


@dataclass
class ReduceResult:
    """Where the search landed: the whole model's trial, the earliest failing tensor's (from the graph
    inputs) and the minimal subgraph's, replayed from the saved files alone."""

    model: str
    output: str
    inputs: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    whole: Trial
    first: Trial
    minimal: Trial
    ort_replay_max_abs: float  # ONNX Runtime on the saved subgraph vs its full-model run
    compiles: int
    seconds: float
    threshold: float
    atol: float
    settings: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    trials: list[Trial] = field(default_factory=list)


def topological(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of `model` with its nodes in a topological order (stable: a sorted graph is unchanged)."""
    ready = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    pending, ordered = list(model.graph.node), onnx.ModelProto()
    ordered.CopyFrom(model)
    del ordered.graph.node[:]
    while pending:
        rest = []
        for node in pending:
            if all(not i or i in ready for i in node.input):
                ordered.graph.node.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise UserError(f"node {rest[0].name!r} reads a tensor no node makes; repair the graph first")
        pending = rest
    return ordered


class _Search:
    """The model, ONNX Runtime's value of every computed tensor, and cached OpenVINO trials."""

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], settings: OpenVinoSettings,
                 threshold: float, atol: float, work_dir: Path) -> None:
        self.model = onnx.shape_inference.infer_shapes(topological(model))
        graph = self.model.graph
        self.settings, self.threshold, self.atol, self.work_dir = settings, threshold, atol, work_dir
        initializers = {init.name for init in graph.initializer}
        self.graph_inputs = [i.name for i in graph.input if i.name not in initializers]
        self.graph_outputs = [o.name for o in graph.output]
        self.constant = set(initializers)  # tensors no graph input reaches: they travel as they are
        for node in graph.node:
            if all(not i or i in self.constant for i in node.input):
                self.constant.update(node.output)
        self.nodes = [n for n in graph.node if not all(o in self.constant for o in n.output)]
        self.producer = {out: index for index, node in enumerate(graph.node) for out in node.output if out}
        marked = mark_outputs(self.model, [o for n in self.nodes for o in n.output if o], guess=False)
        session = reference_session(marked.SerializeToString(), quiet=True)
        names = [o.name for o in session.get_outputs()]
        self.values = {**feeds, **dict(zip(names, session.run(None, dict(feeds)), strict=True))}
        self.order = {name: k for k, name in enumerate(self.values)}
        self.extractor = onnx.utils.Extractor(self.model)
        for name, value in self.values.items():
            known = self.extractor.value_infos.get(name)
            if known is None or not known.type.tensor_type.elem_type:
                elem = helper.np_dtype_to_tensor_dtype(value.dtype)
                self.extractor.value_infos[name] = helper.make_tensor_value_info(name, elem, value.shape)
        self.trials: list[Trial] = []
        self._cache: dict[tuple[frozenset[str], tuple[str, ...]], Trial] = {}

    def cone(self, boundary: Iterable[str], outputs: Sequence[str]) -> tuple[list[int], list[str]]:
        """Node indices between `boundary` and `outputs` (constants included) and the inputs they read."""
        stop, stack, used, reached = set(boundary), list(outputs), set(), set()
        while stack:
            name = stack.pop()
            index = self.producer.get(name)
            if name in stop or (index is None and name not in self.constant):
                used.add(name)
            elif index is not None and index not in reached:
                reached.add(index)
                stack.extend(i for i in self.model.graph.node[index].input if i)
        return sorted(reached), sorted(used, key=lambda n: self.order.get(n, -1))

    def compute_nodes(self, indices: Iterable[int]) -> list[onnx.NodeProto]:
        graph = self.model.graph
        return [graph.node[i] for i in indices if not all(o in self.constant for o in graph.node[i].output)]

    def subgraph(self, boundary: Iterable[str], outputs: Sequence[str]) -> tuple[onnx.ModelProto, list[int]]:
        indices, inputs = self.cone(boundary, outputs)
        return self.extractor.extract_model(inputs, list(outputs)), indices

    def test(self, stage: str, boundary: Iterable[str], outputs: Sequence[str]) -> Trial:
        """Compile the subgraph with OpenVINO and compare each output to ONNX Runtime's (cached)."""
        model, indices = self.subgraph(boundary, outputs)
        inputs = [i.name for i in model.graph.input]
        key = (frozenset(inputs), tuple(outputs))
        if key in self._cache:
            return self._cache[key]
        nodes = len(self.compute_nodes(indices))
        got, note = run_openvino(model, {n: self.values[n] for n in inputs}, self.settings, self.work_dir)
        trial = Trial(stage, list(outputs), inputs, nodes, 0.0, 0.0, 0.0, False, note)
        for name, value in zip(outputs, got or [], strict=False):
            _score(trial, name, self.values[name], value, self.threshold, self.atol)
        self._cache[key] = trial
        self.trials.append(trial)
        log.info("%-8s %-28s %3d nodes %2d inputs  error %.4f %s", stage, outputs[0][:28], nodes,
                 len(inputs), trial.error, "FAILS" if trial.fails else "ok")
        return trial


def _score(trial: Trial, name: str, reference: np.ndarray, got: np.ndarray, threshold: float,
           atol: float) -> None:
    """Fold one output's error into `trial`: the worst output gives its error, any failing one its verdict."""
    stats: dict[str, Any] = dict(error_stats(reference, got))
    error, max_abs = normalised_error(stats), float(stats.get("max_abs", np.inf))
    if error >= trial.error:
        trial.worst, trial.error, trial.max_abs = name, error, max_abs
        trial.ref_max_abs = float(stats.get("ref_max_abs", np.nan))
    trial.fails |= error > threshold and max_abs > atol


def run_openvino(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], settings: OpenVinoSettings,
                 work_dir: Path) -> tuple[list[np.ndarray] | None, str]:
    """OpenVINO's outputs of `model`, in graph-output order; None and the reason when it cannot compile."""
    path = save_onnx_atomic(model, work_dir / "trial.onnx")
    try:
        compiled = compile_model(path, settings)
    except UserError as err:
        return None, f"not compiled: {err}"
    results = compiled.create_infer_request().infer({n: np.ascontiguousarray(v) for n, v in feeds.items()})
    return [np.array(results[port], copy=True) for port in compiled.outputs], ""


def _first_failure(search: _Search) -> tuple[Trial, Trial]:
    """(whole model, earliest failing T from the graph inputs) by bisection over T's ancestors."""
    whole = search.test("model", search.graph_inputs, search.graph_outputs)
    if not whole.fails:
        raise UserError(
            f"no mismatch above threshold {search.threshold} between OpenVINO and ONNX Runtime "
            f"(worst normalised error {whole.error:.4g}{'; ' + whole.note if whole.note else ''}); "
            "nothing to reduce: try other inputs or a lower --threshold"
        )
    alone = (search.test("output", search.graph_inputs, [name]) for name in search.graph_outputs)
    start = next((trial for trial in alone if trial.fails), None)
    if start is None:
        raise UserError("OpenVINO fails only with all outputs compiled together; reduce by hand from them")
    indices, _ = search.cone(search.graph_inputs, start.outputs)
    chain = [o for n in search.compute_nodes(indices) for o in n.output if o and o in search.values]
    chain = chain[: chain.index(start.outputs[0])] if start.outputs[0] in chain else chain
    lo, hi, failing = -1, len(chain), start
    while hi - lo > 1:
        mid = (lo + hi) // 2
        trial = search.test("first", search.graph_inputs, [chain[mid]])
        if trial.fails:
            hi, failing = mid, trial
        else:
            lo = mid
    return whole, failing


def _shrink(search: _Search, first: Trial, max_compiles: int) -> Trial:
    """Move the input boundary toward T by bisection, then cut every other node that can go."""
    output = first.outputs[0]
    indices, _ = search.cone(first.inputs, [output])
    nodes = search.compute_nodes(indices)
    lo, hi, best = 0, len(nodes), first
    while hi - lo > 1:
        mid = (lo + hi) // 2
        boundary = search.graph_inputs + [o for n in nodes[:mid] for o in n.output if o]
        trial = search.test("boundary", boundary, [output])
        if trial.fails:
            lo, best = mid, trial
        else:
            hi = mid
    while True:  # cut the first node that can go, until none can (or the compile budget is spent)
        nodes = search.compute_nodes(search.cone(best.inputs, [output])[0])
        cuts = (search.test("cut", [*best.inputs, *node.output], [output]) for node in nodes
                if output not in node.output and len(search.trials) < max_compiles)
        better = next((trial for trial in cuts if trial.fails and trial.nodes < best.nodes), None)
        if better is None:
            return best
        best = better


def reduce_mismatch(
    model_path: str | Path,
    feeds: Mapping[str, np.ndarray],
    out_dir: str | Path,
    settings: OpenVinoSettings | None = None,
    threshold: float = 0.05,
    atol: float = 1e-4,
    max_compiles: int = 200,
    command: str = "",
) -> ReduceResult:
    """Minimal subgraph of `model_path` whose output T OpenVINO gets wrong by more than `threshold`
    (normalised error: max |OV - ORT| / max |ORT|, and more than `atol` absolute), saved with its
    input values in `out_dir` beside report.md / report.json."""
    path, out = Path(model_path), Path(out_dir)
    settings = settings or OpenVinoSettings()
    if not path.is_file():
        raise UserError(f"ONNX model {path} does not exist; fix the path")
    if not threshold > 0:
        raise UserError(f"--threshold {threshold} must be a positive normalised error, e.g. 0.05")
    model = onnx.load(str(path))
    initializers = {init.name for init in model.graph.initializer}
    wanted = [i.name for i in model.graph.input if i.name not in initializers]
    missing = [name for name in wanted if name not in feeds]
    if missing:
        raise UserError(f"no feed for graph input {missing[0]!r} of {path}; feed {', '.join(wanted)}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rtq-reduce-") as tmp:
        values = {n: np.asarray(feeds[n]) for n in wanted}
        search = _Search(model, values, settings, threshold, atol, Path(tmp))
        whole, first = _first_failure(search)
        best = _shrink(search, first, max_compiles)
        minimal, indices = search.subgraph(best.inputs, best.outputs)
        files = save_repro(minimal, {n: search.values[n] for n in best.inputs}, out)
        replay, ort_out = replay_repro(out, settings, threshold, atol, Path(tmp))
        ort_gap = float(np.abs(ort_out.astype(np.float64) - search.values[best.outputs[0]]).max())
    graph, replay.nodes = search.model.graph, best.nodes
    result = ReduceResult(
        model=str(path), output=best.outputs[0],
        inputs=[{"name": n, "shape": list(np.shape(search.values[n])), "dtype": str(search.values[n].dtype)}
                for n in best.inputs],
        nodes=[{"name": graph.node[i].name, "op": graph.node[i].op_type,
                "constant": all(o in search.constant for o in graph.node[i].output)} for i in indices],
        whole=whole, first=first, minimal=replay, ort_replay_max_abs=ort_gap, compiles=len(search.trials) + 1,
        seconds=time.perf_counter() - start, threshold=threshold, atol=atol, settings=settings.record(),
        files=files, trials=search.trials,
    )
    write_reports(result, out, command)
    return result


def save_repro(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray], out: Path) -> dict[str, str]:
    """The subgraph and its input values. Float inputs holding only 0..255 integers (pixels) are
    stored as uint8, losslessly, to keep the repro small; `load_inputs` restores the graph's types."""
    compact = {}
    for name, value in inputs.items():
        whole = value.dtype.kind == "f" and value.size and np.array_equal(value, np.round(value))
        small = whole and value.min() >= 0 and value.max() <= 255
        compact[name] = value.astype(np.uint8) if small else value
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **compact)  # type: ignore[arg-type]
    save_onnx_atomic(model, out / ONNX_FILE)
    write_atomic(out / INPUTS_FILE, buffer.getvalue())
    return {"onnx": str(out / ONNX_FILE), "inputs": str(out / INPUTS_FILE)}


def load_inputs(npz_path: str | Path, onnx_path: str | Path) -> dict[str, np.ndarray]:
    """Feeds of a saved repro, each cast back to its graph input's element type."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    types = {i.name: helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type) for i in graph.input}
    with np.load(str(npz_path)) as data:
        return {name: data[name].astype(types[name]) for name in types}


def replay_repro(folder: Path, settings: OpenVinoSettings, threshold: float, atol: float,
                 work_dir: Path) -> tuple[Trial, np.ndarray]:
    """ONNX Runtime (reference) and OpenVINO on the saved files alone: the repro really reproduces."""
    feeds = load_inputs(folder / INPUTS_FILE, folder / ONNX_FILE)
    model = onnx.load(str(folder / ONNX_FILE))
    expected = reference_session(folder / ONNX_FILE, quiet=True).run(None, feeds)[0]
    got, note = run_openvino(model, feeds, settings, work_dir)
    trial = Trial("replay", [model.graph.output[0].name], list(feeds), 0, 0.0, 0.0, 0.0, False, note)
    if got is not None:
        _score(trial, trial.outputs[0], expected, got[0], threshold, atol)
    return trial, np.asarray(expected)


def random_feeds(model_path: str | Path, seed: int) -> dict[str, np.ndarray]:
    """Pixel-like feeds (uniform integers 0..255) for every float graph input; a dynamic batch is 1."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    rng, feeds = np.random.default_rng(seed), {}
    for value in graph.input:
        if value.name in initializers:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        dims = [d.dim_value or (1 if k == 0 else 0) for k, d in enumerate(value.type.tensor_type.shape.dim)]
        if dtype.kind != "f" or not all(dims):
            raise UserError(f"graph input {value.name!r} ({dtype}, shape {dims}) cannot be made random; "
                            "pass --image")
        feeds[value.name] = rng.integers(0, 256, size=dims).astype(dtype)
    return feeds


def _table(rows: Iterable[Sequence[Any]], head: Sequence[str]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def render_markdown(r: ReduceResult, command: str = "") -> str:
    """The report: what was reduced to what, the kept nodes, the inputs, every trial, how to replay."""
    dtypes = {i["name"]: i["dtype"] for i in r.inputs}
    lines = [
        f"# OpenVINO vs ONNX Runtime: reduced repro of `{Path(r.model).name}`", "",
        f"Command: `{command}`" if command else "", "",
        f"OpenVINO {r.settings.get('openvino')} ({r.settings.get('device')}, inference precision "
        f"{r.settings.get('inference_precision')}); reference: ONNX Runtime, graph optimisations off. "
        f"A subgraph fails when max |OV - ORT| / max |ORT| > {r.threshold} and max |OV - ORT| > {r.atol}.",
        "", *_table([
            ["whole model", r.whole.nodes, f"{r.whole.error:.4f} (output `{r.whole.worst}`)"],
            ["earliest failing tensor, from the graph inputs", r.first.nodes, f"{r.first.error:.4f}"],
            [f"minimal subgraph -> `{r.output}` (replayed from the saved files)", r.minimal.nodes,
             f"{r.minimal.error:.4f} (max abs {r.minimal.max_abs:.4g} of {r.minimal.ref_max_abs:.4g})"],
        ], ["graph", "compute nodes", "normalised error"]), "",
        f"{r.compiles} OpenVINO compiles, {r.seconds:.1f} s. ONNX Runtime on the saved subgraph matches its "
        f"full-model run to {r.ort_replay_max_abs:.3g} (max abs).", "",
        "## Kept nodes", "",
        *_table([[k, f"`{n['name']}`", n["op"], "constant (weights)" if n["constant"] else "compute"]
                 for k, n in enumerate(r.nodes)], ["#", "node", "op", "kind"]), "",
        "## Boundary inputs (real values from the full-model ONNX Runtime run)", "",
        *_table([[f"`{i['name']}`", i["shape"], i["dtype"]] for i in r.inputs], ["tensor", "shape", "dtype"]),
        "", "## Search", "",
        *_table([[k, t.stage, f"`{t.outputs[0] if len(t.outputs) == 1 else 'all outputs'}`", len(t.inputs),
                  t.nodes, f"{t.error:.4f}", "fails" if t.fails else f"ok {t.note}"[:80].strip()]
                 for k, t in enumerate(r.trials)], TRIAL_HEAD),
        "", "## Replay", "", "```python", "import numpy as np, onnxruntime as ort, openvino as ov",
        f"data = np.load({INPUTS_FILE!r})",
        f"feeds = {{name: data[name].astype(dtype) for name, dtype in {dtypes!r}.items()}}",
        f"sess = ort.InferenceSession({ONNX_FILE!r}, providers=['CPUExecutionProvider'])",
        "ref = sess.run(None, feeds)[0]",
        f"compiled = ov.Core().compile_model({ONNX_FILE!r}, 'CPU', "
        f"{{'INFERENCE_PRECISION_HINT': {r.settings.get('inference_precision')!r}}})",
        "got = compiled(feeds)[compiled.outputs[0]]",
        "print(np.abs(got - ref).max() / np.abs(ref).max())", "```", "",
    ]
    return "\n".join(lines)


def write_reports(result: ReduceResult, out: Path, command: str = "") -> None:
    """report.md and report.json beside the repro files."""
    result.files.update(report=str(out / "report.md"), json=str(out / "report.json"))
    write_atomic(out / "report.md", render_markdown(result, command))
    text = json.dumps({"command": command, **asdict(result)}, indent=2, default=str)
    write_atomic(out / "report.json", text)
