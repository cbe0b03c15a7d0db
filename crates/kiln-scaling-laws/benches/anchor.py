#!/usr/bin/env python3
"""The scipy anchor for `cargo xtask bench scaling`: the same work as benches/scaling.rs.

- one inference-aware solve the way the paper's code does it: scipy.optimize.newton on F(D) from
  x0 = 1e8 (tol 1e-5, rtol 1e-8), then N from the iso-loss curve;
- one 4,500-start Chinchilla fit of the 47 runs: scipy L-BFGS-B with a vectorised numpy objective
  and its analytic gradient (faster than the reference's per-row loop with finite differences), on
  a process pool of one worker per core; and on one process, timed over every 10th start and
  scaled to 4,500.

With --kiln BIN it also runs `BIN scaling fit` on the same CSV as a child process first, so both
tools' wall time, peak resident memory and final objective are measured by the same harness.

Every timing is repeated (`--repeats`, default 3) and reported as a list of seconds, so the caller
shows the median and the spread. Peak memory of the process-pool workers is measured in a child
process of its own (`--stage pool`): `RUSAGE_CHILDREN` covers every child a process has waited
for, so measured in this process it would include the kiln process run before.

Prints one JSON object (seconds, MiB). Needs numpy and scipy (`pip install numpy scipy`).
Usage: python3 anchor.py [--repeats N] [--kiln target/release/kiln]
"""

import argparse
import csv
import itertools
import json
import multiprocessing
import os
import platform
import resource
import subprocess
import sys
import time

import scipy

import numpy as np
from scipy.optimize import minimize, newton
from scipy.special import huber, logsumexp

HERE = os.path.dirname(os.path.abspath(__file__))
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.336, 0.283
DELTA = 1e-3
GRID = list(itertools.product([0, 0.5, 1, 1.5, 2], [0, 0.5, 1, 1.5, 2], [-1, -0.5, 0, 0.5, 1],
                              [0, 5, 10, 15, 20, 25], [0, 5, 10, 15, 20, 25]))


def solve(loss, t):
    def f(d):
        return B * (BETA / ALPHA + 1) * d ** -BETA + (BETA * B * t / (3 * ALPHA)) * d ** (-BETA - 1) + E - loss

    d = newton(f, 1e8, tol=1e-5, maxiter=100, rtol=1e-8)
    n = (A / (loss - E - B / d ** BETA)) ** (1 / ALPHA)
    return n, d


def objective(theta, ln_n, ln_d, ln_l):
    alpha, beta, e, a, b = theta
    pred = logsumexp(np.stack([a - alpha * ln_n, b - beta * ln_d, np.full_like(ln_n, e)]), axis=0)
    return float(np.sum(huber(DELTA, pred - ln_l)))


def gradient(theta, ln_n, ln_d, ln_l):
    alpha, beta, e, a, b = theta
    x = np.stack([a - alpha * ln_n, b - beta * ln_d, np.full_like(ln_n, e)])
    lse = logsumexp(x, axis=0)
    w = np.exp(x - lse)
    r = lse - ln_l
    psi = np.where(np.abs(r) <= DELTA, r, DELTA * np.sign(r))
    return np.array([-np.sum(psi * w[0] * ln_n), -np.sum(psi * w[1] * ln_d), np.sum(psi * w[2]),
                     np.sum(psi * w[0]), np.sum(psi * w[1])])


_DATA = None


def _init(data):
    global _DATA
    _DATA = data


def _start(x0):
    res = minimize(objective, np.array(x0, dtype=float), args=_DATA, jac=gradient, method="L-BFGS-B",
                   options=dict(ftol=1e-15, gtol=1e-13, maxiter=1000))
    return res.fun


CSV = os.path.join(HERE, "..", "data", "sardana2024_runs.csv")


def load():
    with open(CSV) as f:
        rows = [(float(r["params"]), float(r["tokens"]), float(r["loss"])) for r in csv.DictReader(f)]
    arr = np.array(rows)
    return np.log(arr[:, 0]), np.log(arr[:, 1]), np.log(arr[:, 2])


def pool_stage(repeats):
    """The process-pool fit, in a process whose only children are the pool's workers."""
    data = load()
    times, best = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with multiprocessing.Pool(initializer=_init, initargs=(data,)) as pool:
            best = min(pool.map(_start, GRID, chunksize=50))
        times.append(time.perf_counter() - t0)
    print(json.dumps(dict(fit_pool_s=times, fit_objective=best, fit_pool_workers=os.cpu_count(),
                          fit_pool_worker_peak_rss_mib=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kiln", help="path of a release `kiln` binary to measure as a child process")
    parser.add_argument("--stage", choices=["pool"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage == "pool":
        pool_stage(args.repeats)
        return
    out = dict(python=platform.python_version(), numpy=np.__version__, scipy=scipy.__version__, repeats=args.repeats)

    if args.kiln:
        # Before any other child exists, so RUSAGE_CHILDREN's peak is kiln's alone.
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            done = subprocess.run([args.kiln, "scaling", "fit", "--csv", CSV, "--json"], check=True, capture_output=True)
            times.append(time.perf_counter() - t0)
        out["kiln_process_fit_s"] = times
        out["kiln_process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        out["kiln_fit_objective"] = json.loads(done.stdout)["objective"]

    n_solves = 2000
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(n_solves):
            solve(1.947, 2e12)
        times.append((time.perf_counter() - t0) / n_solves)
    out["solve_newton_s"] = times

    pool = subprocess.run([sys.executable, os.path.abspath(__file__), "--stage", "pool", "--repeats", str(args.repeats)],
                          check=True, capture_output=True, text=True)
    out.update(json.loads(pool.stdout))

    # One process over every 10th start, scaled to 4,500 (a full single-process run takes
    # tens of minutes on two cores).
    data = load()
    _init(data)
    subset = GRID[::10]
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        min(_start(x) for x in subset)
        times.append((time.perf_counter() - t0) * len(GRID) / len(subset))
    out["fit_1proc_s"] = times
    out["fit_1proc_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


if __name__ == "__main__":
    main()
