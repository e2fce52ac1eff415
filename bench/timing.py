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


def interleaved(runs, rounds, warmups=1):
    """{name: [(wall, CPU) seconds per round]} of every `runs[name]()`, after `warmups` untimed
    calls each (tracing, compilation, first allocations). Variants run round by round, so a
    change of machine load hits all of them alike; callers take medians of per-round ratios."""
    for run in runs.values():
        for _ in range(warmups):
            run()
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(seconds(run))
    return times
