"""`python -m rtq.run experiment=NAME [overrides]`: run one experiment's chain of stages.

Hydra composes the config from `conf/`; `rtq.stages` runs the stages it lists. User mistakes
(unknown model, missing path, empty calibration folder) end in one line and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rtq.errors import EXIT_USER_ERROR, UserError
from rtq.paths import CONF_DIR, PROJECT_ROOT

log = logging.getLogger("rtq")

CONFIG_GROUPS = ("model", "data", "quant", "surgery", "backend", "experiment")


def register_resolvers() -> None:
    """`${rtq_root:}` in configs is the project folder, so defaults work from any directory."""
    if not OmegaConf.has_resolver("rtq_root"):
        OmegaConf.register_new_resolver("rtq_root", lambda: str(PROJECT_ROOT))


def check_group_overrides(argv: list[str]) -> None:
    """Reject `group=unknown` before Hydra does, with one line listing what exists."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in CONFIG_GROUPS or not value or value == "null":
            continue
        if not (CONF_DIR / key / f"{value}.yaml").is_file():
            known = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
            raise UserError(f"unknown {key} '{value}': choose one of {', '.join(known)} ({key}=NAME)")


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    from rtq.pipeline.driver import run_pipeline

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        run_pipeline(cfg, run_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None


def main() -> None:
    register_resolvers()
    try:
        check_group_overrides(sys.argv[1:])
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
    _hydra_main()


if __name__ == "__main__":
    main()
