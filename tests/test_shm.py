"""Shared memory: the same frames in several processes, rights the kernel enforces,
and nothing left behind when every holder dies."""

from __future__ import annotations

import gc
import os
import signal

import pytest

from conftest import fork_child, open_fds, run_in_child, wait_child
from redstone_ipc import (
    PAGE_SIZE,
    InvalidAddress,
    Message,
    NotMapped,
    OutOfMemory,
    PermissionDenied,
    Rights,
    SharedMemory,
    ShmError,
)
from redstone_ipc.linux.cmsg import seqpacket_pair
from redstone_ipc.message.wire import recv_message, send_message

pytestmark = pytest.mark.timeout(60)


def test_size_is_rounded_to_whole_pages(no_fd_leak):
    with SharedMemory.create(1) as shm:
        assert shm.size == PAGE_SIZE
    with SharedMemory.create(PAGE_SIZE + 1) as shm:
        assert shm.size == 2 * PAGE_SIZE
        with shm.map() as m:
            assert len(m) == m.size == 2 * PAGE_SIZE
            assert bytes(m[:16]) == bytes(16), "new memory is zero-filled"


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        SharedMemory.create(0)
    with pytest.raises(OutOfMemory):
        SharedMemory.create(1 << 64)
    with SharedMemory.create(1 << 62) as sparse:  # pages come on first touch
        with pytest.raises(OutOfMemory):
            sparse.map()  # but no address space is that large


def test_two_processes_map_the_same_frames_and_see_each_others_writes(no_fd_leak):
    a, b = seqpacket_pair()
    shm = SharedMemory.create(4 * PAGE_SIZE)
    mine = shm.map()
    mine[0:6] = b"parent"
    frames = mine.frames()
    assert len(frames) == 4 and len(set(frames)) == 4

    def child() -> None:
        got = recv_message(b)
        (h,) = got.handles
        with h.map() as theirs:
            assert theirs.frames() == frames, "the very same physical pages"
            assert theirs[0:6] == b"parent"
            theirs[PAGE_SIZE : PAGE_SIZE + 5] = b"child"
        send_message(b, Message.new(0))  # done

    pid = fork_child(child)
    msg = Message.new(1)
    msg.attach_handle(shm.duplicate())
    send_message(a, msg)
    recv_message(a).close()
    assert wait_child(pid) == 0
    assert mine[PAGE_SIZE : PAGE_SIZE + 5] == b"child"
    mine.unmap()
    shm.close()
    a.close()
    b.close()


def test_numpy_views_share_memory_without_copying(no_fd_leak):
    np = pytest.importorskip("numpy")
    shm = SharedMemory.create(1 << 20)
    m = shm.map()
    array = np.frombuffer(m, dtype=np.uint32)
    assert array.nbytes == 1 << 20
    array[:] = 7

    def child() -> None:
        with shm.map() as cm:
            view = np.frombuffer(cm, dtype=np.uint32)
            assert int(view.sum()) == 7 * view.size
            view[0] = 42
            del view

    run_in_child(child)
    assert array[0] == 42, "the child's write is visible through our numpy view"
    with pytest.raises(ShmError, match="still alive"):
        m.unmap()  # refused while the array exports the buffer
    del array
    gc.collect()
    m.unmap()
    shm.close()


def test_unmap_twice_is_not_mapped(no_fd_leak):
    with SharedMemory.create(PAGE_SIZE) as shm:
        m = shm.map()
        m.unmap()
        with pytest.raises(NotMapped):
            m.unmap()
        with pytest.raises(NotMapped):
            m.word_address(0)


def test_word_addresses_are_checked(no_fd_leak):
    with SharedMemory.create(PAGE_SIZE) as shm, shm.map() as m:
        assert m.word_address(8) == m.address + 8
        with pytest.raises(InvalidAddress, match="aligned"):
            m.word_address(2)
        with pytest.raises(InvalidAddress, match="outside"):
            m.word_address(PAGE_SIZE)
        with pytest.raises(InvalidAddress, match="outside"):
            m.word_address(-4)


def test_a_mapping_outlives_its_handle(no_fd_leak):
    shm = SharedMemory.create(PAGE_SIZE)
    m = shm.map()
    shm.close()
    m[:4] = b"kept"
    assert m[:4] == b"kept"
    m.unmap()


def test_map_needs_its_rights(no_fd_leak):
    with SharedMemory.create(PAGE_SIZE) as shm:
        no_map = shm.duplicate(Rights.READ | Rights.WRITE)
        with pytest.raises(PermissionDenied, match="MAP"):
            no_map.map()
        ro = shm.duplicate(Rights.READ | Rights.MAP)
        with pytest.raises(PermissionDenied, match="WRITE"):
            ro.map(writable=True)
        with ro.map(writable=False) as m:
            assert m.writable is False
            with pytest.raises(TypeError):
                m[0] = 1
        with ro.map() as m:  # the default follows the handle: read-only without WRITE
            assert m.writable is False
            with pytest.raises(TypeError):
                m[0] = 1
        with shm.map() as m:  # ... and writable with it
            assert m.writable is True
        no_map.close()
        ro.close()


def test_writable_mappings_after_a_read_only_handle_left_are_refused(no_fd_leak):
    a, b = seqpacket_pair()
    with SharedMemory.create(PAGE_SIZE) as shm:
        msg = Message.new(0)
        msg.attach_handle(shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER))
        send_message(a, msg)
        with pytest.raises(PermissionDenied, match="map it writable before"):
            shm.map()
        recv_message(b).close()
    a.close()
    b.close()


def _holders_of(inode: int) -> list[str]:
    """Every /proc entry (fd or mapping) that still names the memfd ``inode``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.stat(f"/proc/{pid}/fd/{fd}").st_ino == inode:
                        link = os.readlink(f"/proc/{pid}/fd/{fd}")
                        if link.startswith("/memfd:"):
                            found.append(f"{pid} fd {fd}")
                except OSError:
                    pass
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    fields = line.split()
                    if len(fields) >= 6 and fields[5].startswith("/memfd:") and int(fields[4]) == inode:
                        found.append(f"{pid} maps {line.strip()}")
        except OSError:
            pass  # the process went away, or is not ours to read
    return found


def _shmem_kib() -> int:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    raise AssertionError("no Shmem line in /proc/meminfo")


@pytest.mark.timeout(60)
def test_memory_is_freed_after_every_holder_is_sigkilled(no_fd_leak):
    """Two processes hold and map 64 MiB; both are killed; the kernel frees it."""
    size = 64 << 20
    a, b = seqpacket_pair()
    ready_r, ready_w = os.pipe()

    def creator() -> None:
        shm = SharedMemory.create(size)
        m = shm.map()
        m[:] = b"\xab" * size  # fault in every page
        msg = Message.with_data(0, str(shm.id).encode())
        msg.attach_handle(shm.duplicate())
        send_message(a, msg)
        os.write(ready_w, b"c")
        signal.pause()

    def mapper() -> None:
        got = recv_message(b)
        (h,) = got.handles
        m = h.map(writable=False)
        assert m[size - 1] == 0xAB
        os.write(ready_w, bytes(got.payload)[:20].ljust(20))
        signal.pause()

    pids = [fork_child(creator), fork_child(mapper)]
    try:
        os.close(ready_w)
        seen = b""
        while len(seen) < 21:
            chunk = os.read(ready_r, 64)
            assert chunk, "a child died before holding the memory"
            seen += chunk
        inode = int(seen.replace(b"c", b"").strip())
        assert len(_holders_of(inode)) >= 3, "both children hold it (fds and mappings)"
        shmem_held = _shmem_kib()
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        statuses = [wait_child(pid) for pid in pids]
        os.close(ready_r)
        a.close()
        b.close()
    assert statuses == [-signal.SIGKILL] * 2
    assert _holders_of(inode) == [], "no fd and no mapping of the region remains anywhere"
    # The kernel's own accounting (system-wide, so allow for other activity).
    dropped = shmem_held - _shmem_kib()
    assert dropped >= 0.75 * size / 1024, f"Shmem fell by only {dropped} KiB"


def test_fd_count_is_flat_over_many_regions():
    before = open_fds()
    for _ in range(500):
        shm = SharedMemory.create(PAGE_SIZE)
        with shm.map() as m:
            m[0] = 1
        ro = shm.duplicate(Rights.READ | Rights.MAP)
        shm.close()
        ro.close()
    assert open_fds() == before


def test_frames_are_refused_clearly_where_the_kernel_hides_them(no_fd_leak):
    """Without CAP_SYS_ADMIN, pagemap reads frame numbers as 0: we say so."""
    with SharedMemory.create(PAGE_SIZE) as shm, shm.map() as m:

        def child() -> None:
            if os.getuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)  # drops every capability
            with pytest.raises(PermissionDenied, match="CAP_SYS_ADMIN"):
                m.frames()

        run_in_child(child)


# -- MappingInUse says what pins the mapping ---------------------------------------


def test_a_refused_unmap_names_the_open_primitives_by_offset(no_fd_leak):
    from redstone_ipc import Condition, Event, FutexWord, MappingInUse, Mutex, Semaphore, WaitQueue

    with SharedMemory.create(PAGE_SIZE) as shm:
        m = shm.map()
        sem = Semaphore.create(m, 64, 1)
        event = Event.create(m, 128)
        with pytest.raises(MappingInUse) as refused:
            m.unmap()
        assert str(refused.value) == (
            "cannot unmap: a Semaphore at offset 64 and an Event at offset 128 are "
            "still open on it (close() them first)"
        )
        assert isinstance(refused.value, BufferError)
        sem.close()
        with pytest.raises(MappingInUse, match=r"^cannot unmap: an Event at offset 128 is still open"):
            m.unmap()
        event.close()
        lock = Mutex.create(m, 256)
        others = [Condition.create(m, 320, lock), WaitQueue.create(m, 336), FutexWord(m, 344)]
        with pytest.raises(MappingInUse) as refused:
            m.unmap()
        for name in ("a Mutex at offset 256", "a Condition at offset 320",
                     "a WaitQueue at offset 336", "a FutexWord at offset 344"):
            assert name in str(refused.value)
        assert "Semaphore" not in str(refused.value) and "Event" not in str(refused.value)
        for obj in (*others, lock):
            obj.close()
        # One dropped without close() is unpinned and forgotten with it.
        Event.create(m, 128)
        gc.collect()
        m.unmap()


def test_a_refused_unmap_falls_back_to_views_it_cannot_name(no_fd_leak):
    from redstone_ipc import MappingInUse, Semaphore

    with SharedMemory.create(PAGE_SIZE) as shm:
        m = shm.map()
        view = memoryview(m)[8:16]
        with pytest.raises(MappingInUse, match="views of this mapping .* are still alive"):
            m.unmap()
        sem = Semaphore.create(m, 64)
        with pytest.raises(MappingInUse, match="a Semaphore at offset 64"):
            m.unmap()  # what it can name comes first
        sem.close()
        view.release()
        m.unmap()
