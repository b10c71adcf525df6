"""The message envelope (seed: ``ipc/message``) and its wire format."""

from .message import Message, MessageHeader, Payload, Sender
from .wire import recv_message, send_message

__all__ = ["Message", "MessageHeader", "Payload", "Sender", "recv_message", "send_message"]
