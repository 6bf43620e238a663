"""Tracing one sample through a model on the meta device: a row per leaf layer (shapes, parameters, MACs) and
every tensor's receptive field carried along (docs/summary.md, "How it is measured"); the zoo's input-size check."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from cnnlab.errors import ConfigError
from cnnlab.models.inspector.layer_report import RF, LayerFailure, axes_text


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
            change = f"{self._where()}: adaptive pooling from {axes_text(first.shape[-2:], collapse=False)} to " \
                     f"{axes_text(out.shape[-2:], collapse=False)}"
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
                                  f"{axes_text(known[0][0].shape[-2:], collapse=False)} to {axes_text(grid, collapse=False)};"
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


