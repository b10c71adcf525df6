"""Handles and rights: the per-process handle table, as a specification."""

from __future__ import annotations

import os
import threading

import pytest

from conftest import open_fds, run_in_child
from redstone_ipc import (
    HANDLE_TABLE,
    FdHandle,
    InvalidHandle,
    ObjectType,
    PermissionDenied,
    Rights,
    SharedMemory,
)

pytestmark = pytest.mark.timeout(60)


def new_pipe_handle() -> tuple[FdHandle, int]:
    """A handle owning a pipe's write end, and the read end (caller closes it)."""
    r, w = os.pipe()
    return FdHandle.adopt(w), r


def fd_is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_values_are_unique_and_never_reused(no_fd_leak):
    seen = set()
    for _ in range(50):
        h = SharedMemory.create(4096)
        assert h.value not in seen
        seen.add(h.value)
        h.close()
    assert len(seen) == 50


def test_the_table_finds_live_handles_only(no_fd_leak):
    h = SharedMemory.create(4096)
    assert HANDLE_TABLE.get(h.value) is h
    assert h.value in HANDLE_TABLE.values()
    h.close()
    with pytest.raises(InvalidHandle):
        HANDLE_TABLE.get(h.value)


def test_default_rights_are_stated_per_type(no_fd_leak):
    with SharedMemory.create(4096) as shm:
        assert shm.type is ObjectType.SHM
        assert shm.rights == (
            Rights.READ | Rights.WRITE | Rights.MAP | Rights.DUPLICATE | Rights.TRANSFER
        )
    h, r = new_pipe_handle()
    with h:
        assert h.type is ObjectType.FD
        assert h.rights == Rights.READ | Rights.WRITE | Rights.DUPLICATE | Rights.TRANSFER | Rights.WAIT
    os.close(r)


def test_handles_cannot_be_made_directly():
    with pytest.raises(TypeError):
        SharedMemory()


def test_duplicate_gives_a_subset_of_rights(no_fd_leak):
    with SharedMemory.create(4096) as shm:
        same = shm.duplicate()
        assert same.rights == shm.rights and same.value != shm.value
        ro = shm.duplicate(Rights.READ | Rights.MAP)
        assert ro.rights == Rights.READ | Rights.MAP
        assert ro.id == shm.id
        partial = shm.duplicate(Rights.READ | Rights.DUPLICATE)
        with pytest.raises(PermissionDenied, match="cannot grant WRITE"):
            partial.duplicate(Rights.READ | Rights.WRITE)
        for h in (same, ro, partial):
            h.close()


def test_duplicate_needs_the_duplicate_right(no_fd_leak):
    with SharedMemory.create(4096) as shm:
        nodup = shm.duplicate(Rights.READ | Rights.MAP)
        with pytest.raises(PermissionDenied, match="lacks DUPLICATE"):
            nodup.duplicate()
        nodup.close()


def test_rights_can_never_grow(no_fd_leak):
    with SharedMemory.create(4096) as shm:
        ro = shm.duplicate(Rights.READ | Rights.MAP | Rights.DUPLICATE)
        with pytest.raises(PermissionDenied):
            ro.duplicate(Rights.READ | Rights.MAP | Rights.DUPLICATE | Rights.WRITE)
        with pytest.raises(PermissionDenied):
            ro.replace(Rights.READ | Rights.WRITE)
        ro.close()


def test_replace_invalidates_the_old_handle(no_fd_leak):
    shm = SharedMemory.create(4096)
    ro = shm.replace(Rights.READ | Rights.MAP)
    assert not shm.valid and ro.valid
    with pytest.raises(InvalidHandle):
        shm.map()
    assert ro.rights == Rights.READ | Rights.MAP
    ro.close()


def test_every_use_of_a_closed_handle_raises_invalid_handle(no_fd_leak):
    shm = SharedMemory.create(4096)
    shm.close()
    assert not shm.valid
    for use in (shm.map, shm.duplicate, lambda: shm.size, lambda: shm.id, shm.fileno,
                lambda: shm.replace(Rights.READ), lambda: shm.type):
        with pytest.raises(InvalidHandle):
            use()
    shm.close()  # closing twice does nothing, like socket.close


def test_fds_close_with_the_last_handle():
    h, r = new_pipe_handle()
    w = h.fileno()
    dup = h.duplicate()
    h.close()
    assert fd_is_open(w), "a duplicate still names the object"
    dup.close()
    assert not fd_is_open(w)
    os.close(r)


def test_a_dropped_handle_closes_its_fds():
    h, r = new_pipe_handle()
    w = h.fileno()
    del h
    assert not fd_is_open(w)
    os.close(r)


def test_context_manager_closes(no_fd_leak):
    with SharedMemory.create(4096) as shm:
        assert shm.valid
    assert not shm.valid


def test_adopt_refuses_rights_an_fd_cannot_hold():
    r, w = os.pipe()
    try:
        with pytest.raises(PermissionDenied):
            FdHandle.adopt(w, Rights.MAP)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.timeout(60)
def test_concurrent_duplicate_and_close_keep_the_table_consistent():
    before = open_fds()
    root, r = new_pipe_handle()
    w = root.fileno()
    table_size = len(HANDLE_TABLE)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def churn() -> None:
        try:
            start.wait()
            for _ in range(2000):
                d = root.duplicate(Rights.WRITE | Rights.DUPLICATE)
                d2 = d.duplicate(Rights.WRITE)
                d.close()
                assert d2.valid and not d.valid
                d2.close()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(HANDLE_TABLE) == table_size
    assert root._object._handle_count == 1
    assert fd_is_open(w)
    root.close()
    os.close(r)
    assert open_fds() == before


def test_a_forked_child_holds_the_handles_it_inherited(no_fd_leak):
    shm = SharedMemory.create(4096)
    with shm.map() as m:
        m[:5] = b"alive"

    def child() -> None:
        assert HANDLE_TABLE.get(shm.value) is shm
        with shm.map() as cm:
            assert cm[:5] == b"alive"
            cm[:5] = b"child"

    run_in_child(child)
    with shm.map(writable=False) as m:
        assert m[:5] == b"child"
    shm.close()
