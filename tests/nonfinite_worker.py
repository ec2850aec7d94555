"""A nan or inf on one rank stops every rank at the same step (tests/test_guards.py runs this
under torchrun with 2 processes, gloo). Each rank writes the message it stopped with, one line
per case, to OUT.rank<r>.

    python -m tests.nonfinite_worker OUT"""

import sys

import pear_exp.train.grpo as rl_stage
import pear_exp.train.sft as sft_stage
from pear_exp.train import distributed
from pear_exp.config import (
    DistributedConfig, ParallelStrategy, RLConfig, SFTConfig, WeightingConfig,
)
from pear_exp.errors import NonFiniteError
from pear_exp.tiny import build_char_tokenizer
from pear_exp.rollout.hf import HFEngine
from tests.conftest import make_tiny_model
from tests.test_guards import ParityTask, WeightSetter, at_call, nan_behavior_logprob, nan_loss
from tests.test_sft import rows_for


def stopped(run) -> str:
    try:
        run()
    except NonFiniteError as err:
        return str(err)
    return "did not stop"


def main(out: str) -> None:
    world = distributed.init(DistributedConfig(strategy=ParallelStrategy.fsdp, timeout_minutes=2))
    tokenizer = build_char_tokenizer()
    rows = rows_for(tokenizer, n=16)
    cfg = SFTConfig(steps=4, batch_size=8, micro_batch_size=4, lr=1e-2, warmup_steps=1)

    def sft():
        sft_stage.train_sft(make_tiny_model(tokenizer, seed=3), rows, cfg, WeightingConfig(),
                            pad_id=0, seed=0, world=world)

    lines = []
    original = sft_stage.pear_weights
    if world.rank == 1:  # rank 1's share of step 2 has a nan behavior log-prob
        sft_stage.pear_weights = at_call({2}, original, nan_behavior_logprob)
    lines.append(stopped(sft))
    sft_stage.pear_weights = original

    # rank 1's shard of the embeddings becomes inf after step 3 (FSDP: each rank holds half)
    setter = WeightSetter(3, float("inf"), lambda opt: opt.param_groups[0]["params"][0].to_local())
    if world.rank == 1:
        with setter:
            lines.append(stopped(sft))
    else:
        lines.append(stopped(sft))

    # GRPO: rank 0 samples; rank 1's loss at step 2 is nan (its loss alone: summed over ranks)
    def grpo():
        model = make_tiny_model(tokenizer, seed=2)
        engine = HFEngine(model, tokenizer, 64) if world.is_main else None
        from pear_exp.tasks.countdown import Countdown

        rl_cfg = RLConfig(steps=3, prompts_per_step=4, group_size=2, max_new_tokens=6, lr=1e-2,
                          skip_uniform_groups=False, eval_every=0, micro_batch_size=64)
        rl_stage.train_grpo(model, tokenizer, engine, Countdown().sample_problems(8, seed=0),
                            ParityTask(), rl_cfg, seed=0, system_prompt=None, sync_tolerance=1e9,
                            world=world, engine_model=make_tiny_model(tokenizer, seed=2)
                            if world.is_main else None)

    if world.rank == 1:
        rl_stage.grpo_token_loss = at_call({2}, rl_stage.grpo_token_loss, nan_loss)
    lines.append(stopped(grpo))
    with open(f"{out}.rank{world.rank}", "w") as f:
        f.write("\n".join(lines) + "\n")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
