"""Where the project lives, so configs and defaults work from any working directory."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
SHARED_DIR = PROJECT_ROOT.parent / "shared"
