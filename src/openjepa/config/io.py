"""Reading a config: YAML files (ours or the reference's), ``section.key=value`` overrides, each
value checked against its key's type; unknown keys name the closest valid one."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path

import yaml

from ..errors import ConfigError
from .schema import SECTIONS, Config
from .validation import validate


def _section_types(section: str) -> dict[str, object]:
    cls = {f.name: f.default_factory for f in dataclasses.fields(Config)}[section]
    return typing.get_type_hints(cls)


def _unknown(kind: str, name: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f"; valid: {', '.join(valid)}"
    return ConfigError(f"unknown {kind} {name!r}{hint}")


_SCALARS = {
    bool: ((bool,), "true or false"),
    int: ((int,), "an integer"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
    dict: ((dict,), "a mapping"),
}


def _coerce(key: str, value, hint):
    """Check ``value`` against the type ``hint``; return it converted (int -> float, tuple -> list)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):  # the first type that takes the value
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise ConfigError(f"{key} must be {' or '.join(_SCALARS[a][1] for a in args if a in _SCALARS)}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value)]
    if hint not in _SCALARS:
        raise TypeError(f"unsupported config type {hint} for {key}")
    accepted, what = _SCALARS[hint]
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {what}, got {value!r}")
    if hint is float and not math.isfinite(value):  # YAML reads .nan and .inf as numbers
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value) if hint is float else value


def _hint(section: str, key: str):
    """The type of ``section.key``; unknown names are a ConfigError naming the closest valid one."""
    if section not in SECTIONS:
        raise _unknown("config section", section, list(SECTIONS))
    hints = _section_types(section)
    if key not in hints:
        raise _unknown(f"key in section {section!r}", key, list(hints))
    return hints[key]


def _set(cfg: Config, section: str, key: str, value) -> None:
    setattr(getattr(cfg, section), key, _coerce(f"{section}.{key}", value, _hint(section, key)))


def from_dict(raw: dict, cfg: Config | None = None) -> Config:
    cfg = cfg or Config()
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    for section, values in raw.items():
        if section not in SECTIONS:
            raise _unknown("config section", str(section), list(SECTIONS))
        if not isinstance(values, dict):
            raise ConfigError(f"section {section!r} must be a mapping of keys")
        for key, value in values.items():
            _set(cfg, section, str(key), value)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last,
    so a second ``data:`` section would silently replace the first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: keys given after it override it
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"key {key!r} appears twice in one mapping (line {key_node.start_mark.line + 1}); keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)


def _count_hashes(value) -> int:
    if isinstance(value, str):
        return value.count("#")
    if isinstance(value, dict):
        return sum(_count_hashes(k) + _count_hashes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_count_hashes(v) for v in value)
    return 0


def _override_value(item: str, text: str, hint):
    """An override's value, parsed as YAML. A `` #`` would start a YAML comment and silently cut
    the value: a string key keeps the text whole (``logging.folder=/data/run #1``); for any other
    key it is an error."""
    if not text.strip():
        return ""  # `key=` sets an empty string
    try:
        value = parse_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({e.problem})") from None
    except ConfigError as e:
        raise ConfigError(f"override {item!r}: {e}") from None
    if text.count("#") > _count_hashes(value):  # a '#' the value lost: YAML took it for a comment
        if hint is str or str in typing.get_args(hint):
            return text
        raise ConfigError(f"override {item!r}: '#' starts a YAML comment, which would cut the value; remove it")
    return value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings; values are parsed as YAML (``lr=1e-3``, ``ema=[0.99,1]``)."""
    for item in overrides:
        name, sep, text = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        _set(cfg, section, key, _override_value(item, text, _hint(section, key)))
    return cfg


def apply_field_overrides(obj, overrides: list[str], what: str):
    """``key=value`` strings (``what.key=value`` too) onto the dataclass ``obj`` of one section's worth of
    settings (e.g. fine-tuning's), typed and checked as the config's keys are."""
    hints = typing.get_type_hints(type(obj))
    for item in overrides:
        name, sep, text = item.partition("=")
        key = name.strip().removeprefix(f"{what}.")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        if key not in hints:
            raise _unknown(f"{what} setting", key, list(hints))
        setattr(obj, key, _coerce(f"{what} {key}", _override_value(item, text, hints[key]), hints[key]))
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (ours or a reference one), then the overrides; validated."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config {path} is a directory, not a YAML file")
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}): is it a YAML file?") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
        except ConfigError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        try:
            from_dict(raw, cfg)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    apply_overrides(cfg, overrides or [])
    validate(cfg)
    return cfg
