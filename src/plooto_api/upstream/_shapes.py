"""Drift detection: check a portal JSON value against the shape `portal.py` declares for it.

A shape is data: field name → spec. A spec is a type name (`str`, `int`, `bool`, `number`,
`date`, `ts`, `dict`, `list`, `any`), with a trailing `?` when the value may be null, a nested
`Shape`, or `ListOf(spec)`. A field name ending in `?` may be absent altogether.
Missing fields and wrong types are drift (the adapter cannot be trusted with the object);
unexpected new fields are reported alongside but alone do not fail (portals add fields).

Every record of every page is checked, so the common case (an exact match) is tested in C: each
shape is also compiled to a msgspec type and the value converted to it. Only a value that fails
that test is walked in Python, to say what differed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Union

import msgspec

from plooto_api.upstream._errors import UpstreamChanged

Spec = Union[str, "Shape", "ListOf"]

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True)
class Shape:
    """The expected JSON object of one portal type (`name` is the portal's type name)."""

    name: str
    fields: Mapping[str, Spec]


@dataclass(frozen=True)
class ListOf:
    """A JSON array whose items all match `item`."""

    item: Spec


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "any":
        return True
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, Decimal | int) and not isinstance(value, bool)
    if kind == "date":
        return isinstance(value, str) and bool(_DATE.match(value))
    if kind == "ts":
        return isinstance(value, str) and bool(_TIMESTAMP.match(value))
    if kind == "dict":
        return isinstance(value, dict)
    if kind == "list":
        return isinstance(value, list)
    raise ValueError(f"unknown spec type {kind!r}")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Decimal | int):
        return "number"
    return type(value).__name__


# A spec compiled once: names and `?` suffixes parsed, known field names gathered. Both the fast
# conformance test and the checker that describes differences walk this form.
@dataclass(frozen=True)
class _Type:
    kind: str
    nullable: bool


@dataclass(frozen=True)
class _List:
    item: _Node


@dataclass(frozen=True)
class _Object:
    fields: tuple[tuple[str, bool, _Node], ...]  # (name, optional, spec)
    known: frozenset[str]
    exact: Any  # the msgspec type a value converts to when it matches exactly, extra fields refused


_Node = _Type | _List | _Object
_COMPILED: dict[int, tuple[Shape, _Object]] = {}  # by id, holding the shape so the id stays its own


def _compile_shape(shape: Shape) -> _Object:
    cached = _COMPILED.get(id(shape))
    if cached is not None and cached[0] is shape:
        return cached[1]
    fields = tuple(
        (declared.rstrip("?"), declared.endswith("?"), _compile(item))
        for declared, item in shape.fields.items()
    )
    node = _Object(fields, frozenset(name for name, _, _ in fields), _exact_struct(shape.name, fields))
    _COMPILED[id(shape)] = (shape, node)
    return node


def _compile(spec: Spec) -> _Node:
    if isinstance(spec, Shape):
        return _compile_shape(spec)
    if isinstance(spec, ListOf):
        return _List(_compile(spec.item))
    return _Type(spec.rstrip("?"), spec.endswith("?"))


# The msgspec form of each type name. Decimal is passed as a builtin type, so a `number` accepts
# the Decimal and int that loads() produces and refuses a numeric string, as _type_ok does.
_EXACT_TYPES: dict[str, Any] = {
    "any": Any,
    "str": str,
    "bool": bool,
    "int": int,
    "number": Decimal | int,
    "date": Annotated[str, msgspec.Meta(pattern=_DATE.pattern)],
    "ts": Annotated[str, msgspec.Meta(pattern=_TIMESTAMP.pattern)],
    "dict": dict[str, Any],
    "list": list[Any],
}


def _exact_type(node: _Node) -> Any:
    if isinstance(node, _Object):
        return node.exact
    if isinstance(node, _List):
        return list[_exact_type(node.item)]  # type: ignore[misc]
    if node.kind not in _EXACT_TYPES:
        raise ValueError(f"unknown spec type {node.kind!r}")
    exact = _EXACT_TYPES[node.kind]
    return exact | None if node.nullable else exact


def _exact_struct(name: str, fields: tuple[tuple[str, bool, _Node], ...]) -> Any:
    # Attributes are named f0, f1, ... and renamed to the portal's names, which need not be identifiers.
    attributes: list[Any] = []
    for index, (_, optional, item) in enumerate(fields):
        exact = _exact_type(item)
        if optional:
            attributes.append((f"f{index}", exact | msgspec.UnsetType, msgspec.UNSET))
        else:
            attributes.append((f"f{index}", exact))
    rename = {f"f{index}": field_name for index, (field_name, _, _) in enumerate(fields)}
    return msgspec.defstruct(name, attributes, kw_only=True, forbid_unknown_fields=True, rename=rename)


def _conforms(node: _Object, value: Any) -> bool:
    """Whether `value` matches exactly (no drift and no extra field): the common case, checked
    without building the messages `differences` gives when it does not."""
    try:
        msgspec.convert(value, node.exact, builtin_types=(Decimal,))
    except msgspec.ValidationError:
        return False
    return True


class _Checker:
    def __init__(self) -> None:
        self.fatal: list[str] = []
        self.extra: list[str] = []

    def add(self, bucket: list[str], text: str) -> None:
        if text not in bucket:
            bucket.append(text)

    def check(self, node: _Node, value: Any, where: str) -> None:
        if isinstance(node, _Object):
            if not isinstance(value, dict):
                self.add(self.fatal, f"{where}: expected object, got {_describe(value)}")
                return
            self.check_object(node, value, where)
        elif isinstance(node, _List):
            if not isinstance(value, list):
                self.add(self.fatal, f"{where}: expected list, got {_describe(value)}")
                return
            for item in value:
                self.check(node.item, item, f"{where}[]")
        else:
            if value is None:
                if not node.nullable and node.kind != "any":
                    self.add(self.fatal, f"{where}: expected {node.kind}, got null")
                return
            if not _type_ok(node.kind, value):
                self.add(self.fatal, f"{where}: expected {node.kind}, got {_describe(value)}")

    def check_object(self, node: _Object, value: dict[str, Any], where: str) -> None:
        for name, optional, item in node.fields:
            if name not in value:
                if not optional:
                    self.add(self.fatal, f"{where}: missing field '{name}'")
                continue
            self.check(item, value[name], f"{where}.{name}")
        for name in value:
            if name not in node.known:
                self.add(self.extra, f"{where}: unexpected field '{name}'")


def differences(shape: Shape, value: Any) -> tuple[list[str], list[str]]:
    """(fatal differences, unexpected extra fields) of `value` against `shape`."""
    checker = _Checker()
    checker.check(_compile_shape(shape), value, shape.name)
    return checker.fatal, checker.extra


def check_shape(shape: Shape, value: Any, *, object_type: str) -> list[str]:
    """Raise UpstreamChanged when `value` drifted from `shape`; return the harmless extras."""
    if _conforms(_compile_shape(shape), value):
        return []
    fatal, extra = differences(shape, value)
    if fatal:
        raise UpstreamChanged(object_type, fatal + extra, portal_type=shape.name)
    return extra
