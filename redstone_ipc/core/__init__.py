"""Handles, rights and kernel objects (the seed's ``crate::core::object``)."""

from .export import ExportedHandle, adopt_handle, export_handle
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
    "ExportedHandle",
    "adopt_handle",
    "export_handle",
    "FdHandle",
    "FdObject",
    "Handle",
    "HandleTable",
    "KernelObject",
    "ObjectType",
    "Rights",
]
