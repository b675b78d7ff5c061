"""Mapping (parsed YAML) -> frozen dataclass, with one-line errors naming file and key.

The YAML keys of a suite are exactly the dataclass fields, as in lm-evaluation-harness:
an unknown key or a value of the wrong type is rejected here, before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from optbench.errors import OptbenchError, did_you_mean

_NONE = type(None)


def build(cls: type, value: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from a mapping; `where` is e.g. 'suites/x.yaml: defaults'."""
    if not isinstance(value, dict):
        raise OptbenchError(f"{where}: expected a mapping of keys, got {_kind(value)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, raw in value.items():
        if key not in names:
            raise OptbenchError(
                f"{where}: unknown key '{key}'{did_you_mean(str(key), names)}; "
                f"accepted keys: {', '.join(names)}"
            )
        kwargs[key] = convert(hints[key], raw, f"{where}.{key}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.name not in kwargs
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise OptbenchError(f"{where}: missing required key '{missing[0]}'")
    return cls(**kwargs)


def convert(tp: Any, raw: Any, where: str) -> Any:
    """Check and convert one YAML value to the annotated type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw is None and _NONE in args:
            return None
        inner = [a for a in args if a is not _NONE]
        return convert(inner[0], raw, where) if len(inner) == 1 else raw
    if dataclasses.is_dataclass(tp):
        return build(tp, raw, where)
    if origin is tuple:
        items = raw if isinstance(raw, list) else [raw]
        return tuple(convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(items))
    if origin is dict or tp is dict:
        if not isinstance(raw, dict):
            raise OptbenchError(f"{where}: expected a mapping, got {_kind(raw)}")
        return dict(raw)
    return _scalar(tp, raw, where)


def _scalar(tp: Any, raw: Any, where: str) -> Any:
    if tp is Any:
        return raw
    if tp is bool:
        if isinstance(raw, bool):
            return raw
    elif tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
    elif tp is float:
        number = _as_float(raw)
        if number is not None and math.isfinite(number):
            return number
        if number is not None:
            raise OptbenchError(f"{where}: expected a finite number, got {raw!r}")
    elif tp is str:
        if isinstance(raw, str):
            return raw
    else:
        return raw
    raise OptbenchError(f"{where}: expected {_type_name(tp)}, got {_kind(raw)}")


def _as_float(raw: Any) -> float | None:
    """A number as a float; None for what is not one, or an integer past a float's range."""
    try:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, str):  # YAML 1.1 reads '1e-3' as a string
            return float(raw)
    except (ValueError, OverflowError):
        return None
    return None


def _type_name(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _kind(raw: Any) -> str:
    if raw is None:
        return "nothing (null)"
    if isinstance(raw, (dict, list)):
        return "a mapping" if isinstance(raw, dict) else "a list"
    return f"{type(raw).__name__} {raw!r}"
