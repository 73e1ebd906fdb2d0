"""Where the project lives, so configs and defaults work from any working directory."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
SHARED_DIR = PROJECT_ROOT.parent / "shared"


def data_dir(name: str) -> Path | None:
    """A data folder by name (`coco_calib`, `coco_val2017_mini`): the bundled copy, else the shared one."""
    for root in (PROJECT_ROOT / "data", SHARED_DIR / "data"):
        if (root / name).is_dir():
            return root / name
    return None
