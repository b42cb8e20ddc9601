"""One-line config errors: pydantic's error locations -> the key path a user wrote.

``format_error`` names the key (``loss.dp.resnet_stage``, ``space[2].path``), strips the
discriminated-union tags pydantic adds (``model.generator.rrdbnet.x`` -> ``model.generator.x``)
and says what is allowed. Pure functions over pydantic models: no config imports here.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel

from trainables.safe_yaml import short


def _members(tp: Any) -> list[type[BaseModel]]:
    """The BaseModel classes of an annotation: X, Optional[X], Annotated[Union[X, Y], ...]."""
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for arg in typing.get_args(tp) for m in _members(arg)]
    return []


def unwrap_model(tp: Any) -> Any:
    """Optional[Model] / Union[...] -> the first BaseModel class inside, if any."""
    return next(iter(_members(tp)), None)


def loc_str(loc: tuple) -> str:
    """('space', 2, 'path') -> 'space[2].path' (the key path an error names)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def arch_tag(model: type[BaseModel]) -> Any:
    """The ``arch`` default of a model (its discriminated-union tag), or None."""
    field = model.model_fields.get("arch")
    return field.default if field is not None else None


def _walk(root: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, tuple]:
    """The model at ``loc`` (fields by name or alias, through Optional, unions, lists and
    dicts) and ``loc`` without discriminated-union tags (pydantic puts the chosen ``arch``
    into error locations: model.generator.rrdbnet.x -> model.generator.x)."""
    tp: Any = root
    out = []
    for part in loc:
        members = _members(tp)
        tagged = [m for m in members if arch_tag(m) == part]
        if len(members) > 1 and tagged:
            tp = tagged[0]
            continue
        out.append(part)
        if members:
            fields = {f.alias or n: f for n, f in members[0].model_fields.items()}
            tp = fields[part].annotation if part in fields else None
        elif typing.get_origin(tp) in (list, tuple, dict):
            tp = typing.get_args(tp)[-1]
        else:
            tp = None
    return unwrap_model(tp), tuple(out)


def format_error(root: type[BaseModel], err: dict) -> str:
    _, loc = _walk(root, tuple(err["loc"]))
    path = loc_str(loc) or "<top level>"
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent, _ = _walk(root, tuple(err["loc"])[:-1])
        allowed = ", ".join(f.alias or n for n, f in parent.model_fields.items()) if parent else "?"
        return f"{path}: unknown key (allowed: {allowed})"
    if kind == "union_tag_invalid":
        return (
            f"{path}.{ctx.get('discriminator', '').strip(chr(39))}: {ctx.get('tag')!r} is not one of "
            f"{ctx.get('expected_tags')}"
        )
    if kind == "literal_error":
        expected = str(ctx.get("expected", "")).replace(" or ", ", ")
        return f"{path}: {short(value)} is not one of {expected}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "value_error":  # our validators; "field: ..." names a key inside loc
        msg = str(ctx.get("error", err["msg"]))
        head, sep, rest = msg.partition(": ")
        if sep and " " not in head:
            return f"{loc_str((*loc, head))}: {rest}"
        return f"{path}: {msg}"
    return f"{path}: {err['msg'][0].lower() + err['msg'][1:]} (got {short(value)})"
