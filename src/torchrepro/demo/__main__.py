"""``python -m torchrepro.demo --worker SETUP --epochs E --train N --test M``: one run of
the demo, in this process (the demo starts each of its runs this way)."""

import sys

# Imported from the package, not defined here: the dataset class a spawned loader worker
# unpickles must be torchrepro.demo.workload.AugmentedShapes, not a copy in __main__.
from torchrepro.demo.runs import child_main

if __name__ == "__main__":
    raise SystemExit(child_main(sys.argv[1:]))
