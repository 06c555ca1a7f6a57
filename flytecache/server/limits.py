"""What one request may hold: its share of the process's request-body memory, its body deadline.

``--max-request-bytes`` bounds one request; without a bound on the sum, 30 concurrent 15.5 MiB
puts all succeeded with a peak RSS of 823 MB. :class:`BodyBudget` is that sum: every request
charges the bytes it holds (its body as it arrives, then the inflated body if it was compressed)
and gives them back when answered; a charge past the budget fails with RESOURCE_EXHAUSTED and a
retry hint, so an excess request is answered, never buffered.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

from connectrpc.code import Code
from connectrpc.errors import ConnectError

__all__ = ["BodyBudget", "RequestLedger", "current_ledger"]


class BodyBudget:
    """Bytes of request bodies held by one process at once, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self.refused = 0

    def ledger(self) -> RequestLedger:
        """A new request's account (charge it; ``release()`` it when answered)."""
        return RequestLedger(self)

    def busy_error(self) -> ConnectError:
        """The answer to a request that does not fit now (the client should retry)."""
        self.refused += 1
        return ConnectError(
            Code.RESOURCE_EXHAUSTED,
            f"the server is holding {self.held} bytes of request bodies, its limit is "
            f"{self.limit} (--max-inflight-bytes); retry shortly",
        )


@dataclass
class RequestLedger:
    """One request's charges against the process's :class:`BodyBudget`."""

    budget: BodyBudget
    held: int = 0
    reserved: int = 0
    """Bytes of the body already held (declared up front, or received)."""
    refused: bool = field(default=False)
    """Set when a charge failed: the answer then carries ``Retry-After``."""

    def reserve(self, declared: int) -> None:
        """Hold a body's declared length up front, so that requests arriving together are
        refused at their headers rather than part way through their bodies."""
        self.charge(declared)
        self.reserved = declared

    def received(self, total: int) -> None:
        """The body has reached ``total`` bytes: hold what passes the reservation."""
        if total > self.reserved:
            self.charge(total - self.reserved)
            self.reserved = total

    def charge(self, size: int) -> None:
        """Hold ``size`` more bytes; RESOURCE_EXHAUSTED (a ConnectError) when they do not fit."""
        if self.budget.held + size > self.budget.limit:
            self.refused = True
            raise self.budget.busy_error()
        self.budget.held += size
        self.held += size

    def release(self) -> None:
        """Give back everything this request held (idempotent)."""
        self.budget.held -= self.held
        self.held = 0


current_ledger: contextvars.ContextVar[RequestLedger | None] = contextvars.ContextVar(
    "flytecache_request_ledger", default=None
)
"""The ledger of the request being served (set by the app, charged by the gzip codec)."""
