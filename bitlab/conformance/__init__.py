"""Conformance: the same scenarios on bitlab and on real QEMU 7.2, compared."""

from .compare import canonical, compare_jobs, job_sequences, normalise
from .generator import random_scenario
from .runner import Difference, check, play, random_run
from .steps import run_step

__all__ = ["Difference", "canonical", "check", "compare_jobs", "job_sequences", "normalise", "play",
           "random_run", "random_scenario", "run_step"]
