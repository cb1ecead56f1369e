"""The config loader: YAML files plus dotted `key=value` overrides, validated against dataclasses.

An unknown key or a value of the wrong type stops with a one-line `ConfigError` naming it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import UserError


class ConfigError(UserError):
    """A config file or override that does not fit the schema."""


@dataclass(frozen=True)
class Range:
    """Bounds a numeric config value must lie in (None: unbounded), declared next to its field."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return not (
            (self.ge is not None and value < self.ge) or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le) or (self.lt is not None and value >= self.lt)
        )

    def __str__(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
        return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"


def ranged(default: Any, **bounds: float) -> Any:
    """A dataclass field whose loaded value must lie in Range(**bounds) (checked by the loader)."""
    return field(default=default, metadata={"range": Range(**bounds)})


PROBABILITY = {"ge": 0.0, "le": 1.0}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(map(repr, typing.get_args(tp)))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _check_range(f: dataclasses.Field, tp: Any, value: Any, key: str) -> None:
    """A number outside the Range declared in the field's metadata stops with a one-line ConfigError."""
    bounds = f.metadata.get("range")
    if bounds is None or not isinstance(value, (int, float)) or isinstance(value, bool) or bounds.holds(value):
        return
    words = [_type_name(a) for a in typing.get_args(tp) if typing.get_origin(a) is Literal]  # epochs: auto
    raise ConfigError(f"config key {key!r} must be {' or '.join([str(bounds), *words])}, got {value!r}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert, e.g. '1e-3' -> float) a value against a type hint."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = {}
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors[arg] = e
        # a mapping or list that failed inside its own schema: that error names the bad key
        for arg, err in errors.items():
            if (dataclasses.is_dataclass(arg) and isinstance(value, dict)) or (
                typing.get_origin(arg) is list and isinstance(value, (list, tuple))):
                raise err
        raise ConfigError(f"config key {key!r}: {value!r} is not a {' or '.join(map(_type_name, args))}")
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ConfigError(f"config key {key!r} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping of {sorted(f.name for f in dataclasses.fields(tp))}")
        return _build(tp, value, key + ".")
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, key) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(f"config key {key!r}: {value!r} is not a {_type_name(tp)}")


def _build(cls: type, values: dict, prefix: str = "", base: Any = None) -> Any:
    """`cls` from `values`; keys not given keep `base`'s values (else the field defaults). A nested
    section starts from its field's default, so FinetuneConfig's recipe survives `train.lr=...`."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix + unknown[0]!r}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for k, v in values.items():
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict):
            default = getattr(base, k) if base is not None else _field_default(fields[k])
            kwargs[k] = _build(hints[k], v, f"{prefix}{k}.", default)
        else:
            kwargs[k] = _coerce(v, hints[k], prefix + k)
            _check_range(fields[k], hints[k], kwargs[k], prefix + k)
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=5)")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _set_nested(tree: dict, path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = tree.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(path)!r}: {part!r} is not a section")
        tree = node
    tree[path[-1]] = value


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] = ()) -> Any:
    """Schema `cls` filled from a YAML file then `key=value` overrides (dotted keys)."""
    tree: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for item in overrides:
        key, value = parse_override(item)
        _set_nested(tree, key, value)
    return _build(cls, tree)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
