"""The report's independent training runs, one after the other or in parallel processes.

`run_jobs(jobs, workers, threads)`: with one worker every run trains in this process, its output on the
console as when it is started alone. With more, each run trains in a worker process (a spawn context: a
fresh interpreter, no state forked from this one) with `threads` torch threads, and its console output
goes to its own log file, LOG_DIR/<job name>.log, so nothing interleaves (once the run is trained, the file
moves into the run's logs folder as console.log); this process prints one line when a run starts and one
when it ends. The run folders are the same either way: the worker calls the
same `reuse_or_train` (reporting/reuse.py) of its config as the serial path.

A job that fails does not stop the others: the rest train (those that wait for it are skipped), and at the
end `JobsFailed` names every failed run with its error and log file. The finished runs are saved
as usual, so the next invocation reuses them and trains only what failed.

Why a process pool of functions and not subprocesses of the CLIs: the worker returns the run's summary
and whether it trained (to count and tabulate), exactly what `reuse_or_train` returns in the serial
path, with no `--config` files to write and no output to parse.
"""
import concurrent.futures
import multiprocessing
import os
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from errors import Interrupted, UserError


@dataclass(frozen=True)
class Job:
    """One run: `train(config, log)` -> (summary, trained now), a module-level function (it is pickled by
    name for a worker); `after`: names of jobs that must have finished first."""

    name: str
    train: object
    config: object
    after: tuple = ()


class JobsFailed(UserError):
    """Some runs failed; `done` holds the {name: (summary, trained)} of those that finished."""

    def __init__(self, failures, done, total):
        self.failures, self.done = failures, done
        listed = "; ".join(f"{name}: {why}" for name, why in failures.items())
        super().__init__(f"{len(failures)} of {total} runs failed: {listed}. The {len(done)} finished runs are "
                         f"saved; the next invocation reuses them and trains only the failed ones")


def log_name(name):
    """A file name for a job name: letters, digits, '.', '-', '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") + ".log"


def one_line(error):
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__) if isinstance(error, UserError) else \
        f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_jobs(jobs, workers=1, threads=None, log_dir=None, log=print):
    """{name: (summary, trained)} of every job, in the order given; raises JobsFailed after all ran when
    any failed. workers > 1 needs `log_dir` (the runs' console logs)."""
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"job names must differ: {names}")
    for i, job in enumerate(jobs):
        later = set(job.after) - set(names[:i])
        if later:
            raise ValueError(f"job {job.name} waits for {sorted(later)}: not jobs listed before it")
    if workers <= 1:
        done, failures = _serial(jobs, log)
    else:
        done, failures = _parallel(jobs, workers, threads, Path(log_dir), log)
    if failures:
        raise JobsFailed(failures, done, len(jobs))
    return {name: done[name] for name in names}


def _blocked(job, failures):
    failed = [a for a in job.after if a in failures]
    return f"not run: it waits for {', '.join(failed)}, which failed" if failed else None


def _serial(jobs, log):
    done, failures = {}, {}
    for i, job in enumerate(jobs, 1):
        blocked = _blocked(job, failures)
        if blocked:
            failures[job.name] = blocked
            continue
        log(f"[{i}/{len(jobs)}] {job.name}")
        try:
            done[job.name] = job.train(job.config, log)
        except (Interrupted, KeyboardInterrupt):
            raise  # a person stopped the report: no run after this one
        except Exception as e:  # noqa: BLE001 - any failure of one run is reported with its name at the end
            if not isinstance(e, UserError):
                traceback.print_exc()
            failures[job.name] = one_line(e)
            log(f"[{i}/{len(jobs)}] {job.name} failed: {failures[job.name]}")
    return done, failures


def _init_worker(threads):
    if threads:
        import torch

        torch.set_num_threads(threads)


def _work(train, config, log_path):
    """In a worker: run one job with fd 1 and 2 sent to `log_path`; {"summary", "trained", "seconds"} or {"error"}."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    start = time.perf_counter()
    with open(log_path, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            summary, trained = train(config, lambda line: print(line, flush=True))
            return {"summary": summary, "trained": trained, "seconds": time.perf_counter() - start}
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which names the run
            traceback.print_exc()
            return {"error": one_line(e), "seconds": time.perf_counter() - start}
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _keep_log(path, summary):
    """Move a trained run's console log into its logs folder (beside its TensorBoard events) as console.log."""
    if not summary.get("logs"):
        return path
    target = Path(summary["logs"]) / "console.log"
    try:
        shutil.move(path, target)
    except OSError:
        return path
    return target


def _parallel(jobs, workers, threads, log_dir, log):
    log_dir.mkdir(parents=True, exist_ok=True)
    done, failures, running = {}, {}, {}
    waiting = list(jobs)
    count = 0
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                initargs=(threads,)) as pool:
        while waiting or running:
            for job in list(waiting):
                blocked = _blocked(job, failures)
                if blocked:
                    failures[job.name] = blocked
                    waiting.remove(job)
                elif all(a in done for a in job.after) and len(running) < workers:
                    waiting.remove(job)
                    count += 1
                    path = log_dir / log_name(job.name)
                    log(f"[{count}/{len(jobs)}] {job.name}: started (output in {path})")
                    try:
                        running[pool.submit(_work, job.train, job.config, str(path))] = (job, path)
                    except concurrent.futures.process.BrokenProcessPool as e:
                        failures[job.name] = f"not run: a worker process stopped abruptly ({one_line(e)})"
            finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                job, path = running.pop(future)
                try:
                    out = future.result()
                except Exception as e:  # noqa: BLE001 - the worker process itself died
                    out = {"error": f"its worker process stopped ({one_line(e)})", "seconds": 0.0}
                if "error" in out:
                    failures[job.name] = f"{out['error']} (output in {path})"
                    log(f"{job.name}: FAILED after {out['seconds']:.0f} s: {failures[job.name]}")
                else:
                    done[job.name] = (out["summary"], out["trained"])
                    how = "trained" if out["trained"] else "reused a finished run"
                    if out["trained"]:
                        path = _keep_log(path, out["summary"])
                    log(f"{job.name}: {how} in {out['seconds']:.0f} s (output in {path})")
    return done, failures
