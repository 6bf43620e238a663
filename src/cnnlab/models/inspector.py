"""The architecture inspector: what a network is before any compute is spent on training it.

One sample goes through the model once, on the meta device (shapes only: no memory, no arithmetic, so a
224-pixel VGG costs what LeNet costs). Forward hooks on the leaf modules give one row per layer in execution
order; a `__torch_function__` mode sees every tensor operation in between (residual additions,
concatenations, functional pooling, flattening) and carries each tensor's receptive field along:

    a window op (convolution, pooling)   r_out = r_in + (d*(k - 1)) * j_in,   j_out = j_in * s
    global/adaptive pooling              a window op whose window is the pooled region of the map
    a dense layer on a flattened map     a window op whose window is the whole map (an FC layer is a conv
                                         whose kernel covers the map, as VGG's fc6 is a 7x7 conv)
    everything else (add, cat, pad,      per axis, the largest r and the largest j of the tensor inputs:
    activations, norms, dropout, ...)    Inception's branches and ResNet's shortcuts are combined by max

r is the theoretical receptive field of the course formula r = 1 + sum_l (k_l - 1) * prod_{i<l} s_i;
padding does not reduce it, so it can exceed the image. Multiply-accumulates are those of convolution,
linear and matrix-product operations (the usual counters' convention); norms, activations, pooling and
additions cost none here.

`first_failure` and `smallest_square_input` are the zoo's input-size check (cnnlab.models.build_model):
the same trace that fills the table names the layer where a too-small input breaks the model.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from cnnlab.errors import ConfigError

# Positional parameter names of the functional ops the trace reads arguments from.
_SIGNATURES = {
    "conv1d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv2d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "conv3d": ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
    "max_pool2d": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    "max_pool2d_with_indices": ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                                "return_indices"),
    "avg_pool2d": ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"),
    "lp_pool2d": ("input", "norm_type", "kernel_size", "stride", "ceil_mode"),
    "adaptive_avg_pool2d": ("input", "output_size"),
    "adaptive_max_pool2d": ("input", "output_size", "return_indices"),
    "linear": ("input", "weight", "bias"),
    "pad": ("input", "pad", "mode", "value"),
}
_POOLS = ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d")
_ADAPTIVE = ("adaptive_avg_pool2d", "adaptive_max_pool2d")
_MATMULS = ("matmul", "mm", "bmm", "__matmul__", "addmm", "baddbmm", "addbmm")
# Ops after which a map's receptive field is known to be unchanged although its spatial size changes.
_SIZE_ONLY = ("pad", "__getitem__")


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


# ---- the trace --------------------------------------------------------------------------------------------
def _tensors(obj):
    """Tensors inside an op's arguments or outputs (lists, tuples, dicts, named tuples), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _bind(name: str, args, kwargs) -> dict:
    bound = dict(zip(_SIGNATURES[name], args))
    bound.update(kwargs)
    return bound


def _pair(value, default=None) -> tuple[int, int]:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        value = default
    if isinstance(value, int):
        return (value, value)
    value = tuple(int(v) for v in value)
    return value * 2 if len(value) == 1 else value


def _base(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


def _adaptive_window(n_in: int, n_out: int) -> tuple[int, int, str]:
    """Largest window and the stride of adaptive pooling from n_in to n_out, and whether that is exact:
    'exact' (equal windows), 'uneven' (windows of different sizes) or 'enlarges' (n_out > n_in: positions
    repeat, so the stride, and the receptive field of what follows, are upper bounds)."""
    starts = [math.floor(i * n_in / n_out) for i in range(n_out)]
    ends = [math.ceil((i + 1) * n_in / n_out) for i in range(n_out)]
    sizes = {e - s for s, e in zip(starts, ends)}
    kind = "enlarges" if n_out > n_in else "exact" if len(sizes) == 1 else "uneven"
    return max(sizes), max(1, n_in // n_out), kind


class _Trace(TorchFunctionMode):
    """Hooks + torch-function mode for one forward pass; fills `rows` and the receptive-field table."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.names = {m: n for n, m in model.named_modules()}
        self.leaves = {m for m in self.names if next(m.children(), None) is None}
        self.rf: dict[int, RF] = {}
        self.origin: dict[int, str] = {}       # tensor -> the row whose output map it is
        self.alive: list = []                  # every tracked tensor stays alive, so ids are never reused
        self.stack: list[nn.Module] = []
        self.pending: dict | None = None       # ops seen inside the leaf module being run
        self.rows: list[dict] = []
        self.activation_bytes = 0
        self.feature_map: dict | None = None
        self.notes: list[str] = []
        self.failed_op: str | None = None

    # module hooks
    def pre_hook(self, module, args):
        self.stack.append(module)
        if module in self.leaves:
            self.pending = {"macs": 0, "window": None}

    def post_hook(self, module, args, output):
        self.stack.pop()
        if module not in self.leaves:
            return
        pending, self.pending = self.pending, None
        out = next(_tensors(output), None)
        inputs = list(_tensors(args))
        row = {"name": self.names[module], "type": type(module).__name__, "macs": pending["macs"],
               **(pending["window"] or {})}
        self._finish_row(row, out, inputs)

    def _finish_row(self, row: dict, out, inputs) -> None:
        row["output_shape"] = tuple(out.shape[1:]) if out is not None else None
        rf = self.rf.get(id(out)) if out is not None else None
        row["receptive_field"] = rf.size if rf is not None else None
        row["jump"] = rf.jump if rf is not None and out.dim() == 4 else None
        if out is not None and rf is not None:
            before = [self.rf.get(id(t)) for t in inputs]
            if not any(b is not None and b.size == rf.size and b.grid == rf.grid for b in before):
                self.origin[id(out)] = row["name"]  # this row made a new map (identity-like rows do not)
        self.rows.append(row)

    # every tensor op
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        try:
            out = func(*args, **kwargs)
        except Exception:
            self.failed_op = name
            raise
        if not isinstance(out, (torch.Tensor, tuple, list)) or name == "__get__":
            return out
        outputs = list(_tensors(out))
        if not outputs:
            return out
        inputs = list(_tensors(args)) + list(_tensors(kwargs))
        self._count_memory(inputs, outputs)
        macs = self._macs(name, args, kwargs, outputs[0])
        window, rf = self._propagate(name, args, kwargs, inputs, outputs[0])
        for t in outputs:
            if rf is not None:
                self.rf[id(t)] = rf
                if id(t) not in self.origin:
                    source = max((i for i in inputs if id(i) in self.origin),
                                 key=lambda i: self.rf.get(id(i)).size if id(i) in self.rf else (0, 0), default=None)
                    if source is not None:
                        self.origin[id(t)] = self.origin[id(source)]
            self.alive.append(t)
        if macs or window is not None:
            if self.pending is not None:  # inside a leaf module: the leaf's row gets them
                self.pending["macs"] += macs
                if window is not None and self.pending["window"] is None:
                    self.pending["window"] = window
            elif name in _SIGNATURES or name in _MATMULS:  # a functional op in a container's forward: own row
                row = {"name": self._row_name(name), "type": f"F.{name}", "macs": macs, **(window or {})}
                self._finish_row(row, outputs[0], inputs[:1])
        return out

    def _count_memory(self, inputs, outputs) -> None:
        bases = {id(_base(t)) for t in inputs}
        for t in outputs:
            if id(_base(t)) not in bases and t.dim() > 0:  # views and in-place results take no new memory
                self.activation_bytes += t.numel() * t.element_size()
                bases.add(id(_base(t)))

    @staticmethod
    def _macs(name: str, args, kwargs, out: torch.Tensor) -> int:
        """Multiply-accumulates of one op for the traced sample: out elements x the products summed into each."""
        if name in ("conv1d", "conv2d", "conv3d"):
            return out.numel() * math.prod(_bind(name, args, kwargs)["weight"].shape[1:])  # (C_in/groups) k_h k_w
        if name == "linear":
            return out.numel() * _bind(name, args, kwargs)["weight"].shape[-1]
        if name in _MATMULS:
            a = args[1] if name.startswith(("add", "badd")) else args[0]
            return out.numel() * a.shape[-1]
        return 0

    def _propagate(self, name, args, kwargs, inputs, out):
        """(window shown in the row or None, receptive field of the output or None)."""
        first = inputs[0] if inputs else None
        rf_in = self.rf.get(id(first)) if first is not None else None
        spatial = first is not None and first.dim() == 4 and out.dim() == 4
        if name == "conv2d":
            a = _bind(name, args, kwargs)
            kernel = tuple(a["weight"].shape[2:])
            stride, dilation = _pair(a.get("stride"), 1), _pair(a.get("dilation"), 1)
            padding = a.get("padding", 0)
            padding = padding if isinstance(padding, str) else _pair(padding, 0)
            window = {"kernel": kernel, "stride": stride, "padding": padding}
            if dilation != (1, 1):
                window["type_suffix"] = f"dilation {dilation}"
            return window, (rf_in.window(kernel, stride, dilation, out.shape[-2:]) if rf_in and spatial else None)
        if name in _POOLS:
            a = _bind(name, args, kwargs)
            kernel = _pair(a["kernel_size"])
            stride = _pair(a.get("stride"), kernel)
            dilation = _pair(a.get("dilation"), 1)
            window = {"kernel": kernel, "stride": stride, "padding": _pair(a.get("padding"), 0)}
            self._note_global(rf_in, kernel, first, name)
            return window, (rf_in.window(kernel, stride, dilation, out.shape[-2:]) if rf_in and spatial else None)
        if name in _ADAPTIVE:
            if not (rf_in and spatial):
                return None, None
            fits = [_adaptive_window(n_in, n_out) for n_in, n_out in zip(first.shape[-2:], out.shape[-2:])]
            kernel, stride = tuple(f[0] for f in fits), tuple(f[1] for f in fits)
            kinds = {f[2] for f in fits}
            change = f"{self._where()}: adaptive pooling from {_axes(first.shape[-2:], collapse=False)} to " \
                     f"{_axes(out.shape[-2:], collapse=False)}"
            if "enlarges" in kinds:
                self.notes.append(f"{change} repeats positions; the receptive fields after it are upper bounds")
            elif "uneven" in kinds:
                self.notes.append(f"{change} has windows of different sizes; the receptive field uses the largest")
            self._note_global(rf_in, kernel, first, name)
            return {"kernel": kernel, "stride": stride, "padding": (0, 0)}, rf_in.window(kernel, stride,
                                                                                          grid=out.shape[-2:])
        if name == "linear" and rf_in is not None and first.dim() == 2:
            grid = rf_in.grid
            self._note_global(rf_in, grid, first, name)
            return None, rf_in.window(grid, grid, grid=(1, 1))
        if name == "__getitem__" and rf_in is not None and spatial:
            steps = self._slice_steps(args[1], first.dim())
            if steps is not None:
                return None, RF(rf_in.size, tuple(j * s for j, s in zip(rf_in.jump, steps)), tuple(out.shape[-2:]))
        if name == "pad":
            a = _bind(name, args, kwargs)
            spatial_pad = tuple(int(p) for p in a["pad"])[:4]  # (left, right, top, bottom); later ones are channels
            window = {"padding": spatial_pad} if any(spatial_pad) else None
            if rf_in is not None:
                return window, RF(rf_in.size, rf_in.jump, tuple(out.shape[-2:]) if out.dim() == 4 else rf_in.grid)
            return window, None
        return None, self._combine(name, inputs, out)

    def _combine(self, name, inputs, out) -> RF | None:
        """Elementwise ops, concatenation, reshapes and anything unknown: the largest r and j of the inputs."""
        known = [(t, self.rf[id(t)]) for t in inputs if id(t) in self.rf]
        if not known:
            return None
        size = tuple(max(rf.size[a] for _, rf in known) for a in (0, 1))
        jump = tuple(max(rf.jump[a] for _, rf in known) for a in (0, 1))
        if out.dim() == 4:
            grid = tuple(out.shape[-2:])
            if name not in _SIZE_ONLY and any(t.dim() == 4 and tuple(t.shape[-2:]) != grid for t, _ in known):
                self.notes.append(f"{self._where()}: {name} changes the map size from "
                                  f"{_axes(known[0][0].shape[-2:], collapse=False)} to {_axes(grid, collapse=False)};"
                                  " the inspector does not know how, so the receptive field there is carried over "
                                  "unchanged")
        else:
            grid = tuple(max(rf.grid[a] for _, rf in known) for a in (0, 1))
        return RF(size, jump, grid)

    @staticmethod
    def _slice_steps(index, ndim: int):
        index = index if isinstance(index, tuple) else (index,)
        if not all(isinstance(i, slice) or i is Ellipsis for i in index) or sum(i is Ellipsis for i in index) > 1:
            return None
        if Ellipsis in index:
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (ndim - len(index) + 1) + index[at + 1:]
        index = index + (slice(None),) * (ndim - len(index))
        return tuple(int(i.step or 1) for i in index[-2:])

    def _note_global(self, rf_in: RF | None, window, first, name) -> None:
        """Remember the first map that a layer pools or connects as a whole: the last feature map."""
        if self.feature_map is not None or rf_in is None:
            return
        grid = rf_in.grid
        if all(k >= g for k, g in zip(window, grid)) and grid != (1, 1):
            self.feature_map = {"layer": self.origin.get(id(first), "input"), "receptive_field": rf_in.size,
                                "jump": rf_in.jump, "map": grid, "pooled_by": self._row_name(name)}

    def _row_name(self, op: str) -> str:
        """The row an op belongs to: the leaf module running it, else '<container>.<op>'."""
        owner = self.names[self.stack[-1]] if self.stack else ""
        if self.pending is not None:
            return owner
        return f"{owner}.{op}" if owner else op

    def _where(self) -> str:
        return self.names[self.stack[-1]] if self.stack and self.names[self.stack[-1]] else "(model)"

    def where_failed(self) -> tuple[str | None, str]:
        """(name, type) of the innermost module being run when the pass broke; for a module of the model's own
        code (not a torch.nn layer) the type also names the operation that failed in its forward."""
        if not self.stack:
            return None, ""
        module = self.stack[-1]
        kind = type(module).__name__
        if self.failed_op and not type(module).__module__.startswith("torch.nn."):
            kind += f", in {self.failed_op}"
        return self.names[module] or "(model)", kind


def _meta_twin(model: nn.Module) -> nn.Module:
    """A copy of the module tree whose parameters and buffers are empty tensors on the meta device."""
    if all(t.device.type == "meta" for t in _params_and_buffers(model)):
        return model
    memo: dict = {}
    for t in _params_and_buffers(model):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _params_and_buffers(model: nn.Module):
    yield from model.parameters()
    yield from model.buffers()


def _run(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[_Trace, object]:
    """One sample through `model` on its own device under the trace, in eval mode; modes restored after."""
    first = next(_params_and_buffers(model), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
    trace = _Trace(model)
    if x.dim() == 4:
        trace.rf[id(x)] = RF((1, 1), (1, 1), tuple(input_shape[-2:]))
    trace.alive.append(x)
    modes = {m: m.training for m in model.modules()}
    hooks = []
    for module in model.modules():
        hooks.append(module.register_forward_pre_hook(trace.pre_hook))
        hooks.append(module.register_forward_hook(trace.post_hook))
    model.eval()
    try:
        with torch.no_grad(), trace:
            output = model(x)
    except (RuntimeError, ValueError, IndexError) as bad:
        layer, kind = trace.where_failed()
        raise LayerFailure(layer, kind, str(bad).strip().splitlines()[0] if str(bad).strip() else type(bad).__name__) \
            from bad
    finally:
        for hook in hooks:
            hook.remove()
        for module, mode in modes.items():
            module.training = mode
    return trace, output


def trace(model: nn.Module, input_shape) -> tuple[_Trace, object]:
    """Run one sample of `input_shape` (C, H, W) through the model's meta twin (or, if something in the model
    cannot run on the meta device, through the model itself). Raises LayerFailure naming the layer."""
    input_shape = tuple(int(v) for v in input_shape)
    twin = _meta_twin(model)
    try:
        return _run(twin, input_shape)
    except LayerFailure:
        if twin is model:
            raise
    return _run(model, input_shape)  # the real model decides: its failure is the one to report


def first_failure(model: nn.Module, input_shape) -> str | None:
    """None if one sample of input_shape passes through the model, else "layer 'name' (Type): message"."""
    try:
        trace(model, input_shape)
        return None
    except LayerFailure as bad:
        return str(bad)


def builds_and_runs(build, in_channels: int, size) -> bool:
    """Whether build(size) constructs (on the meta device) a model that takes in_channels x size inputs."""
    try:
        with torch.device("meta"):  # shapes only: no memory, no weight init
            model = build(tuple(size))
        trace(model, (in_channels, *size))
        return True
    except (RuntimeError, ConfigError):
        return False


def smallest_square_input(accepts, limit: int = 1024) -> int | None:
    """The smallest side n with accepts((n, n)) true, by binary search (larger inputs never fail where a smaller
    one passes); None if even limit x limit fails."""
    if not accepts((limit, limit)):
        return None
    lo, hi = 1, limit
    while lo < hi:
        mid = (lo + hi) // 2
        if accepts((mid, mid)):
            hi = mid
        else:
            lo = mid + 1
    return lo


# ---- the summary ------------------------------------------------------------------------------------------
def summarize(model: nn.Module, input_shape, name: str = "") -> Summary:
    """Shapes, parameters (trainable/frozen by requires_grad), MACs, activation memory and receptive fields
    of `model` for one sample of input_shape (C, H, W). The model itself is not run and not changed."""
    input_shape = tuple(int(v) for v in input_shape)
    traced, output = trace(model, input_shape)
    modules = dict(model.named_modules())
    counted: set[int] = set()

    def own_params(module: nn.Module) -> tuple[int, int]:
        trainable = frozen = 0
        for p in module.parameters(recurse=False):
            if id(p) in counted:  # a parameter shared by several layers counts once, at its first use
                continue
            counted.add(id(p))
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
        return trainable, frozen

    layers = []
    for row in traced.rows:
        module = modules.get(row["name"]) if not row["type"].startswith("F.") else None
        trainable, frozen = own_params(module) if module is not None else (0, 0)
        kind = row["type"] + (f" ({row['type_suffix']})" if row.get("type_suffix") else "")
        layers.append(Layer(name=row["name"], type=kind, kernel=row.get("kernel"), stride=row.get("stride"),
                            padding=row.get("padding"), output_shape=row["output_shape"],
                            trainable_params=trainable, frozen_params=frozen, macs=row["macs"],
                            receptive_field=row["receptive_field"], jump=row["jump"]))
    # Parameters of layers the inference pass does not run (auxiliary classifiers), and parameters that
    # containers hold themselves: listed too, so that the rows add up to the model's parameters.
    for module_name, module in model.named_modules():
        trainable, frozen = own_params(module)
        if trainable or frozen:
            leaf = next(module.children(), None) is None
            layers.append(Layer(name=module_name or "(model)", type=type(module).__name__ if leaf else
                                f"{type(module).__name__} (own parameters)", trainable_params=trainable,
                                frozen_params=frozen, executed=False))
    params = list(model.parameters())
    out = next(_tensors(output), None)
    out_rf = traced.rf.get(id(out)) if out is not None else None
    return Summary(
        model=name or type(model).__name__,
        input_shape=input_shape,
        layers=layers,
        output_shape=tuple(out.shape[1:]) if out is not None else None,
        params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        frozen_params=sum(p.numel() for p in params if not p.requires_grad),
        macs=sum(layer.macs for layer in layers),
        activation_bytes=traced.activation_bytes,
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
        receptive_field=out_rf.size if out_rf is not None else None,
        jump=out_rf.jump if out_rf is not None and out.dim() == 4 else None,
        feature_map=traced.feature_map,
        notes=list(dict.fromkeys(traced.notes)),
    )


# ---- the table ----------------------------------------------------------------------------------------------
COLUMNS = ("layer", "type", "kernel", "stride", "pad", "output", "trainable", "frozen", "MACs", "RF", "jump")
_RIGHT = {"kernel", "stride", "pad", "trainable", "frozen", "MACs", "RF", "jump"}


def _axes(value, sep: str = "x", collapse: bool = True) -> str:
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
    return [layer.name, layer.type, _axes(layer.kernel, collapse=False), _axes(layer.stride), _axes(layer.padding),
            shape, f"{layer.trainable_params:,}", f"{layer.frozen_params:,}", f"{layer.macs:,}",
            _axes(layer.receptive_field), _axes(layer.jump)]


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
                else f"of a {hw} input" + (f", jump {_axes(s.jump)}" if s.jump else ""))
        lines.append(label("receptive field") + f"{_axes(s.receptive_field)} at the output: {seen}")
        if s.feature_map is not None:
            f = s.feature_map
            where = "the input" if f["layer"] == "input" else f"layer {f['layer']}"
            lines.append(label("") + f"{_axes(f['receptive_field'])} at {where}, the last feature map "
                                     f"({_axes(f['map'], collapse=False)}, jump {_axes(f['jump'])}), before layer "
                                     f"{f['pooled_by']} mixes all its positions")
    lines += [f"note: {n}" for n in s.notes]
    return lines
