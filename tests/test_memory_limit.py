"""Issue 8, the memory limit: a huge ``SharedMemory.create`` (and a map, a
loan or a send that needs more address space than the process may have)
is an error of our hierarchy (OutOfMemory: an IpcError and a MemoryError)
that names the size, and leaves nothing behind: no fd, no handle, and the
port or region still works afterwards.

Each case runs in a forked child whose RLIMIT_AS is lowered a little above
what it uses, so that the kernel refuses for real (and the limit does not
stay with pytest).
"""

from __future__ import annotations

import resource

import pytest

from conftest import open_fds, run_in_child
from redstone_ipc import HANDLE_TABLE, Empty, IpcError, Message, OutOfMemory, Port, SharedMemory
from redstone_ipc.port import SEND_RIGHTS

pytestmark = pytest.mark.timeout(60)

GiB = 1 << 30


def _limit_address_space(extra: int) -> None:
    """RLIMIT_AS: what this process maps now, plus ``extra`` bytes."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[0])
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (pages * resource.getpagesize() + extra, hard))


def _our_error(e: BaseException) -> bool:
    return isinstance(e, OutOfMemory) and isinstance(e, IpcError) and isinstance(e, MemoryError)


@pytest.mark.parametrize("size", [(1 << 63) - 1, 1 << 64, 1 << 70])
def test_a_region_beyond_what_the_kernel_holds_is_out_of_memory(no_fd_leak, size):
    handles = len(HANDLE_TABLE)
    with pytest.raises(OutOfMemory) as info:
        SharedMemory.create(size)
    assert _our_error(info.value) and str(size) in str(info.value)
    assert len(HANDLE_TABLE) == handles


def test_a_huge_region_past_the_address_space_limit(no_fd_leak):
    """A region larger than the process may map: creating it (sparse) works
    or is refused, mapping it is refused; either way OutOfMemory, nothing
    kept, and a region of ordinary size works right after."""

    def child() -> None:
        SharedMemory.create(4096).close()  # (anything made once per process, made now)
        before = open_fds()
        handles = len(HANDLE_TABLE)
        _limit_address_space(256 << 20)
        for size in (4 * GiB, 1 << 46, 1 << 62):
            try:
                shm = SharedMemory.create(size)
            except OutOfMemory as e:
                assert _our_error(e)
            else:
                with shm:
                    with pytest.raises(OutOfMemory) as info:
                        shm.map()
                    assert _our_error(info.value) and str(shm.size) in str(info.value)
        assert open_fds() == before and len(HANDLE_TABLE) == handles, "left behind"
        with SharedMemory.create(1 << 20) as shm, shm.map() as m:
            m[:5] = b"still"
            assert bytes(m[:5]) == b"still"

    run_in_child(child)


def test_a_loan_or_send_past_the_address_space_limit_loses_nothing(no_fd_leak):
    """A payload whose data segment the process cannot map: the loan (or the
    send) is refused with OutOfMemory, the port keeps working, and nothing
    earlier is lost."""

    def child() -> None:
        port = Port(capacity=4)
        client = port.duplicate(SEND_RIGHTS)
        client.send(Message(1, b"before"))
        big = Message(3, bytes(64 << 20))  # its segment would be 256 MiB
        _limit_address_space(128 << 20)
        with pytest.raises(OutOfMemory) as info:
            client.loan(2 * GiB, timeout=5)
        assert _our_error(info.value)
        with pytest.raises(OutOfMemory):
            client.loan(1 << 33, timeout=0)
        with pytest.raises(OutOfMemory):
            client.send(big, timeout=5)
        big.close()
        client.send(Message(2, b"after"), timeout=5)
        assert [bytes(port.recv(timeout=5)) for _ in range(2)] == [b"before", b"after"]
        with pytest.raises(Empty):
            port.try_recv()
        client.close()
        port.close()

    run_in_child(child)
