"""``python -m napari_cellfocus.train ARGS``: ``cellfocus train ARGS`` as a module, for torchrun.

Under torchrun (``RANK`` / ``WORLD_SIZE`` set) every process is one rank of a
DistributedDataParallel run, as with ``cellfocus train --ddp``::

    torchrun --nproc-per-node 4 -m napari_cellfocus.train imgs/ --labels labels/ --out M.pt

Without torchrun it trains in one process, like ``cellfocus train``. The options are
``cellfocus train``'s (see ``cellfocus train --help``); ``--batch-size`` is the global
batch, split over the processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from napari_cellfocus.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "--ddp" not in args:
        args.append("--ddp")
    return cli_main(["train", *args])


if __name__ == "__main__":
    sys.exit(main())
