"""Fixed overhead of `curate run`: what a 10-document recipe costs end to end, and where the time goes.

    .venv/bin/python bench/overhead.py                                   # this tree only
    mkdir /tmp/before && git archive HEAD flows curation training | tar -x -C /tmp/before
    .venv/bin/python bench/overhead.py --before /tmp/before --json bench/out/overhead.json --check

The recipe: 10 short English documents in one JSONL file, steps normalize, exact_dedup and gopher_quality. For
each `--workers` setting (default 1 and 2): one untimed run first (a fresh PREFECT_HOME creates Prefect's
database: "cold"), then `--repeat` timed runs (default 3), each a new version in the same store, each the
`curate` command's entry point in a subprocess (what its script runs, from a scratch folder) with no
PREFECT_API_URL (the temporary server, as a user gets it) and Prefect's logs at INFO in the run's log file,
from which come: seconds from launch to the flow's start ("Beginning flow run") and to the first finished task
(Prefect stamps its records to the millisecond), and from the flow's end to
the command's exit. Medians are printed. Also: `python -X importtime -c "import flows.cli"` (what every command
pays before doing anything) and the modules a `curate run --workers 1` imports in its own process, each as
cumulative seconds of the top-level imports, largest first.

`--before DIR`: a copy of the code to compare with (its flows/, curation/ and training/ folders, put first on
PYTHONPATH, ahead of the editable install), timed in turn with this tree, run for run, so that both see the same
load. Target (`--check` exits 1 when missed): a median wall time of <= 5 s for every workers setting of this
tree. The machine's load average is printed before and after: the figures are wall-clock times and a busy
machine inflates them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

# What the `curate` script runs (its entry point: `main`, or `app` in a copy from before `main` existed), so that
# both trees are started the same way.
CURATE = ("import sys, flows.cli as cli; sys.argv[0] = 'curate'; "
          "sys.exit((getattr(cli, 'main', None) or cli.app)())")
TARGET_WALL_S = 5.0  # the fixed overhead a 10-document run may cost (our target)
RECIPE = {"inputs": [{"path": "in.jsonl"}],
          "steps": [{"step": "normalize"}, {"step": "exact_dedup"}, {"step": "gopher_quality"}]}
WORDS = ("the river ran past the old mill where people met each morning to trade grain and news about weather "
         "roads prices and the health of their families while children played near the water").split()
STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)\.(\d{3}) \| \w+\s* \| (.*)$")


def _documents(path: Path, count: int = 10) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            text = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(80)) + "."
            handle.write(json.dumps({"id": f"d{i}", "text": text}) + "\n")


def _seconds_of_day(moment: datetime) -> float:
    return moment.hour * 3600 + moment.minute * 60 + moment.second + moment.microsecond / 1e6


def _log_marks(log: Path, launched: datetime) -> dict[str, float | None]:
    """Seconds from launch to the flow's start and to its first finished task, and from the flow's end on."""
    marks: dict[str, float | None] = {"to_flow_start_s": None, "to_first_task_s": None, "flow_end_s": None}
    start = _seconds_of_day(launched)
    for line in log.read_text(encoding="utf-8").splitlines() if log.is_file() else []:
        match = STAMP.match(line)
        if not match:
            continue
        hours, minutes, seconds, millis, message = match.groups()
        offset = int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000 - start
        offset += 86400 if offset < -60 else 0  # the run crossed midnight
        if "Beginning flow run" in message and marks["to_flow_start_s"] is None:
            marks["to_flow_start_s"] = round(offset, 2)
        elif message.startswith("Task run") and "Finished in state" in message and marks["to_first_task_s"] is None:
            marks["to_first_task_s"] = round(offset, 2)
        elif message.startswith("Flow run") and "Finished in state" in message:
            marks["flow_end_s"] = round(offset, 2)
    return marks


def _run(folder: Path, env: dict[str, str], label: str, name: str, workers: int) -> dict[str, Any]:
    """One timed `curate run` of the code `label` (its env), publishing version `name` of its store."""
    logs = folder / "logs" / name
    launched = datetime.now()
    clock = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CURATE, "run", str(folder / "recipe.yaml"), "--store",
                             str(folder / f"store-{label}"),
                             "--name", name, "--workers", str(workers)], env={**env, "CURATE_LOG_DIR": str(logs)},
                            capture_output=True, text=True, timeout=900, cwd=folder)
    wall = time.perf_counter() - clock
    if result.returncode != 0:
        raise SystemExit(f"curate run {name} failed (exit {result.returncode}): {result.stdout}{result.stderr}")
    marks = _log_marks(next(iter(sorted(logs.glob("curate-*.log"))), logs / "none"), launched)
    marks["exit_after_flow_s"] = round(wall - marks.pop("flow_end_s"), 2) if marks["flow_end_s"] else None
    return {"wall_s": round(wall, 2), **marks}


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return round(statistics.median(values), 2) if values else None


def _importtime(args: list[str], env: dict[str, str], top: int, folder: Path) -> list[tuple[str, float]]:
    """Top-level imports (cumulative seconds, largest first) of a command run with `-X importtime` in `folder` (not
    the repository: `python -c` puts the working directory ahead of PYTHONPATH, and --before's tree with it)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], env=env, capture_output=True, text=True,
                            timeout=900, cwd=folder)
    costs: dict[str, float] = {}
    for line in result.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2]
        if len(name) - len(name.lstrip(" ")) == 1:  # one space: imported by the program itself, not a module
            costs[name.strip()] = costs.get(name.strip(), 0.0) + int(parts[1]) / 1e6
    return sorted(((n, round(s, 3)) for n, s in costs.items()), key=lambda kv: -kv[1])[:top]


def measure(workers: list[int], repeat: int, top: int, before: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="curate-overhead-") as tmp:
        folder = Path(tmp)
        _documents(folder / "in.jsonl")
        import yaml

        (folder / "recipe.yaml").write_text(yaml.safe_dump(RECIPE), encoding="utf-8")
        base = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "CURATE_LOG_FILE", "PYTHONPATH")}
        trees = {"now": {}, **({"before": {"PYTHONPATH": str(before.resolve())}} if before else {})}
        envs = {label: {**base, **extra, "PREFECT_HOME": str(folder / f"prefect-{label}"),
                        "PREFECT_LOGGING_LEVEL": "INFO"} for label, extra in trees.items()}
        results: dict[str, Any] = {"load_before": os.getloadavg(), "trees": {label: {"workers": {}} for label in trees}}
        for count in workers:
            runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
            cold = {label: _run(folder, env, label, f"{label}-cold-w{count}", count) for label, env in envs.items()}
            for i in range(repeat):  # the trees in turn, so that both see the same load
                for label, env in envs.items():
                    runs[label].append(_run(folder, env, label, f"{label}-w{count}-{i}", count))
            for label in trees:
                results["trees"][label]["workers"][str(count)] = {
                    "cold": cold[label], "runs": runs[label],
                    **{f"median_{key}": _median(runs[label], key)
                       for key in ("wall_s", "to_flow_start_s", "to_first_task_s", "exit_after_flow_s")}}
        for label, env in envs.items():
            results["trees"][label]["import_flows_cli"] = _importtime(["-c", "import flows.cli"], env, top, folder)
            command = ["-c", CURATE, "run", str(folder / "recipe.yaml"), "--store", str(folder / f"store-{label}"),
                       "--name", "imports", "--workers", "1"]
            results["trees"][label]["imports_of_a_run"] = _importtime(
                command, {**env, "CURATE_LOG_DIR": str(folder / "logs" / f"{label}-imports")}, top, folder)
        results["load_after"] = os.getloadavg()
    return results


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report(results: dict[str, Any]) -> None:
    print(f"load average before {results['load_before'][0]:.2f}, after {results['load_after'][0]:.2f}")
    trees = results["trees"]
    columns = ("wall_s", "to_flow_start_s", "to_first_task_s", "exit_after_flow_s")
    print("medians, seconds")
    print(f"{'run':<22}" + "".join(f"{c:>20}" for c in columns))
    for count in trees["now"]["workers"]:
        for label in sorted(trees, reverse=True):  # before, then now
            entry = trees[label]["workers"][count]
            name = f"--workers {count} {label if len(trees) > 1 else ''}".strip()
            print(f"{name:<22}" + "".join(f"{_figure(entry[f'median_{c}']):>20}" for c in columns)
                  + f"   (cold: {entry['cold']['wall_s']:.2f}; runs: "
                  + ", ".join(f"{r['wall_s']:.2f}" for r in entry["runs"]) + ")")
    for key, title in (("import_flows_cli", "python -X importtime -c 'import flows.cli'"),
                       ("imports_of_a_run", "imports of `curate run --workers 1` (its own process)")):
        for label in sorted(trees, reverse=True):
            print(f"\n{title}{f' ({label})' if len(trees) > 1 else ''}: top-level imports, cumulative seconds")
            for name, seconds in trees[label][key]:
                print(f"  {seconds:8.3f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--top", type=int, default=10, help="imports listed per summary")
    parser.add_argument("--before", type=Path, help="a copy of the code to compare with (see the module docstring)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--check", action="store_true", help=f"exit 1 unless every median wall <= {TARGET_WALL_S} s")
    args = parser.parse_args()
    if args.before and not (args.before / "flows" / "cli.py").is_file():
        raise SystemExit(f"--before {args.before}: no flows/cli.py there (the module docstring says how to make one)")
    results = measure(args.workers, args.repeat, args.top, args.before)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    report(results)
    missed = [c for c, f in results["trees"]["now"]["workers"].items() if f["median_wall_s"] > TARGET_WALL_S]
    if args.check and missed:
        print(f"target missed: median wall > {TARGET_WALL_S} s with --workers {', '.join(missed)}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
