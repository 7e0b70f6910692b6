"""The on-disk artifact cache: compiled buckets survive restarts.

Layout, under the cache root (``BUCKETWISE_CACHE``, else ``$XDG_CACHE_HOME/bucketwise``,
else ``~/.cache/bucketwise``)::

    entries/<key>/meta.json   what the entry is: model, backend, bucket, and each file's
                              size and SHA-256; plus compile time and measured memory
    entries/<key>/...         the artifact's files, as the backend wrote them
    locks/<key>.lock          held while one process compiles that entry
    tmp/                      entries being written, renamed into entries/ when whole
    blobs/<sha256>            one copy of each large file (1 MiB and up) that entries share:
                              an entry's copy is a hard link to it (ONNX Runtime buckets
                              of one model share their weights file this way)

An entry's key is the SHA-256 of its identity: the model fingerprint (weights and graph,
see :func:`fingerprint`), the backend's name, version and options, the host (compiled code
is machine-specific: ONNX Runtime's optimised graphs and OpenVINO blobs use the CPU's
instruction set), the bucketwise cache format and the bucket.

Contracts:

- Writes are atomic: an entry is written into ``tmp/`` and renamed into place, so a reader
  sees a whole entry or none, even if the writer is killed.
- Every file is checked against its recorded SHA-256 on load. A corrupt or truncated
  entry is removed with a warning and rebuilt, never loaded.
- Two processes that compile the same entry at once are safe: the second waits on the
  entry's file lock, then loads what the first wrote.
- A large file identical to one already cached is stored once: the entry gets a hard link
  (a copy where the file system has none). Each entry is still whole on its own and
  checked on its own; a corrupt shared file fails every entry that links it, and each is
  rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BackendError, CacheWarning, ConfigError
from ..shapes import Bucket
from .fingerprint import (
    LazyModel,
    cpu_name,
    default_cache_dir,
    digest,
    fingerprint,
    fingerprint_files,
    host_id,
    sha256_file,
)

__all__ = [
    "ArtifactCache",
    "CacheEntry",
    "CacheWarning",
    "LazyModel",
    "default_cache_dir",
    "fingerprint",
    "fingerprint_files",
    "host_id",
    "cpu_name",
]

CACHE_FORMAT = 1
T = TypeVar("T")
DEDUPE_MIN_BYTES = 1 << 20
_HASHED: dict[tuple[int, int, int, int], str] = {}  # (device, inode, size, mtime_ns) -> SHA-256


_HASH_LOCK = threading.Lock()


def sha256_once(path: Path) -> str:
    """The file's SHA-256, hashed once per process per file (a hard-linked file shared by
    many entries is read once, even by buckets loading in parallel; a file changed since
    has another mtime and is re-read)."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _HASH_LOCK:
        if key not in _HASHED:
            _HASHED[key] = sha256_file(path)
        return _HASHED[key]


# -- entries ------------------------------------------------------------------------------


@dataclass
class CacheEntry:
    """One cached artifact (or model export) and what is known of it."""

    key: str
    folder: Path
    meta: dict[str, Any]

    @property
    def identity(self) -> dict[str, Any]:
        return self.meta.get("identity", {})

    @property
    def bucket(self) -> Bucket | None:
        sizes = self.identity.get("bucket")
        return Bucket(sizes) if sizes else None

    @property
    def backend(self) -> str:
        return str(self.identity.get("backend", {}).get("name", "?"))

    @property
    def model_name(self) -> str:
        return str(self.meta.get("model_name") or self.identity.get("model", "?")[:12])

    @property
    def disk_bytes(self) -> int:
        return sum(int(f["bytes"]) for f in self.meta.get("files", {}).values())

    @property
    def resident_bytes(self) -> int | None:
        value = self.meta.get("resident_bytes")
        return int(value) if value is not None else None

    @property
    def resident_shared(self) -> dict[str, int]:
        """Memory this entry shares with other buckets once loaded (id -> bytes), which
        ``resident_bytes`` leaves out; empty where none, or not recorded."""
        value = self.meta.get("resident_shared")
        return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else {}

    @property
    def compile_seconds(self) -> float | None:
        value = self.meta.get("compile_seconds")
        return float(value) if value is not None else None

    @property
    def created(self) -> float:
        return float(self.meta.get("created", 0.0))

    def path(self, name: str) -> Path:
        return self.folder / name


class ArtifactCache:
    """Compiled artifacts on disk, keyed by model, backend, host and bucket.

    ``ArtifactCache()`` uses :func:`default_cache_dir`; pass a folder to use another.
    ``max_bytes`` (default: ``BUCKETWISE_CACHE_MAX_SIZE``, e.g. ``5GB``; else no cap) caps
    the bytes on disk: :meth:`evict` removes the least recently used entries past it, never
    one in use by this process or being compiled by any.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, max_bytes: float | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        if max_bytes is None and os.environ.get("BUCKETWISE_CACHE_MAX_SIZE"):
            from ..planning.io import parse_bytes

            try:
                max_bytes = parse_bytes(os.environ["BUCKETWISE_CACHE_MAX_SIZE"])
            except Exception as err:
                raise ConfigError(f"BUCKETWISE_CACHE_MAX_SIZE: {err}") from None
        if max_bytes is not None and max_bytes <= 0:
            raise ConfigError(f"the cache's max size must be positive, got {max_bytes}")
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"ArtifactCache({str(self.root)!r})"

    def check_writable(self) -> None:
        """Raise :class:`ConfigError` unless entries can be written under the root (it is
        created if missing): a read-only or misplaced cache fails here, not mid-compile."""
        probe = self.root / "tmp" / f"probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ConfigError(
                f"the artifact cache {str(self.root)!r} cannot be written ({err.strerror or err}); give a "
                "writable --cache-dir (or BUCKETWISE_CACHE), or run without a cache (--no-cache)"
            ) from None

    def sweep(self) -> int:
        """Remove what a killed process left under ``tmp/``: entries it was writing (when no
        live writer holds their key's lock), half-deleted entries, stale probes. Returns how
        many were removed. Run at the start of each build."""
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return 0
        from filelock import Timeout

        removed = 0
        for child in list(tmp.iterdir()):
            name = child.name
            try:
                if name.startswith("trash-") or (name.startswith("probe-") and time.time() - child.stat().st_mtime > 60):
                    _remove_path(child)
                    removed += 1
                elif child.is_dir() and "-" in name:
                    with self.lock(name.rsplit("-", 1)[0], timeout=0):  # a live writer holds it: skip
                        _remove_path(child)
                        removed += 1
            except (Timeout, OSError):
                continue
        return removed + self._sweep_blobs()

    def _sweep_blobs(self) -> int:
        """Remove shared files no entry links any more (the blob's own link is the last)."""
        blobs = self.root / "blobs"
        removed = 0
        for blob in list(blobs.iterdir()) if blobs.is_dir() else []:
            try:
                stale_tmp = blob.name.startswith(".") and time.time() - blob.stat().st_mtime > 3600
                if blob.stat().st_nlink == 1 and (not blob.name.startswith(".") or stale_tmp):
                    blob.unlink()
                    removed += 1
            except OSError:
                continue
        return removed

    # -- keys -----------------------------------------------------------------------------

    @staticmethod
    def identity(
        *, model: str, backend: Mapping[str, Any], bucket: Bucket | None, kind: str = "artifact"
    ) -> dict[str, Any]:
        """What an entry is. ``backend`` holds ``name``, ``version`` and ``options``."""
        return {
            "format": CACHE_FORMAT,
            "kind": kind,
            "model": model,
            "backend": dict(backend),
            "host": host_id(),
            "bucket": bucket.as_dict() if bucket is not None else None,
        }

    @staticmethod
    def key(identity: Mapping[str, Any]) -> str:
        return digest(identity)[:32]

    def _entries_dir(self) -> Path:
        return self.root / "entries"

    def folder(self, key: str) -> Path:
        return self._entries_dir() / key

    def lock(self, key: str, *, timeout: float = -1) -> Any:
        """A file lock for ``key``: hold it while compiling that entry."""
        from filelock import FileLock

        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{key}.lock"), timeout=timeout)

    # -- read ---------------------------------------------------------------------------------

    def lookup(self, key: str) -> tuple[CacheEntry | None, str | None]:
        """``(entry, None)`` for a whole, verified entry; ``(None, None)`` when absent;
        ``(None, why)`` when it was corrupt, in which case it has been removed."""
        folder = self.folder(key)
        if not folder.is_dir():
            return None, None
        problem = self._verify(folder)
        if problem is None:
            try:
                os.utime(folder)  # last used: the folder's mtime orders eviction
            except OSError:
                pass
            return CacheEntry(key, folder, _read_meta(folder)), None
        self.remove(key)
        warnings.warn(
            f"bucketwise cache entry {folder} was unusable ({problem}); removed it, rebuilding",
            CacheWarning,
            stacklevel=3,
        )
        return None, problem

    def get(self, key: str) -> CacheEntry | None:
        """The verified entry for ``key``, or ``None`` (absent, or corrupt and removed)."""
        return self.lookup(key)[0]

    @staticmethod
    def _verify(folder: Path) -> str | None:
        try:
            meta = _read_meta(folder)
        except (OSError, ValueError) as err:
            return f"meta.json unreadable: {err}"
        problem = _meta_problem(meta)
        if problem is not None:
            return problem
        for name, info in meta["files"].items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != int(info["bytes"]):
                return f"{name} has {path.stat().st_size} bytes, expected {info['bytes']} (truncated?)"
            if sha256_once(path) != info["sha256"]:
                return f"{name} fails its SHA-256 check"
        return None

    def entries(self) -> list[CacheEntry]:
        """Every entry whose meta.json reads, without checking file hashes (fast)."""
        out: list[CacheEntry] = []
        root = self._entries_dir()
        if not root.is_dir():
            return out
        for folder in sorted(root.iterdir()):
            try:
                meta = _read_meta(folder)
            except (OSError, ValueError):
                continue
            if _meta_problem(meta) is None:
                out.append(CacheEntry(folder.name, folder, meta))
        return out

    def measured(self, *, model: str, backend: str) -> dict[Bucket, CacheEntry]:
        """Artifact entries of one model fingerprint on one backend (any version), by bucket."""
        out: dict[Bucket, CacheEntry] = {}
        for e in self.entries():
            ident = e.identity
            if ident.get("kind") == "artifact" and ident.get("model") == model and e.backend == backend:
                b = e.bucket
                if b is not None and (b not in out or e.created > out[b].created):
                    out[b] = e
        return out

    # -- write --------------------------------------------------------------------------------

    def largest_resident(self, *, model: str, backend: str) -> tuple[int | None, int, int]:
        """The largest resident size measured for any bucket of ``model`` on ``backend``
        (what one bucket adds), how many buckets were measured, and the bytes they share
        once (weights mapped once): the figures a memory budget plans with."""
        found = [e for e in self.measured(model=model, backend=backend).values() if e.resident_bytes is not None]
        shared: dict[str, int] = {}
        for e in found:
            shared.update(e.resident_shared)
        sizes = [int(e.resident_bytes) for e in found if e.resident_bytes]
        return (max(sizes) if sizes else None), len(sizes), sum(shared.values())

    def put(
        self,
        identity: Mapping[str, Any],
        write: Callable[[Path], T],
        *,
        info: Mapping[str, Any] | None = None,
    ) -> tuple[CacheEntry, T]:
        """Run ``write(folder)`` into a fresh temporary folder, record each file's size and
        SHA-256, then move the folder into place in one rename. Returns the entry and what
        ``write`` returned. ``info`` adds fields to meta.json (e.g. ``model_name``)."""
        key = self.key(identity)
        tmp = self.root / "tmp" / f"{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            start = time.perf_counter()
            result = write(tmp)
            seconds = time.perf_counter() - start
            files = {
                p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                for p in sorted(tmp.rglob("*"))
                if p.is_file()
            }
            if not files:
                raise BackendError(f"backend {identity.get('backend', {}).get('name')!r} wrote no files for the cache")
            meta = {
                "identity": dict(identity),
                "files": files,
                "created": time.time(),
                "compile_seconds": seconds,
                **dict(info or {}),
            }
            _write_json(tmp / "meta.json", meta)
            self._share_large_files(tmp, files)
            final = self.folder(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # a stale entry (the caller holds the lock, so not a live one)
                self.remove(key)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return CacheEntry(key, final, meta), result

    def _share_large_files(self, folder: Path, files: Mapping[str, Any]) -> None:
        """Store each large file once, under ``blobs/<sha256>``: a file already there is
        replaced by a hard link to it; a new one is published there. Where hard links fail
        (another file system), the entry keeps its own copy."""
        blobs = self.root / "blobs"
        for name, info in files.items():
            if info["bytes"] < DEDUPE_MIN_BYTES:
                continue
            path, blob = folder / name, blobs / info["sha256"]
            try:
                blobs.mkdir(exist_ok=True)
                if blob.exists() and (blob.stat().st_size != info["bytes"] or sha256_once(blob) != info["sha256"]):
                    blob.unlink()  # a corrupt blob: never link to it; the new file replaces it
                if blob.exists():
                    if os.path.samefile(blob, path):
                        continue  # already one file (a backend linked it): nothing to do
                    link = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
                    source, target = blob, path
                else:
                    link = blobs / f".{info['sha256']}.{uuid.uuid4().hex[:8]}"
                    source, target = path, blob  # published whole, atomically
                try:
                    os.link(source, link)
                    # rename() of two links to one file does nothing and succeeds (POSIX),
                    # leaving the temporary link: it is removed below either way.
                    os.replace(link, target)
                finally:
                    link.unlink(missing_ok=True)
            except OSError:
                continue

    def disk_bytes(self) -> int:
        """Bytes the cache holds on disk, each shared file counted once."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for path in self.root.rglob("*"):
            try:
                st = path.lstat()
            except OSError:
                continue
            if path.is_file() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
        return total

    def update(self, key: str, **fields: Any) -> None:
        """Record measurements (e.g. ``resident_bytes``) in an entry's meta.json, atomically.
        Does nothing if the entry is gone, even if it goes while this writes."""
        folder = self.folder(key)
        try:
            meta = _read_meta(folder)
        except (OSError, ValueError):
            return
        meta.update(fields)
        tmp = folder / f".meta-{uuid.uuid4().hex[:8]}.json"
        try:
            _write_json(tmp, meta)
            os.replace(tmp, folder / "meta.json")
        except OSError:
            # Another process evicted or removed the entry meanwhile: the measurement is
            # advisory, and the entry is rebuilt (and measured) by whoever needs it next.
            tmp.unlink(missing_ok=True)

    def remove(self, key: str) -> None:
        """Remove an entry: renamed out of ``entries/`` first, so no reader sees half of it.
        (Shared files it linked stay in ``blobs/`` until :meth:`sweep` finds them unused.)"""
        folder = self.folder(key)
        if not folder.exists():
            return
        trash = self.root / "tmp" / f"trash-{key}-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(folder, trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def evict(self, *, keep: Collection[str] = ()) -> list[str]:
        """Remove least recently used entries until the cache fits ``max_bytes``; returns
        their keys. Never removes ``keep`` (entries this process has loaded) or an entry
        whose lock another process holds (being compiled). A process that has an evicted
        entry open keeps working (its files stay until it closes them) and recompiles it
        on its next start."""
        from filelock import Timeout

        if self.max_bytes is None:
            return []
        removed: list[str] = []
        by_age = sorted(self.entries(), key=lambda e: _mtime(e.folder))
        for entry in by_age:
            if self.disk_bytes() <= self.max_bytes:
                break
            if entry.key in keep:
                continue
            try:
                with self.lock(entry.key, timeout=0):
                    self.remove(entry.key)
            except Timeout:
                continue
            self._sweep_blobs()
            removed.append(entry.key)
        if self.disk_bytes() > self.max_bytes:
            warnings.warn(f"bucketwise cache {self.root} holds {self.disk_bytes() / 2**20:.0f} MiB, over its cap of "
                          f"{self.max_bytes / 2**20:.0f} MiB, and every remaining entry is in use; raise the cap "
                          "(--cache-max-size, BUCKETWISE_CACHE_MAX_SIZE)", CacheWarning, stacklevel=2)
        return removed

    def prune(self, *, older_than_days: float | None = None) -> list[str]:
        """Remove entries this machine and these package versions cannot load (another
        host's CPU, another backend version or cache format) and, with ``older_than_days``,
        entries unused that long. Returns their keys."""
        from ..backends.base import CacheableBackend, backend_names, get_backend, is_available

        current: dict[str, Any] = {}
        removed = []
        for entry in self.entries():
            ident = entry.identity
            name = ident.get("backend", {}).get("name")
            stale = ident.get("host") != host_id() or ident.get("format") != CACHE_FORMAT
            # A backend this process knows is judged by its version; one it does not (a
            # backend registered by another program, an export) only by host and format.
            if ident.get("kind") != "export" and name in backend_names():
                if name not in current:
                    try:
                        backend = get_backend(name) if is_available(name) else None
                        current[name] = (backend.cache_key().get("version")
                                         if isinstance(backend, CacheableBackend) else None)
                    except Exception:  # noqa: BLE001 - a backend that will not start cannot load its entries
                        current[name] = None
                stale = stale or ident.get("backend", {}).get("version") != current[name]
            old = older_than_days is not None and time.time() - _mtime(entry.folder) > older_than_days * 86400
            if stale or old:
                self.remove(entry.key)
                removed.append(entry.key)
        self._sweep_blobs()
        return removed

    def clear(self) -> int:
        """Remove every entry, the shared files and the lock files; returns how many entries
        there were."""
        entries = self.entries()
        for e in entries:
            self.remove(e.key)
        for sub in ("tmp", "blobs", "locks"):
            shutil.rmtree(self.root / sub, ignore_errors=True)
        return len(entries)


def _read_meta(folder: Path) -> dict[str, Any]:
    data = json.loads((folder / "meta.json").read_text())
    if not isinstance(data, dict):
        raise ValueError("meta.json is not an object")
    return data


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _meta_problem(meta: dict[str, Any]) -> str | None:
    """What is wrong with the shape of an entry's meta.json, or None: every field read
    later is checked here, so a hand-edited or half-written one is rebuilt, never a crash."""
    if not isinstance(meta.get("identity"), dict):
        return "meta.json has no identity object"
    files = meta.get("files")
    if not isinstance(files, dict) or not files:
        return "meta.json lists no files"
    for name, info in files.items():
        if not isinstance(name, str) or name.startswith("/") or ".." in Path(name).parts:
            return f"meta.json names a file outside the entry: {name!r}"
        if (not isinstance(info, dict) or isinstance(info.get("bytes"), bool) or not isinstance(info.get("bytes"), int)
                or not isinstance(info.get("sha256"), str)):
            return f"meta.json's record of {name!r} lacks an integer 'bytes' or a string 'sha256'"
    for field_name in ("created", "compile_seconds", "resident_bytes"):
        value = meta.get(field_name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"meta.json's {field_name!r} is {type(value).__name__}, not a number"
    return None


def _remove_path(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
        f.flush()
        os.fsync(f.fileno())


def resident_bytes(*, trim: bool = False) -> int | None:
    """This process's resident set size, where the OS tells it cheaply (Linux).

    ``trim`` first hands freed heap memory back to the OS (glibc ``malloc_trim``), so that a
    later reading counts new allocations as growth instead of reusing freed pages unseen.
    """
    if trim:
        _malloc_trim()
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def mapped_resident_bytes(path: Path) -> int | None:
    """How much of ``path`` this process holds resident through memory maps (Linux: the
    ``Rss`` of its mappings in ``/proc/self/smaps``, matched by inode, so hard links count
    as the file); ``None`` where the OS does not tell. A mapped file is resident only where
    it was read: an embedding table, for one, only at the rows of the tokens seen."""
    try:
        st = path.stat()
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    total, inside = 0, False
    for line in text.splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header line
            inside = head[4] == str(st.st_ino) and _dev(head[3]) == st.st_dev
        elif inside and head and head[0] == "Rss:":
            total += int(head[1]) * 1024
    return total


def _dev(text: str) -> int:
    major, minor = (int(x, 16) for x in text.split(":"))
    return os.makedev(major, minor)


def _malloc_trim() -> None:
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass
