"""Ports (seed: ``ipc/port``): 1:N message queues with priorities and capacity."""

from .port import DEFAULT_CAPACITY, Port, PortId, PortStatus
from .rights import SEND_RIGHTS

__all__ = ["DEFAULT_CAPACITY", "Port", "PortId", "PortStatus", "SEND_RIGHTS"]
