"""``module:function`` specs on the command line (``torchrepro cost``, ``doctor --model``,
``doctor --probe``): the one way they are parsed and loaded."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from torchrepro.errors import TorchReproError


def load_function(
    spec: str, error: type[TorchReproError], kind: str, what: str, example: str
) -> Callable[[], Any]:
    """The function a ``module:function`` spec names; the working directory is searched
    first, as ``python -m`` does.

    Args:
        spec: e.g. ``"mywork:workload"``.
        error: the error class to raise.
        kind: what the spec is for, for messages ("workload", "probe").
        what: what the function returns, for messages ("(model, batch, loss_fn)").
        example: a spec to show in the message.

    Raises:
        error: the spec is malformed, or its module or function cannot be loaded.

    Examples:
        >>> load_function("torchrepro._cost_workload:example_workload", TorchReproError,
        ...               "workload", "(model, batch, loss_fn)", "mywork:workload").__name__
        'example_workload'
    """
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name and attr):
        raise error(
            f"a {kind} spec is 'module:function'; got {spec!r}. Pass e.g. {example!r}, a function "
            f"returning {what}."
        )
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as failure:
        raise error(
            f"cannot load {spec}: {failure}. Expected a module importable from the working "
            f"directory, with a function returning {what}."
        ) from failure
    return function  # type: ignore[no-any-return]
