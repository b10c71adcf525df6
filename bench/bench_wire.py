"""Cost of the wire format alone: one send + one receive in one process.

Compares, on one SOCK_SEQPACKET socketpair, the bare syscalls
(``send``/``recv``), the same with ``sendmsg``/``recvmsg`` and an ancillary
buffer, and our ``send_message``/``recv_message`` (header packing,
validation, credentials, Message objects). No second process is involved, so
the figures are pure CPU cost and stable on a noisy machine.

    python3 bench/bench_wire.py [--number N]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from redstone_ipc import Message  # noqa: E402
from redstone_ipc.linux.cmsg import ANCBUF_SIZE, seqpacket_pair  # noqa: E402
from redstone_ipc.message.wire import recv_message, send_message  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    a, b = seqpacket_pair()
    payload = b"x" * 32
    msg = Message.with_data(1, payload)
    buf = bytearray(65536)

    def raw() -> None:
        a.send(payload)
        b.recv(256)

    def raw_msg() -> None:
        a.sendmsg([payload, payload])
        b.recvmsg_into([buf], ANCBUF_SIZE, socket.MSG_CMSG_CLOEXEC)

    def ours() -> None:
        send_message(a, msg)
        recv_message(b)

    results = {}
    for name, fn in (("send/recv", raw), ("sendmsg/recvmsg_into", raw_msg), ("redstone wire", ours)):
        best = min(timeit.repeat(fn, number=args.number, repeat=5)) / args.number
        results[name] = best
    base = results["send/recv"]
    for name, t in results.items():
        print(f"{name:>22}: {t * 1e6:6.2f} us per send+recv  ({t / base:4.1f}x send/recv)")


if __name__ == "__main__":
    main()
