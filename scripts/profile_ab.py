#!/usr/bin/env python3
"""The per-op profile of two builds side by side, from alternating runs of a bench.

    profile_ab.py [--labels A B] A_RUN... -- B_RUN...

Each RUN is a file holding what one run of `dit_step`, `jvp_step` or `train_step` with
`--json --profile` printed (stdout and stderr together): JSON lines with the timed
medians (`*_ms` fields) and Markdown tables under `## ` headings, one row per op (or
per product shape) with an `ms` column. `scripts/profile-ab.sh` writes them.

Prints, for each timed measurement and each table row, the median over A's runs and
over B's runs, the range, and B's change against A. Medians over alternating runs,
because one run on a shared machine moves by several percent: the noise shows in the
ranges, and a change smaller than them is not one. Standard library only.
"""

import json
import statistics
import sys

# Table columns that are measurements rather than the row's name.
VALUE_COLUMNS = {"calls", "M elements", "ms", "GFLOP/s", "share"}


def cells(line):
    """The cells of a Markdown table row."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse_run(text):
    """(timings, tables) of one run: {field: ms} from its JSON lines, and
    {heading: (key columns, {row key: ms})} from its tables."""
    timings, tables = {}, {}
    heading, header = None, None
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            for field, value in record.items():
                if field.endswith("_ms") and isinstance(value, (int, float)):
                    timings[field] = float(value)
        elif line.startswith("## "):
            heading, header = line[3:].strip(), None
        elif heading and line.startswith("|"):
            row = cells(line)
            if header is None:
                header = row
                if "ms" not in header:
                    heading = None
                    continue
                keys = [c for c in header if c not in VALUE_COLUMNS]
                tables.setdefault(heading, (keys, {}))
            elif not all(set(c) <= set("-:") for c in row):
                named = dict(zip(header, row))
                try:
                    ms = float(named.get("ms", ""))
                except ValueError:
                    continue  # a row without a time (or a short row): nothing to compare
                key = tuple(named.get(c, "") for c in tables[heading][0])
                tables[heading][1][key] = ms
        elif not line.strip():
            continue
        else:
            heading = None
    return timings, tables


def collect(runs):
    """Every run's values, by measurement and by (heading, row)."""
    timings, tables = {}, {}
    for text in runs:
        run_timings, run_tables = parse_run(text)
        for field, ms in run_timings.items():
            timings.setdefault(field, []).append(ms)
        for heading, (keys, rows) in run_tables.items():
            table = tables.setdefault(heading, (keys, {}))
            for key, ms in rows.items():
                table[1].setdefault(key, []).append(ms)
    return timings, tables


def summary(values):
    """'median (min–max)', or '–' without values."""
    if not values:
        return "–"
    med = statistics.median(values)
    return f"{med:.2f} ({min(values):.2f}–{max(values):.2f})"


def change(a, b):
    """B's median against A's, in percent."""
    if not a or not b or statistics.median(a) == 0:
        return "–"
    return f"{100 * (statistics.median(b) / statistics.median(a) - 1):+.1f} %"


def report(a_runs, b_runs, labels):
    """The Markdown report of both sides."""
    (a_timings, a_tables), (b_timings, b_tables) = collect(a_runs), collect(b_runs)
    a_name, b_name = labels
    lines = [
        f"A = {a_name}, B = {b_name}; {len(a_runs)} and {len(b_runs)} runs, alternating.",
        "Medians over the runs, ms (range in brackets); change: B's median against A's.",
        "",
        "| measurement | A | B | change |",
        "|---|---:|---:|---:|",
    ]
    for field in sorted(set(a_timings) | set(b_timings)):
        a, b = a_timings.get(field, []), b_timings.get(field, [])
        lines.append(f"| {field} | {summary(a)} | {summary(b)} | {change(a, b)} |")
    for heading in list(a_tables) + [h for h in b_tables if h not in a_tables]:
        keys = (a_tables.get(heading) or b_tables[heading])[0]
        a_rows = a_tables.get(heading, (keys, {}))[1]
        b_rows = b_tables.get(heading, (keys, {}))[1]
        # The largest first, the tables' own total row last.
        order = sorted(
            set(a_rows) | set(b_rows),
            key=lambda k: (k[0] == "total", -statistics.median(a_rows.get(k) or b_rows[k])),
        )
        lines += ["", f"## {heading}", ""]
        lines.append("| " + " | ".join(keys) + " | A ms | B ms | change |")
        lines.append("|" + "---|" * len(keys) + "---:|---:|---:|")
        for key in order:
            a, b = a_rows.get(key, []), b_rows.get(key, [])
            lines.append(
                "| " + " | ".join(key) + f" | {summary(a)} | {summary(b)} | {change(a, b)} |"
            )
    return "\n".join(lines)


def main(argv):
    labels = ("A", "B")
    if argv[:1] == ["--labels"]:
        labels, argv = (argv[1], argv[2]), argv[3:]
    if "--" not in argv:
        sys.exit("usage: profile_ab.py [--labels A B] A_RUN... -- B_RUN...")
    split = argv.index("--")
    a_files, b_files = argv[:split], argv[split + 1 :]
    if not a_files or not b_files:
        sys.exit("profile_ab.py: each side needs at least one run file")
    read = lambda path: open(path, encoding="utf-8").read()
    print(report([read(f) for f in a_files], [read(f) for f in b_files], labels))


if __name__ == "__main__":
    main(sys.argv[1:])
