#!/usr/bin/env python3
"""Writes the generated tables of docs/results.md from the runs of scripts/results.sh.

Usage: scripts/results_tables.py RUNS_DIR RESULTS_MD

Every table row comes from one eval-<tag>.json beside a run, and every row carries the
commands that made it (the train_command and eval-<tag>.command files results.sh
leaves). The text between the `<!-- results:begin -->` and `<!-- results:end -->`
markers of RESULTS_MD is replaced; everything else is kept as written.
"""
import json
import os
import subprocess
import sys
from datetime import datetime, timezone

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# (run, eval tag, row label) per table, in display order.
MOONS = [
    ("moons-twinflow", "main", "TwinFlow (`split`)"),
    ("moons-rcgm", "main", "RCGM alone (same recipe, TwinFlow terms off)"),
    ("moons-fm", "main", "flow matching (Euler)"),
    ("moons-meanflow", "main", "MeanFlow"),
    ("moons-twinflow-l2", "main", "TwinFlow with l2 instead of Barron"),
    ("moons-twinflow", "no-presets", "TwinFlow, few-step presets off"),
]
MNIST_MAIN = [
    ("mnist-twinflow", "main", "TwinFlow (`split`), from scratch"),
    ("mnist-fm-then-twinflow", "main", "FM pretrain 800 + TwinFlow fine-tune 800"),
    ("mnist-rcgm", "main", "RCGM alone (same recipe, TwinFlow terms off)"),
    ("mnist-fm", "main", "flow matching (Euler), same steps"),
    ("mnist-meanflow", "main", "MeanFlow, same steps"),
    ("mnist-fm-wallclock", "main", "flow matching (Euler), same wall-clock"),
    ("mnist-fm-pretrain", "main", "flow matching 800 steps (the fine-tune's start)"),
]
MNIST_DIT = [
    ("mnist-dit-twinflow", "main", "TwinFlow (`split`), DiT"),
    ("mnist-dit-rcgm", "main", "RCGM alone, DiT"),
    ("mnist-dit-fm", "main", "flow matching (Euler), DiT, same steps"),
]
FASHION = [
    ("fashion-twinflow", "main", "TwinFlow (`split`), MNIST's recipe"),
    ("fashion-fm", "main", "flow matching (Euler), same steps"),
]
MNIST_ABLATIONS = [
    ("mnist-twinflow", "main", "TwinFlow (Barron, label dropout 0.1): the default"),
    ("mnist-twinflow", "no-presets", "the same model, few-step presets off"),
    ("mnist-twinflow-l2", "main", "l2 loss instead of Barron"),
    ("mnist-twinflow-clip-beta2-99", "main", "clip 1.0, AdamW β₂ 0.99 (production)"),
    ("mnist-twinflow-clip-beta2-95", "main", "clip 1.0, AdamW β₂ 0.95 (production)"),
    ("mnist-twinflow-no-label-dropout", "main", "no label dropout (as the references)"),
    ("mnist-twinflow-unit-time", "main", "time features of t, not 1000·t (as MeanFlow's)"),
]


def read(path):
    with open(path) as f:
        return f.read().strip()


def run_info(runs, name):
    d = os.path.join(runs, name)
    seconds = float(read(os.path.join(d, "train_seconds")))
    commit = os.path.join(d, "train_commit")
    commit = read(commit) if os.path.exists(commit) else None
    return d, seconds, read(os.path.join(d, "train_command")), commit


def rows_of(runs, entries, cells, header):
    out = [header, "|" + "|".join("---" for _ in header.strip("|").split("|")) + "|"]
    commands = []
    floor = None
    for name, tag, label in entries:
        path = os.path.join(runs, name, f"eval-{tag}.json")
        if not os.path.exists(path):
            continue
        d, seconds, train_cmd, commit = run_info(runs, name)
        report = json.load(open(path))
        floor = report["floor"]
        ref = len(commands) + 1
        eval_cmd = read(os.path.join(d, f"eval-{tag}.command"))
        commands.append((ref, train_cmd, eval_cmd, commit))
        for row in report["rows"]:
            sampler = describe_sampler(row)
            out.append(
                f"| {label} [{ref}] | {report['step']} | {seconds / 60:.1f} min | "
                f"{row['nfe']} | {sampler} | " + " | ".join(c(row) for c in cells) + " |"
            )
    return out, commands, floor


def describe_sampler(row):
    s = row["sampler"]
    name = {"ucgm": "UCGM", "euler": "Euler", "heun": "Heun"}[s["method"]]
    parts = [name]
    # Unset (older eval files) and few_step are the UCGM default; MeanFlow runs jump to
    # the next grid time, z_r = z_t - (t - r)·u.
    if s.get("jump", "few_step") != "few_step":
        parts.append(s["jump"].replace("_", "-"))
    if s["stochastic_ratio"]:
        parts.append(f"ρ={s['stochastic_ratio']:g}")
    if s["gaps"] != [0.0, 0.0]:
        parts.append(f"gaps {s['gaps'][0]:g}/{s['gaps'][1]:g}")
    return ", ".join(parts)


def commands_block(commands):
    lines = []
    for ref, train_cmd, eval_cmd, commit in commands:
        at = f" (trained at commit `{commit}`)" if commit else ""
        lines.append(f"- [{ref}] `{train_cmd}`, then `{eval_cmd}`{at}")
    return lines


def table(runs, title, entries, metric_cols, cells, floor_cells):
    header = "| run | steps | train time | NFE | sampler | " + " | ".join(metric_cols) + " |"
    out, commands, floor = rows_of(runs, entries, cells, header)
    if not commands:
        return []
    out.append("| real data (floor) | — | — | — | — | " + " | ".join(f(floor) for f in floor_cells) + " |")
    return [f"### {title}", ""] + out + ["", "Commands:", ""] + commands_block(commands) + [""]


def main():
    runs, md = sys.argv[1], sys.argv[2]
    toy_cells = [lambda r: f"{r['energy']:.5f}", lambda r: f"{r['sliced_w2']:.4f}"]
    img_cells = [lambda r: f"{100 * r['accuracy']:.1f}%", lambda r: f"{r['frechet']:.1f}"]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"_Tables written by `scripts/results.sh` at commit `{commit}` on {when} from the "
        "runs it made (each row's commands name the commit it trained at); 2,000 samples "
        "per row, the train time includes sample pictures and checkpoints._",
        "",
    ]
    body += table(runs, "Two moons", MOONS, ["energy distance", "sliced W2"], toy_cells, toy_cells)
    body += table(
        runs, "MNIST-10k: methods and budgets", MNIST_MAIN,
        ["class accuracy", "Fréchet distance"], img_cells, img_cells,
    )
    body += table(
        runs, "MNIST-10k: recipe ablations", MNIST_ABLATIONS,
        ["class accuracy", "Fréchet distance"], img_cells, img_cells,
    )
    body += table(
        runs, "MNIST-10k on a transformer (DiT, CPU)", MNIST_DIT,
        ["class accuracy", "Fréchet distance"], img_cells, img_cells,
    )
    body += table(
        runs, "Fashion-MNIST (the pixel MLP, MNIST's recipe)", FASHION,
        ["class accuracy", "Fréchet distance"], img_cells, img_cells,
    )
    text = open(md).read()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    text = text[:start] + "\n" + "\n".join(body) + "\n" + text[end:]
    with open(md, "w") as f:
        f.write(text)
    print(f"wrote the tables of {md}")


if __name__ == "__main__":
    main()
