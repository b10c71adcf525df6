"""Handles, rights and kernel objects (the seed's ``crate::core::object``)."""

from .object import (
    HANDLE_TABLE,
    FdHandle,
    FdObject,
    Handle,
    HandleTable,
    KernelObject,
    ObjectType,
    Rights,
)

__all__ = [
    "HANDLE_TABLE",
    "FdHandle",
    "FdObject",
    "Handle",
    "HandleTable",
    "KernelObject",
    "ObjectType",
    "Rights",
]
