"""The k best epochs' checkpoints (trainer.checkpoint.save_top_k): which files to keep, which to delete.

ModelCheckpoint writes and deletes them on its background writer; this module only decides. A top-k file is
named `epoch_007-val_loss_0.1234.ckpt` (the monitored metric with `/` as `_`) and holds the full training state
of that epoch, like last.ckpt. There is no `=` in the name (as in Lightning's `epoch=007-val_loss=0.1234.ckpt`):
Hydra's override grammar refuses an unquoted `=` in a value, and these names are meant to be given as they are
to trainer.resume=, ckpt= or finetune.checkpoint=. Only files of this pattern are ever deleted, never the checkpoint a resumed run
started from. The set travels in every checkpoint (`state_dict`), so a resumed run continues it: in its own
run dir the files of the set are linked from the run it resumes (a second name for the same file, or a copy).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from cnnlab.engine.checkpoint import link_atomic

log = logging.getLogger("cnnlab")

_NAME = re.compile(r"^epoch_(\d+)-(.+)_(-?\d+\.\d+|nan|-?inf)\.ckpt$")


def slug(monitor: str) -> str:
    """A metric name as it appears in a file name: val/loss -> val_loss."""
    return monitor.replace("/", "_")


def file_name(epoch: int, monitor: str, value: float) -> str:
    return f"epoch_{epoch:03d}-{slug(monitor)}_{value:.4f}.ckpt"


def parse(name: str) -> tuple[int, str, float] | None:
    """(epoch, metric slug, value) of a top-k file name, or None for any other file."""
    found = _NAME.match(name)
    return (int(found.group(1)), found.group(2), float(found.group(3))) if found else None


class TopK:
    """The k best (epoch, value) of the monitored metric and their file names in `folder`.

    Ties keep the earlier epoch; a NaN never enters. `protected`: paths never deleted (the resume source).
    """

    def __init__(self, folder: Path, k: int, monitor: str, mode: str):
        self.folder = Path(folder)
        self.k = int(k)
        self.monitor = monitor
        self.mode = mode
        self.entries: list[tuple[int, float, str]] = []  # (epoch, value, file name), best first
        self.protected: set[Path] = set()

    def _key(self, entry: tuple[int, float, str]):
        epoch, value, _ = entry
        return (value if self.mode == "min" else -value, epoch)

    def offer(self, epoch: int, value: float) -> tuple[Path | None, list[Path]]:
        """Epoch `epoch` ended with `value`: (the file to write for it, or None; the files to delete)."""
        if not math.isfinite(value):
            return None, []
        entry = (epoch, float(value), file_name(epoch, self.monitor, value))
        ranked = sorted(self.entries + [entry], key=self._key)
        kept, dropped = ranked[:self.k], ranked[self.k:]
        if entry not in kept:
            return None, []
        self.entries = kept
        return self.folder / entry[2], self._deletable(dropped)

    def _deletable(self, dropped) -> list[Path]:
        paths = []
        for _, _, name in dropped:
            path = self.folder / name
            if path.resolve() in self.protected:
                log.info("keeping %s out of the top %d: a resumed run started from it", path, self.k)
            else:
                paths.append(path)
        return paths

    def state_dict(self) -> dict:
        return {"monitor": self.monitor, "mode": self.mode, "entries": [list(e) for e in self.entries]}

    def continue_from(self, state: dict | None, source: Path, epoch: int) -> None:
        """A resumed run (from checkpoint `source`, which completed `epoch` epochs) continues the set.

        The set is the checkpoint's (else it is read from the top-k files in this folder); a file of the set
        missing here is linked from the source's folder. Files of this metric's pattern left over here (from
        epochs after `epoch`, or whose deletion a kill interrupted) are deleted; `source` is never deleted.
        """
        self.protected.add(Path(source).resolve())
        if state and state.get("monitor") == self.monitor and state.get("mode") == self.mode:
            entries = [(int(e), float(v), str(n)) for e, v, n in state.get("entries", [])]
        else:
            entries = [(e, v, name) for name, (e, metric, v) in self._files_here().items()]
        entries = sorted((e for e in entries if e[0] <= epoch), key=self._key)
        kept = []
        for entry in entries:
            here, there = self.folder / entry[2], Path(source).parent / entry[2]
            if not here.is_file() and there.is_file():
                self.folder.mkdir(parents=True, exist_ok=True)
                link_atomic(there, here)
            if here.is_file():
                kept.append(entry)
            else:
                log.warning("top-%d checkpoint %s is missing; the set continues without it", self.k, entry[2])
        self.entries = kept[:self.k]  # trainer.checkpoint.save_top_k may have shrunk
        names = {name for _, _, name in self.entries}
        leftovers = [(e, v, name) for name, (e, _, v) in sorted(self._files_here().items()) if name not in names]
        for path in self._deletable(leftovers):
            path.unlink(missing_ok=True)
            log.info("deleted %s: not among the top %d of the run being resumed", path.name, self.k)

    def _files_here(self) -> dict[str, tuple[int, str, float]]:
        """This folder's top-k files of the monitored metric: name -> (epoch, slug, value)."""
        if not self.folder.is_dir():
            return {}
        found = {}
        for path in self.folder.iterdir():
            parsed = parse(path.name)
            if parsed is not None and parsed[1] == slug(self.monitor) and path.is_file():
                found[path.name] = parsed
        return found
