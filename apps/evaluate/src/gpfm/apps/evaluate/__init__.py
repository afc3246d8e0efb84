"""gpfm-evaluate: encoders x benchmark tasks, from slides and images to a leaderboard.

    from gpfm.apps.evaluate import evaluate
    records, boards = evaluate(["gpfm", "uni"], "all", "data/", "out/",
                               weights={"gpfm": "gpfm.pth", "uni": "uni.bin"})

Extracts the features that are missing (gpfm-extract for slides, the encoder's transform for
images; cached under ``out/features`` and shared between tasks), runs every (encoder, task)
through ``gpfm.bench.run_task`` into ``out/results``, records each job in ``out/jobs`` and
writes the report to ``out/report``. Reruns resume; ``accelerate launch -m gpfm.apps.evaluate``
splits the jobs across processes.
"""

from gpfm.apps.evaluate.data import EvaluateError, TaskData, TaskDataMissingError, find_task_data
from gpfm.apps.evaluate.run import Job, build_report, evaluate, plan, read_records, select_tasks

__all__ = [
    "EvaluateError",
    "Job",
    "TaskData",
    "TaskDataMissingError",
    "build_report",
    "evaluate",
    "find_task_data",
    "plan",
    "read_records",
    "select_tasks",
]
