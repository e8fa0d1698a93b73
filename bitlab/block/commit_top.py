"""``commit_top``: the filter a commit job puts above the node it commits (block/commit.c, QEMU 7.2).

Like ``mirror_top`` it has one child, ``backing``, and passes reads down; it takes no permission on it and
shares all (so that the consistent read the job unshares below is not needed above). The overlay's backing
link points at it while the job runs; at the end that link goes to the base (success) or back to the
committed node. It is implicit (``#block…``) unless ``filter-node-name`` names it.
"""

from __future__ import annotations

from .mirror_top import MirrorTopNode


class CommitTopNode(MirrorTopNode):
    """The commit job's filter over the node it commits (its ``backing`` child); no job writes through it."""

    driver = "commit_top"

    def __init__(self, node_name: str, **kw) -> None:
        super().__init__(node_name, **kw)
        self.read_only = True  # (bdrv_new_open_driver with flags 0: opened read-only)
