"""The tests' CLI processes, forked from one that has imported torch (tests/forked_cli.py starts it).

Each ``alexnet`` process of a test began by importing torch and torch._dynamo, 3.5-4.5 s of a
2-core machine's time, and the suite starts several hundred of them. This server imports them once;
for each request it forks a process that is then what ``python -m alexnet ARGS`` would be: its own
pid, its own stdin/stdout/stderr (the caller's pipes, passed over the socket), the caller's working
folder, alexnet imported afresh, and Python's own ending (exit status, traceback, atexit, threads).
What it shares is the torch that was imported before it started, and nothing that ran: the server
runs no tensor operation, so no thread pool exists when it forks.

    python tests/_cli_server.py SOCKET    # prints "ready" once it listens; exits when its stdin closes
"""

from __future__ import annotations

import gc
import json
import os
import runpy
import selectors
import socket
import sys

import torch  # noqa: F401  (the imports that every alexnet process makes: made once, here)
import torch._dynamo  # noqa: F401  (loaded by the optimizer's first step, and by torch.library's ops)

_MESSAGE = 1 << 20  # a request: its arguments, folder and the variables it sets, as JSON


def _serve(path: str) -> dict:
    """Listen on ``path``; returns only in a forked process, with the request it is to run."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    # Out of the collector's sight: a forked process's collections and its ending then leave the
    # server's objects alone, not copy every page of them (its ending took 1.4 s, 0.5 s with this).
    gc.freeze()
    # Its environment as its imports left it (torch._dynamo sets TORCHINDUCTOR_CACHE_DIR), for the
    # caller to tell which requests it can serve.
    print("ready", json.dumps(dict(os.environ)), flush=True)
    watch = selectors.DefaultSelector()
    watch.register(listener, selectors.EVENT_READ)
    watch.register(sys.stdin, selectors.EVENT_READ)
    while True:
        for key, _ in watch.select(timeout=1.0):
            if key.fileobj is sys.stdin:
                if not os.read(sys.stdin.fileno(), 1024):  # the test process ended: so does this one
                    os._exit(0)
                continue
            conn, _ = listener.accept()
            if os.fork() == 0:  # a go-between, so that this loop never waits for a run
                watch.close()
                listener.close()
                return _go_between(conn)
            conn.close()
        _reap()


def _reap() -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


def _go_between(conn: socket.socket) -> dict:
    """Fork the run; tell the caller its pid, then its exit status. Returns only in the run."""
    message, fds, _, _ = socket.recv_fds(conn, _MESSAGE, 3)
    request = json.loads(message)
    pid = os.fork()
    if pid == 0:
        conn.close()
        for target, fd in enumerate(fds):  # stdin (/dev/null), stdout, stderr: the caller's
            os.dup2(fd, target)
            os.close(fd)
        return request
    for fd in fds:
        os.close(fd)
    _tell(conn, pid)
    _, status = os.waitpid(pid, 0)
    _tell(conn, os.waitstatus_to_exitcode(status))
    os._exit(0)


def _tell(conn: socket.socket, number: int) -> None:
    try:
        conn.sendall(f"{number}\n".encode())
    except OSError:  # the caller has gone (it gave up on a run past its timeout): nothing to tell
        pass


if __name__ == "__main__":
    run = _serve(sys.argv[1])
    os.chdir(run["cwd"])
    for name, value in run["env"].items():  # the server's, but for the test's name and alexnet's own variables
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    sys.path[0] = os.getcwd()  # what `python -m` puts first
    sys.argv = [sys.argv[0], *run["args"]]
    del run
    runpy.run_module("alexnet", run_name="__main__", alter_sys=True)
