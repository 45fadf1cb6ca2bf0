"""`--set key=value` overrides: dotted paths into a pydantic config, values parsed as YAML scalars.

`apply_overrides(cfg, ["grasp.rte_threshold_m=0.02", "flow.task_runner=processes"])` returns a
new, fully re-validated config; an unknown key or a value the model refuses raises `ConfigError`
in one line that names the override, before any work starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from unihope.config import ConfigError, describe_validation_error

M = TypeVar("M", bound=BaseModel)


def parse_override(text: str) -> tuple[tuple[str, ...], object]:
    """`"a.b=1.5"` -> `(("a", "b"), 1.5)`; the value is a YAML scalar (or flow list / mapping, e.g. `[1, 2]`).

    Raises:
        ConfigError: when `text` has no `=` or an empty key part.
    """
    key, sep, raw = text.partition("=")
    path = tuple(part.strip() for part in key.split("."))
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected key=value with a dotted key, e.g. --set grasp.rte_threshold_m=0.02")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text!r}: value is not valid YAML: {str(err).splitlines()[0]}") from err
    return path, value


def _check_path(model_cls: type[BaseModel], path: tuple[str, ...], text: str) -> None:
    """Fail in one line when `path` does not name a field (walking nested config models)."""
    cls: type[BaseModel] | None = model_cls
    for depth, part in enumerate(path):
        if cls is None or part not in cls.model_fields:
            parent = ".".join(path[:depth]) or "(top level)"
            known = ", ".join(sorted(cls.model_fields)) if cls is not None else "(not a section)"
            raise ConfigError(f"--set {text!r}: unknown key {'.'.join(path[:depth + 1])!r} (fields of {parent}: {known})")
        annotation = cls.model_fields[part].annotation
        cls = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def apply_overrides(cfg: M, overrides: Sequence[str]) -> M:
    """Return `cfg` with every `key=value` override applied, validated by the model as a whole.

    Raises:
        ConfigError: on an unknown key or a value the model refuses (one line naming the override).
    """
    if not overrides:
        return cfg
    data = cfg.model_dump(mode="json")
    for text in overrides:
        path, value = parse_override(text)
        _check_path(type(cfg), path, text)
        node = data
        for part in path[:-1]:
            if not isinstance(node.get(part), dict):  # a section that is None in this config (e.g. optional)
                node[part] = {}
            node = node[part]
        node[path[-1]] = value
    try:
        return type(cfg).model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe_validation_error("--set " + " ".join(overrides), err).replace("\n", "; ")) from err
