"""Reading `conf/`: resolvers, the composed pipeline config, and the command lines' defaults.

`python -m rtq.run` composes the full config with Hydra; the smaller entry points (`rtq.debug`,
`rtq.compare`, `rtq.bench`) take their defaults from the same YAML sections through here, so
changing `conf/config.yaml` changes every door at once.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from rtq.paths import CONF_DIR, PROJECT_ROOT, SHARED_DIR


def register_resolvers() -> None:
    """`${rtq_root:}` (the project folder) and `${rtq_shared:}` (../shared) in configs, so defaults
    work from any directory."""
    for name, folder in (("rtq_root", PROJECT_ROOT), ("rtq_shared", SHARED_DIR)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, lambda folder=folder: str(folder))


def compose_config(overrides: list[str]) -> DictConfig:
    """The pipeline config `python -m rtq.run OVERRIDES` would run, composed with Hydra's API."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def conf_section(name: str, file: str = "config.yaml") -> dict[str, Any]:
    """Section `name` of `conf/<file>` as plain data (unresolved interpolations left as text)."""
    config = OmegaConf.load(CONF_DIR / file)
    section = OmegaConf.to_container(OmegaConf.select(config, name), resolve=False)
    assert isinstance(section, dict), f"conf/{file}: {name} is not a mapping"
    return {str(k): v for k, v in section.items()}
