"""The decoded cache: an image folder's split decoded once to a uint8 array (N, C, H, W) on disk, memory-mapped
by every later run (sweep jobs, search trials, torchrun ranks) instead of decoded again.

An entry is a directory `<cache_dir>/<folder part>-<files part>` holding images.npy, labels.npy, files.json
and meta.json (written last), built under a temporary name and renamed into place while the builder holds
`.<entry>.lock` (fcntl.flock). Its key, what is checked on reading and what happens when the cache dir cannot
be used: docs/data.md, "The decoded cache".
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.data.decode_workers import decode_into, shared_array, worker_count

log = logging.getLogger(__name__)

FORMAT = 1                          # the entry layout; a change makes every older entry a miss


@dataclass
class Decoded:
    images: np.ndarray                              # uint8 (N, C, H, W): a copy-on-write map of an entry, or memory
    unreadable: dict[int, str] = field(default_factory=dict)   # row -> "cannot read image <file>: <why>"
    entry: Path | None = None                       # the cache entry the images are mapped from
    fell_back: bool = False                         # the cache dir could not be used: decoded into memory


class _Invalid(Exception):
    """An entry that must not be trusted; the message names the file and what is wrong with it."""


def cache_root(value) -> Path:
    """data.cache_dir, or (null) $XDG_CACHE_HOME/cnnlab/decoded, else ~/.cache/cnnlab/decoded."""
    if value:
        return Path(str(value)).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "")
    base = base if os.path.isabs(base) else os.path.join("~", ".cache")  # the XDG spec ignores a relative value
    return Path(base).expanduser() / "cnnlab" / "decoded"


def cache_dir_problem(value: str | None, roots: dict) -> str | None:
    """The one line refusing a data.cache_dir `value` (or its default, for None) inside one of the image trees
    `roots` ({"root": path, "train_root": ...}, unset ones None or left out), None when it lies outside them:
    cnnlab never writes into the data."""
    where = cache_root(value).resolve()
    for key, root in roots.items():
        if not root:
            continue
        root = Path(str(root)).expanduser().resolve()
        if where == root or root in where.parents:
            named = f"data.cache_dir={value}" if value else f"data.cache_dir=null (the default, {where})"
            return (f"{named} is inside the image folder data.{key}={root}: cnnlab never writes into "
                    f"the data; set data.cache_dir to a folder outside it, or data.cache=false")
    return None


def size_text(shape) -> str:
    """The bytes of a uint8 array of `shape`, as the log says them (MB, below 0.1 MB in KB)."""
    mb = float(np.prod(shape)) / 2**20
    return f"{mb:,.1f} MB" if mb >= 0.1 else f"{mb * 1024:.1f} KB"


# ---- naming ----
def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part)
    return hasher.hexdigest()[:16]


def entry_name(listing, channels: int, size, mode: str) -> str:
    """`<hash(format, resolved root, channels, size, mode)>-<hash(files with size and mtime_ns, labels)>`."""
    folder = json.dumps([FORMAT, str(Path(listing.root).resolve()), int(channels), [int(v) for v in size], mode])
    rows = b"\n".join(b"%s\0%d\0%d\0%d" % (os.fsencode(rel), nbytes, mtime, label) for rel, nbytes, mtime, label
                      in zip(listing.relative, listing.sizes, listing.mtimes, listing.labels))
    return f"{_digest(folder.encode())}-{_digest(rows)}"


# ---- reading ----
def _npy_layout(path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, header length) of a uint8 C-order .npy file; _Invalid if it is anything else."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            if fortran or dtype != np.uint8:
                raise ValueError(f"{dtype} {'Fortran' if fortran else 'C'}-order, not uint8 C-order")
            return tuple(shape), f.tell()
    except FileNotFoundError:
        raise _Invalid(f"{path} is missing") from None
    except (OSError, ValueError) as bad:
        raise _Invalid(f"{path} has no valid .npy header ({bad})") from None


def _read_entry(entry: Path, name: str, labels: np.ndarray) -> Decoded | None:
    """The entry mapped, after the checks that cost no pixel reads; None when there is no entry."""
    if not entry.is_dir():
        return None
    meta_path = entry / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        shape = tuple(int(v) for v in meta["shape"])
        unreadable = {int(row): str(why) for row, why in meta["unreadable"]}
    except FileNotFoundError:
        raise _Invalid(f"{meta_path} is missing") from None
    except (OSError, ValueError, KeyError, TypeError) as bad:
        raise _Invalid(f"{meta_path} cannot be read ({bad})") from None
    if meta.get("format") != FORMAT or meta.get("key") != name:
        raise _Invalid(f"{meta_path} was written for format {meta.get('format')} and key {meta.get('key')}, "
                       f"not {FORMAT} and {name}")
    if shape[0] != len(labels):
        raise _Invalid(f"{meta_path} lists {shape[0]} images where the folder has {len(labels)}")
    images_path = entry / "images.npy"
    found, header = _npy_layout(images_path)
    if found != shape:
        raise _Invalid(f"{images_path} holds an array of shape {found}, not {shape}")
    expected, actual = header + int(np.prod(shape)), images_path.stat().st_size
    if actual != expected:
        raise _Invalid(f"{images_path} is {actual} bytes where {expected} were written (truncated or damaged)")
    try:
        stored = np.load(entry / "labels.npy", allow_pickle=False)
    except (OSError, ValueError) as bad:
        raise _Invalid(f"{entry / 'labels.npy'} cannot be read ({bad})") from None
    if stored.shape != labels.shape or not np.array_equal(stored, labels):
        raise _Invalid(f"{entry / 'labels.npy'} holds other labels than the folder's")
    # copy-on-write: the run can never change the entry (a stray in-place op would write private pages, not the
    # file), and torch gets a writable array, so torch.from_numpy has nothing to warn about
    images = np.load(images_path, mmap_mode="c", allow_pickle=False)
    return Decoded(images, unreadable, entry)


def _unreadable_text(meta_rows, files) -> dict[int, str]:
    return {row: f"cannot read image {files[row]}: {why}" for row, why in meta_rows.items()}


# ---- writing ----
def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _remove(path: Path) -> None:
    """Take an entry or temporary directory away: renamed first (atomic, so no reader sees half of it)."""
    doomed = path.with_name(f".{path.name}.old-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(path, doomed)
    except FileNotFoundError:
        return
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)


def _build(entry: Path, name: str, listing, channels: int, size, mode: str, note: str, lock: int) -> None:
    """Decode the listing into a temporary directory beside `entry` and rename it into place when complete."""
    n = len(listing.files)
    shape = (n, int(channels), int(size[0]), int(size[1]))
    tmp = entry.with_name(f".{name}.tmp-{os.getpid()}")
    _remove(tmp)
    tmp.mkdir()
    try:
        images_path = tmp / "images.npy"
        images = np.lib.format.open_memmap(images_path, mode="w+", dtype=np.uint8, shape=shape)
        with open(images_path, "r+b") as f:  # claim the blocks now: a full disk fails here, not as SIGBUS in a worker
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as bad:
                if bad.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
        processes = worker_count(n)
        log.info("decoding %d images (%s at %dx%dx%d uint8, %s) into %s with %d process%s", n,
                 size_text(shape), *shape[1:], note, entry, processes, "" if processes == 1 else "es")
        bad = decode_into(images, listing.files, channels, shape[2:], mode, processes, str(entry), close_fds=(lock,))
        images.flush()
        del images
        np.save(tmp / "labels.npy", np.asarray(listing.labels, dtype=np.int64))
        files = [[rel, nbytes, mtime] for rel, nbytes, mtime in zip(listing.relative, listing.sizes, listing.mtimes)]
        _write_file(tmp / "files.json", json.dumps({"root": str(Path(listing.root).resolve()), "files": files}))
        for written in ("images.npy", "labels.npy"):
            _fsync(tmp / written)
        prefixes = {row: f"cannot read image {listing.files[row]}: " for row in bad}
        unreadable = [[row, why[len(prefixes[row]):] if why.startswith(prefixes[row]) else why]
                      for row, why in sorted(bad.items())]
        meta = {"format": FORMAT, "key": name, "root": str(Path(listing.root).resolve()), "shape": list(shape),
                "channels": int(channels), "input_size": list(shape[2:]), "resize_mode": mode,
                "unreadable": unreadable, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_file(tmp / "meta.json", json.dumps(meta, indent=1))  # last: an entry with meta.json is complete
        os.rename(tmp, entry)
    except BaseException:
        _remove(tmp)
        raise
    try:
        _fsync(entry.parent)  # the rename itself durable; the entry is complete and usable either way
    except OSError:
        pass


def _folder_change(old: Path, listing) -> str:
    """'3 added, 1 removed, 2 changed' between an old entry's files.json and the current listing."""
    try:
        before = {rel: (nbytes, mtime) for rel, nbytes, mtime in json.loads((old / "files.json").read_text())["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return "its file list could not be read"
    now = dict(zip(listing.relative, zip(listing.sizes, listing.mtimes)))
    added = sum(rel not in before for rel in now)
    removed = sum(rel not in now for rel in before)
    changed = sum(rel in before and tuple(before[rel]) != stat for rel, stat in now.items())
    if not (added or removed or changed):
        return "the same files, other labels"
    return f"{added} added, {removed} removed, {changed} changed"


def _stale_entries(cache_dir: Path, name: str) -> list[Path]:
    prefix = name.split("-", 1)[0] + "-"
    try:
        return sorted(p for p in cache_dir.iterdir() if p.name.startswith(prefix) and p.name != name and p.is_dir())
    except OSError:
        return []


# ---- the one entry point ----
def decode_in_memory(files, channels: int, size, mode: str, note: str) -> Decoded:
    """Decode into one preallocated array in this process's memory (no list of images, no stack)."""
    n = len(files)
    shape = (n, int(channels), int(size[0]), int(size[1]))
    processes = worker_count(n)
    images = shared_array(shape) if processes > 1 else np.zeros(shape, dtype=np.uint8)
    log.info("decoding %d images (%s at %dx%dx%d uint8, %s) into memory with %d process%s", n,
             size_text(shape), *shape[1:], note, processes, "" if processes == 1 else "es")
    return Decoded(images, decode_into(images, files, channels, shape[2:], mode, processes, "memory"))


def _reason(error: OSError) -> str:
    return os.strerror(error.errno) if error.errno else str(error)


def _fallback(cache_dir: Path, why: str, listing, channels, size, mode, note) -> Decoded:
    log.warning("the decoded cache cannot be used in %s (%s): decoding into this process's memory instead, as "
                "every run will; set data.cache_dir=<a writable folder> to keep the decoded images, or "
                "data.cache=false to decode in memory without this warning", cache_dir, why)
    decoded = decode_in_memory(listing.files, channels, size, mode, note)
    decoded.fell_back = True
    return decoded


def load(listing, channels: int, size, mode: str, cache_dir: Path, note: str) -> Decoded:
    """The decoded images of `listing` (an imagefolder.Listing): mapped from the cache entry, built first if
    missing, stale or damaged; decoded into memory if the cache dir cannot be used. `note` says which memory
    budget the set was checked against (for the log)."""
    import fcntl

    labels = np.asarray(listing.labels, dtype=np.int64)
    name = entry_name(listing, channels, size, mode)
    entry = cache_dir / name

    def mapped() -> Decoded | None:
        try:
            found = _read_entry(entry, name, labels)
        except OSError as bad:  # e.g. removed by a process that found it stale, between two reads
            raise _Invalid(f"{entry} cannot be read ({bad})") from None
        if found is not None:
            found.unreadable = _unreadable_text(found.unreadable, listing.files)
            log.info("memory-mapped %d decoded images (%s) from %s; they count against the page cache, not "
                     "this process's memory", len(labels), size_text(found.images.shape), entry)
        return found

    try:  # the common case, without the lock: an entry is complete once it exists (renamed into place)
        found = mapped()
        if found is not None:
            return found
    except _Invalid:
        pass  # checked again, and reported, under the lock
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as bad:
        return _fallback(cache_dir, f"cannot create it: {_reason(bad)}", listing, channels, size, mode, note)
    try:
        lock = os.open(cache_dir / f".{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as bad:
        return _fallback(cache_dir, f"cannot write in it: {_reason(bad)}", listing, channels, size, mode, note)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is building the decoded cache %s", entry)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = mapped()
            if found is not None:
                return found
        except _Invalid as bad:
            log.warning("the decoded cache entry is not usable: %s; rebuilding it", bad)
            _remove(entry)
        for dead in cache_dir.glob(f".{name}.tmp-*"):  # a builder that died (we hold its lock)
            _remove(dead)
        stale = _stale_entries(cache_dir, name)
        for old in stale:
            log.warning("the image folder %s changed since the decoded cache %s was built (%s): building a new "
                        "entry and removing that one", listing.root, old, _folder_change(old, listing))
        try:
            _build(entry, name, listing, channels, size, mode, note, lock)
        except OSError as bad:
            return _fallback(cache_dir, f"{_reason(bad)} while building {entry}", listing, channels, size, mode, note)
        for old in stale:
            _remove(old)
        found = _read_entry(entry, name, labels)
        found.unreadable = _unreadable_text(found.unreadable, listing.files)
        return found
    finally:
        os.close(lock)  # releases the flock
