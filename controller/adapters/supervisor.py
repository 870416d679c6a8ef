"""One unit of processes (a revision's ``bentoml serve`` tree, or a router) that cannot be orphaned.

    python -m controller.adapters.supervisor --record FILE [--grace S] [--restart] [--listen HOST:PORT] -- COMMAND...

Why a supervisor: ``bentoml serve`` starts its workers in sessions of their own, so process groups
and sessions do not reach them, and when the server dies its workers are re-parented to PID 1 and
live on. This small process (standard library only, ~10 MB) sits between the controller and the
unit's main process and

- marks itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``): every process below it
  that loses its parent is re-parented to the supervisor, never to PID 1, so "the unit" is exactly
  the supervisor's descendants, found by walking ``/proc``;
- gives its direct child ``PR_SET_PDEATHSIG = SIGKILL``: if the supervisor itself is killed,
  the main process goes with it;
- watches the tree (SIGCHLD, and a scan of ``/proc`` every 0.2 s): when its main process or any
  process that had lived for a second dies, that is a crash. It records which one died and how
  (exit status or signal: reaped itself, or read from the zombie's ``/proc`` entry before its
  parent reaps it), stops every survivor (SIGTERM, then SIGKILL after ``--grace``) and exits 1.
  Restarting is the controller's decision (backoff, crash-loop limits);
- with ``--restart`` (the router) it instead starts the main process again in place (backing off
  when crashes come fast) and lists the crashes it survived in the record; with ``--listen`` it
  holds that listening socket and hands it down (``MODSHIP_LISTEN_FD``), so clients connecting
  while the router restarts wait in the backlog instead of being refused, and it keeps a copy of
  every client connection the router accepted, and the journal of what the router read from them
  and did not answer yet (``controller.adapters.connkeep``), so that the restarted router resumes
  them: a SIGKILLed router loses no request;
- on SIGTERM/SIGINT/SIGHUP stops the whole tree the same way and exits 0;
- keeps ``--record`` (JSON, written atomically) up to date: its own ``pid`` and ``start`` (so a
  controller restarted after SIGKILL adopts it by identity, not by a reusable pid), every member
  with its start time, and at the end the ``exit`` outcome. Should the supervisor itself be
  SIGKILLed, the controller stops the members listed there (and whatever runs below them).

Cgroups would give the same membership without polling, but creating and delegating them needs
root or a systemd delegation that a user's machine does not offer; the subreaper works for any
user on Linux >= 3.4.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from controller import atomic
from controller.adapters import connkeep, proctree

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
POLL = 0.2  # known members are checked this often (a few reads of /proc/PID/stat)
FULL_SCAN = 2.0  # the whole of /proc is walked for newcomers this often, and on every SIGCHLD
SETTLE = 1.0  # a process that lived this long belongs to the unit: its death is a crash
STOPS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
WATCHED = {signal.SIGCHLD, *STOPS}


def prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {arg}): {os.strerror(err)}")


@dataclass
class Member:
    pid: int
    start: int
    cmd: str
    seen: float  # when the supervisor first saw it (monotonic)
    main: bool = False


class Supervisor:
    def __init__(
        self,
        record: Path,
        cmd: list[str],
        *,
        grace: float,
        restart: bool = False,
        listen: str | None = None,
        tolerate: tuple[str, ...] = (),
    ) -> None:
        self.record, self.cmd, self.grace, self.restart, self.tolerate = record, cmd, grace, restart, tolerate
        self.pid = os.getpid()
        self.start = proctree.start_of(self.pid) or 0
        self.started = time.time()
        self.members: dict[int, Member] = {}
        self.statuses: dict[int, int] = {}  # wait statuses: reaped, or read from a zombie
        self.exit: dict[str, Any] | None = None
        self.crashes: list[dict[str, Any]] = []  # restart mode: crashes survived, most recent last
        self.crash_count = 0
        self.scanned = 0.0
        self.sock = _listen(listen) if listen else None
        self.keep = connkeep.Holder() if listen else None
        self.checked = 0.0  # when the members were last looked at

    def run(self) -> int:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
        self.save()  # identity first: a controller killed right now still finds us
        while True:
            self.spawn()
            stop = self.watch()
            self.stop_tree()
            if stop is not None or not self.restart:
                break
            assert self.exit is not None
            self.exit["at"] = time.time()
            self.crash_count += 1
            self.crashes = [*self.crashes, self.exit][-20:]
            self.exit = None
            self.members.clear()
            self.save()
            if self.backoff():
                break
        assert self.exit is not None
        self.exit["at"] = time.time()
        self.members.clear()
        self.save()
        return 1 if self.exit["reason"] == "crashed" else 0

    def spawn(self) -> None:
        parent = self.pid
        fds: tuple[int, ...] = (self.sock.fileno(),) if self.sock is not None else ()
        env = dict(os.environ, **({"MODSHIP_LISTEN_FD": str(fds[0])} if fds else {}))
        channel = self.keep.channel() if self.keep is not None else None
        if channel is not None and self.keep is not None:
            fds += (channel.fileno(), self.keep.journal)
            env |= {connkeep.CHANNEL_ENV: str(channel.fileno()), connkeep.JOURNAL_ENV: str(self.keep.journal)}

        def child_setup() -> None:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WATCHED)
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the supervisor died before the line above
                os._exit(1)

        try:
            main = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, env=env, pass_fds=fds, preexec_fn=child_setup)  # noqa: PLW1509 (one thread)
        finally:
            if channel is not None:
                channel.close()  # the router holds the other end alone: its death is the channel's end
        self.members[main.pid] = Member(main.pid, proctree.start_of(main.pid) or 0, _cmd(self.cmd), 0.0, main=True)
        self.save()

    def watch(self) -> str | None:
        """Until a crash (``self.exit`` says which) or a stop signal (its name is returned)."""
        while True:
            if self.keep is not None and self.keep.conn is not None:
                # the router's messages gather meanwhile: waiting on them would wake this process at
                # every accepted connection, and on a busy machine the router pays for each wakeup
                info = signal.sigtimedwait(WATCHED, connkeep.GAP)
                self.keep.drain()
                if info is None and time.monotonic() - self.checked < POLL:
                    continue
            else:
                info = signal.sigtimedwait(WATCHED, POLL)
            if info is not None and info.si_signo in STOPS:
                name = signal.Signals(info.si_signo).name
                self.exit = {"reason": "stopped", "signal": name}
                return name
            self.checked = time.monotonic()
            crash = self.observe(full=info is not None or time.monotonic() - self.scanned >= FULL_SCAN)
            if crash is not None:
                self.exit = crash
                return None

    def backoff(self) -> bool:
        """Restart mode: wait before the next start (longer when crashes come fast); True if told
        to stop meanwhile."""
        recent = [c for c in self.crashes if time.time() - c["at"] < 30.0]
        delay = 0.0 if len(recent) <= 1 else min(10.0, 0.25 * 2 ** len(recent))
        deadline = time.monotonic() + delay
        while (left := deadline - time.monotonic()) > 0:
            info = signal.sigtimedwait(WATCHED, left)
            if info is not None and info.si_signo in STOPS:
                self.exit = {"reason": "stopped", "signal": signal.Signals(info.si_signo).name}
                return True
            self.reap()
        return False

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.statuses[pid] = status

    def observe(self, *, full: bool = True) -> dict[str, Any] | None:
        """Reap, look at the members (and, on a ``full`` scan, record newcomers); a crash (which
        process, how) or None."""
        self.reap()
        now = time.monotonic()
        if full:
            tree = proctree.descendants([self.pid])
            self.scanned = now
        else:
            tree = {pid: st for pid in self.members if (st := proctree.read(pid)) is not None}
        changed = False
        for pid, st in tree.items():
            m = self.members.get(pid)
            if st.dead:
                if m is not None and m.start == st.start:
                    self.statuses.setdefault(pid, st.exit_code)
            elif m is None or m.start != st.start:
                self.members[pid] = Member(pid, st.start, proctree.cmdline(pid), now)
                changed = True
            elif full or now - m.seen < SETTLE:  # between fork and exec it still shows its parent's
                cmd = proctree.cmdline(pid) or m.cmd
                changed, m.cmd = changed or cmd != m.cmd, cmd
        crashes: list[tuple[int, dict[str, Any]]] = []
        for pid, m in list(self.members.items()):
            now_st = tree.get(pid)
            if now_st is not None and not now_st.dead and now_st.start == m.start:
                continue
            del self.members[pid]
            changed = True
            status = self.statuses.pop(pid, None)
            failed = status is not None and status != 0
            if any(t in m.cmd for t in self.tolerate):
                continue  # its parent restarts it (a step's isolated worker): not the unit's crash
            if m.main or failed or (now - m.seen >= SETTLE):
                how = proctree.describe(status)
                # several may go at once (a worker and the process waiting for it): name the likely cause
                rank = 0 if how["signal"] else 1 if failed else 2 if m.main else 3
                who = {"pid": pid, "cmd": m.cmd, "main": m.main}
                crashes.append((rank, {"reason": "crashed", "process": who, **how}))
        crash = min(crashes, key=lambda c: c[0])[1] if crashes else None
        if changed:
            self.save()
        return crash

    def stop_tree(self) -> None:
        """SIGTERM every descendant (newcomers too), SIGKILL after the grace period, until none lives."""
        deadline = time.monotonic() + self.grace
        told: set[tuple[int, int]] = set()
        while True:
            self.reap()
            living = {p: s for p, s in proctree.descendants([self.pid]).items() if not s.dead}
            if not living:
                return
            late = time.monotonic() >= deadline
            for pid, st in living.items():
                if late or (pid, st.start) not in told:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL if late else signal.SIGTERM)
                    told.add((pid, st.start))
            signal.sigtimedwait({signal.SIGCHLD}, 0.05)

    def save(self) -> None:
        doc = {
            "pid": self.pid,
            "start": self.start,
            "started": self.started,
            "command": self.cmd,
            "members": [asdict(m) for m in self.members.values()],
            "exit": self.exit,
            "crashCount": self.crash_count,
            "crashes": self.crashes,
        }
        atomic.write_text(self.record, json.dumps(doc))


def _cmd(argv: list[str]) -> str:
    return " ".join(argv)[:240]


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def command(
    record: Path,
    cmd: list[str],
    *,
    grace: float = 10.0,
    restart: bool = False,
    listen: str | None = None,
    tolerate: tuple[str, ...] = (),
) -> list[str]:
    """The command line that runs ``cmd`` under a supervisor writing ``record``."""
    opts = ["--record", str(record), "--grace", f"{grace:g}", *(["--restart"] if restart else [])]
    opts += [f"--tolerate={t}" for t in tolerate]
    opts += ["--listen", listen] if listen else []
    return [sys.executable, "-m", "controller.adapters.supervisor", *opts, "--", *cmd]


def _listen(address: str) -> socket.socket:
    """A listening TCP socket the supervisor keeps across restarts of its main process, so clients
    connecting meanwhile wait in the backlog instead of being refused."""
    host, _, port = address.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="modship-supervisor", description=__doc__.splitlines()[0])
    p.add_argument("--record", type=Path, required=True, help="JSON file: identity, members, exit outcome")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL (default 10)")
    p.add_argument("--restart", action="store_true", help="restart the main process in place after a crash")
    p.add_argument("--listen", metavar="HOST:PORT", help="hold this listening socket; the main process gets its fd "
                   "in MODSHIP_LISTEN_FD")  # fmt: skip
    p.add_argument("--tolerate", action="append", default=[], metavar="TEXT",
                   help="processes whose command line holds TEXT may die: their parent restarts them")  # fmt: skip
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give the command to run after --")
    sup = Supervisor(
        args.record, cmd, grace=args.grace, restart=args.restart, listen=args.listen, tolerate=tuple(args.tolerate)
    )
    return sup.run()


if __name__ == "__main__":
    raise SystemExit(main())
