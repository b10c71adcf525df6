"""Memory: page size and physical frames (the seed's ``crate::mm``)."""

from .page import PAGE_SIZE, frames_of, page_round_up

__all__ = ["PAGE_SIZE", "frames_of", "page_round_up"]
