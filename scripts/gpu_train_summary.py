#!/usr/bin/env python3
"""The summary of scripts/gpu-train.sh: one table row per run and NFE from the run's
eval.json (steps reached, training seconds, class accuracy, Fréchet distance, the real
test images' floor), the f16 run's skipped steps, the op test's result, the final sample
pictures copied beside the summary, and every other file packed into logs.tar.gz.

    python3 scripts/gpu_train_summary.py OUT_DIR > OUT_DIR/summary.md
"""
import glob
import json
import os
import shutil
import sys
import tarfile

out = sys.argv[1]
env = open(os.path.join(out, "environment.txt")).read().splitlines()
print(env[0])
print("\n" + "\n".join(env[1:]))
print("\n| run | exit | steps | train s | NFE | accuracy | Fréchet | floor (real test) |")
print("|---|---:|---:|---:|---:|---:|---:|---|")
pictures = []
for line in open(os.path.join(out, "runs.tsv")):
    name, rc, seconds = line.rstrip("\n").split("\t")
    run = os.path.join(out, name)
    metrics = os.path.join(run, "metrics.jsonl")
    steps, skipped = "-", 0
    if os.path.exists(metrics):
        records = [json.loads(l) for l in open(metrics) if l.strip()]
        if records:
            steps = records[-1]["step"]
            skipped = sum(1 for r in records if r.get("skipped"))
    report = os.path.join(run, "eval.json")
    if not os.path.exists(report):
        print(f"| {name} | {rc} | {steps} | {seconds} | - | - | - | - |")
        continue
    r = json.load(open(report))
    steps = r.get("step", steps)
    floor = r.get("floor") or {}
    floor_text = f"{floor.get('accuracy', 0) * 100:.1f}%, {floor.get('frechet', 0):.1f}"
    for row in r["rows"]:
        print(
            f"| {name} | {rc} | {steps} | {seconds} | {row['nfe']} | "
            f"{row['accuracy'] * 100:.1f}% | {row['frechet']:.1f} | {floor_text} |"
        )
    if name.endswith("f16"):
        print(f"\n{name}: {skipped} of the logged steps skipped by the loss scaler")
    for png in sorted(glob.glob(os.path.join(run, "samples", "*.png")))[-3:]:
        copy = f"{name}-{os.path.basename(png).split('-')[-1]}"
        shutil.copy(png, os.path.join(out, copy))
        pictures.append(copy)
test_log = os.path.join(out, "test-sum_products.log")
if os.path.exists(test_log):
    results = [l for l in open(test_log) if l.startswith("test result")]
    print(f"\ncuda_ops sum_products: {results[-1].strip() if results else 'no result'}")
if pictures:
    print("\nSample pictures (the last grid of each run): " + ", ".join(pictures))
# Everything else into one archive, so that only a few files come back.
keep = set(pictures) | {"summary.md"}
with tarfile.open(os.path.join(out, "logs.tar.gz"), "w:gz") as tar:
    for entry in sorted(os.listdir(out)):
        if entry not in keep and entry != "logs.tar.gz":
            tar.add(os.path.join(out, entry), arcname=entry)
for entry in os.listdir(out):
    if entry not in keep and entry != "logs.tar.gz":
        path = os.path.join(out, entry)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
