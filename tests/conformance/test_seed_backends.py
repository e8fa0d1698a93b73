"""The seed scenario and a backup chain played on both backends: the same outcome."""

import pytest

from bitlab.conformance import canonical, job_sequences
from bitlab.scenarios import run_seed


@pytest.mark.qemu
@pytest.mark.parametrize("mode", ["individual", "grouped"])
@pytest.mark.parametrize("failing", ["drive1", "drive0", None])
def test_seed_outcome_is_the_same_on_real_qemu(mode, failing):
    real = run_seed(mode, failing, backend="qemu")
    sim = run_seed(mode, failing, backend="sim")
    assert (real.keep, real.delete) == (sim.keep, sim.delete)
    for drive in ("drive0", "drive1"):
        a, b = real.drives[drive], sim.drives[drive]
        assert (a.count_before, a.count_after, a.end, a.error) == (b.count_before, b.count_after, b.end, b.error)
        assert canonical(job_sequences(a.events).get(drive, [])) == canonical(job_sequences(b.events).get(drive, []))
