"""Run.explain's result: the PNG files cnnlab-explain wrote, shown inline in a notebook cell."""

from __future__ import annotations

import base64
import html
from pathlib import Path


class Explanation:
    """The pictures of a trained network (files: the PNGs, out_dir: where they are, epoch: the checkpoint's); a
    notebook cell shows each with its file name. They are also in the run's TensorBoard under explain/*."""

    def __init__(self, explained):
        self.files = [Path(f) for f in explained.files]
        self.out_dir = Path(explained.out_dir)
        self.epoch = explained.epoch

    def __iter__(self):
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, name: str) -> Path:
        """The picture of that file name or stem: explanation["gradcam"], explanation["mistakes.png"]."""
        for path in self.files:
            if name in (path.name, path.stem):
                return path
        raise KeyError(f"{name!r}: the pictures are {', '.join(p.name for p in self.files)}")

    def __repr__(self) -> str:
        return f"Explanation({str(self.out_dir)!r}, epoch {self.epoch}: {', '.join(p.name for p in self.files)})"

    def _repr_html_(self) -> str:
        parts = []
        for path in self.files:
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f"<figure style='margin:0 0 1em 0'><img src='data:image/png;base64,{data}' "
                         f"style='max-width:100%'/><figcaption>{html.escape(path.name)}</figcaption></figure>")
        return (f"<div><b>cnnlab explain</b> (epoch {self.epoch}, {html.escape(str(self.out_dir))})"
                + "".join(parts) + "</div>")
