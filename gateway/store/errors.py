"""Errors the audit store raises on purpose (all derive from :class:`gateway.errors.GatewayError`)."""

from __future__ import annotations

from gateway.errors import GatewayError, quoted


class StoreError(GatewayError):
    """Base class of the audit store's own errors."""


class SearchError(StoreError):
    """A search the store cannot run: unknown parameter or modifier, malformed value.

    ``param`` names the query parameter (as the client wrote it); the message never repeats the
    value, which may be protected health information. The API answers 400 with an OperationOutcome.
    """

    code = "invalid"   # the OperationOutcome issue type

    def __init__(self, param: str, message: str, *, code: str | None = None) -> None:
        self.param = param
        self.message = message
        if code is not None:
            self.code = code
        super().__init__(f"search parameter {quoted(param)}: {message}")


class UnknownRecordError(StoreError, LookupError):
    """``record_sent`` or ``record_answer`` for an id that was never recorded."""

    def __init__(self, record_id: str) -> None:
        self.record_id = record_id
        super().__init__(f"no eligibility transaction with id {quoted(record_id)}")


class DuplicateRecordError(StoreError):
    """``record_request`` for an id that is already stored."""

    def __init__(self, record_id: str) -> None:
        self.record_id = record_id
        super().__init__(f"an eligibility transaction with id {quoted(record_id)} is already stored")


class RecordStateError(StoreError):
    """``record_sent`` for a transaction that is no longer waiting to be sent (the client cancelled it)."""

    def __init__(self, record_id: str, status: str) -> None:
        self.record_id = record_id
        self.status = status
        super().__init__(f"eligibility transaction {quoted(record_id)} is {status}, not waiting to be sent")


class ConditionTakenError(StoreError):
    """``record_request`` under an If-None-Exist condition another request was just created under."""

    def __init__(self, condition: str) -> None:
        self.condition = condition
        super().__init__("a request was already created under this If-None-Exist condition")
