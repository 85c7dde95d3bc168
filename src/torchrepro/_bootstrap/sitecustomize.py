"""Run by Python at start-up in every process launched under ``torchrepro run``.

First it runs whatever ``sitecustomize`` module this one shadows, so an environment's own
start-up hook still runs (before seeding: what it draws is not seeded); then it seeds the
process before the user's code runs. Any failure stops the process with exit status 3
rather than let the command run unseeded.
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


try:
    _run_shadowed_sitecustomize()
except Exception:  # noqa: BLE001 - Python would print it and run the script unseeded
    import traceback

    traceback.print_exc()
    sys.stderr.write(
        "torchrepro run: the environment's own sitecustomize module (above) raised; "
        "torchrepro runs it before seeding and stops here rather than run the command "
        "unseeded. Fix or remove that module, or run without torchrepro.\n"
    )
    sys.stderr.flush()
    os._exit(3)

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
