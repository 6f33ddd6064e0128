"""The harness's HTTP test run many times: each variant's req/s as a ratio to the baseline.

On this machine one harness run moves a tunnel's req/s by up to ±15 % against the tunnel
measured just before it, so a claim about a ratio needs many runs and their median. The
plug-ins (``plugin_tunnels.py``, ``observability_tunnels.py``) end with a second copy of the
baseline, ``ferrotunnel http again``; every run then measures the baseline, the variants, and
the baseline again, and each variant is compared with the baseline interpolated to its place
in the run, which cancels a drift that is linear over the run's minute or so.

    uv run python benchmarks/repeat_runs.py --plugin benchmarks/plugin_tunnels.py \\
        --only "ferrotunnel http,ft http +5" --runs 20 --name issue5-http-s6

writes ``benchmarks/results/NAME-runN.md`` (and ``.json``) for each run, then prints the
summary and writes it to ``NAME-summary.md``. ``--summarise`` reads existing runs only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT.parent / "shared" / "bench" / "tunnelbench.py"
RESULTS = ROOT / "benchmarks" / "results"
BASELINE = "ferrotunnel http"
AGAIN = "ferrotunnel http again"


def run_harness(plugin: str, only: str, out: Path) -> None:
    env = dict(os.environ)
    env.setdefault("FERROTUNNEL_BIN", str(ROOT / ".venv" / "bin" / "ferrotunnel"))
    command = [sys.executable, str(HARNESS), "run", "--plugin", plugin, "--only", only]
    command += ["--tests", "http", "--out", str(out)]
    subprocess.run(command, check=True, env=env, cwd=ROOT, timeout=900)


def req_per_second(report: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """req/s by tunnel, in the order the harness ran them (tunnels that failed left out)."""
    return {
        name: tests["http"]["rps"]
        for name, tests in report.items()
        if "rps" in tests.get("http", {})
    }


def ratios(rps: dict[str, float]) -> dict[str, float]:
    """Each variant's req/s over the baseline's, interpolated between the two baseline runs
    by the variant's position when the baseline ran again at the end."""
    variants = [name for name in rps if name not in (BASELINE, AGAIN)]
    before = rps[BASELINE]
    after = rps.get(AGAIN, before)
    steps = len(variants) + 1
    return {
        name: rps[name] / (before + (after - before) * (place + 1) / steps)
        for place, name in enumerate(variants)
    }


def summarise(name: str) -> str:
    runs = sorted(RESULTS.glob(f"{name}-run*.json"), key=lambda p: int(p.stem.rsplit("run", 1)[1]))
    table: dict[str, list[float]] = {}
    drift: list[float] = []
    lines = ["| run | baseline req/s | again | drop of each variant |", "|---|---:|---:|---|"]
    for path in runs:
        rps = req_per_second(json.loads(path.read_text())["results"])
        if BASELINE not in rps:
            continue
        found = ratios(rps)
        for variant, ratio in found.items():
            table.setdefault(variant, []).append(ratio)
        again = rps.get(AGAIN)
        if again is not None:
            drift.append(again / rps[BASELINE])
        cells = ", ".join(f"{v} {100 * (r - 1):+.1f} %" for v, r in found.items())
        again_text = f"{again:,.0f}" if again is not None else "-"
        lines.append(f"| {path.stem} | {rps[BASELINE]:,.0f} | {again_text} | {cells} |")
    lines += ["", "| variant | runs | median | mean | min | max |"]
    lines.append("|---|---:|---:|---:|---:|---:|")
    for variant, values in table.items():
        drops = [100 * (r - 1) for r in values]
        lines.append(
            f"| {variant} | {len(drops)} | {statistics.median(drops):+.1f} % | "
            f"{statistics.fmean(drops):+.1f} % | {min(drops):+.1f} % | {max(drops):+.1f} % |"
        )
    if drift:
        lines.append("")
        lines.append(
            f"The baseline's second run against its first: median "
            f"{100 * (statistics.median(drift) - 1):+.1f} % over {len(drift)} runs."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--plugin", required=True, help="the harness plug-in with the variants")
    parser.add_argument("--only", required=True, help="the harness's --only (baseline included)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--name", required=True, help="results/NAME-runN.md, NAME-summary.md")
    parser.add_argument("--summarise", action="store_true", help="only summarise existing runs")
    args = parser.parse_args()
    if not args.summarise:
        first = 1 + len(list(RESULTS.glob(f"{args.name}-run*.json")))
        for number in range(first, first + args.runs):
            run_harness(args.plugin, args.only, RESULTS / f"{args.name}-run{number}.md")
    summary = summarise(args.name)
    (RESULTS / f"{args.name}-summary.md").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
