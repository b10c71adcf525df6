"""A server with many clients is not capped by the common soft fd limit.

Each connection costs its receiver 3 fds. With the soft RLIMIT_NOFILE at
1024 (the usual default) a server could take only ~330 clients, so a
receiver raises its soft limit to the hard one as it nears it
(``redstone_ipc.linux.limits``). Here a receiver starts with a soft limit
of 128, far below what 60 sender processes need, in a process of its own.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

import pytest

SERVER = textwrap.dedent("""
    import os, resource, sys
    from redstone_ipc import Message
    from redstone_ipc.port import SEND_RIGHTS, Port

    SENDERS = 60
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    port = Port(capacity=SENDERS)
    send = port.duplicate(SEND_RIGHTS)
    hold_r, hold_w = os.pipe()
    children = []
    for i in range(SENDERS):
        pid = os.fork()
        if pid == 0:
            os.close(hold_w)
            port.release()
            send.send(Message(1, i.to_bytes(4, "little")), timeout=30)
            os.read(hold_r, 1)  # stay connected until the server is done
            os._exit(0)
        children.append(pid)
    got = sorted(int.from_bytes(bytes(port.recv(timeout=30).payload), "little") for _ in range(SENDERS))
    connected_fds = len(os.listdir("/proc/self/fd"))
    os.close(hold_w)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    print(got == list(range(SENDERS)), connected_fds, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
""")


@pytest.mark.timeout(120)
def test_a_receiver_raises_its_soft_fd_limit_for_its_clients():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard > 512, f"this machine's hard limit is {hard}"
    result = subprocess.run([sys.executable, "-c", SERVER], capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr
    all_arrived, connected_fds, new_soft = result.stdout.split()
    assert all_arrived == "True"
    assert int(connected_fds) > 128, "the 60 connections should need more fds than the old limit"
    assert int(new_soft) == (hard if hard != resource.RLIM_INFINITY else int(open("/proc/sys/fs/nr_open").read()))
