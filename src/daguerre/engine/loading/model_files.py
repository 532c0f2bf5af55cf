"""Model files registered by URL (s3://bucket/model.safetensors, any fsspec URL), copied once per
node into a local folder that the loaders read like any file.

A model's path in the catalog is either a path (local, or on a filesystem every node mounts),
used where it is, or a URL, fetched here. A copy is named by the SHA-256 recorded at `models add`,
so every version of every model has its own, and two processes of one node fetch it once: the
fetch holds a file lock (filelock) per copy, streams into a temporary file while hashing, and
only a copy whose digest matches is moved into place. Each process checks a copy's digest again
the first time it uses it (and whenever its size or modification time changed), so a copy
damaged on disk is fetched again rather than loaded. Copies are kept within a byte budget; the
least recently used are removed first (their access time is set on every use, whatever the
mount's atime policy).

Written here rather than with fsspec's own caching filesystems (filecache, simplecache): those
cache by URL with no checksum, no byte budget across entries and no lock between processes.
No torch here: `daguerre models add` fetches through it before probing the file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from filelock import FileLock, Timeout
from fsspec.core import url_to_fs

from daguerre.errors import DaguerreError

log = logging.getLogger(__name__)

_CHUNK = 8 * 1024 * 1024
_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def is_url(path: str) -> bool:
    """A URL to fetch (s3://..., gs://..., https://...), not a path to use where it is."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme.isalnum() and scheme != "file"


class ModelFileError(DaguerreError):
    """A model file that cannot be fetched, or does not match its recorded checksum."""


# Where a catalog path (and the checksum of a URL's file) is on this node: ModelFiles.local.
LocalFile = Callable[[str, str | None], Path]


def in_place(path: str, sha256: str | None) -> Path:
    """The LocalFile of callers that hold no node cache: a path as it is; a URL is refused."""
    if is_url(path):
        raise ModelFileError(f"{path} is a URL; only an engine with its node's model files can load it")
    return Path(path)


@dataclass(frozen=True)
class Fetched:
    path: Path  # the local copy
    sha256: str


class ModelFiles:
    """The node's copies of model files. `options(url)` gives fsspec what it needs to reach a URL
    (credentials, endpoint: Settings.fsspec_options)."""

    def __init__(
        self,
        folder: Path,
        max_bytes: int,
        options: Callable[[str], dict[str, Any]] | None = None,
        lock_timeout_s: float = 3600,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._options = options or (lambda _url: {})
        self._lock_timeout_s = lock_timeout_s
        # Copies this process has hashed, by path, with the (size, mtime) they had then.
        self._verified: dict[Path, tuple[int, int]] = {}
        self.fetches = 0  # how many times a file was fetched; the tests hold the cache to it

    def local(self, path: str, sha256: str | None) -> Path:
        """The local file to load for a catalog path: the path itself, or a verified copy of the
        URL's file (fetched now if this node has none, or a damaged one)."""
        if not is_url(path):
            return Path(path)
        if sha256 is None:
            raise ModelFileError(f"{path} has no checksum in the catalog; register it again with `daguerre models add`")
        copy = self._copy_path(path, sha256)
        with self._lock(copy):
            if copy.exists() and self._intact(copy, sha256):
                self._touch(copy)
                return copy
            if copy.exists():
                log.warning("the local copy of %s does not match its checksum; fetching it again", path)
                copy.unlink()
            fetched = self._fetch(path, copy, sha256)
        self._evict(keep=fetched.path)
        return fetched.path

    def peek(self, path: str, sha256: str | None) -> Path | None:
        """The local copy if this node has one, without fetching or checking it (for size estimates)."""
        if not is_url(path):
            return Path(path)
        copy = self._copy_path(path, sha256) if sha256 else None
        return copy if copy is not None and copy.exists() else None

    def fetch(self, url: str) -> Fetched:
        """Fetch a URL whose checksum is not known yet (`models add`): the copy and its digest."""
        self.folder.mkdir(parents=True, exist_ok=True)
        staging = self.folder / f"adding-{os.getpid()}-{time.monotonic_ns()}{_suffix(url)}"
        fetched = self._fetch(url, staging, None)
        copy = self._copy_path(url, fetched.sha256)
        with self._lock(copy):
            os.replace(staging, copy)
            self._remember(copy)
        self._evict(keep=copy)
        return Fetched(copy, fetched.sha256)

    def used_bytes(self) -> int:
        return sum(size for _, size, _ in self._copies())

    # Inside

    def _copy_path(self, url: str, sha256: str) -> Path:
        # The loaders tell formats apart by the suffix (.safetensors or a pickle), so it is kept.
        return self.folder / f"{sha256}{_suffix(url)}"

    def _lock(self, copy: Path) -> FileLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(copy) + ".lock", timeout=self._lock_timeout_s)

    def _fetch(self, url: str, destination: Path, sha256: str | None) -> Fetched:
        partial = destination.with_name(destination.name + ".part")
        digest = hashlib.sha256()
        started = time.monotonic()
        try:
            fs, remote = url_to_fs(url, **self._options(url))
            with fs.open(remote, "rb") as source, partial.open("wb") as sink:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    sink.write(chunk)
        except FileNotFoundError:
            partial.unlink(missing_ok=True)
            raise ModelFileError(f"model file {url} not found") from None
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise ModelFileError(f"model file {url} could not be fetched: {exc}") from None
        if sha256 is not None and digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise ModelFileError(
                f"model file {url} does not match the checksum recorded when it was added (sha256 {sha256}, "
                f"fetched {digest.hexdigest()}): it changed since; add it again as a new version"
            )
        os.replace(partial, destination)
        self.fetches += 1
        self._remember(destination)
        log.info("fetched %s (%d bytes) in %.1f s", url, destination.stat().st_size, time.monotonic() - started)
        return Fetched(destination, digest.hexdigest())

    def _remember(self, copy: Path) -> None:
        stat = copy.stat()
        self._verified[copy] = (stat.st_size, stat.st_mtime_ns)
        self._touch(copy)

    def _intact(self, copy: Path, sha256: str) -> bool:
        stat = copy.stat()
        if self._verified.get(copy) == (stat.st_size, stat.st_mtime_ns):
            return True
        digest = hashlib.sha256()
        with copy.open("rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            self._verified.pop(copy, None)
            return False
        self._verified[copy] = (stat.st_size, stat.st_mtime_ns)
        return True

    @staticmethod
    def _touch(copy: Path) -> None:
        # The access time is the last use; the modification time stays what the fetch made it.
        os.utime(copy, ns=(time.time_ns(), copy.stat().st_mtime_ns))

    def _copies(self) -> list[tuple[Path, int, float]]:
        if not self.folder.exists():
            return []
        copies = []
        for file in self.folder.iterdir():
            if file.suffix in _SUFFIXES and not file.name.startswith("adding-"):
                try:
                    stat = file.stat()
                except FileNotFoundError:  # removed meanwhile by another process
                    continue
                copies.append((file, stat.st_size, stat.st_atime))
        return copies

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used copies until the folder is within the budget; a copy
        another process holds the lock of (fetching or checking it) is left alone."""
        copies = sorted(self._copies(), key=lambda copy: copy[2])
        used = sum(size for _, size, _ in copies)
        for file, size, _ in copies:
            if used <= self.max_bytes:
                return
            if file == keep:
                continue
            try:
                with FileLock(str(file) + ".lock", timeout=0):
                    file.unlink(missing_ok=True)
            except Timeout:
                continue
            self._verified.pop(file, None)
            used -= size
            log.info("removed the local copy %s (%d bytes) to stay within model_files.max_bytes", file.name, size)
        if used > self.max_bytes:
            log.warning("model file copies take %d bytes, more than model_files.max_bytes (%d)", used, self.max_bytes)


def _suffix(url: str) -> str:
    suffix = PurePosixPath(url.split("?", 1)[0]).suffix.lower()
    return suffix if suffix in _SUFFIXES else ".bin"
