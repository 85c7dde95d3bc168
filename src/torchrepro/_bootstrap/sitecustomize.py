"""Run by Python at start-up in every process launched under ``torchrepro run``.

It seeds the process before the user's code runs, then hands over to whatever
``sitecustomize`` module this one shadows, so an environment's own start-up hook still runs.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _run_shadowed_sitecustomize() -> None:
    ours = sys.modules.pop("sitecustomize", None)
    saved_path = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    try:
        if importlib.util.find_spec("sitecustomize") is not None:
            importlib.import_module("sitecustomize")
    finally:
        sys.path[:] = saved_path
        if ours is not None:
            sys.modules["sitecustomize"] = ours


_run_shadowed_sitecustomize()

# torchrepro._contract.BOOTSTRAP, spelled out: torchrepro may not be importable here.
if os.environ.get("TORCHREPRO_BOOTSTRAP") == "1":
    try:
        from torchrepro.launch import bootstrap
    except ImportError as error:
        sys.stderr.write(
            f"torchrepro run: this Python ({sys.executable}) cannot import torchrepro "
            f"({error}); install torchrepro into it, or run the command with the Python "
            "torchrepro is installed in.\n"
        )
        sys.stderr.flush()
        os._exit(3)  # an exception here would only be printed, and the script run unseeded
    try:
        bootstrap()
    except Exception as error:  # noqa: BLE001 - any failure must stop the run, not go unseeded
        sys.stderr.write(f"torchrepro run: could not set up this process: {error}\n")
        sys.stderr.flush()
        os._exit(3)
