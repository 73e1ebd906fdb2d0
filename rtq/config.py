"""Defaults of the command lines, read from `conf/` so that each default lives in one place.

`python -m rtq.run` composes the full config with Hydra; the smaller entry points (`rtq.debug`,
`rtq.compare`, `rtq.bench`) take their defaults from the same YAML sections through here, so
changing `conf/config.yaml` changes every door at once.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from rtq.paths import CONF_DIR


def conf_section(name: str, file: str = "config.yaml") -> dict[str, Any]:
    """Section `name` of `conf/<file>` as plain data (unresolved interpolations left as text)."""
    config = OmegaConf.load(CONF_DIR / file)
    section = OmegaConf.to_container(OmegaConf.select(config, name), resolve=False)
    assert isinstance(section, dict), f"conf/{file}: {name} is not a mapping"
    return {str(k): v for k, v in section.items()}
