"""Dead letters: every undecodable or invalid input goes to ``<topic>.dlq``.

The dead letter keeps the original bytes and key, the source topic,
partition and offset, the error (reason, field, detail) and a timestamp.
Kafka headers repeat the reason and origin for tools that read only headers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from ops.metrics import Metrics
from schemas.codec import encode
from schemas.errors import SchemaError
from schemas.events import DeadLetter
from schemas.topics import dlq_name

#: Hands one message to the producer: (topic, key, value, headers) -> delivery future.
Publish = Callable[[str, bytes | None, bytes, list[tuple[str, bytes]] | None], Awaitable[Any]]


def dead_letter(
    error: SchemaError,
    *,
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    key: bytes | None,
    worker: str = "",
    now: float | None = None,
) -> DeadLetter:
    """Build the dead-letter record for a rejected message.

    Examples
    --------
    >>> dl = dead_letter(SchemaError("malformed_json", "truncated"), topic="t", partition=1,
    ...                  offset=7, value=b'{"a', key=b"u1", now=1.0)
    >>> (dl.source_topic, dl.partition, dl.offset, dl.reason, dl.original)
    ('t', 1, 7, 'malformed_json', b'{"a')
    """
    return DeadLetter(
        source_topic=topic,
        partition=partition,
        offset=offset,
        reason=error.reason,
        error=str(error),
        field=error.field,
        original=bytes(value or b""),
        key=key,
        ts=time.time() if now is None else now,
        worker=worker,
    )


class DeadLetterSink:
    """Sends dead letters to ``<topic>.dlq`` and counts them by reason."""

    def __init__(self, publish: Publish, metrics: Metrics, worker: str = "") -> None:
        self.publish = publish
        self.metrics = metrics
        self.worker = worker

    async def decode(self, codec: Any, message: Any) -> Any:
        """``codec.decode`` of the message's value, or None after dead-lettering it."""
        try:
            return codec.decode(message.value)
        except SchemaError as err:
            await self.send(err, message)
            return None

    async def decode_shared(self, codec: Any, message: Any, dead_letters: bool) -> Any:
        """Decode for one of several agents that read one topic: only the one that
        ``dead_letters`` sends a bad message to the dead-letter topic, so it lands there once;
        the others skip it (None)."""
        if dead_letters:
            return await self.decode(codec, message)
        try:
            return codec.decode(message.value)
        except SchemaError:
            return None

    async def send(self, error: SchemaError, message: Any) -> Any:
        """Dead-letter a Faust ``Message``; return the delivery future to await."""
        dl = dead_letter(
            error,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            value=message.value,
            key=message.key,
            worker=self.worker,
        )
        headers = [
            ("dlq.reason", error.reason.encode()),
            ("dlq.source", f"{message.topic}/{message.partition}/{message.offset}".encode()),
        ]
        delivery = await self.publish(dlq_name(message.topic), message.key, encode(dl), headers)
        self.metrics.dlq.labels(topic=message.topic, reason=error.reason).inc()
        return delivery
