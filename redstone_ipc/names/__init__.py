"""Names: unrelated processes find each other (the Mach bootstrap server's job).

``publish(name, handle)`` serves duplicates of ``handle`` under ``name``;
any allowed process, started however, gets one with ``connect(name)``.
Names are Linux abstract AF_UNIX addresses in a per-user namespace
(``address.py``); who may connect is decided on the kernel's word
(``credentials.py``, ``allow.py``); the exchange is one wire-format Message
(``protocol.py``). ``status(name)`` asks a publisher about its publication
instead (``status.py``; what ``redstone-ipc ls`` shows). See ``docs/names.md``.
"""

from .address import MAX_NAME
from .allow import Allow, AllowSpec
from .client import connect, connect_async
from .publication import Publication, publish
from .status import status

__all__ = [
    "MAX_NAME",
    "Allow",
    "AllowSpec",
    "Publication",
    "connect",
    "connect_async",
    "publish",
    "status",
]
