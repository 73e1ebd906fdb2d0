"""`python -m rtq.table`: render the results store as Markdown (and optionally CSV) tables."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from rtq.errors import UserError, exit_on_user_error
from rtq.results.analysis import render_analysis, store_figures
from rtq.results.store import load_store
from rtq.results.table import render_csv, render_markdown

DEFAULT_STORE = Path("experiments/results.jsonl")
DEFAULT_OUT = Path("experiments/results.md")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rtq.table", description=__doc__)
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, help="JSON-lines results store")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown output ('-': stdout)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    parser.add_argument("--all", action="store_true", help="every row, not only the latest per configuration")
    parser.add_argument(
        "--analysis",
        type=Path,
        default=None,
        help="hand-written Markdown whose {{experiment.figure}} placeholders are filled from the store; "
        "written to --out instead of the table",
    )
    parser.add_argument(
        "--figures",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="with --analysis: also the figures of a JSON file (e.g. a localize report), under NAME",
    )
    parser.add_argument(
        "--include",
        type=Path,
        action="append",
        default=[],
        help="with --analysis: a generated Markdown file appended verbatim (repeatable)",
    )
    return parser.parse_args(argv)


def render_report(
    analysis: Path,
    rows: list[dict[str, Any]],
    store: Path,
    command: str,
    extra: list[str] | None = None,
    include: list[Path] | None = None,
) -> str:
    """A hand-written analysis with its figures filled from the store's rows (and `NAME=JSON` files),
    under a generated header, optionally followed by a generated Markdown file."""
    if not analysis.is_file():
        raise UserError(f"--analysis {analysis} does not exist; give the hand-written Markdown file")
    figures = store_figures(rows)
    for item in extra or []:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise UserError(f"--figures {item}: give NAME=PATH of an existing JSON file")
        figures[name] = json.loads(Path(path).read_text())
    body = render_analysis(analysis.read_text(), figures, source=str(analysis))
    for included in include or []:
        if not included.is_file():
            raise UserError(f"--include {included} does not exist; run the command that writes it first")
        body = body.rstrip("\n") + "\n\n---\n\n" + included.read_text()
    title, _, rest = body.partition("\n")
    return (
        f"{title}\n\nRendered by `{command}` from `{store}`: every number below is a figure of a run in "
        f"that store; the prose is `{analysis.name}`, written by hand.\n{rest}"
    )


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    rows = load_store(args.store)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m rtq.table", *(shlex.quote(a) for a in given)])
    if args.analysis is not None:
        markdown = render_report(args.analysis, rows, args.store, command, args.figures, args.include)
    else:
        markdown = (
            "# Results\n\n"
            f"Rendered from `{args.store}` by `{command}`; do not edit by hand.\n\n"
            + render_markdown(rows, latest=not args.all)
        )
    if str(args.out) == "-":
        sys.stdout.write(markdown)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(markdown, encoding="utf-8")
        print(f"wrote {args.out} ({len(rows)} rows in the store)")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        args.csv.write_text(render_csv(rows, latest=not args.all), encoding="utf-8")
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
