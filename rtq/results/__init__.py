"""rtq.results: per-run `results.json`, the JSON-lines store, and tables rendered from it."""

from rtq.results.store import append_to_store, load_store, write_results

__all__ = ["append_to_store", "load_store", "write_results"]
