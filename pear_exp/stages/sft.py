"""SFT stage: load the student, check the behavior data, train (pear_exp/train/sft.py states the
algorithm), save the checkpoint to <run_dir>/sft/model (gathered by every rank under FSDP), and
the model after each step of sft.keep_steps to <run_dir>/sft/step-<k>/model."""

from __future__ import annotations

from pathlib import Path

from datasets import load_from_disk

from pear_exp import models, tiny
from pear_exp.config import BaseLoss, Config
from pear_exp.data import TOPK_COLUMNS, topk_arrays, validate_rows
from pear_exp.tracking import Tracker
from pear_exp.train.checkpoint import save_model
from pear_exp.train.distributed import World
from pear_exp.train.sft import train_sft


def kept_model(sft_dir: Path, step: int) -> Path:
    """Where the model after SFT step `step` of sft.keep_steps is saved."""
    return sft_dir / f"step-{step}" / "model"


def run(cfg: Config, out: Path, behavior_dir: Path, tracker: Tracker, world: World) -> None:
    path = tiny.resolve_path(cfg.model, cfg.task, cfg.cache_dir)
    model = models.load_model(path, cfg.model.dtype, cfg.model.trust_remote_code)
    tokenizer = models.load_tokenizer(path, cfg.model)
    data = load_from_disk(str(behavior_dir / "data"))
    distill = cfg.sft.base_loss == BaseLoss.kl
    validate_rows(data, tokenizer, lambda p: models.prompt_ids(tokenizer, p, cfg.task.system_prompt),
                  cfg.sft.max_seq_len, name=str(behavior_dir / "data"), need_topk=distill)
    rows = data.select_columns(["input_ids", "loss_mask", "behavior_logprobs"]).to_list()
    if distill:  # as views into the memory-mapped columns, not lists of lists
        for row, (ids, logprobs) in zip(rows, topk_arrays(data)):
            row[TOPK_COLUMNS[0]], row[TOPK_COLUMNS[1]] = ids, logprobs
    def snapshot(step: int) -> None:
        save_model(world, kept_model(out, step), model, tokenizer)

    train_sft(model, rows, cfg.sft, cfg.weighting, pad_id=tokenizer.pad_token_id, seed=cfg.seed,
              log=lambda m, step: tracker.log("sft", m, step),
              checkpoint_dir=out / "checkpoints", world=world, snapshot=snapshot)
    save_model(world, out / "model", model, tokenizer)
