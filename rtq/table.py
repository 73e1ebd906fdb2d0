"""`python -m rtq.table`: render the results store as Markdown (and optionally CSV) tables."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rtq.errors import exit_on_user_error
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
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    rows = load_store(args.store)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python -m rtq.table", *(shlex.quote(a) for a in given)])
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
