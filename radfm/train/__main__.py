"""``python -m radfm.train`` / ``radfm train``: the Hydra entry point of :func:`radfm.train.train.train`."""

from __future__ import annotations

from radfm.train.entry import main

if __name__ == "__main__":
    main()
