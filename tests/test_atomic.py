"""Atomic words across real processes: Mapping's checked methods and the
low-level ordered operations of ``redstone_ipc.linux.atomic``.

The module runs twice. Here, in the ordering mode this machine selects (the
x86 plain-access path on x86-64), with the low-level tests repeated for every
mode ``build_ops`` can build in-process; and once more in a fresh interpreter
started with ``REDSTONE_IPC_ATOMICS=libatomic``
(``test_the_module_passes_again_with_the_libatomic_path_forced``), so that the
path aarch64 takes, Mapping's methods included, also runs on x86.
"""

from __future__ import annotations

import mmap
import os
import platform
import struct
import subprocess
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _proc import fork, join, join_all
from conftest import open_fds, run_in_child
from redstone_ipc import (
    Channel,
    Event,
    InvalidAddress,
    MappingInUse,
    Message,
    NotMapped,
    PermissionDenied,
    Rights,
    SharedMemory,
    WaitQueue,
)
from redstone_ipc.linux import atomic
from redstone_ipc.linux.futex import futex_wake
from redstone_ipc.shm import shm as shm_module

pytestmark = pytest.mark.timeout(120)

PAGE = 4096
U32 = 2**32
U64 = 2**64
FORCED = os.environ.get(atomic.ENV_VAR, "").strip().lower()

# Every mode this machine can run in-process ("x86" only on x86-64).
MODES_HERE = [mode for mode in atomic.MODES if mode == "libatomic" or atomic.default_mode() == "x86"]

# Layout of the test region.
WORD = 0  # the word under test (u32 or u64)
GO = 64  # Event: start together
FINISHED = 72  # Event: the reader has finished
DONE = 80  # u32: the writer has finished / what the reader saw
READY = 88  # Event: the reader is in its loop
SEQ = 128  # the litmus tests' sequence word
DATA = 256  # the litmus tests' data: 8 words


@pytest.fixture
def region():
    """A fresh two-page region, mapped writable; fds and pins checked at the end."""
    before = open_fds()
    shm = SharedMemory.create(2 * PAGE)
    m = shm.map()
    yield m
    if not m.closed:
        m.unmap()  # MappingInUse if a test left something open on it
    shm.close()
    assert open_fds() == before


def _start_together(m) -> None:
    """Child side of GO: wait until the parent says go."""
    with Event(m, GO) as go:
        assert go.wait(timeout=20)


# -- the mode switch -----------------------------------------------------------------


def test_the_mode_comes_from_the_environment_or_the_machine():
    expected = FORCED if FORCED in atomic.MODES else atomic.default_mode()
    assert atomic.MODE == expected
    assert atomic.OPS.mode == atomic.MODE
    # The module-level functions and Mapping's methods use that mode's operations.
    assert atomic.load_acquire_u32 is atomic.OPS.load_acquire_u32
    assert atomic.store_release_u64 is atomic.OPS.store_release_u64
    assert shm_module._load32 is atomic.OPS.load_acquire_u32
    assert shm_module._store64 is atomic.OPS.store_release_u64
    assert atomic.default_mode("x86_64") == "x86"
    assert atomic.default_mode("aarch64") == "libatomic"


def test_build_ops_refuses_unknown_modes_and_x86_elsewhere(monkeypatch):
    with pytest.raises(ValueError, match="unknown"):
        atomic.build_ops("relaxed")
    assert atomic.build_ops("libatomic").mode == "libatomic"
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(ValueError, match="aarch64"):
        atomic.build_ops("x86")  # plain accesses are not ordered there
    assert atomic.build_ops("libatomic").load_acquire_u32 is not atomic._x86_load


def test_an_unknown_mode_in_the_environment_fails_the_import():
    env = dict(os.environ, **{atomic.ENV_VAR: "weak"})
    result = subprocess.run(
        [sys.executable, "-c", "import redstone_ipc"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "not an atomics mode" in result.stderr


# -- the low-level operations, per mode ----------------------------------------------


@pytest.mark.parametrize("mode", MODES_HERE)
def test_ordered_operations_values_wrap_and_compare_exchange(region, mode):
    m = region
    ops = atomic.build_ops(mode)
    r32 = atomic.U32Ref(m.word_address(0))
    r64 = atomic.U64Ref(m.word_address(8, 8))
    ops.store_release_u32(r32, U32 - 1)
    assert ops.load_acquire_u32(r32) == U32 - 1 == m.load_u32(0)
    assert ops.fetch_add_acq_rel_u32(r32, 1) == U32 - 1
    assert ops.load_acquire_u32(r32) == 0
    assert ops.fetch_add_acq_rel_u32(r32, -1) == 0
    assert ops.load_acquire_u32(r32) == U32 - 1
    assert ops.cas_acq_rel_u32(r32, 0, 5) == (False, U32 - 1)
    assert ops.cas_acq_rel_u32(r32, U32 - 1, 5) == (True, U32 - 1)
    ops.store_release_u32(r32, -2)  # modulo 2**32
    assert m.load_u32(0) == U32 - 2
    # u64: values past 2**32 and 2**63 survive (they travel as c_uint64)
    ops.store_release_u64(r64, U32 - 1)
    assert ops.fetch_add_acq_rel_u64(r64, 1) == U32 - 1
    assert ops.load_acquire_u64(r64) == U32 == m.load_u64(8)
    assert ops.cas_acq_rel_u64(r64, U32, 2**63 + 7) == (True, U32)
    assert ops.cas_acq_rel_u64(r64, U32, 1) == (False, 2**63 + 7)
    ops.store_release_u64(r64, U64 - 1)
    assert ops.fetch_add_acq_rel_u64(r64, 2) == U64 - 1
    assert ops.load_acquire_u64(r64) == 1
    assert m.load_u32(0) == U32 - 2, "the u64 next to it left the u32 alone"


def test_sequentially_consistent_u64_operations(region):
    m = region
    p = atomic.ptr(m.word_address(16, 8))
    atomic.store_u64(p, 2**40 + 1)
    assert atomic.load_u64(p) == 2**40 + 1
    assert atomic.fetch_add_u64(p, -2) == 2**40 + 1
    assert atomic.exchange_u64(p, 3) == 2**40 - 1
    assert atomic.cas_u64(p, 3, U64 - 1) == (True, 3)
    assert atomic.cas_u64(m.word_address(16, 8), 3, 4) == (False, U64 - 1)  # a plain int works too
    assert m.load_u64(16) == U64 - 1


def test_refs_are_aligned_pointers(region):
    m = region
    address = m.word_address(0)
    with pytest.raises(ValueError, match="aligned"):
        atomic.U32Ref(address + 2)
    with pytest.raises(ValueError, match="aligned"):
        atomic.U64Ref(address + 4)
    ref = atomic.U32Ref(address)
    assert ref.value == address
    assert futex_wake(ref, 1) == 0  # a c_void_p: futex(2) takes it as it is
    atomic.store_u32(ref, 9)  # and so do the seq_cst functions
    assert atomic.OPS.load_acquire_u32(ref) == 9


# -- many processes, one word ------------------------------------------------------------

ADDS = 100_000


def _adder(m, api: str, width: int) -> None:
    _start_together(m)
    if api == "Mapping":
        add = m.fetch_add_u32 if width == 32 else m.fetch_add_u64
        for _ in range(ADDS):
            add(WORD, 1)
    else:
        ops = atomic.build_ops(api.split(":")[1])
        if width == 32:
            ref32 = atomic.U32Ref(m.word_address(WORD))
            fetch_add32 = ops.fetch_add_acq_rel_u32
            for _ in range(ADDS):
                fetch_add32(ref32, 1)
        else:
            ref64 = atomic.U64Ref(m.word_address(WORD, 8))
            fetch_add64 = ops.fetch_add_acq_rel_u64
            for _ in range(ADDS):
                fetch_add64(ref64, 1)


@pytest.mark.parametrize("width", [32, 64])
@pytest.mark.parametrize("api", ["Mapping"] + [f"ops:{mode}" for mode in MODES_HERE])
def test_two_processes_adding_100k_times_each_lose_no_update(region, api, width):
    m = region
    # Start so that the total wraps (u32) or carries into the high half (u64).
    start = U32 - ADDS
    (m.store_u32 if width == 32 else m.store_u64)(WORD, start)
    with Event.create(m, GO) as go:  # (with: closed on the way out, even on failure)
        pids = [fork(_adder, m, api, width) for _ in range(2)]
        go.set()
        assert join_all(pids, timeout=100) == [0, 0]
    if width == 32:
        assert m.load_u32(WORD) == (start + 2 * ADDS) % U32 == ADDS
    else:
        assert m.load_u64(WORD) == start + 2 * ADDS == U32 + ADDS


def _cas_incrementer(m, width: int) -> None:
    _start_together(m)
    load = m.load_u32 if width == 32 else m.load_u64
    cas = m.compare_exchange_u32 if width == 32 else m.compare_exchange_u64
    for _ in range(ADDS // 5):
        seen = load(WORD)
        while True:
            ok, observed = cas(WORD, seen, seen + 1)
            if ok:
                break
            assert observed != seen
            seen = observed


@pytest.mark.parametrize("width", [32, 64])
def test_compare_exchange_loops_in_two_processes_lose_no_update(region, width):
    m = region
    with Event.create(m, GO) as go:
        pids = [fork(_cas_incrementer, m, width) for _ in range(2)]
        go.set()
        assert join_all(pids, timeout=100) == [0, 0]
    assert (m.load_u32 if width == 32 else m.load_u64)(WORD) == 2 * (ADDS // 5)


# -- message passing: data, then a release store; an acquire load, then the data ---------

ROUNDS = 20_000


def _publish(m, api: str, width: int, first: int) -> None:
    """Writer: for each i, fill the 8 data words with i (plain stores), then
    release-store i into SEQ. It starts once the reader is reading."""
    _start_together(m)
    with Event(m, READY) as ready:
        assert ready.wait(timeout=20)
    size = width // 8
    end = DATA + 8 * size
    if api == "Mapping":
        store = m.store_u32 if width == 32 else m.store_u64
        for i in range(first, first + ROUNDS):
            m[DATA:end] = i.to_bytes(size, sys.byteorder) * 8  # a memcpy: plain stores
            store(SEQ, i)
    elif width == 32:
        store32 = atomic.build_ops(api.split(":")[1]).store_release_u32
        ref32 = atomic.U32Ref(m.word_address(SEQ))
        for i in range(first, first + ROUNDS):
            m[DATA:end] = i.to_bytes(size, sys.byteorder) * 8
            store32(ref32, i)
    else:
        store64 = atomic.build_ops(api.split(":")[1]).store_release_u64
        ref64 = atomic.U64Ref(m.word_address(SEQ, 8))
        for i in range(first, first + ROUNDS):
            m[DATA:end] = i.to_bytes(size, sys.byteorder) * 8
            store64(ref64, i)


def _check(seq: int, data: list[int]) -> None:
    """What an acquire load of ``seq`` promises: every data word written before
    the release store of ``seq`` is visible, so each holds ``seq`` or later."""
    if min(data) < seq:
        raise AssertionError(f"saw sequence {seq} but data {data}: a store became visible too early")


def _consume(m, api: str, width: int, first: int) -> int:
    """Reader: acquire-load SEQ, then read the data and check it, until the last
    round. Returns how many distinct sequence values it saw."""
    size = width // 8
    fmt = "I" if width == 32 else "Q"
    data = memoryview(m)[DATA : DATA + 8 * size].cast(fmt)
    if api == "Mapping":
        load = m.load_u32 if width == 32 else m.load_u64
        read = lambda: load(SEQ)  # noqa: E731
    else:
        ops = atomic.build_ops(api.split(":")[1])
        if width == 32:
            ref32 = atomic.U32Ref(m.word_address(SEQ))
            read = lambda: ops.load_acquire_u32(ref32)  # noqa: E731
        else:
            ref64 = atomic.U64Ref(m.word_address(SEQ, 8))
            read = lambda: ops.load_acquire_u64(ref64)  # noqa: E731
    last = first + ROUNDS - 1
    seen = 0
    previous = 0
    with Event(m, READY) as ready:
        ready.set()
    try:
        while True:
            seq = read()
            if seq < previous:
                raise AssertionError(f"the sequence went back from {previous} to {seq}")
            if seq != previous:
                seen += 1
                previous = seq
            if seq >= first:
                _check(seq, data.tolist())
            if seq == last:
                return seen
    finally:
        data.release()


@pytest.mark.parametrize("width", [32, 64])
@pytest.mark.parametrize("api", ["Mapping"] + [f"ops:{mode}" for mode in MODES_HERE])
def test_a_reader_that_acquires_the_sequence_sees_the_data_written_before_its_release(
    region, api, width
):
    m = region
    # u64: the sequence crosses 2**32, so its high half matters too
    first = 1 if width == 32 else U32 - ROUNDS // 2

    def reader() -> None:
        _start_together(m)
        seen = _consume(m, api, width, first)
        m.store_u32(DONE, seen)
        with Event(m, FINISHED) as done:
            done.set()

    with Event.create(m, GO) as go, Event.create(m, FINISHED) as reader_done, Event.create(m, READY):
        pids = [fork(reader), fork(_publish, m, api, width, first)]
        go.set()
        assert join_all(pids, timeout=100) == [0, 0]
        assert reader_done.wait(timeout=0)
    assert m.load_u32(DONE) >= 1


def test_the_litmus_check_catches_data_published_too_late():
    """The check above can fail: a sequence value whose data is not there yet."""
    _check(5, [5, 6, 7, 5, 5, 5, 5, 5])
    with pytest.raises(AssertionError, match="too early"):
        _check(5, [5, 5, 5, 4, 5, 5, 5, 5])


A = 0x0123456789ABCDEF
B = A ^ (U64 - 1)  # every bit flipped: a torn value mixes halves of both


@pytest.mark.parametrize("api", ["Mapping"] + [f"ops:{mode}" for mode in MODES_HERE])
def test_u64_stores_and_loads_are_never_torn(region, api):
    m = region
    m.store_u64(WORD, A)
    stores = 50_000

    def writer() -> None:
        _start_together(m)
        with Event(m, READY) as ready:
            assert ready.wait(timeout=20)
        if api == "Mapping":
            for _ in range(stores):
                m.store_u64(WORD, B)
                m.store_u64(WORD, A)
        else:
            ops = atomic.build_ops(api.split(":")[1])
            ref = atomic.U64Ref(m.word_address(WORD, 8))
            store = ops.store_release_u64
            for _ in range(stores):
                store(ref, B)
                store(ref, A)
        m.store_u32(DONE, 1)

    def reader() -> None:
        _start_together(m)
        ops = atomic.build_ops(api.split(":")[1]) if api != "Mapping" else None
        ref = atomic.U64Ref(m.word_address(WORD, 8))
        with Event(m, READY) as ready:
            ready.set()
        while not m.load_u32(DONE):
            for _ in range(100):
                value = m.load_u64(WORD) if ops is None else ops.load_acquire_u64(ref)
                if value != A and value != B:
                    raise AssertionError(f"torn u64: {value:#018x}")

    with Event.create(m, GO) as go, Event.create(m, READY):
        pids = [fork(reader), fork(writer)]
        go.set()
        assert join_all(pids, timeout=100) == [0, 0]
    assert m.load_u64(WORD) == A


# -- Mapping's checks ------------------------------------------------------------------


def test_offsets_values_and_rights_are_checked(region):
    m = region
    for width, load, store, add, cas in (
        (4, m.load_u32, m.store_u32, m.fetch_add_u32, m.compare_exchange_u32),
        (8, m.load_u64, m.store_u64, m.fetch_add_u64, m.compare_exchange_u64),
    ):
        limit = 2 ** (8 * width)
        for offset in (width // 2, 1, -width, len(m), len(m) - width // 2, 1 << 40):
            for call in (
                lambda: load(offset),
                lambda: store(offset, 1),
                lambda: add(offset, 1),
                lambda: cas(offset, 0, 1),
            ):
                with pytest.raises(InvalidAddress):
                    call()
        with pytest.raises(InvalidAddress):
            load(4.0)  # type: ignore[arg-type]
        with pytest.raises(InvalidAddress):
            store("8", 1)  # type: ignore[arg-type]
        for bad in (-1, limit):
            with pytest.raises(ValueError):
                store(8, bad)
            with pytest.raises(ValueError):
                cas(8, bad, 0)
            with pytest.raises(ValueError):
                cas(8, 0, bad)
        with pytest.raises(TypeError):
            store(8, 1.0)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            add(8, 1.0)  # type: ignore[arg-type]
        store(len(m) - width, limit - 1)  # the last word of the mapping
        assert load(len(m) - width) == limit - 1
        assert add(len(m) - width, 3) == limit - 1
        assert load(len(m) - width) == 2
    m.unmap()
    for call in (
        lambda: m.load_u32(0),
        lambda: m.store_u32(0, 1),
        lambda: m.fetch_add_u32(0, 1),
        lambda: m.compare_exchange_u64(0, 0, 1),
        lambda: m.load_u64(8),
        lambda: m.store_u64(8, 1),
    ):
        with pytest.raises(NotMapped):
            call()


def test_a_read_only_mapping_can_load_but_not_write(no_fd_leak):
    shm = SharedMemory.create(PAGE)
    with shm.map() as w:
        w.store_u64(8, 2**50)
    ro_handle = shm.duplicate(Rights.READ | Rights.MAP)
    ro = ro_handle.map()
    assert ro.writable is False
    assert ro.load_u64(8) == 2**50
    assert ro.load_u32(8) == 0  # little-endian: the low half of 2**50
    for call in (
        lambda: ro.store_u32(0, 1),
        lambda: ro.store_u64(0, 1),
        lambda: ro.fetch_add_u32(0, 1),
        lambda: ro.fetch_add_u64(0, 1),
        lambda: ro.compare_exchange_u32(0, 0, 1),
        lambda: ro.compare_exchange_u64(8, 2**50, 1),
    ):
        with pytest.raises(PermissionDenied):
            call()
    assert ro.load_u64(8) == 2**50 and ro.load_u32(0) == 0
    ro.unmap()
    ro_handle.close()
    with shm.map(writable=False) as ro2:  # a handle with WRITE may still ask for less
        assert ro2.writable is False and ro2.load_u64(8) == 2**50
    shm.close()


@settings(max_examples=300, deadline=None)
@given(
    offset=st.integers(min_value=-16, max_value=PAGE + 16),
    value=st.integers(0, U64 - 1),
    width=st.sampled_from([4, 8]),
)
def test_any_offset_is_either_rejected_or_the_word_struct_sees(offset, value, width):
    shm = SharedMemory.create(PAGE)
    m = shm.map()
    try:
        fmt = "<I" if width == 4 else "<Q"
        value %= 2 ** (8 * width)
        load, store, add, cas = (
            (m.load_u32, m.store_u32, m.fetch_add_u32, m.compare_exchange_u32)
            if width == 4
            else (m.load_u64, m.store_u64, m.fetch_add_u64, m.compare_exchange_u64)
        )
        if 0 <= offset <= PAGE - width and offset % width == 0:
            store(offset, value)
            assert struct.unpack_from(fmt, m, offset)[0] == value == load(offset)
            assert add(offset, 1) == value
            assert cas(offset, (value + 1) % 2 ** (8 * width), 5) == (True, (value + 1) % 2 ** (8 * width))
            struct.pack_into(fmt, m, offset, 7)  # and a plain write is what it loads
            assert load(offset) == 7
            assert bytes(m[:offset]) + bytes(m[offset + width :]) == bytes(PAGE - width)
        else:
            for call in (
                lambda: load(offset),
                lambda: store(offset, value),
                lambda: add(offset, 1),
                lambda: cas(offset, value, value),
            ):
                with pytest.raises(InvalidAddress):
                    call()
    finally:
        m.unmap()
        shm.close()


def test_a_refused_unmap_leaves_the_atomics_working(region):
    m = region
    m.store_u32(0, 1)
    view = memoryview(m)
    with pytest.raises(MappingInUse, match="still alive"):
        m.unmap()  # it let go of its own views, tried, and took them back
    m.store_u32(0, 2)
    assert m.load_u32(0) == 2 and m.fetch_add_u64(8, 1) == 0 and m.load_u64(8) == 1
    view.release()


def test_a_mapping_made_directly_has_the_atomics_too(no_fd_leak):
    shm = SharedMemory.create(PAGE)
    direct = shm_module.Mapping(shm.fileno(), PAGE, flags=mmap.MAP_SHARED)
    direct.store_u64(0, 7)
    assert direct.fetch_add_u32(0, 1) == 7 and direct.load_u64(0) == 8
    direct.close()
    with pytest.raises(NotMapped):
        direct.load_u32(0)
    shm.close()


# -- a read-only consumer in another process -------------------------------------------


def test_a_consumer_given_a_read_only_handle_maps_it_read_only_and_follows_the_sequence(
    no_fd_leak,
):
    """The producer keeps its writable mapping and sends a read-only handle;
    the consumer calls plain ``map()``, waits on a WaitQueue (waiting never
    writes) and reads each record after an acquire load of the sequence."""
    a, b = Channel.create_pair()
    shm = SharedMemory.create(PAGE)
    m = shm.map()
    queue = WaitQueue.create(m, 8)
    records = 400  # record i: the u64 at 64 + 8 * i, written once

    def consumer() -> None:
        msg = b.recv(timeout=20)
        (handle,) = msg.handles
        assert not handle.rights & Rights.WRITE
        with pytest.raises(PermissionDenied):
            handle.map(writable=True)
        with handle.map() as ro, WaitQueue(ro, 8) as q:
            assert ro.writable is False
            with pytest.raises(PermissionDenied):
                ro.store_u64(0, 0)
            for i in range(1, records + 1):
                q.wait_until(lambda: ro.load_u64(0) >= i, timeout=20)
                assert ro[64 + 8 * i : 72 + 8 * i] == i.to_bytes(8, "little")  # before seq
            b.send(Message.with_data(1, b"done"), timeout=20)
        handle.close()

    pid = fork(consumer)
    msg = Message.new(0)
    msg.attach_handle(shm.duplicate(Rights.READ | Rights.MAP | Rights.TRANSFER))
    a.send(msg, timeout=20)
    for i in range(1, records + 1):
        m[64 + 8 * i : 72 + 8 * i] = i.to_bytes(8, "little")  # the record
        m.store_u64(0, i)  # then publish it
        queue.wake_all()
    assert a.recv(timeout=20).payload == b"done"
    assert join(pid) == 0
    queue.close()
    m.unmap()
    shm.close()
    a.close()
    b.close()


# -- close() against operations in other threads ---------------------------------------


def test_unmapping_while_other_threads_use_the_atomics_never_touches_unmapped_memory():
    """Threads hammer the atomics (the plain path and the pinned one) while the
    main thread unmaps: each operation either runs on mapped memory or raises
    NotMapped. A touch of unmapped memory would kill the child (SIGSEGV)."""

    def child() -> None:
        before = open_fds()
        for round in range(40):
            shm = SharedMemory.create(PAGE)
            m = shm.map()
            running = threading.Barrier(3)
            errors: list[BaseException] = []

            def hammer(kind: int) -> None:
                running.wait()
                try:
                    while True:
                        if kind:
                            m.fetch_add_u64(8, 1)
                            m.compare_exchange_u32(0, 0, 0)
                        else:
                            m.store_u32(4, m.load_u32(4) + 1)
                            m.load_u64(16)
                except NotMapped:
                    return
                except BaseException as e:  # pragma: no cover - reported below
                    errors.append(e)

            threads = [threading.Thread(target=hammer, args=(k,)) for k in (0, 1)]
            for t in threads:
                t.start()
            running.wait()
            if round % 2:  # half the rounds: unmap in the thick of it
                while m.load_u64(8) < 200:
                    pass
            while True:
                try:
                    m.unmap()
                    break
                except MappingInUse:  # pragma: no cover - only if an op stalled a second
                    continue
            for t in threads:
                t.join(10)
            assert not errors, errors
            assert not m._busy
            shm.close()
        assert open_fds() == before

    run_in_child(child, timeout=90)


# -- the forced libatomic run -------------------------------------------------------------


@pytest.mark.skipif(FORCED == "libatomic", reason="this is the forced run")
@pytest.mark.timeout(300)
def test_the_module_passes_again_with_the_libatomic_path_forced():
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, **{atomic.ENV_VAR: "libatomic"})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", os.path.abspath(__file__)],
        cwd=os.path.dirname(here),
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " skipped" in result.stdout  # (this test, there)
