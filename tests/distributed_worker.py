"""One training job for tests/test_distributed.py, run as a plain process or under torchrun:
PEAR-weighted SFT of a tiny model, then GRPO from the result. Rank 0 writes the trained weights
and the logged metrics to the file named on the command line.

    python -m tests.distributed_worker OUT.pt ddp|fsdp [hf|vllm]"""

import sys
from pathlib import Path

import torch

from pear_exp.train import distributed
from pear_exp.config import (
    DistributedConfig, LossAggregation, ParallelStrategy, RLConfig, SFTConfig, WeightingConfig,
    WeightLevel,
)
from pear_exp.tiny import build_char_tokenizer
from pear_exp.rollout.hf import HFEngine
from pear_exp.train.grpo import train_grpo
from pear_exp.train.sft import train_sft
from pear_exp.tasks.countdown import Countdown
from tests.conftest import make_tiny_model
from tests.test_grpo import ShortAnswerTask
from tests.test_sft import rows_for


def main(out: str, strategy: str, engine_name: str = "hf") -> None:
    world = distributed.init(DistributedConfig(strategy=ParallelStrategy(strategy)))
    tokenizer = build_char_tokenizer()
    # SFT: 16 rows a step, padding-free micro-batches of at most 109 tokens (rows of 32-40
    # tokens): in steps 1 and 3 one rank's 8 rows need 3 and the other's 4, so the first is split
    # into 4 as well (FSDP gathers weights in every forward); block weights at a target
    # temperature != 1 and chunked log-probs (both detached paths).
    model = make_tiny_model(tokenizer, seed=3, layers=2).train()
    sft_cfg = SFTConfig(steps=3, batch_size=16, micro_batch_tokens=109, lr=1e-2, warmup_steps=1,
                        logprob_chunk_size=7, log_every=1)
    weighting = WeightingConfig(level=WeightLevel.block, target_temperature=0.7)
    sft_logs = []
    train_sft(model, rows_for(tokenizer, n=32), sft_cfg, weighting, pad_id=tokenizer.pad_token_id,
              seed=0, world=world, log=lambda m, s: sft_logs.append(
                  {k: v for k, v in m.items() if not torch.is_tensor(v)}))
    sft_state = world.broadcast(world.full_state(model)[0])  # gathered on rank 0

    # GRPO from the SFT weights: rank 0 samples with the hf engine (from an unsharded copy under
    # FSDP); 2 epochs per batch (old log-probs), KL to the SFT policy, gradient checkpointing,
    # 5 micro-batches of at most 3 rows over 2 ranks (one rank runs an extra, empty one).
    def fresh():
        m = make_tiny_model(tokenizer, seed=3, layers=2)
        m.load_state_dict(sft_state)
        return m

    policy = fresh()
    engine_model = engine = None
    if world.is_main:
        engine_model = fresh() if world.distributed and strategy == "fsdp" else policy
        engine = HFEngine(engine_model, tokenizer, 64)
        if engine_name == "vllm":
            from pear_exp.models import save_dir
            from pear_exp.rollout.vllm import VLLMEngine

            save_dir(Path(out).with_suffix(".sft"), fresh(), tokenizer)
            engine = VLLMEngine(str(Path(out).with_suffix(".sft")), tokenizer)
    rl_cfg = RLConfig(steps=3, prompts_per_step=4, group_size=4, max_new_tokens=6, lr=5e-3,
                      warmup_steps=1, epochs=2, kl_coef=0.1, micro_batch_size=3,
                      gradient_checkpointing=True,
                      loss_aggregation=LossAggregation.seq_mean_token_mean,
                      skip_uniform_groups=False, eval_every=0)
    rl_logs = []
    train_grpo(policy, tokenizer, engine, Countdown().sample_problems(16, 0), ShortAnswerTask(),
               rl_cfg, seed=0, system_prompt=None, sync_tolerance=1e-3, world=world,
               engine_model=engine_model, log=lambda m, s: rl_logs.append(m))
    rl_state, _ = world.full_state(policy)
    if world.is_main:
        torch.save({"sft": sft_state, "rl": rl_state, "sft_logs": sft_logs, "rl_logs": rl_logs,
                    "world_size": world.size}, out)
    distributed.shutdown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
