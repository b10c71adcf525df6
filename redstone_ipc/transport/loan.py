"""Loans: a writable buffer inside the shared memory a message will travel in.

``buf = port.loan(size)`` (or ``endpoint.loan(size)``) reserves ``size``
bytes in this process's data segment of the connection to that port, and
``buf.view`` is a writable memoryview of them: fill it (``numpy.frombuffer``
works), then send ``Message(msg_type, buf)``. The payload is never copied:
the receiver gets a read-only view of these very pages. A loan can be sent
once; after the send do not write to it (the receiver is reading it). A
loan that is not sent gives its memory back when it is released (``with``,
``release()``, or garbage collection).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Loan"]


class Loan:
    """``nbytes`` bytes of shared memory lent by a connection (see the module docstring)."""

    __slots__ = ("view", "nbytes", "owner", "segment", "offset", "sent", "__weakref__")

    def __init__(self, view: memoryview, owner: Any, segment: Any, offset: int) -> None:
        self.view = view  # writable, bytes
        self.nbytes = len(view)
        self.owner = owner  # the connection (transport.sending.Outbound) it belongs to
        self.segment = segment
        self.offset = offset
        self.sent = False

    def release(self) -> None:
        """Give the memory back if the loan was not sent. Idempotent.

        Sending releases the view too: writing after the send is refused
        (unless views made from it, such as numpy arrays, are still held).
        """
        if not self.sent and self.segment is not None:
            self.segment.release_unsent(self.offset)
            self.segment = None
        try:
            self.view.release()
        except BufferError:  # views of it are alive: they keep the mapping
            pass

    def __enter__(self) -> Loan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __del__(self) -> None:
        if self.segment is not None and not self.sent:
            try:
                self.segment.release_unsent(self.offset)
            except Exception:  # pragma: no cover - interpreter shutdown
                pass

    def __len__(self) -> int:
        return self.nbytes

    def __repr__(self) -> str:
        state = "sent" if self.sent else ("released" if self.segment is None else "open")
        return f"<Loan {self.nbytes} bytes {state}>"
