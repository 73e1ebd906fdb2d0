"""The benchmark's OpenVINO rows: the runners and the per-layer time profile.

Each row compiles one model with the settings of `conf/bench.yaml` (`OpenVinoRow`): the FP32 ONNX,
rtq's modelopt Q/DQ ONNX (the file ORT INT8 times), or NNCF's own PTQ of the FP32 ONNX, the peer a
CPU user of OpenVINO would otherwise deploy. The profile compiles a row again with `PERF_COUNT`
and reads each executed layer's time (`rtq.backends.openvino.inspect`), so the report can say
where an INT8 model's time goes (integer Convolutions vs the layers left in float).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from rtq.backends.openvino.compile import compile_model, onnx_io_names
from rtq.backends.openvino.inspect import inspection_markdown, onnx_op_types, runtime_layers
from rtq.backends.openvino.runner import OpenVinoRunner
from rtq.evaluate.bench_settings import BenchSettings, OpenVinoRow

PROFILE_CALLS = 3  # untimed calls before the profiled one (first-call allocations, caches)


class ParallelRequestsRunner(OpenVinoRunner):
    """Splits each batch into `requests` batch-first chunks run as parallel asynchronous infer
    requests (one per stream under the THROUGHPUT hint) and concatenates the outputs: the batch's
    model-only time when OpenVINO may work on several images at once. A batch smaller than
    `requests` is split as far as it goes."""

    def __init__(self, load: Any, requests: int, name: str, port_names: Any) -> None:
        super().__init__(load, name=name, port_names=port_names)
        self.requests = requests

    def activate_impl(self) -> None:
        import openvino as ov

        super().activate_impl()
        self._queue = ov.AsyncInferQueue(self.compiled, self.requests)

    def infer_impl(self, feed_dict: Mapping[str, Any]) -> Any:
        from collections import OrderedDict

        by_port = {self._name(port): port for port in self.compiled.inputs}
        batch = len(next(iter(feed_dict.values())))
        chunks = np.array_split(np.arange(batch), min(self.requests, batch))
        results: dict[int, list[np.ndarray]] = {}

        def done(request: Any, index: int) -> None:
            results[index] = [
                np.array(request.get_output_tensor(i).data, copy=True)
                for i in range(len(self.compiled.outputs))
            ]

        self._queue.set_callback(done)
        start = time.perf_counter()
        for index, rows in enumerate(chunks):
            feed = {by_port[k]: np.ascontiguousarray(v[rows[0] : rows[-1] + 1]) for k, v in feed_dict.items()}
            self._queue.start_async(feed, index)
        self._queue.wait_all()
        self.inference_time = time.perf_counter() - start
        return OrderedDict(
            (name, np.concatenate([results[i][k] for i in range(len(chunks))]))
            for k, name in enumerate(self._output_names)
        )

    def deactivate_impl(self) -> None:
        del self._queue
        super().deactivate_impl()


def openvino_runner(name: str, row: OpenVinoRow, path: Path, onnx_source: Path) -> OpenVinoRunner:
    """A runner compiling `path` with the row's settings on activation; outputs named as in the ONNX."""
    ports = onnx_io_names(onnx_source)
    if row.requests > 1:
        return ParallelRequestsRunner(
            lambda: compile_model(path, row.settings), row.requests, name=name, port_names=ports
        )
    return OpenVinoRunner(lambda: compile_model(path, row.settings), name=name, port_names=ports)


def openvino_records(settings: BenchSettings, paths: Mapping[str, Path]) -> dict[str, dict[str, Any]]:
    """Per OpenVINO row: what it compiles and the settings it ran with (OpenVINO version included)."""
    return {
        name: {
            "source": row.source,
            "file": paths[name].name,
            "requests": row.requests,
            "compile": row.settings.record(),
        }
        for name, row in settings.openvino.items()
        if name in paths
    }


def _conv_groups(onnx_path: Path) -> dict[str, str]:
    """ONNX Conv node -> "depthwise" (one input channel per group) or "dense"."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    weights = {t.name: tuple(t.dims) for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    kinds = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        source = node.input[1]
        while source not in weights and source in producer and producer[source].input:
            if producer[source].op_type == "Constant":
                weights[source] = tuple(numpy_helper.to_array(producer[source].attribute[0].t).shape)
                break
            source = producer[source].input[0]  # through DequantizeLinear / QuantizeLinear
        shape = weights.get(source, ())
        kinds[node.name] = "depthwise" if group > 1 and len(shape) > 1 and shape[1] == 1 else "dense"
    return kinds


def _profile_figures(layers: list[Any], conv_kinds: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Total time and each layer type x precision's share of it, JSON-ready (keys `Type_precision`),
    and Convolution time split into depthwise and dense (`conv_ms`, `conv_layers`: keys
    `depthwise_u8`, `dense_f32`, ...): depthwise convolutions gain little from INT8 on CPUs."""
    spent: dict[str, float] = defaultdict(float)
    conv_ms: dict[str, float] = defaultdict(float)
    conv_layers: dict[str, int] = defaultdict(int)
    for layer in layers:
        spent[f"{layer.type}_{layer.precision}"] += layer.time_us or 0.0
        if layer.type == "Convolution" and conv_kinds:
            kind = next((conv_kinds[n] for n in layer.onnx_nodes if n in conv_kinds), "dense")
            conv_ms[f"{kind}_{layer.precision}"] += (layer.time_us or 0.0) / 1000.0
            conv_layers[f"{kind}_{layer.precision}"] += 1
    total = sum(spent.values())
    ordered = sorted(spent.items(), key=lambda kv: -kv[1])
    return {
        "total_ms": total / 1000.0,
        "share": {key: (value / total if total else 0.0) for key, value in ordered},
        "ms": {key: value / 1000.0 for key, value in ordered},
        "conv_ms": dict(conv_ms),
        "conv_layers": dict(conv_layers),
    }


def layer_profiles(
    settings: BenchSettings,
    paths: Mapping[str, Path],
    onnx_sources: Mapping[str, Path],
    feed: Mapping[str, np.ndarray],
    descriptions: Mapping[str, str],
) -> tuple[str, dict[str, dict[str, Any]]]:
    """Per-layer time of every profiled row on `feed`: the Markdown and, per row, its figures."""
    parts = [
        f"# Where the time goes: OpenVINO per-layer profile ({settings.model})\n",
        "Generated by `python -m rtq.bench` beside its report: each row below compiled again with "
        "`PERF_COUNT` (the row's other settings unchanged), "
        f"{PROFILE_CALLS} untimed calls, then the per-layer `execTimeMcs` of one call at batch "
        f"{len(next(iter(feed.values())))}. Each layer's time is its wall time over all its threads; "
        "their sum is each section's total, to set against the row's median call time in the report "
        "(the remainder is spent outside the layers). The shares are what to read.\n",
    ]
    figures: dict[str, dict[str, Any]] = {}
    for name in settings.profile_rows:
        if name not in paths:
            continue
        row = settings.openvino[name]
        profiled = replace(row, settings=replace(row.settings, profile=True), requests=1)
        with openvino_runner(name, profiled, paths[name], onnx_sources[name]) as runner:
            for _ in range(PROFILE_CALLS + 1):
                runner.infer(feed)
            layers = runtime_layers(runner.compiled, onnx_sources[name])
        figures[name] = _profile_figures(layers, _conv_groups(onnx_sources[name]))
        title = f"{descriptions.get(name, name)} (`{name}`, {row.settings.inference_precision} float parts)"
        body = inspection_markdown(
            layers, onnx_op_types(onnx_sources[name]), title=title, top=settings.profile_top
        )
        parts.append("#" + body.replace("\n## ", "\n### "))
    return "\n".join(parts), figures
