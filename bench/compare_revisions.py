"""Run cyme's benchmarks for two checkouts of cyme, alternating, side by side.

Used to check that a change makes no figure worse (issue 8: medians within
10 % over 3 alternating runs of the old and the new tree)::

    git worktree add /tmp/cyme-old <rev> && (cd /tmp/cyme-old && bin/setup)
    .venv/bin/python bench/compare_revisions.py --old /tmp/cyme-old --new . \\
        --runs 3 --out /tmp/compare -- cold_start.py --samples 5

Each run starts with the other tree than the run before it (old, new;
new, old; ...), so that a machine's drift weighs on both.  Every output is
kept under ``--out``; the table rows every benchmark prints (a name, then
numbers) are collected and their first number (the median, in the scripts'
tables) compared: median over the runs of each tree, and new / old.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROW = re.compile(r"^\s{2}(?P<name>\S.*?\S)\s{2,}(?P<numbers>(?:[-\d.]+[x%]?\s*)+)$")


def rows(text):
    """{row name: first float after the count column (the median)}."""
    found = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if not match:
            continue
        numbers = [n.rstrip("x%") for n in match.group("numbers").split()]
        values = []
        for n in numbers:
            try:
                values.append(float(n))
            except ValueError:
                break
        if not values:
            continue
        # Tables print "n" first when it is a whole number, then the median.
        value = values[1] if len(values) > 1 and values[0].is_integer() else values[0]
        found[match.group("name").strip()] = value
    return found


def run(tree, bench, args, out, label, timeout):
    python = os.path.join(tree, ".venv", "bin", "python")
    script = os.path.join(tree, "bench", bench)
    started = time.monotonic()
    result = subprocess.run(
        [python, script, *args], cwd=tree, capture_output=True, text=True,
        timeout=timeout,
    )
    text = result.stdout + result.stderr
    with open(os.path.join(out, f"{label}.txt"), "w") as f:
        f.write(text)
    print(f"  {label}: exit {result.returncode}, {time.monotonic() - started:.0f} s",
          flush=True)
    return rows(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", required=True, help="checkout of the old revision")
    parser.add_argument("--new", required=True, help="checkout of the new revision")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="compare-out")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("bench", help="the script in bench/, e.g. cold_start.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    options = parser.parse_args(argv)
    os.makedirs(options.out, exist_ok=True)
    name = options.bench.removesuffix(".py")
    figures = {"old": [], "new": []}
    for i in range(options.runs):
        order = ("old", "new") if i % 2 == 0 else ("new", "old")
        for which in order:
            tree = getattr(options, which)
            figures[which].append(run(
                tree, options.bench, options.args, options.out,
                f"{name}.{which}.{i + 1}", options.timeout,
            ))
    names = [n for n in figures["old"][0] if all(n in f for f in figures["old"] + figures["new"])]
    print(f"\n{name}: medians over {options.runs} runs of each tree")
    print(f"  {'row':55} {'old':>10} {'new':>10} {'new/old':>8}")
    for row in names:
        old = statistics.median(f[row] for f in figures["old"])
        new = statistics.median(f[row] for f in figures["new"])
        ratio = f"{new / old:.2f}" if old else "-"
        print(f"  {row[:55]:55} {old:10.3f} {new:10.3f} {ratio:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
