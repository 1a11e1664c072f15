"""How long a newcomer waits: ``make run`` from a fresh clone with an empty pip cache, by phase.

    python3 benchmarks/bench_install.py                  # make run of HEAD, to /v1/health
    python3 benchmarks/bench_install.py --ref 2579c53    # the same for an older commit
    python3 benchmarks/bench_install.py --test-install   # and make test's install, fresh too

Standard library only, so it runs on a machine that has no virtual environment yet, and
independent of CI. Each run:

* clones the repository (``git clone`` of ``--repo``, default this checkout's repository; the
  committed ``--ref``, default HEAD; uncommitted edits are not measured) into a temporary folder;
* runs ``make run PORT=N`` there with ``PIP_CACHE_DIR`` pointing at an empty temporary folder
  (``--no-cache`` sets ``PIP_NO_CACHE_DIR=1`` instead) and ``PIP_VERBOSE=1``, which cancels the
  Makefile's ``-q`` so pip's progress lines show where the time goes (and
  ``PYTHONUNBUFFERED=1``, so they come when they happen); the pip configuration of the
  machine (local mirrors, find-links) is left as it is, as CI machines have it too;
* reads make's output line by line and splits the wall clock into phases: ``venv`` (the virtual
  environment and its pip), ``resolve+download`` (pip resolving, downloading, fetching build
  dependencies, preparing metadata), ``compile`` (pip building wheels from source, per package),
  ``unpack`` (pip installing the wheels), ``serve`` (from ``gristmill serve`` to the first
  ``200`` from ``/v1/health``);
* samples the CPU time (user + sys) of make's whole process tree from ``/proc`` at every phase
  change, so each phase has its CPU seconds too: on a shared machine, wall time far above
  CPU time / cores means the run waited for other work (or the network), not for its own;
* stops the server (SIGINT to make's process group, as Ctrl+C would) and removes the folder
  unless ``--keep``.

``--test-install`` then does the same for ``make .venv/.installed-dev`` (what ``make test`` and
``make lint`` install first) in a second fresh clone with its own empty cache.
Targets (issue 25): ``make run`` serving in < 240 s, ``make test``'s install in < 480 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_TARGET_S = 240.0
TEST_INSTALL_TARGET_S = 480.0
TICK = os.sysconf("SC_CLK_TCK")
PHASES = ("clone", "venv", "resolve+download", "compile", "unpack", "serve")
BUILD_STARTED = re.compile(r"Building (?:wheel|editable) for (\S+) \(.*\): started")
BUILD_FINISHED = re.compile(r"Building (?:wheel|editable) for (\S+) \(.*\): finished")
SERVE_PORT = re.compile(r"gristmill serve .*--port[ =](\d+)")


FOREGROUND = (
    "Collecting ",
    "Downloading ",
    "Obtaining ",
    "Processing ",
    "Using cached ",
    "Requirement already satisfied",
)


@dataclass
class Timeline:
    """Wall and CPU seconds per phase, and how long each package's build took from start to end.

    A build may run beside the install of everything else (the Makefile compiles llama-cpp-python
    in the background): time counts as ``compile`` while a build runs and nothing else goes on
    (the install waits for it), and as the other phase's while both do.
    """

    wall: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    cpu: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    building: dict[str, float] = field(default_factory=dict)
    builds: dict[str, float] = field(default_factory=dict)
    phase: str = "clone"
    since: float = 0.0
    cpu_since: float = 0.0

    def enter(self, phase: str, now: float, cpu: float) -> None:
        """Close the running phase at ``now`` and open ``phase``."""
        self.wall[self.phase] = self.wall.get(self.phase, 0.0) + now - self.since
        self.cpu[self.phase] = self.cpu.get(self.phase, 0.0) + cpu - self.cpu_since
        self.phase, self.since, self.cpu_since = phase, now, cpu

    def next_phase(self, line: str, now: float) -> str | None:
        """The phase a line of make's output opens (None: no change); notes builds' spans."""
        text = line.strip()
        if " -m venv " in text or "--upgrade pip" in text:
            return "venv"
        if "gristmill serve" in text:
            return "serve"
        if "pip install" in text:  # make's echo of the next install command
            return "resolve+download"
        if self.phase == "venv":  # the venv's own pip upgrade talks too
            return None
        if (started := BUILD_STARTED.search(text)) and started.group(1) != "gristmill":
            self.building[started.group(1)] = now
            return "compile"
        if finished := BUILD_FINISHED.search(text):
            if (began := self.building.pop(finished.group(1), None)) is not None:
                self.builds[finished.group(1)] = now - began
            return None if self.building else "resolve+download"
        if text.startswith("Installing collected packages"):
            return "unpack"
        if text.startswith("Successfully installed"):  # this install is done; a build may go on
            return "compile" if self.building else "resolve+download"
        if self.phase == "compile" and text.startswith(FOREGROUND):
            return "resolve+download"  # another install goes on beside the build
        return None


def tree_cpu_seconds(root: int) -> float:
    """User + sys seconds of ``root`` and every live descendant, with their reaped children."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    total, todo = 0, [root]
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    while todo:
        pid = todo.pop()
        total += times.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total / TICK


def read_lines(stream: object, sink: queue.Queue[tuple[float, str] | None], log: Path) -> None:
    """Forward each line of ``stream`` with its arrival time; None at the end."""
    with log.open("w", buffering=1) as out:  # line-buffered: readable while it runs
        for raw in stream:  # type: ignore[attr-defined]
            line = raw.decode(errors="replace").rstrip("\n")
            out.write(f"{time.monotonic():.2f} {line}\n")
            sink.put((time.monotonic(), line))
    sink.put(None)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=2) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def free_port() -> int:
    """A port whose next one is free too (``serve`` puts the inference service there)."""
    for _ in range(50):
        with socket.socket() as one:
            one.bind(("127.0.0.1", 0))
            port = int(one.getsockname()[1])
        with socket.socket() as two:
            try:
                two.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free ports in a row")


def clean_env(cache: Path | None) -> dict[str, str]:
    """This environment without the caller's venv, tree or Gristmill settings; a fresh cache."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PIP_CACHE_DIR", "PIP_NO_CACHE_DIR")
        and not key.startswith("GRISTMILL_")
    }
    if cache is None:
        env["PIP_NO_CACHE_DIR"] = "1"
    else:
        env["PIP_CACHE_DIR"] = str(cache)
    env["PIP_VERBOSE"] = "1"  # with the Makefile's -q: pip's normal progress lines
    env["PYTHONUNBUFFERED"] = "1"  # each line as it happens, not a pipe's buffer later
    return env


def clone(repo: Path, ref: str, into: Path) -> None:
    subprocess.run(["git", "clone", "--quiet", str(repo), str(into)], check=True)
    subprocess.run(["git", "-C", str(into), "checkout", "--quiet", ref], check=True)


def stop(make: subprocess.Popen[bytes]) -> None:
    """Ctrl+C for make's process group; then, if it lingers, SIGTERM and SIGKILL."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        if make.poll() is not None:
            return
        try:
            os.killpg(make.pid, sig)
        except ProcessLookupError:
            return
        try:
            make.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue


def follow(
    make: subprocess.Popen[bytes],
    lines: queue.Queue[tuple[float, str] | None],
    timeline: Timeline,
    deadline: float,
    serve: bool,
) -> bool:
    """Advance ``timeline`` through make's output; True when done (health, or make's exit)."""
    port = 0
    while time.monotonic() < deadline:
        try:
            item = lines.get(timeout=0.25)
        except queue.Empty:
            item = ()  # type: ignore[assignment]
        if item is None:
            return not serve
        if item:
            stamp, line = item
            if serve and (found := SERVE_PORT.search(line)):
                port = int(found.group(1))
            phase = timeline.next_phase(line, stamp)
            if phase and phase != timeline.phase:
                timeline.enter(phase, stamp, tree_cpu_seconds(make.pid))
        if serve and port and timeline.phase == "serve" and healthy(port):
            return True
    return False


def measure(
    repo: Path, ref: str, target: list[str], *, serve: bool, args: argparse.Namespace
) -> tuple[Timeline, float, float, bool]:
    """One fresh clone and cache; ``make TARGET``. Returns the timeline, wall, CPU and success."""
    work = Path(tempfile.mkdtemp(prefix="gristmill-install-"))
    cache = None if args.no_cache else work / "pip-cache"
    started = time.monotonic()
    timeline = Timeline(since=started)
    before = children_cpu_seconds()
    clone(repo, ref, work / "gristmill")
    timeline.enter("venv", time.monotonic(), 0.0)
    timeline.cpu["clone"] = children_cpu_seconds() - before
    make = subprocess.Popen(
        ["make", "-C", str(work / "gristmill"), "--no-print-directory", *target],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=clean_env(cache),
        start_new_session=True,
    )
    lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
    log = work / "make.log"
    threading.Thread(target=read_lines, args=(make.stdout, lines, log), daemon=True).start()
    ok = follow(make, lines, timeline, started + args.timeout, serve)
    if serve:  # still serving: the live tree
        timeline.enter("done", time.monotonic(), tree_cpu_seconds(make.pid))
    else:  # make has ended: everything it ran is reaped
        make.wait(timeout=max(1.0, started + args.timeout - time.monotonic()))
        since_clone = children_cpu_seconds() - before - timeline.cpu["clone"]
        timeline.enter("done", time.monotonic(), since_clone)
    wall = time.monotonic() - started
    if serve and ok and args.linger:
        time.sleep(args.linger)
    if serve:
        stop(make)
    ok = ok and (serve or make.returncode == 0)
    print(
        f"CPU of everything started, server shut-down included: "
        f"{children_cpu_seconds() - before:.1f} s"
    )
    if serve:
        print_screen(log)
    if args.keep:
        print(f"kept {work} (make's output with arrival times: {log})")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return timeline, wall, sum(timeline.cpu.values()), ok


def print_screen(log: Path) -> None:
    """What ``gristmill serve`` printed, as the newcomer saw it."""
    lines = [line.split(" ", 1)[-1] for line in log.read_text().splitlines()]
    at = next((i for i, line in enumerate(lines) if "gristmill serve" in line), len(lines))
    print("--- the first screen (make run's output from `gristmill serve` on) ---")
    print("\n".join(lines[at:]) or "(nothing)")
    print("---")


def report(
    title: str, timeline: Timeline, wall: float, cpu: float, ok: bool, target: float
) -> None:
    print(f"\n{title}: {'ok' if ok else 'FAILED or timed out'}")
    print(f"  {'phase':<22}{'wall s':>9}{'cpu s':>9}{'cpu/wall':>10}")
    for phase in PHASES:
        if timeline.wall[phase] or timeline.cpu[phase]:
            row(phase, timeline.wall[phase], timeline.cpu[phase])
    for name, seconds in timeline.builds.items():
        print(f"  {'built ' + name:<22}{seconds:9.1f}{'':>9}  (its start to its end)")
    row("total", wall, cpu)
    if sum(timeline.builds.values()) > timeline.wall["compile"] + 1:
        print("  note: builds ran beside other phases, whose rows count their CPU seconds too")
    verdict = "under" if wall < target else "OVER"
    print(
        f"  target {target:.0f} s: {verdict}; {os.cpu_count()} cores, "
        f"load average now {os.getloadavg()[0]:.2f}"
    )
    if cpu < 0.5 * wall:
        print("  note: CPU time is far below wall time: waiting on the network or other load")


def row(name: str, wall: float, cpu: float) -> None:
    ratio = f"{cpu / wall:10.2f}" if wall > 0.05 else f"{'-':>10}"
    print(f"  {name:<22}{wall:9.1f}{cpu:9.1f}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", type=Path, default=ROOT, help="repository to clone")
    parser.add_argument("--ref", default="HEAD", help="commit or branch to measure")
    parser.add_argument(
        "--test-install",
        action="store_true",
        help="also time make test's install (.venv/.installed-dev), fresh",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="PIP_NO_CACHE_DIR=1 instead of an empty temporary cache",
    )
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="seconds to keep serving after health (to see the workers' logs)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true", help="keep the clone and make's log")
    args = parser.parse_args()
    ref = subprocess.run(
        ["git", "-C", str(args.repo), "rev-parse", "--short", args.ref],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; ref {ref}")
    port = free_port()
    run = measure(args.repo, ref, ["run", f"PORT={port}"], serve=True, args=args)
    report(f"make run ({ref}), clone to first 200 from /v1/health", *run, RUN_TARGET_S)
    if args.test_install:
        test = measure(args.repo, ref, [".venv/.installed-dev"], serve=False, args=args)
        report(f"make test's install ({ref})", *test, TEST_INSTALL_TARGET_S)
    sys.exit(0 if run[3] and (not args.test_install or test[3]) else 1)


if __name__ == "__main__":
    main()
