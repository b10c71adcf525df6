"""Futex, FutexWord, the raw futex(2) layer and the atomics, across real processes."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import struct
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _proc import exited, fd_count, fork, join, join_all, wait_futex_sleep
from redstone_ipc.errors import (
    InvalidAddress,
    MappingInUse,
    NotMapped,
    ShmError,
    TimedOut,
    WouldBlock,
)
from redstone_ipc.futex.futex import WAKE_ALL, Futex, FutexWord
from redstone_ipc.linux import atomic
from redstone_ipc.linux.futex import futex_wait, futex_wake
from redstone_ipc.shm.shm import Mapping, SharedMemory

pytestmark = pytest.mark.timeout(60)

PAGE = mmap.PAGESIZE


@pytest.fixture
def region():
    """A fresh one-page region and a writable mapping of it; fds checked flat."""
    before = fd_count()
    shm = SharedMemory.create(PAGE)
    m = shm.map()
    yield shm, m
    if not m.closed:
        m.unmap()
    shm.close()
    assert fd_count() == before


def _u32(m: Mapping, offset: int) -> int:
    return struct.unpack_from("I", m, offset)[0]


def _set_u32(m: Mapping, offset: int, value: int) -> None:
    atomic.store_u32(m.word_address(offset), value)


# -- wake counts ---------------------------------------------------------


def test_wake_returns_the_real_number_woken_with_three_waiting_processes(region):
    shm, m = region
    address = m.word_address(0)

    def waiter() -> None:
        Futex.wait(m, 0, 0, timeout=30)  # bounded: a bug fails, never hangs

    assert Futex.wake(m, 0, 5) == 0  # nobody there: the seed would say 5
    pids = [fork(waiter) for _ in range(3)]
    try:
        for pid in pids:
            wait_futex_sleep(pid, address)
        assert Futex.wake(m, 0, 2) == 2
        # Exactly two children end; the third sleeps on.
        deadline = time.monotonic() + 10
        while sum(exited(p) for p in pids) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        remaining = [p for p in pids if not exited(p)]
        assert len(remaining) == 1
        wait_futex_sleep(remaining[0], address)
        assert Futex.wake(m, 0, 5) == 1
        assert Futex.wake(m, 0, 5) == 0
    finally:
        codes = join_all(pids)
    assert codes == [0, 0, 0]


def test_wake_count_zero_wakes_nobody_and_negative_is_rejected(region):
    shm, m = region
    address = m.word_address(0)
    pid = fork(lambda: Futex.wait(m, 0, 0, timeout=30))
    try:
        wait_futex_sleep(pid, address)
        assert Futex.wake(m, 0, 0) == 0  # the raw syscall would wake one
        with pytest.raises(ValueError):
            Futex.wake(m, 0, -1)
        assert Futex.wake(m, 0, WAKE_ALL) == 1
    finally:
        assert join(pid) == 0


# -- WouldBlock, TimedOut --------------------------------------------------


def test_wait_on_a_changed_word_would_block(region):
    shm, m = region
    _set_u32(m, 8, 7)
    t0 = time.monotonic()
    with pytest.raises(WouldBlock):
        Futex.wait(m, 8, 3)
    with pytest.raises(WouldBlock):
        Futex.wait(m, 8, 3, timeout=5)
    assert time.monotonic() - t0 < 1  # it never slept
    with pytest.raises(BlockingIOError):  # WouldBlock is a BlockingIOError too
        Futex.wait(m, 8, 0)


def test_wait_times_out(region):
    shm, m = region
    t0 = time.monotonic()
    with pytest.raises(TimedOut):
        Futex.wait(m, 0, 0, timeout=0.2)
    assert time.monotonic() - t0 >= 0.2
    with pytest.raises(TimeoutError):  # TimedOut is a TimeoutError
        Futex.wait(m, 0, 0, timeout=0)
    with pytest.raises(TimedOut):
        Futex.wait(m, 0, 0, timeout=-1)  # negative: just check


def test_wait_and_wake_work_on_a_read_only_mapping(region):
    shm, m = region
    ro = shm.map(writable=False)
    try:
        with pytest.raises(TimedOut):
            Futex.wait(ro, 0, 0, timeout=0.01)
        assert Futex.wake(ro, 0) == 0
        pid = fork(lambda: Futex.wait(ro, 4, 0, timeout=30))
        wait_futex_sleep(pid, ro.word_address(4))
        # Different virtual addresses, same page: the futex is shared.
        assert Futex.wake(m, 4) == 1
        assert join(pid) == 0
    finally:
        ro.unmap()


def test_expected_must_be_a_u32(region):
    shm, m = region
    for bad in (-1, 2**32):
        with pytest.raises(ValueError):
            Futex.wait(m, 0, bad)
    _set_u32(m, 0, 0xFFFFFFFF)
    with pytest.raises(TimedOut):
        Futex.wait(m, 0, 0xFFFFFFFF, timeout=0)


# -- signals -------------------------------------------------------------

# Child-side record in the region: [count:u32 pad][t0:f64][t_handler:f64][t_end:f64][outcome:u32]
_CNT, _T0, _TH, _TEND, _OUT = 64, 72, 80, 88, 96


def test_signal_runs_the_handler_and_the_wait_resumes_with_the_remaining_time(region):
    shm, m = region
    address = m.word_address(0)
    timeout = 1.5
    signal_at = 0.6  # had the wait restarted with the full timeout: >= 2.1 s

    def child() -> None:
        def handler(signum, frame):
            struct.pack_into("d", m, _TH, time.monotonic())
            atomic.fetch_add_u32(m.word_address(_CNT), 1)

        signal.signal(signal.SIGUSR1, handler)
        struct.pack_into("d", m, _T0, time.monotonic())
        try:
            Futex.wait(m, 0, 0, timeout=timeout)
        except TimedOut:
            struct.pack_into("I", m, _OUT, 1)
        struct.pack_into("d", m, _TEND, time.monotonic())

    pid = fork(child)
    try:
        wait_futex_sleep(pid, address)
        (t0,) = struct.unpack_from("d", m, _T0)
        delay = t0 + signal_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # the timing is what is under test
        os.kill(pid, signal.SIGUSR1)
    finally:
        assert join(pid) == 0
    t0, t_handler, t_end = struct.unpack_from("ddd", m, _T0)
    assert _u32(m, _CNT) == 1  # the Python handler ran ...
    assert t_handler < t0 + timeout  # ... during the wait, not after it
    assert _u32(m, _OUT) == 1  # the wait went on and timed out
    assert timeout <= t_end - t0 < timeout + 0.5, t_end - t0


def _wait_on_zero(form: str, m, timeout=None) -> None:
    """Sleep on word 0 while it holds 0, through ``Futex.wait`` or a ``FutexWord``."""
    if form == "Futex.wait":
        Futex.wait(m, 0, 0, timeout=timeout)
    else:
        with Futex.word(m, 0) as word:
            assert word.wait(0, timeout=timeout) is True


@pytest.mark.parametrize("form", ["Futex.wait", "FutexWord"])
def test_a_signal_during_an_wait_on_zero_runs_the_handler_and_sleeps_on(region, form):
    shm, m = region
    address = m.word_address(0)

    def child() -> None:
        signal.signal(signal.SIGUSR1, lambda *_: atomic.fetch_add_u32(m.word_address(_CNT), 1))
        _wait_on_zero(form, m)  # returns only when woken
        struct.pack_into("I", m, _OUT, 1 + (_u32(m, 4) == 1))

    pid = fork(child)
    try:
        wait_futex_sleep(pid, address)
        os.kill(pid, signal.SIGUSR1)
        # The handler runs, then the child goes back to sleep on the word.
        deadline = time.monotonic() + 10
        while _u32(m, _CNT) == 0:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        wait_futex_sleep(pid, address)
        assert _u32(m, _OUT) == 0  # still waiting
        _set_u32(m, 4, 1)  # a marker the child checks after waking
        assert Futex.wake(m, 0) == 1
    finally:
        assert join(pid) == 0
    assert _u32(m, _OUT) == 2


@pytest.mark.parametrize("form", ["Futex.wait", "FutexWord"])
@pytest.mark.parametrize("timeout", [None, 30.0])
@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGINT])
def test_an_exception_from_a_signal_handler_propagates_out_of_wait(region, signum, timeout, form):
    shm, m = region
    address = m.word_address(0)

    class Boom(Exception):
        pass

    def child() -> None:
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            expected: type[BaseException] = KeyboardInterrupt
        else:

            def handler(signum, frame):
                raise Boom()

            signal.signal(signum, handler)
            expected = Boom
        try:
            _wait_on_zero(form, m, timeout)
        except expected:
            struct.pack_into("I", m, _OUT, 1)

    pid = fork(child)
    try:
        wait_futex_sleep(pid, address)
        os.kill(pid, signum)
    finally:
        assert join(pid) == 0
    assert _u32(m, _OUT) == 1


# -- addresses -----------------------------------------------------------


@pytest.mark.parametrize("offset", [1, 2, 3, 6, -4, PAGE, PAGE - 2, PAGE + 4, 1 << 40])
def test_misaligned_or_out_of_range_offsets_are_invalid(region, offset):
    shm, m = region
    with pytest.raises(InvalidAddress):
        Futex.wait(m, offset, 0, timeout=0)
    with pytest.raises(InvalidAddress):
        Futex.wake(m, offset)
    with pytest.raises(InvalidAddress):
        FutexWord(m, offset)


@settings(max_examples=200, deadline=None)
@given(offset=st.integers(min_value=-64, max_value=PAGE + 64), value=st.integers(0, 2**32 - 1))
def test_any_offset_is_either_rejected_or_a_real_word(offset, value):
    shm = SharedMemory.create(PAGE)
    m = shm.map()
    try:
        valid = 0 <= offset <= PAGE - 4 and offset % 4 == 0
        if valid:
            _set_u32(m, offset, value)
            with pytest.raises(WouldBlock):
                Futex.wait(m, offset, value ^ 1)
            with pytest.raises(TimedOut):
                Futex.wait(m, offset, value, timeout=0)
            assert Futex.wake(m, offset, 1) == 0
        else:
            with pytest.raises(InvalidAddress):
                Futex.wait(m, offset, value, timeout=0)
            with pytest.raises(InvalidAddress):
                Futex.wake(m, offset, 1)
    finally:
        m.unmap()
        shm.close()


@pytest.mark.parametrize(
    "thing",
    [mmap.mmap(-1, PAGE), bytearray(PAGE), memoryview(bytearray(PAGE)), None, 12345],
    ids=["mmap", "bytearray", "memoryview", "None", "int"],
)
def test_memory_that_is_not_a_mapping_is_an_invalid_address(thing):
    with pytest.raises(InvalidAddress):
        Futex.wait(thing, 0, 0, timeout=0)
    with pytest.raises(InvalidAddress):
        Futex.wake(thing, 0)
    with pytest.raises(InvalidAddress):
        FutexWord(thing, 0)


def test_an_unmapped_mapping_is_not_mapped(region):
    shm, m = region
    assert Futex.wake(m, 0) == 0  # its address is cached now: unmapping must forget it
    m.unmap()
    with pytest.raises(NotMapped):
        Futex.wait(m, 0, 0, timeout=0)
    with pytest.raises(NotMapped):
        Futex.wake(m, 0)


def test_the_mapping_cannot_be_unmapped_under_a_sleeping_waiter(region):
    shm, m = region
    address = m.word_address(0)
    outcome: list[BaseException | None] = []
    started = threading.Event()
    tid: list[int] = []

    def wait() -> None:
        tid.append(threading.get_native_id())
        started.set()
        try:
            Futex.wait(m, 0, 0, timeout=30)
            outcome.append(None)
        except BaseException as e:  # pragma: no cover - reported below
            outcome.append(e)

    t = threading.Thread(target=wait)
    t.start()
    started.wait()
    wait_futex_sleep(os.getpid(), address, tid=tid[0])
    with pytest.raises(MappingInUse, match="a thread is asleep in Futex.wait on the word at offset 0"):
        m.unmap()
    with pytest.raises(BufferError):  # mmap's own close() refuses too
        m.close()
    assert Futex.wake(m, 0) == 1
    t.join(10)
    assert outcome == [None]
    m.unmap()  # nothing pins it any more


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_child_forked_while_a_thread_sleeps_in_futex_wait_can_unmap(region):
    """The sleeping thread does not exist in the child: its entry must not
    keep the child's copy of the mapping in use."""
    shm, m = region
    address = m.word_address(0)
    tid: list[int] = []
    started = threading.Event()

    def wait() -> None:
        tid.append(threading.get_native_id())
        started.set()
        Futex.wait(m, 0, 0, timeout=30)

    t = threading.Thread(target=wait)
    t.start()
    started.wait()
    wait_futex_sleep(os.getpid(), address, tid=tid[0])
    try:
        assert join(fork(m.unmap)) == 0
        with pytest.raises(MappingInUse):
            m.unmap()  # here the thread still sleeps
    finally:
        Futex.wake(m, 0)
        t.join(10)


# -- FutexWord -----------------------------------------------------------


def test_futex_word_waits_wakes_pins_and_closes(region):
    shm, m = region
    word = Futex.word(m, 12)
    assert word.address == m.word_address(12)
    assert word.wait(1) is False, "the word holds 0: no sleep, no exception"
    assert word.wait(1, timeout=5) is False
    with pytest.raises(TimedOut):
        word.wait(0, timeout=0.01)
    pid = fork(lambda: word.wait(0, timeout=30))
    wait_futex_sleep(pid, word.address)
    assert word.wake(3) == 1
    assert join(pid) == 0
    with pytest.raises(ShmError):
        m.unmap()  # pinned
    word.close()
    word.close()  # idempotent
    with pytest.raises(NotMapped):
        word.wait(0)
    with pytest.raises(NotMapped):
        word.wake()
    m.unmap()


# -- ping-pong: no lost wake-ups -----------------------------------------


def _ping_pong(m: Mapping, me: int, rounds: int) -> None:
    """Take turns on word 0: it holds the number of hand-overs so far; a side
    may move when that number's parity is its own."""
    address = m.word_address(0)
    for i in range(rounds):
        mine = 2 * i + me
        while True:
            seen = atomic.load_u32(address)
            if seen == mine:
                break
            try:
                Futex.wait(m, 0, seen)
            except WouldBlock:
                pass
        atomic.store_u32(address, mine + 1)
        Futex.wake(m, 0, 1)


@pytest.mark.timeout(120)
def test_100k_ping_pongs_between_two_processes_lose_no_wake_up(region):
    shm, m = region
    rounds = 100_000
    t0 = time.perf_counter()
    # Not pinned to CPUs: on a noisy 2-CPU machine a pinned side waits for a
    # busy CPU. Wherever the scheduler puts them, a lost wake-up hangs.
    pid = fork(_ping_pong, m, 1, rounds)
    try:
        _ping_pong(m, 0, rounds)
    finally:
        assert join(pid, timeout=100) == 0
    elapsed = time.perf_counter() - t0
    assert _u32(m, 0) == 2 * rounds
    print(f"\n{rounds} futex round trips in {elapsed:.2f} s ({elapsed / rounds * 1e6:.1f} us each)")


# -- the raw layer and the atomics ---------------------------------------


def test_raw_futex_on_plain_shared_anonymous_memory_across_fork():
    mem = mmap.mmap(-1, PAGE)  # MAP_SHARED | MAP_ANONYMOUS: shared with children
    cell = ctypes.c_uint32.from_buffer(mem)
    address = ctypes.addressof(cell)
    try:
        pid = fork(lambda: futex_wait(address, 0, 30))
        try:
            wait_futex_sleep(pid, address)
            cell.value = 1
            assert futex_wake(address, 10) == 1
        finally:
            assert join(pid) == 0
        with pytest.raises(InvalidAddress):
            futex_wait(address + 2, 0, 0)  # EINVAL: misaligned
        with pytest.raises(WouldBlock):
            futex_wait(ctypes.c_void_p(address), 0)
        assert futex_wake(address, 0) == 0
    finally:
        del cell
        mem.close()
    # EFAULT: nothing mapped at address 4096 (mmap_min_addr keeps it empty)
    with pytest.raises(InvalidAddress):
        futex_wait(4096, 0, 0)
    with pytest.raises(InvalidAddress):
        futex_wake(4096, 1)


def test_atomics_are_atomic_across_processes(region):
    shm, m = region
    counter = atomic.ptr(m.word_address(0))
    swaps = atomic.ptr(m.word_address(4))
    n = 20_000

    def work() -> None:
        for _ in range(n):
            atomic.fetch_add_u32(counter, 1)
            while True:  # a CAS increment loop
                v = atomic.load_u32(swaps)
                ok, seen = atomic.cas_u32(swaps, v, v + 1)
                if ok:
                    break
                assert seen != v

    pids = [fork(work) for _ in range(2)]
    work()
    assert join_all(pids) == [0, 0]
    assert atomic.load_u32(counter) == 3 * n
    assert atomic.load_u32(swaps) == 3 * n


def test_atomic_operations_and_wrap_around(region):
    shm, m = region
    a = m.word_address(16)  # a plain int address works too
    atomic.store_u32(a, 0xFFFFFFFF)
    assert atomic.fetch_add_u32(a, 1) == 0xFFFFFFFF
    assert atomic.load_u32(a) == 0
    assert atomic.fetch_add_u32(a, -1) == 0
    assert atomic.load_u32(a) == 0xFFFFFFFF
    assert atomic.cas_u32(a, 0, 5) == (False, 0xFFFFFFFF)
    assert atomic.cas_u32(a, 0xFFFFFFFF, 5) == (True, 0xFFFFFFFF)
    assert atomic.exchange_u32(a, 0b1010) == 5
    assert atomic.fetch_or_u32(a, 0b0101) == 0b1010
    assert atomic.fetch_and_u32(a, ~0b0010) == 0b1111
    assert atomic.load_u32(a) == 0b1101
    assert _u32(m, 16) == 0b1101
