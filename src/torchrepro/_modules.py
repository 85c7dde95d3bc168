"""Which module is running, by its path, for the op tracer of a replay.

Forward: a global forward pre-hook pushes the module called and a hook of its own, kept
last among its forward hooks, pops it, so that what the module's own hooks do (a hook
that changes its output) counts as the module's. Backward: as
``torch.utils.module_tracker`` does, a module's backward runs from the moment the
gradients of its outputs are ready until those of its inputs are.

A module is named by its path under the outermost module called (``"encoder.layer.1.dense"``,
as ``named_modules`` and the record's parameter names give it); the outermost itself, and a
module called on its own (a loss module), by its class name. A module called more than
once keeps its one name.

Examples:
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
    >>> seen = []
    >>> def look(module, args, output):
    ...     seen.append(running.innermost())
    >>> _ = model[0].register_forward_hook(look)  # the module's own hook: still inside it
    >>> with Modules() as running:
    ...     _ = model(torch.ones(1, 2, requires_grad=True)).sum()
    >>> seen, running.innermost()
    (['0'], '(outside any module)')
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.autograd.graph import register_multi_grad_hook
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.utils._pytree import tree_flatten
from torch.utils.hooks import RemovableHandle

from torchrepro.localize import OUTSIDE

__all__ = ["Modules"]


def _needing_grad(values: Any) -> list[torch.Tensor]:
    return [t for t in tree_flatten(values)[0] if isinstance(t, torch.Tensor) and t.requires_grad]


class Modules:
    """While entered, knows the innermost module running (:meth:`innermost`)."""

    def __init__(self) -> None:
        self.names: weakref.WeakKeyDictionary[torch.nn.Module, str] = weakref.WeakKeyDictionary()
        self.stack: list[str] = []  # the forward calls running, outermost first
        self.backward: dict[str, int] = {}  # modules whose backward runs, with a count
        self._last: weakref.WeakKeyDictionary[torch.nn.Module, RemovableHandle] = (
            weakref.WeakKeyDictionary()
        )
        self._handles: list[RemovableHandle] = []
        self._callback = False

    def __enter__(self) -> Modules:
        self._handles.append(register_module_forward_pre_hook(self._enter))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in [*self._handles, *self._last.values()]:
            handle.remove()
        self._handles.clear()
        self._last = weakref.WeakKeyDictionary()

    def innermost(self) -> str:
        """The path of the innermost module running, or ``OUTSIDE``."""
        if self.stack:
            return self.stack[-1]
        if self.backward and torch._C._current_graph_task_id() != -1:
            return max(self.backward, key=lambda name: (name.count("."), name))
        return OUTSIDE

    def _name(self, module: torch.nn.Module) -> str:
        name = self.names.get(module)
        if name is None:
            if self.stack:  # a module that is no child of the one calling it
                name = f"{self.stack[-1]}.{type(module).__name__}"
                self.names[module] = name
                return name
            root = type(module).__name__
            for path, sub in module.named_modules():
                self.names.setdefault(sub, path or root)
            name = self.names[module]
        return name

    def _enter(self, module: torch.nn.Module, args: Any) -> None:
        name = self._name(module)
        self.stack.append(name)
        handle = self._last.get(module)
        if handle is None:
            self._last[module] = module.register_forward_hook(self._leave, always_call=True)
        else:  # hooks added since go before it
            hooks: Any = module._forward_hooks  # an OrderedDict
            hooks.move_to_end(handle.id)
        inputs = _needing_grad(args) if torch.is_grad_enabled() else []
        if inputs:
            self._handles.append(register_multi_grad_hook(inputs, lambda _: self._done(name)))

    def _leave(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        name = self.stack.pop() if self.stack else self._name(module)
        outputs = _needing_grad(output)
        if outputs:
            self._handles.append(register_multi_grad_hook(outputs, lambda _: self._begin(name)))

    def _begin(self, name: str) -> None:
        """The gradients of the module's outputs are ready: its backward begins."""
        if not self._callback:  # at the end of the backward pass, no module runs any more
            self._callback = True
            torch.autograd.Variable._execution_engine.queue_callback(self._reset)
        self.backward[name] = self.backward.get(name, 0) + 1

    def _done(self, name: str) -> None:
        """The gradients of the module's inputs are ready: its backward is done."""
        count = self.backward.pop(name, 0) - 1
        if count > 0:
            self.backward[name] = count

    def _reset(self) -> None:
        self.backward.clear()
        self._callback = False
