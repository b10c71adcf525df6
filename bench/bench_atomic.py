"""Cost per call of every atomic operation, in each ordering mode.

    python3 bench/bench_atomic.py [--number N] [--repeat R] [--cpu C] [--asm]

One process, one word: this is the CPU cost of a call (no contention, no
cache-line transfer), which is what the modes differ in. Printed per
operation, in ns: the best of ``--repeat`` runs of ``--number`` calls (the
least disturbed run), and their median, both minus the cost of the timing
loop itself.

* ``ops:x86`` and ``ops:libatomic``: the low-level ordered operations of
  ``redstone_ipc.linux.atomic.build_ops(mode)`` on a prebuilt U32Ref/U64Ref
  (what a data path in a hot loop would call);
* ``seq_cst``: the sequentially consistent functions the sync primitives use
  (always libatomic);
* ``Mapping[mode]``: the checked methods, ``m.load_u32(off)`` and so on,
  in this interpreter's mode; the other mode's figures come from a child
  interpreter started with ``REDSTONE_IPC_ATOMICS=libatomic``;
* floors: a plain ``memoryview`` item access (what an x86 plain load or
  store costs at least) and a bare ctypes call of ``__atomic_load_4`` with
  prebuilt arguments (what any libatomic call costs at least).

``--asm`` disassembles (with gdb, if installed) the C functions that do the
x86 path's plain accesses: ctypes' ``I_get``/``I_set``/``Q_get``/``Q_set``,
each one aligned ``mov`` to or from the word.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from redstone_ipc.linux import atomic  # noqa: E402
from redstone_ipc.shm.shm import SharedMemory  # noqa: E402

MODES_HERE = [m for m in atomic.MODES if m == "libatomic" or atomic.default_mode() == "x86"]


def measure(stmt: str, env: dict, number: int, repeat: int) -> tuple[float, float]:
    """(best, median) ns per execution of ``stmt`` over ``repeat`` runs."""
    runs = timeit.Timer(stmt, globals=env).repeat(repeat=repeat, number=number)
    per_call = [run / number * 1e9 for run in runs]
    return min(per_call), statistics.median(per_call)


def run_table(rows: list[tuple[str, str, dict]], number: int, repeat: int) -> None:
    """Time every row, interleaved: run r of every row before run r+1 of any,
    so that a burst of load on the machine spreads over all of them. Prints
    best and median ns per call, minus the timing loop's own cost."""
    timers = [timeit.Timer(stmt, globals=env) for _, stmt, env in rows]
    loop = timeit.Timer("pass")
    samples: list[list[float]] = [[] for _ in rows]
    loops: list[float] = []
    for _ in range(repeat):
        loops.append(loop.timeit(number) / number * 1e9)
        for timer, sample in zip(timers, samples):
            sample.append(timer.timeit(number) / number * 1e9)
    overhead = min(loops)
    for (label, stmt, _), sample in zip(rows, samples):
        best, median = min(sample) - overhead, statistics.median(sample) - overhead
        print(f"{label:<20} {stmt:<34} {best:8.1f} {median:8.1f}", flush=True)


MAPPING_STMTS = [
    "m.load_u32(0)",
    "m.store_u32(0, 1)",
    "m.fetch_add_u32(0, 1)",
    "m.compare_exchange_u32(0, 1, 1)",
    "m.load_u64(8)",
    "m.store_u64(8, 1)",
    "m.fetch_add_u64(8, 1)",
    "m.compare_exchange_u64(8, 1, 1)",
]
OPS_STMTS = [
    "load_acquire_u32(r32)",
    "store_release_u32(r32, 1)",
    "fetch_add_acq_rel_u32(r32, 1)",
    "cas_acq_rel_u32(r32, 1, 1)",
    "load_acquire_u64(r64)",
    "store_release_u64(r64, 1)",
    "fetch_add_acq_rel_u64(r64, 1)",
    "cas_acq_rel_u64(r64, 1, 1)",
]
SEQ_CST_STMTS = [
    "load_u32(p32)",
    "store_u32(p32, 1)",
    "fetch_add_u32(p32, 1)",
    "cas_u32(p32, 1, 1)",
    "load_u64(p64)",
    "store_u64(p64, 1)",
    "fetch_add_u64(p64, 1)",
    "cas_u64(p64, 1, 1)",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=100_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=15, help="runs per operation")
    parser.add_argument("--cpu", type=int, default=None, help="pin to this CPU")
    parser.add_argument("--asm", action="store_true", help="disassemble the x86 path's accesses")
    parser.add_argument("--mapping-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})

    shm = SharedMemory.create(4096)
    m = shm.map()
    mapping_rows = [(f"Mapping[{atomic.MODE}]", stmt, {"m": m}) for stmt in MAPPING_STMTS]
    if args.mapping_only:  # the child interpreter of the other mode
        run_table(mapping_rows, args.number, args.repeat)
        m.unmap()
        shm.close()
        return 0

    print(f"python {sys.version.split()[0]}, {os.uname().machine}, mode of this interpreter: "
          f"{atomic.MODE}; {args.repeat} runs of {args.number} calls each, interleaved; "
          f"ns per call, the timing loop subtracted")
    print(f"{'':<20} {'operation':<34} {'best':>8} {'median':>8}")
    r32 = atomic.U32Ref(m.word_address(0))
    r64 = atomic.U64Ref(m.word_address(8, 8))
    view32 = memoryview(m).cast("I")
    rows = [
        ("floor", "v[0]", {"v": view32}),
        ("floor", "v[0] = 1", {"v": view32}),
        # the bare libatomic function with prebuilt arguments: no wrapper
        ("floor", "f(p, 2)", {"f": atomic._load, "p": atomic.ptr(m.word_address(0))}),
    ]
    for mode in MODES_HERE:
        env = {"r32": r32, "r64": r64, **atomic.build_ops(mode)._asdict()}
        rows += [(f"ops:{mode}", stmt, env) for stmt in OPS_STMTS]
    env = {"p32": r32, "p64": r64, **{name: getattr(atomic, name) for name in atomic.__all__}}
    rows += [("seq_cst", stmt, env) for stmt in SEQ_CST_STMTS]
    run_table(rows + mapping_rows, args.number, args.repeat)
    view32.release()
    m.unmap()
    shm.close()

    for mode in MODES_HERE:
        if mode == atomic.MODE:
            continue
        cmd = [sys.executable, os.path.abspath(__file__), "--mapping-only",
               "--number", str(args.number), "--repeat", str(args.repeat)]
        if args.cpu is not None:
            cmd += ["--cpu", str(args.cpu)]
        subprocess.run(cmd, env=dict(os.environ, **{atomic.ENV_VAR: mode}), check=True)

    if args.asm:
        disassemble()
    return 0


def disassemble() -> None:
    """The memory accesses of ctypes' c_uint32/c_uint64 getters and setters."""
    import _ctypes

    gdb = shutil.which("gdb")
    if gdb is None:
        print("\n--asm: gdb is not installed")
        return
    print(f"\nPlain accesses of the x86 path, in {_ctypes.__file__}:")
    for function in ("I_get", "I_set", "Q_get", "Q_set"):
        out = subprocess.run(
            [gdb, "-batch", "-ex", f"disassemble {function}", _ctypes.__file__],
            capture_output=True, text=True,
        ).stdout
        accesses = [line.split(":", 1)[1].strip() for line in out.splitlines()
                    if "mov" in line and "(%" in line and "rip" not in line]
        print(f"  {function}: {'; '.join(accesses) or 'not found (no symbols?)'}")


if __name__ == "__main__":
    sys.exit(main())
