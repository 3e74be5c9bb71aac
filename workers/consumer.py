"""The worker's message consumer, with one change: a message it cannot decode (a pickled or
otherwise disallowed body, broken JSON, an invalid envelope) gets a structured reply instead
of a silent drop.

Celery's stock consumer logs such a message — headers and body included — with a
traceback and acks it; the caller then waits forever. Here the body is never decoded or
logged: the reply `{"error": {"code": "submission_content_disallowed", ...}}` is stored as
the task's result under the id from the message headers (so `AsyncResult.get()` returns
it), one WARNING line names the code, and the rejection is counted (docs: submission).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

from mfm_dist.errors import ErrorCategory, ErrorInfo
from mfm_dist.submission import SubmitReply

log = logging.getLogger("mfm.consumer")

CONTENT_DISALLOWED = "submission_content_disallowed"


def undecodable_reply(content_type: str | None) -> dict[str, Any]:
    info = ErrorInfo(
        code=CONTENT_DISALLOWED,
        category=ErrorCategory.PARSING_INPUT,
        retryable=False,
        message=f"messages must be JSON (application/json); got {content_type or 'unknown'}",
    )
    return SubmitReply.failed(info).to_json()


class MfmConsumer(Consumer):  # type: ignore[misc]
    """Refuses undecodable or invalid messages with a structured reply and one log line —
    never the stock ERROR with the message's headers and body (which may hold a secret)."""

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._refuse(message)
        message.ack()

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._refuse(message)
        message.reject_log_error(log, self.connection_errors)

    def _refuse(self, message: Any) -> None:
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = headers.get("id")
        content_type = str(message.content_type or "")[:100]
        log.warning(
            "message %s refused: %s (%s)", task_id or "-", CONTENT_DISALLOWED, content_type
        )
        try:
            if isinstance(task_id, str) and task_id:
                self.app.backend.store_result(task_id, undecodable_reply(content_type), "SUCCESS")
            from workers.runtime import get_runtime
            from workers.submission_log import record

            record(get_runtime().redis, [], [(CONTENT_DISALLOWED, task_id)])
        except Exception as err:  # the reply is best effort; the message is dropped anyway
            log.warning("could not store the refusal of %s (%s)", task_id, type(err).__name__)
