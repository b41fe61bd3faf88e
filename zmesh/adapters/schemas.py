"""Argument types for the adapters, built from the op table: a tool or endpoint argument that
is a protocol field gets that field's kind, range, length, choices and description, so a
limit is written once (zmesh/protocol/fields.py) and the MCP tool schemas and the gateway's OpenAPI
schema follow it.

Rule: a string or list argument runs the field kind's own validator, so a refusal names the
argument as the caller wrote it (``session_id``, not the wire's ``agent``). The client still
checks every value before it is sent, and the broker checks it again.
"""

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema
from pydantic import Field as PydField

from .. import protocol
from ..protocol import times
from ..errors import ZmeshError
from ..protocol.fields import MAX_ID_BYTES, MAX_LIST_ITEMS, MAX_NAME_CHARS, MAX_TEXT_CHARS, Field
from ..protocol.globs import MAX_PATTERN_BYTES


def _checked(kind: str) -> AfterValidator:
    """The field kind's own validator (control characters, UTF-8 length, glob rules,
    duplicates dropped), so a refusal names the argument as the caller wrote it."""
    check = protocol.KINDS[kind]

    def run(value: Any) -> Any:
        try:
            return check("value", value)
        except ZmeshError as exc:
            raise ValueError(exc.message.replace("field 'value': ", "").replace("field 'value' ", "")) from None
    return AfterValidator(run)


def _json_type(f: Field) -> Any:
    kind = f.kind
    if kind in ("id", "after"):
        return Annotated[str, PydField(min_length=1, max_length=MAX_ID_BYTES), _checked(kind)]
    if kind in ("name", "topic"):
        return Annotated[str, PydField(min_length=1, max_length=MAX_NAME_CHARS), _checked(kind)]
    if kind == "text":
        return Annotated[str, PydField(max_length=MAX_TEXT_CHARS), _checked(kind)]
    if kind == "glob":
        return Annotated[str, PydField(min_length=1, max_length=MAX_PATTERN_BYTES), _checked(kind)]
    if kind in ("namelist", "idlist", "globlist"):
        return Annotated[list[str], PydField(max_length=MAX_LIST_ITEMS), _checked(kind)]
    if kind == "int":
        return Annotated[int, PydField(ge=f.lo, le=f.hi)]
    if kind in ("ttl", "number"):
        return Annotated[float, PydField(ge=f.lo, le=f.hi, allow_inf_nan=False)]
    if kind == "choice":
        return Literal[f.choices]  # type: ignore[valid-type]
    if kind == "bool":
        return bool
    if kind == "object":
        return dict[str, Any]
    return Any  # json, payload: any JSON value (the broker checks the size)


def field_arg(op: str, name: str, doc: str | None = None) -> Any:
    """The type of a tool argument that is the field ``name`` of ``op``: the field's kind,
    range and choices, and its doc as the description (``doc`` overrides it)."""
    f = protocol.OPS[op].by_name[name]
    base = _json_type(f)
    optional = not f.required and f.default is None  # a field with a default takes it, never null
    return Annotated[Optional[base] if optional else base,  # type: ignore[valid-type]
                     PydField(description=doc or f.doc or protocol.KIND_RULES.get(f.kind, ""))]


def _to_seconds(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return times.parse_time("value", value)
    except ZmeshError as exc:
        raise ValueError(exc.message.replace("field 'value' ", "")) from None


def time_arg(doc: str) -> Any:
    """An optional wall-clock time: Unix seconds or an ISO 8601 string (no zone: UTC), read
    by zmesh/protocol/times.py into Unix seconds."""
    return Annotated[Optional[float], BeforeValidator(_to_seconds),
                     WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0, "maximum": times.MAX_TIME_S},
                                               {"type": "string", "format": "date-time", "maxLength": 64},
                                               {"type": "null"}]}),
                     PydField(description=f"{doc} ({times.TIME_RULE})")]


def handle_arg(doc: str) -> Any:
    """An optional handle of an earlier answer (zmesh/adapters/grants.py): an id by the id rule."""
    return Annotated[Optional[Annotated[str, PydField(min_length=1, max_length=MAX_ID_BYTES), _checked("id")]],
                     PydField(description=doc)]
