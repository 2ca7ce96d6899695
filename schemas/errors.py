"""The one error type that decoders raise."""

from __future__ import annotations


class SchemaError(ValueError):
    """An event that is undecodable or violates its schema.

    ``reason`` is a short machine-friendly category (used as a metrics label),
    ``field`` the JSON path of the offending field when known, and ``detail`` a
    human sentence.

    Examples
    --------
    >>> e = SchemaError("wrong_type", "Expected `int`, got `str`", field="$.qty")
    >>> str(e)
    'wrong_type at $.qty: Expected `int`, got `str`'
    """

    REASONS = (
        "too_large",
        "empty",
        "invalid_utf8",
        "malformed_json",
        "wrong_type",
        "missing_field",
        "constraint",
        "unknown_event_type",
        "invalid",
    )

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        self.reason = reason
        self.detail = detail
        self.field = field
        where = f" at {field}" if field else ""
        super().__init__(f"{reason}{where}: {detail}")
