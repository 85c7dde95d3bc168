"""What a record entry holds besides the parameters: batch tensors, RNG digests, log values.

A batch's tensors are labelled by where they sit in it and what they are:
``batch["input_ids"] 16x16 int64``, ``batch[1] 32 int64``, ``batch 8x4 float32`` (a bare
tensor); :func:`labelled_tensors` makes the labels.

Also the names under which the parameters are recorded: module paths in the user's model.
A ``torch.compile``'d model is named through the model it wraps, so its parameters have
the plain model's names (``"0.weight"``, not ``"_orig_mod.0.weight"``) and the records of
a compiled and an uncompiled run line up. The writer (:mod:`torchrepro.records.writer`)
calls these in its hooks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Union

import torch

from torchrepro._sources import RNGSource, available_sources
from torchrepro.digests import fingerprint

__all__ = [
    "LogValue",
    "digestible",
    "labelled_tensors",
    "log_value",
    "module_parameters",
    "parameter_names",
    "rng_digests",
    "tensors_in",
    "unwrapped",
]

LogValue = Union[int, float, bool, str, torch.Tensor]
"""What :func:`torchrepro.log` takes: a number, a string or a tensor."""


def tensors_in(obj: Any, out: list[torch.Tensor]) -> None:
    """Appends the tensors in ``obj`` (nested lists, tuples, mappings) to ``out``, in order.

    Examples:
        >>> found: list[torch.Tensor] = []
        >>> tensors_in((torch.ones(1), {"mask": torch.zeros(2)}, "text"), found)
        >>> [t.shape[0] for t in found]
        [1, 2]
    """
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            tensors_in(item, out)
    elif isinstance(obj, Mapping):
        for key in obj:
            tensors_in(obj[key], out)


def _walk(obj: Any, path: str, out: list[tuple[str, torch.Tensor]]) -> None:
    if isinstance(obj, torch.Tensor):
        out.append((path, obj))
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _walk(item, f"{path}[{i}]", out)
    elif isinstance(obj, Mapping):
        for key in obj:
            name = json.dumps(key) if isinstance(key, str) else repr(key)
            _walk(obj[key], f"{path}[{name}]", out)


def labelled_tensors(obj: Any) -> list[tuple[str, torch.Tensor]]:
    """The tensors in a batch (nested lists, tuples, mappings), in order, each with its label.

    A label is ``batch``, the tensor's path in the structure, its shape and its dtype.

    Examples:
        >>> batch = {"input_ids": torch.zeros(16, 16, dtype=torch.int64), "n": 3}
        >>> [label for label, _ in labelled_tensors(batch)]
        ['batch["input_ids"] 16x16 int64']
        >>> [label for label, _ in labelled_tensors((torch.ones(4, 2), torch.ones(4)))]
        ['batch[0] 4x2 float32', 'batch[1] 4 float32']
    """
    found: list[tuple[str, torch.Tensor]] = []
    _walk(obj, "batch", found)
    return [(f"{path} {_shape(t)} {str(t.dtype).removeprefix('torch.')}", t) for path, t in found]


def _shape(t: torch.Tensor) -> str:
    if t.is_nested:
        return "nested"
    return "x".join(str(n) for n in t.shape) if t.dim() else "scalar"


def digestible(t: torch.Tensor) -> bool:
    """Whether a tensor's values can be digested: plain (strided) memory that holds data.

    Examples:
        >>> digestible(torch.ones(2)), digestible(torch.eye(2).to_sparse())
        (True, False)
    """
    return t.layout == torch.strided and not (t.is_nested or t.is_meta)


def _in_use(source: RNGSource) -> bool:
    """Whether a source's state can be read without side effects.

    Reading a device generator initialises its backend (a CUDA context, memory on every
    visible GPU): only worth it, and only safe before forked workers, once the training
    uses that device. A registered device generator means the device is in use; a
    backend that cannot say (MPS) is read whenever it is available.
    """
    if source.host:
        return True
    backend = getattr(torch, source.name, None)
    is_initialized = getattr(backend, "is_initialized", None)
    return is_initialized is None or bool(is_initialized())


def rng_digests() -> dict[str, str]:
    """Digests of every RNG source in use, by name, from its plain-data state.

    Examples:
        >>> before = rng_digests()
        >>> _ = torch.rand(1)
        >>> [name for name, digest in rng_digests().items() if digest != before[name]]
        ['torch']
    """
    return {
        source.name: str(fingerprint(source.encode(source.get_state())))
        for source in available_sources()
        if _in_use(source)
    }


def unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """The user's model inside a ``torch.compile`` wrapper (the module itself otherwise).

    Examples:
        >>> model = torch.nn.Linear(2, 2)
        >>> unwrapped(model) is model
        True
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # no compiled module before
    wrapper = getattr(eval_frame, "OptimizedModule", None)
    while wrapper is not None and isinstance(module, wrapper):
        module = module._orig_mod
    return module


def _named(
    ran: Iterable[torch.nn.Module], wanted: Mapping[int, Any] | None
) -> list[tuple[str, torch.nn.Parameter]]:
    """(module path, parameter) of the modules that ran, each parameter and name once.

    Outermost modules give full paths (``"encoder.0.weight"``), whichever order they ran
    in, the one with the most parameters first; only parameters whose id is in ``wanted``
    take a name, when given.
    """
    modules = list(dict.fromkeys(unwrapped(m) for m in ran))
    inner = {id(sub) for m in modules for sub in m.modules() if sub is not m}
    roots = [m for m in modules if id(m) not in inner]
    roots.sort(key=lambda m: (-sum(1 for _ in m.parameters()), type(m).__qualname__))
    found: list[tuple[str, torch.nn.Parameter]] = []
    seen: set[int] = set()
    used: set[str] = set()
    for root in roots:
        for name, p in root.named_parameters():
            if (wanted is None or id(p) in wanted) and id(p) not in seen and name not in used:
                found.append((name, p))
                seen.add(id(p))
                used.add(name)
    return found


def module_parameters(ran: Iterable[torch.nn.Module]) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters of the modules that ran forward, by module path, each once.

    What a step with no optimizer records. Outermost modules give full paths
    (``"encoder.0.weight"``), whichever order they ran in; a compiled model gives its
    plain model's names.

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> [name for name, _ in module_parameters([model[0], model])]
        ['0.weight', '0.bias']
    """
    return _named(ran, None)


def parameter_names(optimizer: torch.optim.Optimizer, ran: Iterable[torch.nn.Module]) -> list[str]:
    """Names for an optimizer's parameters: module paths, from the modules that ran forward.

    Named as :func:`module_parameters` names them; a parameter of no module that ran is
    ``group{g}.{i}``.

    Examples:
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> extra = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([*model.parameters(), extra], lr=0.1)
        >>> parameter_names(opt, [model, model[0]])
        ['0.weight', '0.bias', 'group0.2']
    """
    slots = {
        id(p): f"group{g}.{i}"
        for g, group in enumerate(optimizer.param_groups)
        for i, p in enumerate(group["params"])
    }
    named = {id(p): name for name, p in _named(ran, slots)}
    return [named.get(key, fallback) for key, fallback in slots.items()]


def log_value(value: LogValue, algorithm: str | None) -> Any:
    """What the record holds for a logged value: numbers as numbers, larger tensors digested.

    Examples:
        >>> log_value(torch.tensor(0.5), None), len(log_value(torch.zeros(3), None))
        (0.5, 32)
    """
    if isinstance(value, torch.Tensor):
        if value.numel() == 1:
            return value.detach().item()
        return str(fingerprint(value, algorithm=algorithm))
    return value
