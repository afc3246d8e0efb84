"""gpfm-evaluate: benchmark encoders on the GPFM tasks, from slides and images to a leaderboard.

    gpfm-evaluate --encoders gpfm,uni --weights gpfm=gpfm.pth --weights uni=uni.bin \\
        --tasks all --data-root DATA --out OUT
    gpfm-evaluate list-tasks --data-root DATA
    gpfm-evaluate report OUT

Under ``accelerate launch -m gpfm.apps.evaluate ...`` the jobs are split across processes.
Exit code 1 when a job failed (the others still ran); skipped jobs (no data) and tasks not
available here are reported but are no failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpfm.apps.evaluate.data import TaskDataMissingError, find_task_data
from gpfm.apps.evaluate.run import (
    build_report,
    evaluate,
    process_share,
    scores_text,
    select_tasks,
    summary_lines,
)
from gpfm.bench import BenchError
from gpfm.bench.protocols import unavailable


def _weights(items: Sequence[str]) -> dict[str, str]:
    weights = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--weights {item!r}: use NAME=PATH")
        weights[name] = path
    return weights


def _overrides(items: Sequence[str], llm: str | None) -> dict[str, dict[str, Any]]:
    """``TYPE.section.field=JSON`` items (and ``--llm``) as run_task overrides per task type."""
    overrides: dict[str, dict[str, Any]] = {}
    if llm:
        for task_type in ("vqa", "report_generation"):
            overrides.setdefault(task_type, {}).setdefault("head", {}).setdefault("options", {})
            overrides[task_type]["head"]["options"]["llm"] = llm
    for item in items:
        key, sep, text = item.partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 3:
            raise SystemExit(
                f"--set {item!r}: use TYPE.SECTION.FIELD=VALUE, e.g. vqa.head.options={{...}}"
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        task_type, section, field = parts
        overrides.setdefault(task_type, {}).setdefault(section, {})[field] = value
    return overrides


def _list_tasks(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="gpfm-evaluate list-tasks")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--task-folder", action="append", default=[], help="user spec folder")
    args = parser.parse_args(argv)
    specs = select_tasks("all", args.task_folder)
    print(f"{'task':<32} {'type':<20} {'panel':<16} data")
    found = 0
    for spec in specs:
        try:
            data = find_task_data(args.data_root, spec)
            status = f"found ({data.kind}, {len(data.ids)} rows)"
            found += 1
        except TaskDataMissingError as error:
            status = f"missing: {str(error).splitlines()[0][:100]}"
        reason = unavailable(spec)
        if reason:
            status += f"; {reason[:80]}"
        print(f"{spec.name:<32} {spec.type:<20} {spec.panel:<16} {status}")
    print(f"{len(specs)} tasks, data found for {found}")
    return 0


def _report(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="gpfm-evaluate report")
    parser.add_argument("out", type=Path, help="the --out folder of a run")
    parser.add_argument("--protocol", choices=["gpfm", "ours"], default=None)
    args = parser.parse_args(argv)
    boards = build_report(args.out, args.protocol)
    if not boards:
        print(f"{args.out / 'results'}: no results", file=sys.stderr)
        return 1
    for protocol, board in boards.items():
        print(scores_text(board))
        print(board)
        folder = args.out / "report" if len(boards) == 1 else args.out / "report" / protocol
        print(f"report: {folder / 'report.html'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["list-tasks"]:
        return _list_tasks(argv[1:])
    if argv[:1] == ["report"]:
        return _report(argv[1:])
    parser = argparse.ArgumentParser(
        prog="gpfm-evaluate", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--encoders", required=True, help="zoo names or exported folders, a,b,c")
    parser.add_argument("--weights", action="append", default=[], help="NAME=PATH (repeat)")
    parser.add_argument("--tasks", default="all", help="all, a task type, or names a,b,c")
    parser.add_argument("--data-root", type=Path, required=True, help="<root>/<task>/labels.csv")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--task-folder", action="append", default=[], help="user spec folder")
    parser.add_argument("--protocol", choices=["gpfm", "ours"], default=None)
    parser.add_argument("--llm", default=None, help="LLM of VQA/report tasks (default smollm2)")
    parser.add_argument("--set", action="append", default=[], help="TYPE.SECTION.FIELD=JSON")
    parser.add_argument("--random-init", action="store_true", help="zoo encoders w/o weights")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    try:
        records, boards = evaluate(
            encoders,
            args.tasks,
            args.data_root,
            args.out,
            weights=_weights(args.weights),
            task_folders=args.task_folder,
            protocol=args.protocol,
            overrides=_overrides(args.set, args.llm),
            random_init=args.random_init,
            progress=not args.no_progress,
            report=not args.no_report,
        )
    except BenchError as error:
        print(f"gpfm-evaluate: {error}", file=sys.stderr)
        return 2
    if process_share()[0] != 0:
        return 0
    for line in summary_lines(records):
        print(line)
    for protocol, board in boards.items():
        print(scores_text(board))
        print(board)
        if not args.no_report:
            folder = args.out / "report" if len(boards) == 1 else args.out / "report" / protocol
            print(f"report: {folder / 'report.html'}")
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
