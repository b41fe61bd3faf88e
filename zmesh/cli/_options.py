"""Click parameter types and options built from the protocol's own rules and limits, so an
option accepts exactly what the wire accepts and says so in one line naming the option.

Rules: an option that becomes a request field is made with :func:`field_option` from that
field (kind, range, doc): the CLI never keeps a second copy of a limit. Numbers must be
finite; integers must fit the field's range (so nothing beyond 64 bits reaches the
encoder); ids follow the id rule (non-empty, at most MAX_ID_BYTES of UTF-8, no control
characters); JSON values may be given inline, as ``@FILE`` or as ``-`` (standard input)
and are bounded by the message limit.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
import time
from typing import Any, Callable

import click
import orjson

from .. import protocol
from ..protocol import times
from ..protocol.fields import escape_controls
from ..transport.endpoint import check_endpoint
from ..errors import UsageError, ZmeshError


def load_extra(module: str, extra: str, command: str) -> Any:
    """The module of a command that needs an optional dependency (``zmesh[EXTRA]``); without
    it, a usage error that says what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] == "zmesh":  # ours, not the extra's: a bug, never "install it"
            raise
        raise UsageError(f"zmesh {command} needs the extra '{extra}' ({exc.name} is not installed): "
                         f"pip install 'zmesh[{extra}]'", {"field": command}) from None


class IdType(click.ParamType):
    """A string option checked by its protocol field kind (id, name, after, text, topic)."""

    name = "ID"
    _NAMES = {"id": "ID", "after": "ID", "name": "NAME", "text": "TEXT", "topic": "TOPIC", "glob": "PATTERN"}

    def __init__(self, kind: str = "id") -> None:
        self.kind = kind
        self.name = self._NAMES[kind]

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return protocol.KINDS[self.kind]("value", value)
        except ZmeshError as exc:
            self.fail(exc.message.replace("field 'value': ", "").replace("field 'value' ", ""), param, ctx)


class Seconds(click.ParamType):
    """A finite number of seconds within [lo, hi] (click.FloatRange lets nan through)."""

    name = "SECONDS"

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(number) or not self.lo <= number <= self.hi:
            self.fail(f"{value!r} is not a finite number of seconds in "
                      f"{protocol.number_text(self.lo)}..{protocol.number_text(self.hi)}", param, ctx)
        return number


class Number(Seconds):
    """A finite number within [lo, hi] (a cost, a share): as Seconds, named NUMBER."""

    name = "NUMBER"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or not self.lo <= number <= self.hi:
            self.fail(f"{value!r} is not a finite number in "
                      f"{protocol.number_text(self.lo)}..{protocol.number_text(self.hi)}", param, ctx)
        return number


class JsonValue(click.ParamType):
    """A JSON value: inline, ``@FILE`` or ``-`` (stdin); at most MAX_MESSAGE_BYTES."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        limit = protocol.MAX_MESSAGE_BYTES
        if value == "-":
            raw = sys.stdin.buffer.read(limit + 1)
            where = "standard input"
        elif value.startswith("@"):
            where = value[1:]
            try:
                with open(where, "rb") as fh:
                    raw = fh.read(limit + 1)
            except OSError as exc:
                self.fail(f"cannot read {where}: {exc.strerror}", param, ctx)
        else:
            raw, where = value.encode("utf-8", "surrogateescape"), ""
        if len(raw) > limit:
            self.fail(f"{'JSON from ' + where if where else 'JSON'} is larger than the "
                      f"{limit}-byte message limit", param, ctx)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.fail(f"not valid JSON{' in ' + where if where else ''}: {exc}", param, ctx)


class EndpointType(click.ParamType):
    name = "ENDPOINT"

    def __init__(self, bind: bool = False) -> None:
        self.bind = bind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        field = "ZMESH_BROKER" if ctx is not None and param is not None and param.name and \
            ctx.get_parameter_source(param.name) == click.core.ParameterSource.ENVIRONMENT else "endpoint"
        try:
            return check_endpoint(value, field=field, bind=self.bind)
        except ZmeshError as exc:
            self.fail(exc.message, param, ctx)


class _IntRange(click.IntRange):
    """click's IntRange, saying "not an integer" of a value that is not one (click said
    "'nan' is not a valid integer range")."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text.lstrip("+-").isdigit():
                self.fail(f"{escape_controls(text)[:40]!r} is not an integer", param, ctx)
        return super().convert(value, param, ctx)


def _int_range(field: protocol.Field) -> click.IntRange:
    return _IntRange(None if field.lo is None else int(field.lo),
                     None if field.hi is None else int(field.hi))


def field_type(field: protocol.Field) -> click.ParamType:
    """The click type that accepts what ``field`` accepts on the wire."""
    if field.kind == "int":
        return _int_range(field)
    if field.kind == "ttl":
        return Seconds(field.lo or 0.0, field.hi or protocol.MAX_TTL_S)
    if field.kind == "number":
        return Number(field.lo if field.lo is not None else -protocol.MAX_COST,
                      field.hi if field.hi is not None else protocol.MAX_COST)
    if field.kind == "choice":
        return click.Choice(field.choices)
    if field.kind == "bool":
        return click.BOOL
    if field.kind in ("id", "name", "after", "text"):
        return IdType(field.kind)
    if field.kind in ("idlist", "namelist"):
        return IdType("id" if field.kind == "idlist" else "name")
    if field.kind == "status":
        return click.Choice(protocol.STATUSES)
    if field.kind in ("json", "payload", "object"):
        return JsonValue()
    if field.kind == "topic":
        return IdType("topic")
    if field.kind in ("glob", "globlist"):
        return IdType("glob")
    raise AssertionError(f"no click type for field kind {field.kind}")  # pragma: no cover


def field_option(op: str, field: str, *decls: str, help: str | None = None,
                 **kw: Any) -> Callable[[Any], Any]:
    """``@click.option`` for the wire field ``op.field``: its type, range and doc."""
    spec = protocol.OPS[op].by_name[field]
    if spec.kind in ("idlist", "namelist", "globlist"):
        kw.setdefault("multiple", True)
    if spec.required and "default" not in kw:
        kw.setdefault("required", True)
    if spec.kind == "int":
        kw.setdefault("metavar", spec.name.upper())
    text = help or (spec.doc[:1].upper() + spec.doc[1:] + "." if spec.doc else None)
    return click.option(*(decls or ("--" + field.replace("_", "-"),)), type=field_type(spec),
                        help=text, **kw)


def field_argument(op: str, field: str, name: str) -> Callable[[Any], Any]:
    spec = protocol.OPS[op].by_name[field]
    return click.argument(name, type=field_type(spec))


class Since(click.ParamType):
    """``--since``: a message number (``12``), a duration ago (``90s``, ``10m``, ``2h``, ``1d``)
    or an ISO 8601 time (no zone: local time); converts to (since number, since time or None)."""

    name = "SEQ|TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        if text.isascii() and text.isdigit() and len(text) <= 16:
            return int(text), None
        return 0, _time(self, text, param, ctx, "a message number, a duration (90s, 10m, 2h, 1d)")


class SinceTime(click.ParamType):
    """``--since`` of a time only: a duration ago (``90s``, ``10m``, ``2h``, ``7d``) or an ISO
    8601 time (no zone: local time); converts to Unix seconds."""

    name = "DURATION|TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, float):
            return value
        return _time(self, str(value), param, ctx, "a duration (90s, 10m, 2h, 7d)")


def _time(kind: click.ParamType, text: str, param: click.Parameter | None, ctx: click.Context | None,
          other: str) -> float:
    """A duration ago or an ISO 8601 time typed by a person (zmesh/protocol/times.py reads both)."""
    ago = times.duration_ago(text, time.time())
    if ago is not None:
        return ago
    shown = repr(escape_controls(text.strip())[:40])
    try:
        return times.iso_seconds(text, naive_utc=False)
    except times.TimeError as exc:
        kind.fail(f"{shown} is not {other} or an ISO 8601 time" if exc.unreadable else str(exc), param, ctx)


class Pattern(click.ParamType):
    """A regular expression (compiled here: a bad one is a usage error naming the option)."""

    name = "REGEX"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, re.Pattern):
            return value
        try:
            return re.compile(value)
        except (re.error, OverflowError, RecursionError) as exc:
            self.fail(f"{escape_controls(str(value))[:40]!r} is not a regular expression: {exc}", param, ctx)


class MeshName(click.ParamType):
    """A mesh name (zmesh/discovery/mesh.py's rule), checked where it enters."""

    name = "MESH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from ..discovery.mesh import RULE, check_mesh

        try:
            return check_mesh(value)
        except ZmeshError:
            self.fail(f"{escape_controls(str(value))[:70]!r} is not a mesh name: must be {RULE}", param, ctx)
