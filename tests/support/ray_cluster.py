"""A real Ray cluster for the fleet tests and benchmark, in a fresh network namespace.

Ray binds every interface (each Serve replica's gRPC server listens on `[::]`) and its head
reaches out at start (the dashboard process tries 169.254.169.254 and DNS), so it never runs in
the test's own namespace. `run_in_namespace` starts `unshare -n`, brings `lo` up and runs a
command there (a pytest of tests/fleet/, or bench/fleet.py) that starts the head with
`ray_cluster()`, deploys, runs its gateway (the driver) and stops everything, all inside.

Stopping: `ray stop` would kill every Ray process on the machine, other namespaces' clusters
included, so the cluster is stopped by its processes: those in this network namespace (a fresh one
per run, so nothing else is in it), found by the namespace's inode in /proc. The outer side sweeps
the same way after the command ends, in case it died before it could.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
HEAD_START_S = 60
# Where the command inside writes its namespace's inode, for the outer side's sweep.
NAMESPACE_FILE = "DAGUERRE_NETNS_FILE"


# --- outside the namespace ------------------------------------------------------------------


@cache
def unavailable() -> str | None:
    """Why a Ray cluster cannot run here (the skip reason), or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the fleet tests need Linux network namespaces (unshare -n)"
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            return f"the fleet tests need `{tool}` ({package})"
    try:
        trial = subprocess.run(
            ["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True, timeout=10
        )
    except subprocess.TimeoutExpired:
        return "unshare -n did not answer in 10 s"
    if trial.returncode != 0:
        return f"the fleet tests need a network namespace (root): `unshare -n` failed: {trial.stderr.strip()}"
    return None


@dataclass
class NamespaceRun:
    returncode: int
    stdout: str
    stderr: str


def run_in_namespace(argv: list[str], timeout_s: float, env: dict[str, str] | None = None) -> NamespaceRun:
    """Runs `argv` in a fresh network namespace with only loopback up; kills what is left in the
    namespace when it ends (or overruns `timeout_s`)."""
    with tempfile.NamedTemporaryFile(prefix="daguerre-netns-", delete=False) as marker:
        namespace_file = Path(marker.name)
    command = ["unshare", "-n", "bash", "-c", 'ip link set lo up && exec "$@"', "fleet", *argv]
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(import_roots()),
        NAMESPACE_FILE: str(namespace_file),
        **(env or {}),
    }
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n(killed: ran past {timeout_s} s)"
    finally:
        text = namespace_file.read_text().strip() if namespace_file.exists() else ""
        namespace_file.unlink(missing_ok=True)
        if text:
            stop_namespace(int(text))
    return NamespaceRun(process.returncode, stdout, stderr)


def import_roots() -> list[str]:
    # The namespace imports `tests` and `daguerre` from where this process does (a worktree's
    # src/ before an editable install's), and Ray's workers inherit it from `ray start`.
    import daguerre

    roots = [str(ROOT), str(Path(daguerre.__file__).resolve().parent.parent)]
    inherited = os.environ.get("PYTHONPATH")
    return [*roots, inherited] if inherited else roots


# --- inside the namespace -------------------------------------------------------------------


def only_loopback() -> bool:
    import socket

    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def namespace_inode(pid: int | str = "self") -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def stop_namespace(inode: int, exclude: set[int] | None = None) -> None:
    """SIGTERM, then SIGKILL, every process in the network namespace `inode` but `exclude`."""
    for sig, pause in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        victims = [pid for pid in _pids_in(inode) if pid not in (exclude or set())]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + pause
        while victims and time.monotonic() < deadline:
            victims = [pid for pid in victims if _alive(pid)]
            time.sleep(0.1)


def _pids_in(inode: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if namespace_inode(entry) == inode:
                    pids.append(int(entry))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Cluster:
    address: str
    temp_dir: Path
    env: dict[str, str]


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return pids


@contextlib.contextmanager
def ray_cluster(num_cpus: int = 2) -> Iterator[Cluster]:
    """Starts a Ray head on 127.0.0.1 in this (fresh) namespace, with its own HOME and token auth
    off, and points this process's drivers at it; stops every process of the namespace at the end
    but this one and its parents."""
    assert only_loopback(), "Ray binds every interface: run it through run_in_namespace (unshare -n)"
    inode = namespace_inode()
    marker = os.environ.get(NAMESPACE_FILE)
    if marker:
        Path(marker).write_text(str(inode))
    # Short: Ray's Unix socket paths live under it (at most 107 bytes).
    temp_dir = Path(tempfile.mkdtemp(prefix="dgr-ray-", dir="/tmp"))
    home = temp_dir / "home"
    home.mkdir()
    # A driver given an explicit address needs the auth mode said; a token under a shared HOME
    # would turn auth on (see infra-facts). Set here so this process's ray.init sees them too.
    env = {"RAY_AUTH_MODE": "disabled", "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(env)
    ray = Path(sys.executable).parent / "ray"
    command = [
        str(ray),
        "start",
        "--head",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        str(num_cpus),
        "--disable-usage-stats",
        "--include-dashboard=false",
        "--temp-dir",
        str(temp_dir / "ray"),
    ]
    try:
        started = subprocess.run(command, capture_output=True, text=True, timeout=HEAD_START_S, env=os.environ)
        assert started.returncode == 0, f"ray start failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}"
        yield Cluster(address="127.0.0.1:6379", temp_dir=temp_dir, env=env)
    finally:
        if "ray" in sys.modules:
            import ray as ray_module

            with contextlib.suppress(Exception):
                ray_module.shutdown()
        stop_namespace(inode, exclude=_ancestors())
        shutil.rmtree(temp_dir, ignore_errors=True)
