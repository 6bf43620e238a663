"""A set of WebDataset tar shards as cnnlab writes and reads it: the manifest beside the shards, and shard URLs.

A shard is a plain tar file in WebDataset's layout: each sample is the files `<key>.<image extension>` (the
image's bytes) and `<key>.cls` (its class index as text). cnnlab-shards writes the shards and, beside them, the
manifest `cnnlab-shards.json`: the class names, the shard names of each split with their sample counts and
per-class counts, and the training images' mean/std. The manifest is what lets a run know its epoch length,
classes and normalisation without reading the data. The `webdataset` library (an optional extra) does the
writing and the reading; it is imported only where shards are used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from cnnlab.errors import ConfigError

MANIFEST = "cnnlab-shards.json"
FORMAT = "cnnlab-shards/1"
SPLITS = ("train", "val", "test")
INSTALL = "pip install 'cnnlab[shards]'"
_SHARD_NAME = re.compile(r"[^/\s:'\"]+\.tar\b")  # the shard's file name inside a URL or a pipe: command


def webdataset():
    """The webdataset module, or a ConfigError naming the extra that installs it."""
    try:
        import webdataset as wds  # the optional extra: only shard sets pay for it
    except ImportError:
        raise ConfigError(f"shards are read and written with the webdataset library, which is not installed: "
                          f"{INSTALL}") from None
    return wds


def is_local(url: str) -> bool:
    """A path on this machine (no scheme, or file:), as opposed to http(s)://, pipe:, gs:// ..."""
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # a Windows drive letter is not a scheme


def local_path(url: str) -> Path:
    return Path(urlparse(url).path if url.startswith("file:") else url).expanduser()


def expand(pattern: str, key: str) -> list[str]:
    """The URLs a brace pattern stands for (`train-{000000..000099}.tar`; `::` separates several patterns)."""
    try:
        urls = webdataset().shardlists.expand_urls(str(pattern))
    except ConfigError:
        raise
    except Exception as bad:  # braceexpand's own errors on a malformed pattern
        raise ConfigError(f"{key}={pattern} is not a shard pattern ({bad}); e.g. /data/train-{{000000..000099}}.tar")
    if not urls:
        raise ConfigError(f"{key}={pattern} names no shard")
    return list(urls)


def shard_name(url: str) -> str | None:
    """The shard's file name in a URL (`.../train-000003.tar`) or a pipe: command (`pipe:aws s3 cp s3://b/x.tar -`)."""
    found = _SHARD_NAME.findall(url)
    return found[-1] if found else None


def default_manifest(url: str) -> str | None:
    """The manifest beside a shard: the URL's directory (or prefix) + MANIFEST; None for a pipe: command."""
    if url.startswith("pipe:"):
        return None
    head, sep, _ = url.rpartition("/")
    return f"{head}/{MANIFEST}" if sep else MANIFEST


def read_bytes(url: str, key: str) -> bytes:
    """A small file (the manifest) from a local path, an http(s) URL or anything webdataset's gopen opens."""
    if is_local(url):
        from cnnlab.util.outpaths import input_file

        path = input_file(local_path(url), f"{key}={url}", missing=f"no such file; cnnlab-shards writes {MANIFEST} "
                                                                   f"beside the shards (set {key} to its location)")
        return path.read_bytes()
    if urlparse(url).scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return response.read()
        except urllib.error.HTTPError as bad:
            raise ConfigError(f"{key}={url}: the server answered {bad.code} {bad.reason}; cnnlab-shards writes "
                              f"{MANIFEST} beside the shards (set {key} to its URL)") from None
        except (urllib.error.URLError, OSError) as bad:
            raise ConfigError(f"{key}={url}: cannot be fetched ({getattr(bad, 'reason', bad)})") from None
    try:
        webdataset()
        from webdataset.gopen import gopen  # the package's name `gopen` is this function, not its module

        stream = gopen(url)
        try:
            return stream.read()
        finally:
            stream.close()
    except ConfigError:
        raise
    except Exception as bad:
        raise ConfigError(f"{key}={url}: cannot be read ({bad})") from None


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int


@dataclass(frozen=True)
class Manifest:
    where: str                     # its URL or path, for messages
    classes: tuple[str, ...]
    splits: dict                   # split -> {"pattern", "samples", "class_counts", "shards": {name: samples}}
    stats: dict                    # "rgb"/"gray" -> {"mean": [...], "std": [...]}

    def counts(self) -> dict[str, int]:
        """Samples of every shard name, over all splits."""
        return {name: int(n) for split in self.splits.values() for name, n in split["shards"].items()}

    def stats_for(self, channels: int) -> dict | None:
        return self.stats.get("gray" if channels == 1 else "rgb")


def load_manifest(url: str, key: str) -> Manifest:
    raw = read_bytes(url, key)
    try:
        data = json.loads(raw)
        ok = isinstance(data, dict) and data.get("format") == FORMAT
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"{key}={url} is not a manifest written by cnnlab-shards (expected JSON with "
                          f'"format": "{FORMAT}"); write the shards with cnnlab-shards')
    return Manifest(url, tuple(str(c) for c in data["classes"]), dict(data["splits"]), dict(data.get("stats") or {}))


def shard_list(pattern: str, manifest: Manifest, key: str) -> list[Shard]:
    """The shards `pattern` names, each with its sample count from the manifest; local shards must exist."""
    counts = manifest.counts()
    shards = []
    for url in expand(pattern, key):
        name = shard_name(url)
        if name not in counts:
            raise ConfigError(f"{key}={pattern}: the shard {url} is not listed in the manifest {manifest.where} "
                              f"(it lists {', '.join(sorted(counts)[:3])}{', ...' if len(counts) > 3 else ''}); "
                              f"name shards cnnlab-shards wrote with that manifest, or set data.manifest")
        shards.append(Shard(url, counts[name]))
    missing = [s.url for s in shards if is_local(s.url) and not local_path(s.url).is_file()]
    if missing:
        raise ConfigError(f"{key}={pattern}: {len(missing)} of the {len(shards)} shards it names do not exist, "
                          f"e.g. {missing[0]}; write them with cnnlab-shards or fix the pattern")
    return shards


def sibling_pattern(manifest_url: str, split: str, manifest: Manifest) -> str | None:
    """The manifest's own shard pattern of `split`, beside the manifest; None if it has no such split."""
    entry = manifest.splits.get(split)
    if not entry or not entry.get("shards"):
        return None
    name = re.findall(r"[^/\s:'\"]+\.json\b", manifest_url)
    if name:  # the manifest's file name replaced by the pattern: also inside a pipe: command
        head, _, tail = manifest_url.rpartition(name[-1])
        return f"{head}{entry['pattern']}{tail}"
    head, sep, _ = manifest_url.rpartition("/")
    return f"{head}/{entry['pattern']}" if sep else entry["pattern"]


def brace_pattern(prefix: str, count: int) -> str:
    """The brace pattern of shards prefix-000000.tar ... prefix-{count-1}.tar."""
    return f"{prefix}-000000.tar" if count == 1 else f"{prefix}-{{000000..{count - 1:06d}}}.tar"
