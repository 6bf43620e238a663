"""What the inspector reports about a network, and how it is shown: receptive fields, rows per layer, the
summary with its totals, as a table or JSON."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

@dataclass(frozen=True)
class RF:
    """The receptive field of every element of a tensor, per spatial axis (height, width).

    size: r, the side of the input window one element depends on; jump: j, the distance in input pixels
    between neighbouring elements (the product of the strides so far); grid: the (height, width) the
    elements lie on; a flattened map keeps its map's grid, so a dense layer after it covers the whole map.
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    grid: tuple[int, int]

    def window(self, kernel, stride, dilation=(1, 1), grid=None) -> RF:
        size = tuple(r + d * (k - 1) * j for r, k, d, j in zip(self.size, kernel, dilation, self.jump))
        jump = tuple(j * s for j, s in zip(self.jump, stride))
        return RF(size, jump, tuple(grid) if grid is not None else self.grid)


@dataclass
class Layer:
    """One row of the summary: a leaf module call, a functional window op, or parameters not run."""

    name: str
    type: str
    kernel: tuple | None = None
    stride: tuple | None = None
    padding: tuple | str | None = None
    output_shape: tuple | None = None       # per sample: (C, H, W) for maps, (F,) for vectors
    trainable_params: int = 0
    frozen_params: int = 0
    macs: int = 0
    receptive_field: tuple | None = None    # (r_h, r_w) at this layer's output
    jump: tuple | None = None               # (j_h, j_w); None once the output has no spatial axes
    executed: bool = True                   # False: never called in the inference pass (training-only heads)

    def to_dict(self) -> dict:
        def plain(v):
            return list(v) if isinstance(v, tuple) else v

        return {k: plain(v) for k, v in self.__dict__.items()}


@dataclass
class Summary:
    model: str
    input_shape: tuple[int, ...]
    layers: list[Layer]
    output_shape: tuple | None
    params: int
    trainable_params: int
    frozen_params: int
    macs: int
    activation_bytes: int
    param_bytes: int
    buffer_bytes: int
    receptive_field: tuple | None
    jump: tuple | None
    feature_map: dict | None
    notes: list[str] = field(default_factory=list)

    @property
    def model_size_mb(self) -> float:
        return (self.param_bytes + self.buffer_bytes) / 2**20

    @property
    def covers_input(self) -> bool:
        return self.receptive_field is not None and all(
            r >= n for r, n in zip(self.receptive_field, self.input_shape[-2:]))

    def to_dict(self) -> dict:
        def plain(v):
            return list(v) if isinstance(v, tuple) else v

        feature = None if self.feature_map is None else {k: plain(v) for k, v in self.feature_map.items()}
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "output_shape": plain(self.output_shape),
            "layers": [layer.to_dict() for layer in self.layers],
            "totals": {
                "params": self.params,
                "trainable_params": self.trainable_params,
                "frozen_params": self.frozen_params,
                "macs": self.macs,
                "activation_bytes": self.activation_bytes,
                "param_bytes": self.param_bytes,
                "buffer_bytes": self.buffer_bytes,
                "model_size_mb": round(self.model_size_mb, 3),
                "receptive_field": plain(self.receptive_field),
                "jump": plain(self.jump),
                "covers_input": self.covers_input,
                "feature_map": feature,
            },
            "notes": list(self.notes),
        }

    def table(self) -> str:
        return format_table(self)

    def json(self) -> str:
        """to_dict() as JSON text: one line per layer, short lists kept on one line."""
        data = self.to_dict()
        layers = data.pop("layers")
        data = {**{k: data[k] for k in ("model", "input_shape", "output_shape")}, "layers": "@LAYERS@",
                **{k: data[k] for k in ("totals", "notes")}}
        text = json.dumps(data, indent=2)
        # Lists of numbers and strings (shapes, kernels, receptive fields) on one line.
        text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + ", ".join(
            part.strip() for part in m.group(1).split(",\n")) + "]", text)
        rows = ",\n".join("    " + json.dumps(layer) for layer in layers)
        return text.replace('"@LAYERS@"', "[\n" + rows + "\n  ]" if rows else "[]")


class LayerFailure(RuntimeError):
    """The model could not run on the traced input; `layer` is where it broke."""

    def __init__(self, layer: str | None, kind: str, message: str):
        self.layer, self.kind, self.message = layer, kind, message
        where = f"layer {layer!r} ({kind})" if layer else "input"
        super().__init__(f"{where}: {message}")



# ---- the table ----------------------------------------------------------------------------------------------
COLUMNS = ("layer", "type", "kernel", "stride", "pad", "output", "trainable", "frozen", "MACs", "RF", "jump")
_RIGHT = {"kernel", "stride", "pad", "trainable", "frozen", "MACs", "RF", "jump"}


def axes_text(value, sep: str = "x", collapse: bool = True) -> str:
    """(3, 3) -> '3' (or '3x3' without collapse), (1, 7) -> '1x7', a pad 4-tuple -> '1,2,1,2', None -> ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    value = tuple(value)
    if len(value) == 4:
        return ",".join(map(str, value))
    if collapse and len(set(value)) == 1:
        return str(value[0])
    return sep.join(map(str, value))


def human(n: float, unit: str = "") -> str:
    """1_135_906_176 -> '1.14 G'."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip()


def megabytes(n: int) -> str:
    return f"{n / 2**20:,.2f} MB"


def layer_cells(layer: Layer) -> list[str]:
    shape = "x".join(map(str, layer.output_shape)) if layer.output_shape is not None else (
        "" if layer.executed else "(not run)")
    return [layer.name, layer.type, axes_text(layer.kernel, collapse=False), axes_text(layer.stride), axes_text(layer.padding),
            shape, f"{layer.trainable_params:,}", f"{layer.frozen_params:,}", f"{layer.macs:,}",
            axes_text(layer.receptive_field), axes_text(layer.jump)]


def format_table(summary: Summary) -> str:
    """The fixed-width table: one row per layer, then the totals."""
    shape = "x".join(map(str, summary.input_shape))
    rows = [list(COLUMNS)] + [layer_cells(layer) for layer in summary.layers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells):
        return "  ".join(c.rjust(w) if COLUMNS[i] in _RIGHT else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"{summary.model} on a {shape} input (one sample; shapes are channels x height x width; "
           "RF = receptive field, jump = effective stride, in input pixels)", "", line(rows[0]),
           "-" * len(line(rows[0]))]
    out += [line(row) for row in rows[1:]]
    out += ["", *totals_lines(summary)]
    return "\n".join(out)


def totals_lines(summary: Summary) -> list[str]:
    s = summary
    label = "{:<22}".format
    out_shape = "x".join(map(str, s.output_shape)) if s.output_shape is not None else "-"
    lines = [
        label("input -> output") + f"{'x'.join(map(str, s.input_shape))} -> {out_shape}",
        label("parameters") + f"{s.params:,} ({human(s.params)}): {s.trainable_params:,} trainable, "
                              f"{s.frozen_params:,} frozen",
        label("multiply-accumulates") + f"{s.macs:,} ({human(s.macs)}MAC) per sample, convolution and linear layers",
        label("activations") + f"{megabytes(s.activation_bytes)} per sample (every tensor the forward pass creates)",
        label("model size") + f"{megabytes(s.param_bytes + s.buffer_bytes)} (parameters "
                              f"{megabytes(s.param_bytes)}, buffers {megabytes(s.buffer_bytes)})",
    ]
    if s.receptive_field is not None:
        hw = "x".join(map(str, s.input_shape[-2:]))
        seen = ("every output sees the whole " + hw + " input" if s.covers_input
                else f"of a {hw} input" + (f", jump {axes_text(s.jump)}" if s.jump else ""))
        lines.append(label("receptive field") + f"{axes_text(s.receptive_field)} at the output: {seen}")
        if s.feature_map is not None:
            f = s.feature_map
            where = "the input" if f["layer"] == "input" else f"layer {f['layer']}"
            lines.append(label("") + f"{axes_text(f['receptive_field'])} at {where}, the last feature map "
                                     f"({axes_text(f['map'], collapse=False)}, jump {axes_text(f['jump'])}), before layer "
                                     f"{f['pooled_by']} mixes all its positions")
    lines += [f"note: {n}" for n in s.notes]
    return lines
