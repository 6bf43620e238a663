"""Files the user names: those a command writes where the user says (--out, --page, --index, output=) and
those it reads (checkpoints, images, weights files).

Writing. A command writes a file only where
  - the folder exists or can be made, and a file can be created in it (a file in place of a folder, a read-only
    or pseudo file system such as /proc is refused), and
  - no file is there yet, or the file there is the command's own earlier output. Each command says how it
    recognises its own files (`owned`): cnnlab-export the JSON description beside the model naming that model,
    a page or index by the lines only it writes, a PNG by its `Software: cnnlab` text chunk, cnnlab-compare's
    CSV files by the compare.md it writes beside them. Anything else is left byte for byte as it is.
Both are checked before any expensive work (`check_target`, `check_folder`: ConfigError, one line, exit 2).
The bytes are then written to a temporary file in the same folder, synced and renamed over the target
(`write_atomic`), so a failure (a full disk, ...) leaves the earlier file as it was and nothing partial
(RunError naming the file, exit 1).

Reading. A file the user names must be a regular file: a FIFO, a device, a socket or a directory given as a
file is named as such (`input_file`); the path is only stat()ed, never opened, so a FIFO cannot hang the
command.
"""

from __future__ import annotations

import errno
import io
import json
import os
import stat
import struct
import tempfile
from pathlib import Path
from typing import Callable

from cnnlab.errors import ConfigError, RunError

PNG_SOFTWARE = "cnnlab"  # the PNG text chunk "Software" of every picture cnnlab writes: how it knows its own


# ---- reading --------------------------------------------------------------------------------------------------
def kind_of(mode: int) -> str:
    """What a file that is not a regular file is, in a user's words."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def file_kind(path: Path) -> str:
    """'file', 'dir', 'missing', or what else it is (kind_of); stat() only, never open()."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError as bad:
        raise ConfigError(f"{path}: cannot be looked at ({bad.strerror or type(bad).__name__})") from None
    if stat.S_ISREG(mode):
        return "file"
    return "dir" if stat.S_ISDIR(mode) else kind_of(mode)


def input_file(path, name: str, missing: str = "no such file") -> Path:
    """`path` (user-expanded) when it is a regular file. `name` starts the message (`image x.png`,
    `model.weights=x.pt`); a missing file says `missing`, anything else what it is instead of a file."""
    where = Path(path).expanduser()
    kind = file_kind(where)
    if kind == "missing":
        raise ConfigError(f"{name}: {missing}")
    if kind != "file":
        raise ConfigError(f"{name} is {'a directory' if kind == 'dir' else kind}, not a regular file; "
                          f"give a file")
    return where


# ---- writing: the checks before any work ----------------------------------------------------------------------
def _reason(bad: OSError) -> str:
    if bad.errno == errno.ENOSPC:
        return "the disk is full (No space left on device)"
    if bad.errno == errno.EROFS:
        return "a read-only file system"
    return bad.strerror or type(bad).__name__


def check_folder(folder, key: str) -> Path:
    """The folder exists or can be made, and a file can be created in it; ConfigError (naming `key`, e.g.
    `--out=x`) if not. Nothing is left behind: the probe goes into the nearest folder that already exists."""
    folder = Path(folder).expanduser()
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    kind = file_kind(existing)
    if kind != "dir":
        what = "a file" if kind == "file" else kind
        raise ConfigError(f"{key}: {existing} is {what}, not a directory, so nothing can be written under it; "
                          f"choose a directory you can write to")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cnnlab-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as bad:
        raise ConfigError(f"{key}: cannot write in {existing} ({_reason(bad)}); choose a directory you can "
                          f"write to") from None
    return folder


def check_target(path, key: str, command: str, owned: Callable[[Path], bool], how: str = "") -> Path:
    """`path` may be written by `command`: no file there, or one `owned` recognises as the command's own earlier
    output (`how` says how, for the message), and its folder is writable. ConfigError otherwise; the file there
    is not touched."""
    path = Path(path).expanduser()
    kind = file_kind(path)
    if kind == "dir":
        raise ConfigError(f"{key}: {path} is a directory; {command} writes a file there, give the file's path")
    if kind not in ("file", "missing"):
        raise ConfigError(f"{key}: {path} is {kind}, not a regular file {command} can write; choose another path")
    if kind == "file" and not owned(path):
        raise ConfigError(f"{key}: {path} exists and was not written by {command}{f' ({how})' if how else ''}; "
                          f"it is left as it is: choose another path, or move that file away first")
    check_folder(path.parent, key)
    return path


# ---- writing: the bytes ---------------------------------------------------------------------------------------
def write_error(path, bad: OSError) -> RunError:
    return RunError(f"cannot write {path}: {_reason(bad)}; nothing was written there (a file of that name "
                    f"from before is unchanged); free space or choose another place")


def write_atomic(path, data: bytes | str) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename); the folder is made if
    missing. An OSError (a full disk, ...) is a RunError naming the file, and no temp file is left."""
    path = Path(path)
    made = missing_dirs(path.parent)
    try:
        write_bytes_atomic(data, path)
    except OSError as bad:
        remove_empty(made)  # a folder made for the file goes again: a failed write leaves the place as it was
        raise write_error(path, bad) from None
    return path


def write_bytes_atomic(data: bytes | str, path: Path) -> None:
    """Write to a temp file in the same directory, fsync, then rename over the target (str as UTF-8). An OSError
    propagates as it is, with no temp file left; write_atomic is the form that names the file in a RunError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else bytes(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json(obj, path: Path) -> None:
    """`obj` as indented JSON (non-JSON values as str), written with write_bytes_atomic."""
    write_bytes_atomic(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n", Path(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def missing_dirs(folder) -> list[str]:
    """The directories that creating `folder` (with its parents) would make, deepest first."""
    missing = []
    path = os.path.abspath(os.path.expanduser(folder))
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def remove_empty(dirs: list[str]) -> None:
    """Remove `dirs` (deepest first, as missing_dirs gives them) while they are empty; one that something
    else has filled meanwhile stays, and so do the folders above it."""
    for folder in dirs:
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue
        except OSError:
            break


def read_text(path) -> str | None:
    """A file's text for recognising a command's own output: None when it is not a regular file (a FIFO is
    never opened) or cannot be read."""
    try:
        if file_kind(Path(path)) != "file":
            return None
        return Path(path).read_text(errors="replace")
    except (OSError, ConfigError):
        return None


def figure_png(fig, dpi: int) -> bytes:
    """A matplotlib figure as PNG bytes carrying cnnlab's mark (PNG_SOFTWARE)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": PNG_SOFTWARE})
    return buffer.getvalue()


def png_software(path) -> str | None:
    """The PNG text chunk "Software" of a PNG file (None when absent or not a PNG); reads the chunks before
    the image data only."""
    try:
        if file_kind(Path(path)) != "file":
            return None
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND") or length > 1 << 20:
                    return None
                body = f.read(length)
                f.read(4)  # CRC
                if kind == b"tEXt":
                    keyword, _, text = body.partition(b"\0")
                    if keyword == b"Software":
                        return text.decode("latin-1")
    except (OSError, ConfigError):
        return None


def png_is_ours(path) -> bool:
    return png_software(path) == PNG_SOFTWARE
