"""Output storage through fsspec: a local folder by default, any fsspec URL (s3://...) works.

Keys carry 192 random bits, so an output URL cannot be guessed; the server serves them under
/files/<key>. On shared storage (S3) every gateway serves every key, whichever made it.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, cast

from fsspec.core import url_to_fs

from daguerre.errors import NotFound

# Path segments of URL-safe base64 letters, the last one with an extension: what new_key makes.
_KEY = re.compile(r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*(?:\.[A-Za-z0-9]{1,8})?")
MAX_KEY_LENGTH = 200
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp", ".mp4": "video/mp4"}


class Storage:
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        """`options` go to the fsspec filesystem: credentials and endpoint (Settings.fsspec_options)."""
        self._fs, self._root = url_to_fs(url, **(options or {}))
        # Object stores have no folders to make: only a local root needs them.
        self._local = "file" in self._fs.protocol
        if self._local:
            self._fs.makedirs(self._root, exist_ok=True)

    @staticmethod
    def new_key(folder: str, extension: str) -> str:
        return f"{folder}/{secrets.token_urlsafe(24)}{extension}"

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self._local:
            self._fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        self._fs.pipe_file(path, data)  # one PUT on an object store

    def get(self, key: str) -> bytes:
        try:
            return cast(bytes, self._fs.cat_file(self._path(key)))  # fsspec is unannotated
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound("file not found") from None

    def exists(self, key: str) -> bool:
        return cast(bool, self._fs.exists(self._path(key)))

    def _path(self, key: str) -> str:
        # Only keys shaped like the ones new_key makes: no "..", NUL, backslash or names too long
        # for a file system ever reach it, whatever a client puts in a URL.
        if len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
            raise NotFound("file not found")
        return f"{self._root.rstrip('/')}/{key}"


def content_type(key: str) -> str:
    return CONTENT_TYPES.get(key[key.rfind(".") :].lower(), "application/octet-stream")
