"""What every graph pass shares: its report, the registry of passes, and the driver that runs a list.

A pass is a function ``(graph: gs.Graph, options: Mapping[str, Any]) -> PassReport`` that edits the
onnx-graphsurgeon graph in place (it may replace ``graph.nodes``, ``graph.inputs`` and
``graph.outputs``) and says what it matched, what it changed and what it could not match and why.
``run_passes`` owns loading, cleanup, topological sorting, the ONNX checker and the atomic save, so a
pass only describes its own rewrite. A pass that changes nothing fails the run unless the caller marked
it optional: a surgery that silently did nothing would make every later measurement meaningless.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from rtq.errors import UserError
from rtq.files import save_onnx_atomic, write_atomic
from rtq.registry import Registry

# Custom (plugin) nodes live in the default domain "" so the TensorRT ONNX parser looks them up in the
# plugin registry; the ONNX checker knows no schema for them, so it sees them in this domain instead.
PLUGIN_CHECK_DOMAIN = "rtq.plugins"


@dataclass
class Unmatched:
    """One place where a pass looked for its pattern and why the pattern did not fit there."""

    where: str  # e.g. a decoder layer prefix "/model/decoder/decoder/layers.1", or "graph"
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass
class PassReport:
    """What one pass did to one graph, written next to the output model as JSON and Markdown."""

    name: str
    matched: list[str] = field(default_factory=list)  # the places where the pattern was found
    changed: list[str] = field(default_factory=list)  # one line per edit actually made
    unmatched: list[Unmatched] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def did_something(self) -> bool:
        return bool(self.changed)

    def why_nothing(self) -> str:
        """The best one-line explanation of why the pass made no change."""
        if self.unmatched:
            return "; ".join(str(u) for u in self.unmatched[:3])
        if self.notes:
            return self.notes[0]
        return "the pattern was not found"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [f"### Pass `{self.name}`", ""]
        lines.append(f"- matched: {len(self.matched)}; changed: {len(self.changed)}; "
                     f"unmatched: {len(self.unmatched)}")
        for title, items in (("Matched", self.matched), ("Changed", self.changed), ("Notes", self.notes)):
            if items:
                lines += ["", f"**{title}**", ""] + [f"- {_md_escape(i)}" for i in items]
        if self.unmatched:
            lines += ["", "**Unmatched**", "", "| where | reason |", "| --- | --- |"]
            lines += [f"| {_md_escape(u.where)} | {_md_escape(u.reason)} |" for u in self.unmatched]
        return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


PassFn = Callable[[Any, Mapping[str, Any]], PassReport]
PASSES: Registry[PassFn] = Registry("graph pass", "passes")
register_pass = PASSES.register  # decorator: make a pass available to configs under a name


def _load_builtin_passes() -> None:
    """Import the pass modules so their ``register_pass`` decorators run."""
    import importlib
    import pkgutil

    import rtq.surgery as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("base", "patterns", "example_model", "__main__"):
            importlib.import_module(f"rtq.surgery.{info.name}")


def known_passes() -> list[str]:
    _load_builtin_passes()
    return PASSES.names()


def get_pass(name: str) -> PassFn:
    """The pass registered as ``name``; a `UserError` listing the known passes otherwise."""
    if name not in PASSES:
        _load_builtin_passes()
    return PASSES.get(name)


def _spec_fields(spec: Mapping[str, Any] | str) -> tuple[str, dict[str, Any], bool]:
    if isinstance(spec, str):
        return spec, {}, False
    if "name" not in spec:
        raise UserError(f"graph pass entry {dict(spec)!r} has no 'name'; write e.g. "
                        "{name: fuse_attn_offset_prediction, options: {}, optional: false}")
    return str(spec["name"]), dict(spec.get("options") or {}), bool(spec.get("optional", False))


def check_model(model: onnx.ModelProto) -> list[str]:
    """Run the ONNX checker, seeing unregistered default-domain ops (plugins) as custom ops.

    Returns the op types treated as plugins. Raises `onnx.checker.ValidationError` on a broken graph.
    """
    import onnx.defs

    checked = copy.deepcopy(model)
    plugins: set[str] = set()
    graphs = [checked.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type):
                node.domain = PLUGIN_CHECK_DOMAIN
                plugins.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
    if plugins and not any(o.domain == PLUGIN_CHECK_DOMAIN for o in checked.opset_import):
        checked.opset_import.append(onnx.helper.make_opsetid(PLUGIN_CHECK_DOMAIN, 1))
    onnx.checker.check_model(checked)
    return sorted(plugins)


def apply_passes(model: onnx.ModelProto, pass_specs: Sequence[Mapping[str, Any] | str],
                 graph_label: str = "<model>") -> tuple[onnx.ModelProto, list[PassReport]]:
    """Apply passes in order to an in-memory model; see `run_passes` for the rules."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    reports: list[PassReport] = []
    for spec in pass_specs:
        name, options, optional = _spec_fields(spec)
        fn = get_pass(name)
        report = fn(graph, options)
        reports.append(report)
        if not report.did_something and not optional:
            raise UserError(f"graph pass {name!r} found nothing to do in {graph_label}: "
                            f"{report.why_nothing()} (mark the pass optional: true to allow this)")
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    # Keep what onnx-graphsurgeon does not carry: model metadata and custom opset imports.
    out.ir_version = model.ir_version
    known = {o.domain for o in out.opset_import}
    for o in model.opset_import:
        if o.domain not in known:
            out.opset_import.append(o)
    for prop in model.metadata_props:
        out.metadata_props.append(prop)
    return out, reports


def run_passes(onnx_in: str | Path, onnx_out: str | Path,
               pass_specs: Sequence[Mapping[str, Any] | str]) -> list[PassReport]:
    """Load ``onnx_in``, apply ``pass_specs`` ({name, options, optional}) in order, check, save.

    Fails with `UserError` when a non-optional pass changed nothing (the message names the pass, the
    graph and why) and when the result does not pass the ONNX checker.
    """
    onnx_in = Path(onnx_in)
    if not onnx_in.is_file():
        raise UserError(f"ONNX model {str(onnx_in)!r} does not exist; export the model first")
    model = onnx.load(str(onnx_in))
    out, reports = apply_passes(model, pass_specs, graph_label=str(onnx_in))
    try:
        plugins = check_model(out)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
        raise UserError(f"graph passes {[r.name for r in reports]} on {onnx_in} produced a model the "
                        f"ONNX checker rejects: {first}") from None
    if plugins and reports:
        reports[-1].notes.append(f"checker saw plugin ops {plugins} as custom-domain ops")
    save_onnx_atomic(out, onnx_out)
    return reports


def reports_markdown(reports: Sequence[PassReport]) -> str:
    """All pass reports of one surgery stage as one Markdown document."""
    return "# Graph surgery\n\n" + "\n".join(r.to_markdown() for r in reports)


def write_reports(reports: Sequence[PassReport], out_dir: str | Path, stem: str = "surgery") -> list[Path]:
    """``<stem>.json`` and ``<stem>.md`` in ``out_dir``, each written atomically."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, text in ((out / f"{stem}.json", json.dumps([r.to_dict() for r in reports], indent=2)),
                       (out / f"{stem}.md", reports_markdown(reports))):
        written.append(write_atomic(path, text))
    return written
