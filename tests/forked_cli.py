"""``python -m alexnet ARGS`` for the tests, forked from a process that has imported torch.

A test's CLI run is a process of its own, as a user's is, but it need not import torch again: a
server (tests/_cli_server.py), started at the first run of each pytest process, forks each. A run
whose environment is not the one the server started with (a test's own TMPDIR or HOME, a GPU made
visible) starts a plain ``python`` instead, as do all where ``ALEXNET_TEST_FORK=0`` or fork or
descriptor passing is missing (not Linux).
"""

from __future__ import annotations

import atexit
import json
import locale
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SERVER = Path(__file__).with_name("_cli_server.py")
_PER_TEST = "PYTEST_CURRENT_TEST"  # set by pytest for each test


def _passed(name: str) -> bool:
    """A variable that a request sets in the forked process, rather than one it must share with the server."""
    return name == _PER_TEST or name.startswith("ALEXNET_")


class _Server:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.served, self.pid = 0, 0
        self.folder = tempfile.mkdtemp(prefix="alexnet-cli-server-")
        self.socket = os.path.join(self.folder, "s")
        with open(os.path.join(self.folder, "log"), "wb") as log:
            self.process = subprocess.Popen([sys.executable, str(_SERVER), self.socket], env=env, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=log)
        ready, _, imported = self.process.stdout.readline().decode().partition(" ")  # its imports done: a start's time, once
        self.imported = json.loads(imported) if ready == "ready" else None
        atexit.register(self.close)

    def close(self) -> None:
        self.process.stdin.close()  # its end: it exits when its stdin closes
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)

    def serves(self, env: dict[str, str]) -> bool:
        """Whether a process forked from the server is what ``env`` would start: the same environment
        but for the test's name, alexnet's own variables (read by alexnet alone, which the forked
        process imports afresh: they are passed), and what torch's imports set where ``env`` has not
        set it yet."""
        if self.imported is None or self.process.poll() is not None:
            return False
        keys = {k for k in set(env) | set(self.imported) if not _passed(k)}
        return all(env.get(k) == self.imported.get(k) or (k not in env and k not in self.env) for k in keys)

    def run(self, argv: list[str], cwd: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
        """``argv`` run as ``subprocess.run(argv, capture_output=True, text=True, ...)`` would."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        passed = {k: env.get(k) for k in set(env) | set(self.imported) if _passed(k)}  # None: not set
        request = {"args": argv[3:], "cwd": cwd, "env": passed}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn, open(os.devnull, "rb") as null:
            conn.connect(self.socket)
            socket.send_fds(conn, [json.dumps(request).encode()], [null.fileno(), out_w, err_w])
            os.close(out_w)
            os.close(err_w)
            with conn.makefile("rb") as replies:
                self.pid = int(replies.readline())
                self.served += 1
                try:
                    stdout, stderr, finished = _read_both(out_r, err_r, timeout)
                    if not finished:
                        raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr)
                except BaseException:  # past its timeout, or the tests stopped (Ctrl-C): as subprocess.run, kill it
                    os.kill(self.pid, signal.SIGKILL)
                    raise
                code = int(replies.readline())
        return subprocess.CompletedProcess(argv, code, stdout, stderr)


def _read_both(out: int, err: int, timeout: float) -> tuple[str, str, bool]:
    """Both pipes read to their ends (or to ``timeout``), as subprocess's communicate reads them; then closed."""
    chunks: dict[int, list[bytes]] = {out: [], err: []}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as watch:
        try:
            for fd in chunks:
                watch.register(fd, selectors.EVENT_READ)
            while watch.get_map() and time.monotonic() < deadline:
                for key, _ in watch.select(timeout=max(0.0, deadline - time.monotonic())):
                    data = os.read(key.fd, 1 << 16)
                    if data:
                        chunks[key.fd].append(data)
                    else:  # its end
                        watch.unregister(key.fd)
            finished = not watch.get_map()
        finally:
            for fd in chunks:
                os.close(fd)
    # As subprocess decodes text=True output: the locale's encoding, universal newlines (a progress bar's \r too).
    encoding = locale.getpreferredencoding(False)
    text = [b"".join(chunks[fd]).decode(encoding).replace("\r\n", "\n").replace("\r", "\n") for fd in (out, err)]
    return text[0], text[1], finished


USABLE = sys.platform == "linux" and hasattr(socket, "send_fds") and os.environ.get("ALEXNET_TEST_FORK", "1") != "0"
_servers: list[_Server] = []  # this pytest process's server, once its first run has started it


def run(argv: list[str], cwd: Path | str | None, env: dict[str, str], session_env: dict[str, str], timeout: float
        ) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, capture_output=True, text=True, ...)`` where ``argv`` is ``python -m alexnet ...``:
    forked from the server (started with ``session_env``) where that is what ``env`` would start."""
    if USABLE and session_env and not _servers:
        _servers.append(_Server(session_env))
    if _servers and _servers[0].serves(env):
        return _servers[0].run(argv, os.fspath(cwd or os.getcwd()), env, timeout)
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def served() -> int:
    """How many runs this process has forked (for the tests of this module)."""
    return _servers[0].served if _servers else 0


def last_pid() -> int | None:
    """The pid of the last run forked."""
    return _servers[0].pid if _servers else None
