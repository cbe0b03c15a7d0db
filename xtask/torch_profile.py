#!/usr/bin/env python3
"""Runs a PyTorch anchor script under torch.profiler (CPU activities), for `cargo xtask profile`.

Usage: python3 torch_profile.py --threads T SCRIPT [ARGS...]
The script runs as `SCRIPT --threads T ARGS...` (model construction included, as in kiln's perf
profile); its last line of output (a JSON object) is printed back with two fields added:
`profile_wall_s` and `profile_self_cpu_s` (each operator's self CPU time, seconds).
"""

import contextlib
import io
import json
import runpy
import sys
import time

from torch.profiler import ProfilerActivity, profile


def main():
    if len(sys.argv) < 4 or sys.argv[1] != "--threads":
        sys.exit(__doc__)
    threads, script, rest = sys.argv[2], sys.argv[3], sys.argv[4:]
    sys.argv = [script, "--threads", threads, *rest]
    printed = io.StringIO()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof, contextlib.redirect_stdout(printed):
        runpy.run_path(script, run_name="__main__")
    wall = time.perf_counter() - start
    result = json.loads(printed.getvalue().strip().splitlines()[-1])
    result["profile_wall_s"] = wall
    result["profile_self_cpu_s"] = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
