"""Identifiers (docs/ids.md): validated on construction and on deserialization.

Each id is a `str` subclass, so it is cheap to pass around and serializes as a
plain JSON string, while `StateId("bad")` and pydantic decoding both reject bad
values with `invalid <kind>: <value>`.
"""

from __future__ import annotations

import re
import uuid
from typing import Any, ClassVar

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

from mfm_dist.errors import InvalidId

SEGMENT_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_segment(text: str) -> bool:
    return bool(SEGMENT_RE.match(text)) and text.isascii()


_VALID_CACHE_SIZE = 1 << 16


class _ValidatedStr(str):
    """A string validated by `_check`; pydantic validates it the same way.

    Ids that passed are remembered per class (a bounded map, each id the key to itself): a
    run's log repeats the same run id and state ids in every envelope, and decoding 100,000
    states' events would otherwise re-check — and re-make — each of them several times.
    Decoding hands out the remembered object (ids are immutable), which also leaves one
    copy of each in memory."""

    kind: ClassVar[str] = "id"
    _valid: ClassVar[dict[str, _ValidatedStr]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._valid = {}

    def __new__(cls, value: object) -> _ValidatedStr:
        if isinstance(value, cls):
            return value
        if type(value) is str:
            hit = cls._valid.get(value)
            if hit is not None:
                return hit
        if not isinstance(value, str) or not cls._check(value):
            raise InvalidId(cls.kind, value)
        made = super().__new__(cls, value)
        if type(value) is str:
            valid = cls._valid
            if len(valid) >= _VALID_CACHE_SIZE:
                valid.clear()
            valid[made] = made  # keyed by itself: a plain str of equal text finds it
        return made

    @classmethod
    def _check(cls, value: str) -> bool:
        raise NotImplementedError

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        valid = cls._valid

        def validate(value: Any) -> _ValidatedStr:
            if type(value) is str:
                hit = valid.get(value)
                if hit is not None:
                    return hit
            try:
                return cls(value)
            except InvalidId as exc:
                raise ValueError(exc.info.message) from None

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                str, return_schema=core_schema.str_schema()
            ),
            json_schema_input_schema=core_schema.str_schema(),
        )


class OpId(_ValidatedStr):
    """One segment: `^[a-z][a-z0-9_]{0,62}$`."""

    kind = "op id"

    @classmethod
    def _check(cls, value: str) -> bool:
        return is_segment(value)


class ErrorCode(OpId):
    kind = "error code"


class MachineId(OpId):
    kind = "machine id"


class StepId(OpId):
    kind = "step id"


class StateId(_ValidatedStr):
    """Exactly three segments: `<machine_id>.<step_id>.<state_local_id>`."""

    kind = "state id"

    @classmethod
    def _check(cls, value: str) -> bool:
        parts = value.split(".")
        return len(parts) == 3 and all(is_segment(p) for p in parts)

    @property
    def local_id(self) -> str:
        return self.rsplit(".", 1)[1]


class OpPath(_ValidatedStr):
    """`<machine_id>.<step_id>` optionally followed by more segments."""

    kind = "op path"

    @classmethod
    def _check(cls, value: str) -> bool:
        parts = value.split(".")
        return len(parts) >= 2 and all(is_segment(p) for p in parts)

    def state_id(self, local_id: str) -> StateId:
        return StateId(f"{self}.{local_id}")


class RunId(_ValidatedStr):
    """A UUID as the lowercase hyphenated string (v4 when minted)."""

    kind = "run id"

    @classmethod
    def _check(cls, value: str) -> bool:
        return bool(_UUID_RE.match(value))

    @classmethod
    def mint(cls) -> RunId:
        return cls(str(uuid.uuid4()))


class ArtifactId(_ValidatedStr):
    """Exactly 64 lowercase hex characters: a SHA-256 digest."""

    kind = "artifact id"

    @classmethod
    def _check(cls, value: str) -> bool:
        return bool(_HEX64_RE.match(value))


# Free strings (subject to the secrets policy when persisted).
FactKey = str
ContextKey = str
Tag = str

STANDARD_TAGS: tuple[str, ...] = (
    "config",
    "fetch_data",
    "compute",
    "execute",
    "report",
    "apply_side_effect",
    "impure",
)
