"""Scalars as written, before pydantic's lax coercions: the checks every config model shares.

Pydantic (lax) turns ``true`` into 1 for ``train.steps`` and ``1`` into ``True`` for a flag,
and any float field takes ``.inf``/``.nan``, which then fails deep inside training. Here a
number field refuses booleans, a boolean field refuses anything but true/false, and floats
must be finite (except the few fields where ``.inf`` means something, ``loss.dp.mu``).
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, model_validator

from trainables.safe_yaml import short

INF_OK = frozenset({"mu"})  # loss.dp.mu: .inf switches the ResNet term off
SEED_MAX = 2**32 - 1  # numpy's seed range
STEPS_MAX = 10**8


def _scalars(tp: Any) -> set[type]:
    """bool/int/float inside ``X``, ``Optional[X]``, ``tuple[X, X]``, ``Annotated[X, ...]``."""
    if tp in (bool, int, float):
        return {tp}
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType, tuple, typing.Annotated):
        args = typing.get_args(tp)[:1] if origin is typing.Annotated else typing.get_args(tp)
        return set().union(*(_scalars(a) for a in args if a is not Ellipsis))
    return set()


def _check(key: str, value: Any, kinds: set[type]) -> None:
    if isinstance(value, (list, tuple)) and kinds - {bool}:
        for v in value:
            _check(key, v, kinds)
        return
    if value is None:
        return
    if kinds == {bool} and not isinstance(value, bool):
        raise ValueError(f"{key}: {short(value)} is not true or false")
    if bool not in kinds and isinstance(value, bool):
        raise ValueError(f"{key}: {value} is a boolean, a number is expected")
    if isinstance(value, float) and not math.isfinite(value) and key not in INF_OK:
        raise ValueError(f"{key}: {value} is not a finite number")


def check_scalars(model: type, data: Any) -> Any:
    """A ``mode="before"`` model validator's body: ``data`` unchanged, or ValueError naming the key."""
    if not isinstance(data, dict):
        return data
    for name, field in model.model_fields.items():
        key = field.alias or name
        if key in data:
            kinds = _scalars(field.annotation)
            if kinds:
                _check(key, data[key], kinds)
    return data


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _plain_scalars(cls, data: Any) -> Any:  # no bool-as-number, no .inf where it means nothing
        return check_scalars(cls, data)
