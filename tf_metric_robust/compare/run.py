"""Running a comparison: for every planned run, bin/train then bin/evaluate as subprocesses,
then results.json, results.md, figures and TensorBoard HParams.

Each step is skipped when its output exists from the same command (metrics.json for training,
the shared evaluation's report.json), and bin/train resumes an interrupted run from its last
checkpoint, so re-running `bin/compare` does only what is missing. Wall times are measured
around the subprocesses and kept in each model_dir's compare_run.json (summed over resumes).
"""

import concurrent.futures
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

from tf_metric_robust import atomic_io
from tf_metric_robust.compare import figures, hparams, plan, report, table

INTERRUPT_GRACE_SECONDS = 120  # bin/train checkpoints the current step on SIGTERM, then exits


class RunFailed(Exception):
    """A subprocess of one run failed; the message names it and its log."""


def _mtime(path):
    try:
        return os.path.getmtime(path)
    except OSError:
        return None


def _last_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def _read_record(run):
    return report._read_json(run.record_path) or {}


class Runner:
    """Runs planned runs (plan.Run), `parallel` at a time, printing one line per finished run
    and an overall bar; CPU threads are split between the parallel runs."""

    def __init__(self, runs, *, bin_dir, log_dir, parallel=1, threads=0, python=None, out=None):
        self.runs, self.bin_dir, self.log_dir = list(runs), bin_dir, log_dir
        self.parallel, self.python = parallel, python or sys.executable
        self.out = out or sys.stdout
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")
        threads = threads or os.cpu_count() or 1
        if parallel > 1:  # TensorFlow and OpenMP read these at start-up
            share = str(max(1, threads // parallel))
            self.env.update(
                TF_NUM_INTRAOP_THREADS=share, TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS=share
            )
        self._lock = threading.Lock()
        self._processes, self._stopping = set(), False
        self._started = time.time()
        self.finished, self.failed, self.work_seconds, self.worked = 0, [], 0.0, 0

    def _call(self, program, args, log):
        command = [self.python, os.path.join(self.bin_dir, program), *args]
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(command)}\n")
            f.flush()
            started = time.time()
            with self._lock:  # no new child once interrupt() ran: it could not stop that one
                if self._stopping:
                    raise RunFailed(f"interrupted before bin/{program} started")
                process = subprocess.Popen(
                    command, stdout=f, stderr=subprocess.STDOUT, env=self.env
                )
                self._processes.add(process)
            try:
                code = process.wait()
            finally:
                with self._lock:
                    self._processes.discard(process)
        return code, time.time() - started

    def interrupt(self):
        """SIGTERM to every running child (bin/train saves its step, as on a preemption), then
        wait; kill after the grace period."""
        with self._lock:
            self._stopping = True
            processes = list(self._processes)
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.time() + INTERRUPT_GRACE_SECONDS
        for process in processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                process.kill()

    def _train(self, run, record, log):
        metrics_path = os.path.join(run.model_dir, "metrics.json")
        if (
            os.path.exists(metrics_path)
            and record.get("train_done")
            and plan.same_arguments(record.get("train_args"), run.train_args)
        ):
            return "skipped"
        before = _mtime(metrics_path)
        code, seconds = self._call("train", run.train_args, log)
        if os.path.isdir(run.model_dir):
            if code != 0 or _mtime(metrics_path) != before:  # this call trained (or part of it)
                record["train_seconds"] = round(record.get("train_seconds", 0.0) + seconds, 1)
                record["train_seconds_source"] = "bin/compare wall clock of bin/train"
            elif "train_seconds" not in record:  # finished before bin/compare saw it
                metrics = report._read_json(metrics_path) or {}
                record["train_seconds"] = metrics.get("train_seconds_this_run")
                record["train_seconds_source"] = (
                    "metrics.json train_seconds_this_run (trained outside bin/compare)"
                )
            record.update(train_args=list(run.train_args), train_done=code == 0)
            atomic_io.write_json_atomic(run.record_path, record)
        if code != 0:
            raise RunFailed(f"bin/train exit {code} ({_last_line(log)}); log {log}")
        return "trained" if _mtime(metrics_path) != before else "already trained"

    def _evaluate(self, run, record, log):
        if os.path.exists(run.report_path) and plan.same_arguments(
            record.get("evaluate_args"), run.evaluate_args
        ):
            return "skipped"
        code, seconds = self._call("evaluate", run.evaluate_args, log)
        if code != 0:
            raise RunFailed(f"bin/evaluate exit {code} ({_last_line(log)}); log {log}")
        record.update(evaluate_args=list(run.evaluate_args), evaluate_seconds=round(seconds, 1))
        atomic_io.write_json_atomic(run.record_path, record)
        return "evaluated"

    def one(self, run):
        """Trains and evaluates one run; returns its loaded result (report.load_run)."""
        log = os.path.join(self.log_dir, f"{run.entry}-seed{run.seed}.log")
        started = time.time()
        try:
            record = _read_record(run)
            record.update(entry=run.entry, mode=run.mode, seed=run.seed)
            steps = [self._train(run, record, log), self._evaluate(run, record, log)]
            result = report.load_run(run.model_dir, entry=run.entry)
            with self._lock:
                write_hparams(result, record, run.record_path)
            self._done(run, result, steps, time.time() - started)
            return result
        except RunFailed as failure:
            self._done(run, None, [f"FAILED: {failure}"], time.time() - started)
            return None

    def _done(self, run, result, steps, seconds):
        with self._lock:
            self.finished += 1
            if result is None:
                self.failed.append(run.name)
            if any(step not in ("skipped", "already trained") for step in steps):
                self.work_seconds, self.worked = self.work_seconds + seconds, self.worked + 1
            line = f"{run.entry} seed {run.seed}: "
            line += summary_line(result) if result else ""
            print(f"{line} [{', '.join(steps)}]", file=self.out, flush=True)
            print(self.bar(), file=self.out, flush=True)

    def bar(self, width=30):
        total = len(self.runs)
        filled = int(width * self.finished / max(total, 1))
        elapsed = time.time() - self._started
        text = (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.finished}/{total} runs"
            f"{f' ({len(self.failed)} failed)' if self.failed else ''}, "
            f"{elapsed / 60:.0f} min elapsed"
        )
        remaining = total - self.finished
        if remaining and self.worked:
            left = self.work_seconds / self.worked * remaining / self.parallel
            text += f", about {left / 60:.0f} min left"
        return text

    def run_all(self):
        """Every run, `parallel` at a time; [loaded result or None (failed)] in plan order."""
        os.makedirs(self.log_dir, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(self.parallel) as pool:
            futures = [pool.submit(self.one, run) for run in self.runs]
            try:
                return [future.result() for future in futures]
            except KeyboardInterrupt:
                for future in futures:
                    future.cancel()
                self.interrupt()
                raise


def summary_line(result):
    """'clean 97.2, PGD-100 78.0, AutoAttack 72.5, detection AUC 79.6, adaptive TPR@5%FPR 8.5;
    train 350 s, evaluate 400 s' (accuracies in %), then the names of failed sanity checks."""
    numbers = result["numbers"]
    parts = [  # the percent columns of results.md, PGD named by its steps
        f"{result['pgd_label'] if key == 'pgd_accuracy' else title} {100 * numbers[key]:.1f}"
        for key, title, percent in table.METRICS
        if percent and numbers.get(key) is not None
    ]
    times = [
        f"{name} {numbers[key]:.0f} s"
        for key, name in (("train_seconds", "train"), ("evaluate_seconds", "evaluate"))
        if numbers.get(key) is not None
    ]
    failed = ", ".join(check["name"] for check in result.get("failed_sanity_checks", []))
    text = ", ".join(parts) + ("; " + ", ".join(times) if times else "")
    return text + (f"; sanity check FAILED: {failed}" if failed else "")


def write_hparams(result, record, record_path):
    """The run's HParams session, unless written for these same numbers before."""
    if not result["evaluated"]:
        return
    key = json.dumps(result["numbers"], sort_keys=True)
    if record.get("hparams_for") == key:
        return
    hparams.write_run(result)
    record["hparams_for"] = key
    atomic_io.write_json_atomic(record_path, record)


def entry_order(entries, runs):
    """The entries that have runs: --modes order first, then those found only on disk (sorted)."""
    found = {r["entry"] for r in runs}
    return [e for e in entries if e in found] + sorted(found - set(entries))


def compare(config, *, modes, bin_dir, command=None, out=None):
    """bin/compare: runs the plan (unless --collect), then aggregates (unless --only).

    Returns the exit status: 0, or 1 when a run failed.
    """
    out = out or sys.stdout
    planned = plan.build(config, modes)
    failed = []
    if not config.collect:
        runner = Runner(
            planned,
            bin_dir=bin_dir,
            log_dir=os.path.join(config.output, "logs"),
            parallel=config.parallel,
            threads=config.threads,
            out=out,
        )
        print(
            f"{len(planned)} runs into {config.output} ({config.parallel} at a time); "
            f"logs in {runner.log_dir}",
            file=out,
            flush=True,
        )
        runner.run_all()
        failed = runner.failed
    if config.only:  # a cluster job: the aggregation is one --collect at the end
        return 1 if failed else 0
    if config.collect:
        dirs = report.find_runs(config.output)
        if not dirs:
            raise plan.PlanError(
                f"--collect: no runs in {config.output} (expected "
                "<output>/<entry>/seed<k>/ folders written by bin/train)"
            )
        runs = [report.load_run(d) for d in dirs]
        for run in runs:
            record = report._read_json(os.path.join(run["model_dir"], plan.RECORD)) or {}
            write_hparams(run, record, os.path.join(run["model_dir"], plan.RECORD))
    else:
        runs = [
            report.load_run(r.model_dir, entry=r.entry)
            for r in planned
            if os.path.exists(os.path.join(r.model_dir, "recipe.json"))
        ]
    entries = entry_order(config.entries, runs)
    summary = report.write(config.output, runs, entries, config.reference, command=command)
    written = figures.write(config.output, summary, runs)
    if any(run["evaluated"] for run in runs):
        hparams.write_experiment(config.output, [r for r in runs if r["evaluated"]])
    print(
        f"wrote {os.path.join(config.output, 'results.md')}, results.json, "
        f"{', '.join(os.path.basename(p) for p in written)}",
        file=out,
        flush=True,
    )
    with open(os.path.join(config.output, "results.md")) as f:
        print(f.read(), file=out, flush=True)
    return 1 if failed else 0


__all__ = ["RunFailed", "Runner", "compare", "summary_line"]
