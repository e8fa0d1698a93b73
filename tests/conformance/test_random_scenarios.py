"""Random scenarios on real QEMU 7.2 and on bitlab, compared reply by reply and event by event.

Each run uses a new seed (printed, and shown in any failure) unless BITLAB_CONFORMANCE_SEED
fixes it; BITLAB_CONFORMANCE_SCENARIOS sets how many (default 200). Replay a failure with
``bitlab conformance --seed S --scenarios N``.
"""

from __future__ import annotations

import os
import random

import pytest

from bitlab.conformance import random_run

SEED = int(os.environ.get("BITLAB_CONFORMANCE_SEED", random.SystemRandom().randrange(1 << 31)))
COUNT = int(os.environ.get("BITLAB_CONFORMANCE_SCENARIOS", "200"))


@pytest.mark.qemu
def test_random_scenarios_identical_on_both_backends():
    print(f"conformance seed {SEED}, {COUNT} scenarios")
    identical, diffs = random_run(COUNT, SEED)
    print(f"conformance: {identical}/{COUNT} random scenarios identical (seed {SEED})")
    report = "\n\n".join(d.render() for d in diffs[:5])
    assert not diffs, f"seed {SEED}: {COUNT - identical} scenarios differ; replay with " \
                      f"`bitlab conformance --seed {SEED} --scenarios {COUNT}`\n{report}"
