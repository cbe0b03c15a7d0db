#!/usr/bin/env python3
"""Anchor of `cargo xtask bench data`: lm-evaluation-harness scoring MedMCQA rows with a GPT-2.

`--make DIR`: writes a GPT-2 small-layout model (12 layers x 768, random init with seed 0, the
vocabulary of kiln-train's MC fixture tokenizer padded to GPT-2's 50257) and that tokenizer to
DIR/model, and DIR/dev.jsonl with N rows (the fixture's 20 rows cycled with new ids).
`--run DIR`: times one `lm_eval.simple_evaluate` of the `medmcqa` task (the shipped task file,
pointed at DIR/dev.jsonl) on the CPU with --threads torch threads, batch size 1 as lm-eval's
default, and prints JSON {"seconds", "n", "acc"}.

Needs torch, transformers, lm-eval 0.4.13 and datasets<4 (see
crates/kiln-train/tests/fixtures/make_mc_fixture.py).
"""

import argparse
import json
import os
import shutil
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "crates", "kiln-train", "tests", "fixtures", "mc")


def make(d, n):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
    os.makedirs(d, exist_ok=True)
    out = os.path.join(d, "model")
    tok = GPT2TokenizerFast.from_pretrained(os.path.join(FIXTURE, "model"))
    tok.save_pretrained(out)
    torch.manual_seed(0)
    cfg = GPT2Config(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).eval().save_pretrained(out, safe_serialization=True)
    rows = [json.loads(l) for l in open(os.path.join(FIXTURE, "medmcqa_dev.jsonl"))]
    with open(os.path.join(d, "dev.jsonl"), "w") as f:
        for i in range(n):
            r = dict(rows[i % len(rows)])
            r["id"] = f"bench-{i:04d}"
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def run(d, threads):
    import torch
    torch.set_num_threads(threads)
    import lm_eval
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager
    src = os.path.join(os.path.dirname(lm_eval.tasks.__file__), "medmcqa")
    tmp = tempfile.mkdtemp()
    try:
        inc = os.path.join(tmp, "task")
        os.makedirs(inc)
        shutil.copy(os.path.join(src, "utils_medmcqa.py"), inc)
        y = open(os.path.join(src, "medmcqa.yaml")).read()
        dev = os.path.join(d, "dev.jsonl")
        y = y.replace("task: medmcqa", "task: medmcqa_bench").replace(
            "dataset_path: openlifescienceai/medmcqa",
            f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    train: {dev}\n    validation: {dev}")
        open(os.path.join(inc, "medmcqa_bench.yaml"), "w").write(y)
        tm = TaskManager(include_path=inc)
        t = time.perf_counter()
        r = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={os.path.join(d, 'model')},dtype=float32",
                                    tasks=["medmcqa_bench"], task_manager=tm, batch_size=1, device="cpu")
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp)
    res = r["results"]["medmcqa_bench"]
    n = sum(1 for _ in open(os.path.join(d, "dev.jsonl")))
    print(json.dumps({"seconds": seconds, "n": n, "acc": res["acc,none"]}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--make")
    p.add_argument("--run")
    p.add_argument("--rows", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    if a.make:
        make(a.make, a.rows)
    if a.run:
        run(a.run, a.threads)


if __name__ == "__main__":
    main()
