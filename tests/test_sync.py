"""Mutex, Event, Semaphore, Condition and WaitQueue between real processes."""

from __future__ import annotations

import ctypes
import mmap
import os
import signal
import struct
import threading
import time

import pytest

from _proc import fd_count, fork, join, join_all, on_cpu, wait_futex_sleep
from redstone_ipc.errors import InvalidAddress, NotMapped, PermissionDenied, ShmError, TimedOut
from redstone_ipc.linux import atomic, robust
from redstone_ipc.sched.wait import WaitQueue
from redstone_ipc.shm.shm import Mapping, SharedMemory
from redstone_ipc.sync.condition import Condition
from redstone_ipc.sync.event import Event
from redstone_ipc.sync.mutex import Mutex
from redstone_ipc.sync.semaphore import Semaphore

pytestmark = pytest.mark.timeout(60)

PAGE = mmap.PAGESIZE

# A layout for the tests: primitives first, data after.
MUTEX = 0  # Mutex.SIZE = 64
MUTEX2 = 64
EVENT = 128  # "the holder has the lock"
FOREVER = 136  # an Event nobody sets: a child parks on it
SEM = 144
WQ = 152
COND = 160
DATA = 256  # free-form u32/f64 slots from here on


@pytest.fixture
def region():
    """A fresh region with a writable mapping; fds and pins checked at the end."""
    before = fd_count()
    shm = SharedMemory.create(2 * PAGE)
    m = shm.map()
    yield shm, m
    if not m.closed:
        m.unmap()  # fails (ShmError) if a test left a primitive pinning it
    shm.close()
    assert fd_count() == before


def u32(m: Mapping, offset: int) -> int:
    return atomic.load_u32(m.word_address(offset))


def slot(i: int) -> int:
    return DATA + 4 * i


# -- Mutex: mutual exclusion -----------------------------------------------


def _increment(m: Mapping, times: int, cpu: int | None = None) -> None:
    if cpu is not None:
        on_cpu(cpu)  # the sides run in parallel: real contention
    lock = Mutex(m, MUTEX)
    counter = memoryview(m).cast("I")
    index = DATA // 4
    try:
        for _ in range(times):
            with lock:
                counter[index] = counter[index] + 1  # a plain, non-atomic RMW
    finally:
        counter.release()
        lock.close()


@pytest.mark.timeout(180)
def test_two_processes_increment_a_shared_counter_100k_times_each_under_the_mutex(region):
    shm, m = region
    Mutex.create(m, MUTEX).close()
    times = 100_000
    t0 = time.perf_counter()
    pid = fork(_increment, m, times, 1)
    affinity = os.sched_getaffinity(0)
    try:
        _increment(m, times, 0)
    finally:
        os.sched_setaffinity(0, affinity)
        assert join(pid, timeout=170) == 0
    elapsed = time.perf_counter() - t0
    assert u32(m, DATA) == 2 * times
    assert u32(m, MUTEX) == 0  # unlocked, no waiter bit left behind
    print(f"\n2 x {times} locked increments in {elapsed:.2f} s")


def test_the_mutex_really_excludes_three_processes(region):
    shm, m = region
    Mutex.create(m, MUTEX).close()
    times = 5_000
    pids = [fork(_increment, m, times, cpu) for cpu in range(3)]
    assert join_all(pids, timeout=50) == [0, 0, 0]
    assert u32(m, DATA) == 3 * times


# -- Mutex: robustness (SIGKILL of the holder) --------------------------------


def _hold_and_park(m: Mapping, *mutex_offsets: int) -> None:
    """Take the locks, say so, and park (asleep) until killed."""
    locks = [Mutex(m, off) for off in mutex_offsets]
    for lock in locks:
        assert lock.acquire(timeout=10)
    Event(m, EVENT).set()
    Event(m, FOREVER).wait(60)
    raise AssertionError("the holder was not killed")


def _take_over(m: Mapping, index: int) -> None:
    lock = Mutex(m, MUTEX)
    assert lock.acquire(timeout=30)
    try:
        struct.pack_into("I", m, slot(index), 1 + lock.owner_died)  # 1: ok, 2: ok + owner died
    finally:
        lock.release()
        lock.close()


def test_sigkill_of_the_holder_lets_the_waiters_in_and_owner_died_is_seen_exactly_once(region):
    shm, m = region
    lock = Mutex.create(m, MUTEX)
    held = Event.create(m, EVENT)
    Event.create(m, FOREVER)
    holder = fork(_hold_and_park, m, MUTEX)
    assert held.wait(10)
    owner = u32(m, MUTEX) & robust.OWNER_MASK
    assert owner == holder  # a single-threaded child: its TID is its PID
    waiters = [fork(_take_over, m, i) for i in range(3)]
    try:
        for pid in waiters:  # all three asleep on the lock word, behind the holder
            wait_futex_sleep(pid, m.word_address(MUTEX))
        os.kill(holder, signal.SIGKILL)
        assert join(holder) == -signal.SIGKILL
    finally:
        codes = join_all(waiters)
    assert codes == [0, 0, 0]
    outcomes = [u32(m, slot(i)) for i in range(3)]
    assert sorted(outcomes) == [1, 1, 2], outcomes  # every waiter got in; one saw the death
    assert lock.acquire(timeout=5)
    assert lock.owner_died is False  # reported once, then the lock is normal again
    lock.release()
    lock.close()
    held.close()


def test_sigkill_with_nobody_waiting_is_reported_to_the_next_acquirer(region):
    shm, m = region
    lock = Mutex.create(m, MUTEX)
    lock2 = Mutex.create(m, MUTEX2)
    held = Event.create(m, EVENT)
    Event.create(m, FOREVER)
    holder = fork(_hold_and_park, m, MUTEX, MUTEX2)  # two entries on its robust list
    assert held.wait(10)
    os.kill(holder, signal.SIGKILL)
    assert join(holder) == -signal.SIGKILL
    assert u32(m, MUTEX) == robust.FUTEX_OWNER_DIED  # the kernel's mark, TID cleared
    assert u32(m, MUTEX2) == robust.FUTEX_OWNER_DIED
    for mutex in (lock, lock2):
        assert mutex.acquire(timeout=0)
        assert mutex.owner_died is True
        mutex.release()
        assert mutex.acquire(timeout=0)
        assert mutex.owner_died is False
        mutex.release()
        mutex.close()
    held.close()


def test_a_thread_that_ends_holding_the_lock_releases_it_through_the_kernel(region):
    shm, m = region
    lock = Mutex.create(m, MUTEX)
    t = threading.Thread(target=lambda: lock.acquire())
    t.start()
    t.join()  # the Python thread is done; the kernel may still be reaping it
    assert lock.acquire(timeout=5)  # sleeps until the kernel marks the word
    assert lock.owner_died is True
    lock.release()
    lock.close()


def test_a_fork_child_does_not_inherit_the_parents_ownership(region):
    shm, m = region
    lock = Mutex.create(m, MUTEX)
    assert lock.acquire()
    assert robust.current().entries() == [m.word_address(MUTEX) + robust.ENTRY_OFFSET]

    def child() -> None:
        # glibc gave the child an empty robust list; our per-thread state is new.
        assert robust.current().tid == os.getpid()
        assert robust.current().entries() == []
        assert lock.locked() and not lock.owned()
        with pytest.raises(RuntimeError):
            lock.release()
        assert lock.acquire(timeout=0) is False

    assert join(fork(child)) == 0
    lock.release()
    assert robust.current().entries() == []
    lock.close()


def test_a_waiter_killed_in_its_sleep_does_not_wedge_the_lock(region):
    shm, m = region
    lock = Mutex.create(m, MUTEX)
    assert lock.acquire()
    victim = fork(lambda: Mutex(m, MUTEX).acquire(timeout=30))
    survivor = fork(_take_over, m, 0)
    for pid in (victim, survivor):
        wait_futex_sleep(pid, m.word_address(MUTEX))
    os.kill(victim, signal.SIGKILL)
    assert join(victim) == -signal.SIGKILL
    lock.release()  # wakes one sleeper: the kernel skips the dead one
    assert join(survivor) == 0
    assert u32(m, slot(0)) == 1
    lock.close()


def test_keyboard_interrupt_while_waiting_for_the_lock_leaves_it_clean(region):
    shm, m = region
    lock = Mutex.create(m, MUTEX)
    assert lock.acquire()

    def child() -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        mine = Mutex(m, MUTEX)
        rl = robust.current()
        with pytest.raises(KeyboardInterrupt):
            mine.acquire(timeout=30)
        assert rl.entries() == []  # nothing linked, list_op_pending cleared
        assert not mine.owned()
        struct.pack_into("I", m, slot(0), 1)
        assert mine.acquire(timeout=30)  # and it still works afterwards
        assert rl.entries() == [m.word_address(MUTEX) + robust.ENTRY_OFFSET]
        mine.release()
        assert rl.entries() == []

    pid = fork(child)
    try:
        wait_futex_sleep(pid, m.word_address(MUTEX))
        os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        while u32(m, slot(0)) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        wait_futex_sleep(pid, m.word_address(MUTEX))
        lock.release()
    finally:
        assert join(pid) == 0
    lock.close()


def test_fallback_without_a_robust_list_detects_the_dead_owner(region):
    shm, m = region
    lock = Mutex.create(m, MUTEX)
    held = Event.create(m, EVENT)
    Event.create(m, FOREVER)

    def holder() -> None:
        robust.AVAILABLE = False  # as on a kernel that refuses robust lists
        robust._after_fork_in_child()
        assert not robust.current().enabled
        _hold_and_park(m, MUTEX)

    pid = fork(holder)
    try:
        assert held.wait(10)
        assert u32(m, MUTEX) & robust.NOT_ROBUST
        os.kill(pid, signal.SIGKILL)
        # Not reaped yet: a zombie owner counts as dead.
        t0 = time.monotonic()
        assert lock.acquire(timeout=10)
        assert lock.owner_died is True
        assert time.monotonic() - t0 < 5
        lock.release()
    finally:
        assert join(pid) == -signal.SIGKILL
    lock.close()
    held.close()


def test_our_entries_share_the_robust_list_with_glibc_robust_mutexes(region):
    """Interleave our Mutex with a glibc robust, process-shared pthread mutex:
    both keep working, and a SIGKILL marks both."""
    shm, m = region
    libc = ctypes.CDLL(None, use_errno=True)
    pthread_off = 512  # sizeof(pthread_mutex_t) <= 48 on Linux 64-bit
    attr = ctypes.create_string_buffer(64)
    pmutex = ctypes.c_void_p(m.word_address(pthread_off))
    assert libc.pthread_mutexattr_init(attr) == 0
    assert libc.pthread_mutexattr_setpshared(attr, 1) == 0  # PTHREAD_PROCESS_SHARED
    assert libc.pthread_mutexattr_setrobust(attr, 1) == 0  # PTHREAD_MUTEX_ROBUST
    assert libc.pthread_mutex_init(pmutex, attr) == 0
    ours = Mutex.create(m, MUTEX)
    ours2 = Mutex.create(m, MUTEX2)
    rl = robust.current()
    assert rl.entries() == []
    # lock A, lock P, lock B; unlock A (from the middle), P, B: every order
    assert ours.acquire()
    assert libc.pthread_mutex_lock(pmutex) == 0
    assert ours2.acquire()
    assert len(rl.entries()) == 3
    ours.release()
    assert libc.pthread_mutex_unlock(pmutex) == 0
    ours2.release()
    assert rl.entries() == []
    assert libc.pthread_mutex_lock(pmutex) == 0
    assert ours.acquire()
    assert libc.pthread_mutex_unlock(pmutex) == 0  # glibc unlinks with our entry in front
    assert rl.entries() == [m.word_address(MUTEX) + robust.ENTRY_OFFSET]
    ours.release()
    assert rl.entries() == []

    held = Event.create(m, EVENT)
    Event.create(m, FOREVER)

    def child() -> None:
        a, b = Mutex(m, MUTEX), Mutex(m, MUTEX2)
        assert a.acquire()
        assert libc.pthread_mutex_lock(pmutex) == 0
        assert b.acquire()
        a.release()
        held.set()
        Event(m, FOREVER).wait(60)

    pid = fork(child)
    assert held.wait(10)
    os.kill(pid, signal.SIGKILL)
    assert join(pid) == -signal.SIGKILL
    EOWNERDEAD = 130
    assert libc.pthread_mutex_lock(pmutex) == EOWNERDEAD
    assert libc.pthread_mutex_consistent(pmutex) == 0
    assert libc.pthread_mutex_unlock(pmutex) == 0
    assert ours.acquire(timeout=0) and ours.owner_died is False  # released before death
    assert ours2.acquire(timeout=0) and ours2.owner_died is True
    ours.release()
    ours2.release()
    assert rl.entries() == []
    libc.pthread_mutex_destroy(pmutex)
    ours.close()
    ours2.close()
    held.close()


# -- Mutex: contract details ---------------------------------------------


def test_acquire_times_out_and_tries(region):
    shm, m = region
    lock = Mutex.create(m, MUTEX)
    held = Event.create(m, EVENT)
    Event.create(m, FOREVER)
    pid = fork(_hold_and_park, m, MUTEX)
    try:
        assert held.wait(10)
        assert lock.locked() and not lock.owned()
        assert lock.acquire(timeout=0) is False
        t0 = time.monotonic()
        assert lock.acquire(timeout=0.2) is False
        assert time.monotonic() - t0 >= 0.2
        with pytest.raises(RuntimeError):
            lock.release()  # not ours
    finally:
        os.kill(pid, signal.SIGKILL)
        join(pid)
    lock.close()
    held.close()


def test_mutex_misuse_is_reported(region):
    shm, m = region
    lock = Mutex.create(m, MUTEX)
    with pytest.raises(RuntimeError):
        lock.release()  # not held
    with lock:
        assert lock.owned()
        with pytest.raises(RuntimeError):
            lock.acquire()  # not reentrant: an error, not a deadlock
        with pytest.raises(RuntimeError):
            lock.close()  # held
    assert not lock.locked()
    with pytest.raises(ShmError):
        m.unmap()  # the mutex pins the mapping
    lock.close()
    lock.close()
    with pytest.raises(NotMapped):
        lock.acquire()
    with pytest.raises(InvalidAddress):
        Mutex(m, 4)  # must be 8-aligned
    with pytest.raises(InvalidAddress):
        Mutex(m, len(m) - 32)  # 64 bytes do not fit
    with pytest.raises(InvalidAddress):
        Mutex(bytearray(4096), 0)  # type: ignore[arg-type]
    ro = shm.map(writable=False)
    try:
        for make in (
            lambda: Mutex(ro, MUTEX),
            lambda: Event(ro, EVENT),
            lambda: Semaphore(ro, SEM),
            lambda: Condition(ro, COND, lock),
        ):
            with pytest.raises(PermissionDenied):
                make()
    finally:
        ro.unmap()


# -- Event ---------------------------------------------------------------


def test_event_set_wakes_every_waiting_process(region):
    shm, m = region
    event = Event.create(m, EVENT)
    assert not event.is_set()

    def waiter(i: int) -> None:
        struct.pack_into("I", m, slot(i), 1 + Event(m, EVENT).wait(timeout=30))

    pids = [fork(waiter, i) for i in range(3)]
    try:
        for pid in pids:
            wait_futex_sleep(pid, m.word_address(EVENT))
        event.set()
        assert event.is_set()
    finally:
        assert join_all(pids) == [0, 0, 0]
    assert [u32(m, slot(i)) for i in range(3)] == [2, 2, 2]
    assert event.wait(0) is True
    event.clear()
    assert event.wait(0.05) is False
    event.close()


def test_a_set_undone_by_clear_still_releases_the_waiters(region):
    shm, m = region
    event = Event.create(m, EVENT)
    pid = fork(lambda: struct.pack_into("I", m, slot(0), 1 + Event(m, EVENT).wait(30)))
    wait_futex_sleep(pid, m.word_address(EVENT))
    event.set()
    event.clear()  # before the waiter got to run
    assert join(pid) == 0
    assert u32(m, slot(0)) == 2  # like threading.Event: the set was seen
    assert not event.is_set()
    event.close()
    Event.create(m, EVENT, set=True).close()
    assert Event(m, EVENT).is_set()


# -- Semaphore -----------------------------------------------------------


def test_semaphore_release_wakes_waiting_processes(region):
    shm, m = region
    sem = Semaphore.create(m, SEM, 0)

    def consumer() -> None:
        assert Semaphore(m, SEM).acquire(timeout=30)

    pids = [fork(consumer) for _ in range(3)]
    try:
        for pid in pids:
            wait_futex_sleep(pid, m.word_address(SEM))
        sem.release(3)
    finally:
        assert join_all(pids) == [0, 0, 0]
    assert sem.value == 0
    assert sem.acquire(timeout=0) is False
    t0 = time.monotonic()
    assert sem.acquire(timeout=0.1) is False
    assert time.monotonic() - t0 >= 0.1
    sem.close()


def test_semaphore_bounds_concurrency_across_processes(region):
    shm, m = region
    Semaphore.create(m, SEM, 2).close()
    inside, peak = slot(0), slot(1)

    def worker() -> None:
        sem = Semaphore(m, SEM)
        now_inside = atomic.ptr(m.word_address(inside))
        high = atomic.ptr(m.word_address(peak))
        for _ in range(300):
            with sem:
                n = atomic.fetch_add_u32(now_inside, 1) + 1
                seen = atomic.load_u32(high)
                while n > seen:
                    ok, seen = atomic.cas_u32(high, seen, n)
                    if ok:
                        break
                atomic.fetch_add_u32(now_inside, -1)
        sem.close()

    pids = [fork(worker) for _ in range(4)]
    assert join_all(pids, timeout=50) == [0] * 4
    assert 1 <= u32(m, peak) <= 2
    assert u32(m, inside) == 0
    assert Semaphore(m, SEM).value == 2


def test_semaphore_contract_details(region):
    shm, m = region
    sem = Semaphore(m, SEM, value=1)
    assert sem.value == 1
    with pytest.raises(ValueError):
        sem.release(0)
    with pytest.raises(ValueError):
        sem.release(2**32 - 1)  # would overflow the u32 count: nothing changes
    assert sem.value == 1
    with pytest.raises(ValueError):
        Semaphore(m, SEM, value=-1)
    assert sem.acquire(0) and not sem.acquire(0)
    sem.release()
    sem.close()
    with pytest.raises(NotMapped):
        sem.acquire()


# -- WaitQueue -----------------------------------------------------------


def _wq_ping_pong(m: Mapping, me: int, rounds: int) -> None:
    on_cpu(me)
    queue = WaitQueue(m, WQ)
    turn = m.word_address(slot(0))
    for i in range(rounds):
        mine = 2 * i + me
        queue.wait_until(lambda: atomic.load_u32(turn) == mine, timeout=30)
        atomic.store_u32(turn, mine + 1)  # make the other side's predicate true ...
        queue.wake_all()  # ... then wake
    queue.close()


@pytest.mark.timeout(120)
def test_waitqueue_loses_no_wake_up_in_20k_hand_overs(region):
    shm, m = region
    WaitQueue.create(m, WQ).close()
    rounds = 20_000
    pid = fork(_wq_ping_pong, m, 1, rounds)
    affinity = os.sched_getaffinity(0)
    try:
        _wq_ping_pong(m, 0, rounds)
    finally:
        os.sched_setaffinity(0, affinity)
        assert join(pid, timeout=100) == 0
    assert u32(m, slot(0)) == 2 * rounds


def test_waitqueue_wakes_sleepers_even_on_read_only_mappings(region):
    shm, m = region
    queue = WaitQueue.create(m, WQ)
    ro = shm.map(writable=False)
    flag = slot(0)

    def waiter(i: int) -> None:
        q = WaitQueue(ro, WQ)
        value = q.wait_until(lambda: struct.unpack_from("I", ro, flag)[0], timeout=30)
        struct.pack_into("I", m, slot(1 + i), value)
        with pytest.raises(PermissionDenied):
            q.wake_all()  # waking writes the counter

    pids = [fork(waiter, i) for i in range(3)]
    try:
        for pid in pids:
            wait_futex_sleep(pid, ro.word_address(WQ))
        assert queue.wake_one() == 1  # predicate still false: it sleeps again
        atomic.store_u32(m.word_address(flag), 42)
        woken = queue.wake_all()
        assert 2 <= woken <= 3  # the one woken first may not be back asleep yet
    finally:
        assert join_all(pids) == [0, 0, 0]
    assert [u32(m, slot(1 + i)) for i in range(3)] == [42, 42, 42]
    queue.close()
    ro.unmap()


def test_waitqueue_timeout_and_result(region):
    shm, m = region
    queue = WaitQueue.create(m, WQ)
    with pytest.raises(TimedOut):
        queue.wait_until(lambda: False, timeout=0.05)
    assert queue.wait_until(lambda: "ready", timeout=0) == "ready"
    before = queue.sequence
    assert queue.wake_one() == 0
    assert queue.sequence == before + 1
    queue.close()
    with pytest.raises(NotMapped):
        queue.wake_all()


# -- Condition -----------------------------------------------------------


def test_condition_producer_consumer_across_processes(region):
    shm, m = region
    lock = Mutex.create(m, MUTEX)
    cond = Condition.create(m, COND, lock)
    # slot 0: items produced so far, slot 1: items consumed, slot 2: sum consumed
    total = 2_000

    def consumer() -> None:
        mx = Mutex(m, MUTEX)
        cv = Condition(m, COND, mx)
        with cv:
            while True:
                cv.wait_for(lambda: u32(m, slot(0)) > u32(m, slot(1)) or u32(m, slot(0)) == 0xFFFF)
                if u32(m, slot(1)) == total:
                    cv.notify_all()
                    return
                item = u32(m, slot(1)) + 1
                atomic.store_u32(m.word_address(slot(1)), item)
                atomic.fetch_add_u32(m.word_address(slot(2)), item)
                cv.notify_all()

    pids = [fork(consumer) for _ in range(2)]
    for i in range(1, total + 1):
        with cond:
            cond.wait_for(lambda: u32(m, slot(1)) >= i - 1)
            atomic.store_u32(m.word_address(slot(0)), i)
            cond.notify_all()
    with cond:
        assert cond.wait_for(lambda: u32(m, slot(1)) == total, timeout=20)
        atomic.store_u32(m.word_address(slot(0)), 0xFFFF)  # done
        cond.notify_all()
    assert join_all(pids) == [0, 0]
    assert u32(m, slot(2)) == total * (total + 1) // 2
    with pytest.raises(RuntimeError):
        cond.notify()  # mutex not held
    with cond:
        assert cond.wait(0.01) is False
    cond.close()
    lock.close()


# -- context managers and close() ----------------------------------------------


def test_event_and_waitqueue_are_closed_on_leaving_with(region):
    shm, m = region
    with Event.create(m, EVENT) as event:
        event.set()
        assert event.wait(timeout=0)
    assert event.closed
    with pytest.raises(NotMapped):
        event.is_set()
    with pytest.raises(NotMapped):
        with event:  # a closed one cannot be entered
            pass
    with pytest.raises(ZeroDivisionError):
        with WaitQueue.create(m, WQ) as queue:
            1 / 0
    assert queue.closed
    with Event(m, EVENT) as again:  # the flag itself lives on in shared memory
        assert again.is_set()
    # Nothing pins the mapping any more: the region fixture unmaps it.


def test_lock_like_primitives_hold_their_lock_in_with_and_close_with_closing(region):
    import contextlib

    shm, m = region
    lock = Mutex.create(m, MUTEX)
    with lock:
        assert lock.owned()
    assert not lock.locked() and not lock.closed
    sem = Semaphore.create(m, SEM, 1)
    with sem:
        assert sem.value == 0
    assert sem.value == 1 and not sem.closed
    cond = Condition.create(m, COND, lock)
    with cond:
        assert lock.owned()
    assert not lock.locked() and not cond.closed
    for obj in (cond, sem, lock):
        with contextlib.closing(obj):
            pass
        assert obj.closed


def test_every_shared_object_closes_the_same_way(region):
    from redstone_ipc import FutexWord

    shm, m = region
    lock = Mutex.create(m, MUTEX)
    objects = [
        Event.create(m, EVENT),
        WaitQueue.create(m, WQ),
        Semaphore.create(m, SEM, 1),
        Condition.create(m, COND, lock),
        FutexWord(m, DATA),
        lock,
    ]
    for obj in objects:
        assert not obj.closed
        obj.close()
        obj.close()  # idempotent
        assert obj.closed
        assert repr(obj) == f"<{type(obj).__name__} closed>"
    for call in (
        objects[0].wait,
        objects[1].wake_all,
        objects[2].acquire,
        lambda: objects[4].wake(1),
        lock.acquire,
    ):
        with pytest.raises(NotMapped):
            call()


# -- the timeout rule ----------------------------------------------------------


def test_every_blocking_call_takes_timeout_none_by_default():
    import inspect

    from redstone_ipc import Futex, FutexWord

    for call in (
        Futex.wait,
        FutexWord.wait,
        Mutex.acquire,
        Semaphore.acquire,
        Event.wait,
        Condition.wait,
        Condition.wait_for,
        WaitQueue.wait_until,
    ):
        parameter = inspect.signature(call).parameters["timeout"]
        assert parameter.default is None, call
        assert parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY), call


def test_when_the_time_runs_out_the_bool_calls_say_false_and_the_others_raise_timeout_error(
    region,
):
    from redstone_ipc import Futex, FutexWord

    shm, m = region
    lock = Mutex.create(m, MUTEX)
    held, done = threading.Event(), threading.Event()

    def holder() -> None:
        mine = Mutex(m, MUTEX)
        with mine:
            held.set()
            done.wait(30)
        mine.close()

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    sem = Semaphore.create(m, SEM, 0)
    event = Event.create(m, EVENT)
    cond = Condition.create(m, COND, Mutex.create(m, MUTEX2))
    queue = WaitQueue.create(m, WQ)
    word = FutexWord(m, slot(0))
    try:
        returning_false = [
            lambda: lock.acquire(timeout=0.05),
            lambda: sem.acquire(timeout=0.05),
            lambda: event.wait(0.05),
        ]
        for call in returning_false:
            t0 = time.monotonic()
            assert call() is False
            assert time.monotonic() - t0 >= 0.05
        with cond:
            assert cond.wait(0.05) is False
            assert cond.wait_for(lambda: 0, timeout=0.05) == 0
        raising = [
            lambda: queue.wait_until(lambda: False, timeout=0.05),
            lambda: Futex.wait(m, slot(0), 0, timeout=0.05),
            lambda: word.wait(0, timeout=0.05),
        ]
        for call in raising:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):  # TimedOut is one
                call()
            assert time.monotonic() - t0 >= 0.05
        # blocking=False: only try, as threading's acquire(False) does
        assert lock.acquire(False) is False and sem.acquire(False) is False
        for acquire in (lock.acquire, sem.acquire):
            with pytest.raises(ValueError, match="non-blocking"):
                acquire(False, timeout=1)
            for seconds in (5, 0.5):  # a timeout passed where blocking goes
                with pytest.raises(TypeError, match="timeout="):
                    acquire(seconds)
    finally:
        done.set()
        t.join(10)
    for obj in (sem, event, cond, cond.mutex, queue, word, lock):
        obj.close()


@pytest.mark.parametrize("kind", ["Mutex", "Semaphore"])
def test_acquire_true_waits_without_a_time_limit_as_threading_does(region, kind):
    """``acquire(True)`` is ``blocking=True``, not a timeout of one second: the
    futex sleep it makes has no timeout (NULL in /proc/<pid>/syscall)."""
    from _proc import blocked_syscall

    shm, m = region
    if kind == "Mutex":
        if not robust.current().enabled:
            pytest.skip("without robust lists a waiter polls the owner's liveness")
        obj: Mutex | Semaphore = Mutex.create(m, MUTEX)
        assert obj.acquire()
        offset = MUTEX
    else:
        obj = Semaphore.create(m, SEM, 0)
        offset = SEM

    def child() -> None:
        mine = Mutex(m, MUTEX) if kind == "Mutex" else Semaphore(m, SEM)
        assert mine.acquire(True) is True
        mine.release()
        mine.close()

    pid = fork(child)
    try:
        wait_futex_sleep(pid, m.word_address(offset))
        fields = blocked_syscall(pid)
        assert int(fields[4], 16) == 0, f"the futex sleep has a timeout: {fields}"
    finally:
        obj.release()
        code = join(pid)
        obj.close()
    assert code == 0
