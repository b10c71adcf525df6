"""The one rule for time, shared by every blocking call of the package.

Every call that may wait takes ``timeout=None`` (the default, in the sync
and the async form alike) or a number of seconds:

* ``None`` or ``math.inf``: wait as long as it takes;
* a positive number: wait at most that long;
* ``0`` or less: do not wait, only try once (a negative timeout is a
  deadline that has already passed: ``timeout=deadline - time.monotonic()``
  needs no clamping);
* NaN: ValueError; anything that is not a number: TypeError.

When the time runs out the call raises a ``TimeoutError`` (a subclass of
:class:`~redstone_ipc.errors.TimedOut`, which also names what did not
happen: ``ReceiveTimedOut`` is a ``queue.Empty`` too, ``SendTimedOut`` a
``queue.Full``, ``ConnectTimedOut`` a ``NameNotFound``). The calls whose
``threading`` twin returns a bool (``Mutex.acquire``, ``Semaphore.acquire``,
``Event.wait``, ``Condition.wait``) return False instead, as theirs do.

:func:`seconds` turns a ``timeout`` argument into what the waiting code
expects: None or a finite float ``>= 0``.
"""

from __future__ import annotations

__all__ = ["seconds", "FOREVER"]

FOREVER = 1e9
"""Timeouts at least this long (about 31 years) mean "no limit": they are
turned into None, so no deadline arithmetic overflows a C time type."""


def seconds(timeout: float | None) -> float | None:
    """``timeout`` checked and normalized: None (no limit) or seconds ``>= 0``.

    >>> seconds(None), seconds(float("inf")), seconds(-3), seconds(2)
    (None, None, 0.0, 2.0)
    """
    if timeout is None:
        return None
    if timeout.__class__ is not float and timeout.__class__ is not int:
        try:
            timeout = float(_number(timeout))
        except (TypeError, ValueError):
            raise TypeError(
                f"timeout must be None or a number of seconds, not {timeout!r}"
            ) from None
    if timeout != timeout:
        raise ValueError("timeout must be None or a number of seconds, not NaN")
    if timeout >= FOREVER:
        return None
    return float(timeout) if timeout > 0 else 0.0


def _number(value: object) -> float:
    # Real numbers only (int, float, bool, Fraction, numpy scalars):
    # float("1") would accept a string.
    import numbers

    if not isinstance(value, numbers.Real):
        raise TypeError
    return float(value)

