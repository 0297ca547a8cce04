"""How many torch threads a job on the CPU gets: MIFO_CPU_THREADS, or the cores that other
processes leave idle when it starts.

Threads on cores that other processes keep busy wait for each other at every operator
(bench/cpu_threads.py, 2 cores both kept busy: a learning step of `tiny` took 5x its idle
time on 2 threads, 2x on 1), so a job takes only the idle cores, and at least one.
"""

from __future__ import annotations

import logging
import os

import psutil

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.1  # how long the machine's load is sampled before a job starts


def cpu_threads(configured: int) -> int:
    """`configured` when set (> 0), else the usable cores minus those busy right now."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if configured > 0:
        return configured
    busy = psutil.cpu_percent(interval=SAMPLE_SECONDS) / 100 * (psutil.cpu_count() or cores)
    return max(1, min(cores, round(cores - busy)))
