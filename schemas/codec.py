"""Strict, size-limited JSON codecs built on msgspec.

msgspec was chosen over orjson by ``benchmarks/codec.py``: it decodes *and*
validates in one pass (orjson only parses; validation would be a second walk
in Python). See ``benchmarks/results/codec.json``.

Examples
--------
>>> import msgspec
>>> class P(msgspec.Struct):
...     sku: str
...     qty: int
>>> codec = Codec(P, max_bytes=100)
>>> codec.decode(b'{"sku": "a", "qty": 2}')
P(sku='a', qty=2)
>>> codec.decode(b'{"sku": "a", "qty": "2"}')
Traceback (most recent call last):
...
schemas.errors.SchemaError: wrong_type at $.qty: Expected `int`, got `str`
"""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

import msgspec

from schemas.errors import SchemaError

T = TypeVar("T")

DEFAULT_MAX_BYTES = 64 * 1024

_AT = re.compile(r" - at `(?P<path>[^`]*)`$")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]*)`")

_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    """Encode a record (or builtins) to compact JSON bytes."""
    return _encoder.encode(obj)


def classify(exc: Exception) -> SchemaError:
    """Turn a msgspec/Unicode error into a :class:`SchemaError` with a reason and field."""
    if isinstance(exc, SchemaError):
        return exc
    if isinstance(exc, UnicodeDecodeError):
        return SchemaError("invalid_utf8", f"invalid UTF-8 at byte {exc.start}")
    msg = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        m = _AT.search(msg)
        path = m.group("path") if m else "$"
        text = msg[: m.start()] if m else msg
        miss = _MISSING.search(text)
        if miss:
            return SchemaError("missing_field", text, field=f"{path}.{miss.group('name')}")
        if text.startswith("Invalid value") and (path.endswith(".type") or path.endswith(".kind")):
            return SchemaError("unknown_event_type", text, field=path)
        if text.startswith("Expected `") and ", got `" in text:
            return SchemaError("wrong_type", text, field=path)
        if text.startswith("Expected `"):
            return SchemaError("constraint", text, field=path)
        return SchemaError("invalid", text, field=path)
    if isinstance(exc, msgspec.DecodeError):
        return SchemaError("malformed_json", msg)
    return SchemaError("invalid", f"{type(exc).__name__}: {msg}")


class Codec(Generic[T]):
    """Decode bytes into ``type_`` strictly, and encode records of it.

    The decoder never raises anything but :class:`SchemaError`.
    """

    def __init__(self, type_: Any, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.type = type_
        self.max_bytes = max_bytes
        self._decoder = msgspec.json.Decoder(type_)

    def decode(self, data: bytes | bytearray | memoryview | None) -> T:
        """Decode and validate one message."""
        if data is None or len(data) == 0:
            raise SchemaError("empty", "empty message")
        if len(data) > self.max_bytes:
            raise SchemaError("too_large", f"{len(data)} bytes exceeds the limit of {self.max_bytes}")
        try:
            return self._decode(data)
        except Exception as exc:  # msgspec, UnicodeDecodeError, ...; classified below
            raise self._classify(exc) from None

    def _decode(self, data: bytes | bytearray | memoryview) -> T:
        """Parse and validate (size already checked); subclasses may keep more."""
        value: T = self._decoder.decode(data)
        return value

    def _classify(self, exc: Exception) -> SchemaError:
        return classify(exc)

    @staticmethod
    def encode(obj: Any) -> bytes:
        """Encode a record to JSON bytes."""
        return encode(obj)
