"""Tasks: training prompts, an evaluation set and a verifier, shared by every stage."""

from pear_exp.config import TaskConfig
from pear_exp.tasks.base import Problem
from pear_exp.tasks.countdown import Countdown

TASKS = ("countdown",)


def make_task(cfg: TaskConfig) -> Countdown:
    if cfg.name == "countdown":
        return Countdown(
            num_numbers=cfg.num_numbers, min_value=cfg.min_value, max_value=cfg.max_value,
            max_target=cfg.max_target,
        )
    raise ValueError(f"task.name={cfg.name!r} is unknown; valid: {', '.join(TASKS)}")


def split(cfg: TaskConfig) -> tuple[list[Problem], list[Problem]]:
    """The task's (training, evaluation) problems; disjoint by id, fixed by task.data_seed."""
    return make_task(cfg).split(cfg.num_train, cfg.num_eval, cfg.data_seed)
