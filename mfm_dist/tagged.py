"""Externally tagged enums in the reference's serde shape (docs/events.md#serialized-shapes).

A variant with fields serializes as `{"Tag": {...fields}}` (or nested, e.g.
`{"Kernel": {"StateEntered": {...}}}`); a unit variant is a plain string. Each
variant is a frozen pydantic model that accepts both the tagged JSON form and
plain keyword construction.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    Tag,
    model_serializer,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


def _wrap_in_tags(schema: JsonSchemaValue, path: tuple[str, ...]) -> None:
    """Rewrite a variant's JSON Schema in place into its tagged wire form, so clients in
    any language see `{"FanOutJoin": {"max_concurrency": …}}`, not the inner fields."""
    inner = {k: v for k, v in schema.items() if k not in ("title", "description")}
    keep: dict[str, Any] = {k: schema[k] for k in ("title", "description") if k in schema}
    for tag in reversed(path):
        inner = {
            "type": "object",
            "properties": {tag: inner},
            "required": [tag],
            "additionalProperties": False,
        }
    schema.clear()
    schema.update(keep)
    schema.update(inner)


class TaggedModel(BaseModel):
    """A variant that serializes as `{TAG_PATH[0]: {TAG_PATH[1]: … fields}}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    TAG_PATH: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _untag(cls, data: Any) -> Any:
        for tag in cls.TAG_PATH:
            if isinstance(data, dict) and len(data) == 1 and tag in data:
                data = data[tag]
            else:
                break
        return data

    @model_serializer(mode="wrap")
    def _tag(self, handler: SerializerFunctionWrapHandler) -> Any:
        out: Any = handler(self)
        for tag in reversed(self.TAG_PATH):
            out = {tag: out}
        return out

    @classmethod
    def tag_key(cls) -> str:
        return "/".join(cls.TAG_PATH)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        _wrap_in_tags(handler.resolve_ref_schema(schema), cls.TAG_PATH)
        return schema


class NewtypeVariant(BaseModel):
    """A tuple variant with one value, e.g. `Custom("x")` ↔ `{"Custom": "x"}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    TAG_PATH: ClassVar[tuple[str, ...]] = ()
    value: str

    @model_validator(mode="before")
    @classmethod
    def _untag(cls, data: Any) -> Any:
        tag = cls.TAG_PATH[-1]
        if isinstance(data, dict) and len(data) == 1 and tag in data:
            return {"value": data[tag]}
        return data

    @model_serializer(mode="plain")
    def _tag(self) -> Any:
        return {self.TAG_PATH[-1]: self.value}

    @classmethod
    def tag_key(cls) -> str:
        return "/".join(cls.TAG_PATH)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        target.clear()
        target.update({"title": cls.__name__})
        _wrap_in_tags(target, (*cls.TAG_PATH[-1:],))
        target["properties"][cls.TAG_PATH[-1]] = {"type": "string"}
        return schema


def tag_discriminator(known: set[str]) -> Discriminator:
    """A callable discriminator that reads the tag path of JSON or of a model instance."""

    def pick(value: Any) -> str | None:
        if isinstance(value, (TaggedModel, NewtypeVariant)):
            return value.tag_key()
        if isinstance(value, str):
            return value if value in known else None
        if hasattr(value, "value") and isinstance(value.value, str) and value.value in known:
            return str(value.value)  # enum members of unit variants
        path: list[str] = []
        current = value
        while isinstance(current, dict) and len(current) == 1:
            key = next(iter(current))
            path.append(key)
            joined = "/".join(path)
            if joined in known:
                return joined
            current = current[key]
        return None

    return Discriminator(pick)


__all__ = ["NewtypeVariant", "Tag", "TaggedModel", "tag_discriminator"]


class OptionalExtensions(BaseModel):
    """A model whose `OMIT_WHEN_NONE` fields are left out of its JSON while unset.

    Fields added after the reference shapes (deadlines, timeouts) must not change the
    canonical bytes — and so the ids — of manifests and plans that do not use them."""

    OMIT_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: SerializerFunctionWrapHandler) -> Any:
        out: Any = handler(self)
        if isinstance(out, dict):
            for name in self.OMIT_WHEN_NONE:
                if name in out and out[name] is None:
                    del out[name]
        return out
