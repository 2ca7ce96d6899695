"""Dead letters: every undecodable or invalid input goes to ``<topic>.dlq``.

The dead letter keeps the original bytes and key, the source topic,
partition and offset, the error (reason, field, detail) and a timestamp.
Kafka headers repeat the reason and origin for tools that read only headers.
"""

from __future__ import annotations

import time
from typing import Any

from ops.metrics import Metrics
from schemas.codec import encode
from schemas.errors import SchemaError
from schemas.events import DeadLetter


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
    """Sends dead letters through Faust topics and counts them by reason."""

    def __init__(self, app: Any, metrics: Metrics, worker: str = "") -> None:
        self.app = app
        self.metrics = metrics
        self.worker = worker
        self._topics: dict[str, Any] = {}

    def _topic(self, source: str) -> Any:
        t = self._topics.get(source)
        if t is None:
            t = self._topics[source] = self.app.topic(
                f"{source}.dlq", key_serializer="raw", value_serializer="raw", internal=False
            )
        return t

    async def send(self, error: SchemaError, message: Any) -> None:
        """Dead-letter a Faust ``Message`` (topic, partition, offset, key, value)."""
        dl = dead_letter(
            error,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            value=message.value,
            key=message.key,
            worker=self.worker,
        )
        headers = {
            "dlq.reason": error.reason.encode(),
            "dlq.source": f"{message.topic}/{message.partition}/{message.offset}".encode(),
        }
        await self._topic(message.topic).send(key=message.key, value=encode(dl), headers=headers)
        self.metrics.dlq.labels(topic=message.topic, reason=error.reason).inc()
