"""Channels (seed: ``ipc/channel``): 1:1 bidirectional message queues."""

from .channel import DEFAULT_CAPACITY, ENDPOINT_RIGHTS, Channel, ChannelEndpoint, ChannelPair

__all__ = ["DEFAULT_CAPACITY", "ENDPOINT_RIGHTS", "Channel", "ChannelEndpoint", "ChannelPair"]
