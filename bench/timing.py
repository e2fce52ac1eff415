"""Timing helper shared by the bench scripts (imported as a sibling module: `python bench/x.py`)."""

import time


def seconds(fn):
    """(wall, process-CPU) seconds of one `fn()` call; `fn` must block until its result exists.

    Process CPU time counts every thread of this process and nothing of other processes, so on
    a shared machine its ratios are steadier than wall-time ratios.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu
