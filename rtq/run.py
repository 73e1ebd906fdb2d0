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
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import OverrideParseException
from omegaconf import DictConfig

from rtq.config import register_resolvers
from rtq.errors import EXIT_USER_ERROR, UserError
from rtq.paths import CONF_DIR

log = logging.getLogger("rtq")

CONFIG_GROUPS = ("model", "data", "quant", "surgery", "backend", "experiment")


# Hydra's flags that take a value (`--flag VALUE` or `--flag=VALUE`); everything else not starting
# with `-` is an override.
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                "--config-dir", "-cd", "--experimental-rerun"}
_CONFIG_DIR_FLAGS = {"--config-dir", "-cd"}
_INFO_FLAGS = {"--info", "-i"}
_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def split_command_line(argv: list[str]) -> tuple[list[str], list[Path]]:
    """Hydra's overrides and extra config dirs in `argv`, in any order among the flags."""
    overrides: list[str] = []
    config_dirs: list[Path] = []
    args = iter(argv)
    for arg in args:
        if not arg.startswith("-"):
            overrides.append(arg)
            continue
        flag, sep, value = arg.partition("=")
        if flag in _VALUE_FLAGS and not sep:
            value = next(args, "")
        if flag in _CONFIG_DIR_FLAGS:
            config_dirs.append(Path(value))
        if flag in _INFO_FLAGS and not sep:
            following = next(args, None)
            if following is not None and following not in _INFO_CHOICES:
                overrides.append(following)
    return overrides, config_dirs


def group_choices(group: str, config_dirs: list[Path]) -> list[str]:
    """Names of the YAML files of config group `group` in conf/ and any extra config dir."""
    names = {
        p.relative_to(root / group).with_suffix("").as_posix()
        for root in (CONF_DIR, *config_dirs)
        for p in (root / group).rglob("*.yaml")
    }
    return sorted(names)


def _chosen_names(override: Override) -> list[str]:
    """The config names an override of a group asks for: one, a list, or each of a sweep."""
    if override.is_sweep_override():
        if override.value_type == ValueType.GLOB_CHOICE_SWEEP:
            return []  # a glob picks among the existing files itself
        return list(override.sweep_string_iterator())
    value = override.value()
    if isinstance(value, list):
        return [str(v) for v in value]
    return ["null" if value is None else str(value)]


def check_group_overrides(argv: list[str]) -> None:
    """Reject `group=unknown` before Hydra does, with one line listing the YAML files of the group.

    Hydra's own error spans many lines (and a traceback for `group=null`); this one names the bad
    choice, also inside a sweep (`-m experiment=a,b`), for `+group=`/`++group=` and any position.
    """
    overrides, config_dirs = split_command_line(argv)
    parser = OverridesParser.create()
    for arg in overrides:
        key = arg.lstrip("+~").partition("=")[0].partition("@")[0]
        if key not in CONFIG_GROUPS:
            continue
        try:
            override = parser.parse_override(arg)
        except OverrideParseException as err:
            message = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot parse {arg!r} ({message}): write it as {key}=NAME") from None
        if override.is_delete():
            continue
        known = group_choices(key, config_dirs)
        for name in _chosen_names(override):
            if name not in known:
                what = f"unknown {key} '{name}'" if name else f"{arg!r} names no {key}"
                raise UserError(f"{what}: choose one of {', '.join(known)} ({key}=NAME)")


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
