"""Rollout engine on vLLM: same contract as HFEngine, much faster generation on a GPU.

Semantics match `pear_exp.rollout.hf`: prompts are token ids; temperature 0 is greedy; generation
stops only on `stop_token_ids` (the model's own EOS is ignored unless listed), the stop token is
kept in `token_ids`; each recorded log-prob is that of the distribution that actually sampled the
token, i.e. after temperature and top-p (vLLM's `logprobs_mode="processed_logprobs"`).

The engine runs in-process (the constructor sets VLLM_ENABLE_V1_MULTIPROCESSING=0): no engine-core
process is spawned (which would need `if __name__ == "__main__"` guards in every entry point,
pytest and Hydra included), and `sync_weights` hands the trainer's tensors to the worker directly
instead of serialising every weight through a socket.

Weight sync (RL): `Worker.reload_weights` loads the transformers state dict (checkpoint names)
layer by layer, re-runs each layer's `process_weights_after_loading` and copies the result into
the original storage (which CUDA graphs point at); on CUDA that is all it takes (not tested here:
no GPU). The CPU backend needs one more step. There `process_weights_after_loading` packs each
weight for a CPU GEMM kernel and keeps the packed copy in a closure (`layer.cpu_linear`), and the
LM head's copy is only rebuilt when the LM head itself receives a tensor. A tied LM head
(`tie_word_embeddings`) receives none when the weights come from `named_parameters()` or a
save_pretrained checkpoint (neither lists the tied `lm_head.weight`): the input embedding is new,
the LM head still computes logits with the OLD one, and log-probs match neither weights. So after
the reload we re-run `dispatch_cpu_unquantized_gemm` on every unquantized VocabParallelEmbedding
(input embedding and LM head) from its updated weight. And after every sync the prefix cache is
reset: its KV blocks were computed with the old weights. `weight_fingerprint` then reports what
the workers compute with (the CPU backend's packed weights read back through their kernels), for
rl.py to compare with the trainer's (pear_exp.rollout): a skipped or partial sync is named.

Lifetime: `close()` shuts the engine core down and frees its weights and KV cache; the pipeline
closes each engine when its stage or checkpoint is done. An engine that is only dropped can keep
its memory (vLLM gc.freeze()s the objects it creates: measured, the first engine's KV cache stays)
and leaves torch.distributed initialised, so the next engine would start out of process.

Inside a multi-process training job (torchrun; pear_exp/train/distributed.py) rank 0's engine core
runs in a process of its own, started without the torchrun variables, since an in-process
engine would join the trainers' process group and wait for ranks that never come; weights then
reach it through a safetensors file in /dev/shm (a full copy per sync: fine for small models, a
cost for large ones, where CUDA IPC would be the next step).

Other CPU specifics: dtype defaults to float32 (log-probs agree with a float32 trainer to about
1e-6, against about 3e-3 in bfloat16); the KV cache gets a fixed size (`kv_cache_memory_bytes`,
1 GiB) rather than a share of the machine's memory; chunked prefill is off, because a prefill
split over steps rewinds seeded generators, which CPU generators cannot do. Sleep mode (free the
GPU memory while the trainer runs) exists on CUDA only.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoConfig

from pear_exp.models import tied_duplicates
from pear_exp.rollout.base import Completion
from pear_exp.rollout.sync import stored_dtypes, weight_fingerprint

logger = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "TORCHELASTIC_RUN_ID")


def _stream_seed(seed: int, index: int) -> int:
    """A 32-bit request seed for prompt `index` of a call with `seed`. Hashed, not packed into
    high bits: the CPU sampler's generator (mt19937) keeps only a seed's low 32 bits."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


def _clamp_max_model_len(model_path: str, max_model_len: int | None) -> int | None:
    """vLLM refuses a max_model_len above the checkpoint's max_position_embeddings (the tiny
    models have 256, the config's default is 4096): serve the checkpoint's limit instead."""
    limit = getattr(AutoConfig.from_pretrained(model_path), "max_position_embeddings", None)
    if max_model_len and limit and max_model_len > limit:
        logger.warning("max_model_len %d > %s's max_position_embeddings %d: using %d",
                       max_model_len, model_path, limit, limit)
        return int(limit)
    return max_model_len


def _reload_weights_on_worker(worker, weights: list[tuple[str, torch.Tensor]]) -> None:
    """Runs on each vLLM worker (via collective_rpc): load checkpoint-named tensors in place."""
    worker.reload_weights(weights_iterator=iter(weights), is_checkpoint_format=True)
    from vllm.platforms import current_platform

    if current_platform.is_cpu():  # rebuild the packed embedding / LM-head GEMM (module docstring)
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm
        from vllm.model_executor.layers.vocab_parallel_embedding import (
            UnquantizedEmbeddingMethod,
            VocabParallelEmbedding,
        )

        for module in worker.model_runner.get_model().modules():
            if isinstance(module, VocabParallelEmbedding) and isinstance(
                module.quant_method, UnquantizedEmbeddingMethod
            ):
                dispatch_cpu_unquantized_gemm(module, remove_weight=False)


def _reload_weights_from_file(worker, path: str) -> None:
    _reload_weights_on_worker(worker, list(load_file(path).items()))


@torch.no_grad()
def _fingerprint_on_worker(worker) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Runs on each vLLM worker: the fingerprint (pear_exp.rollout.sync) of the weights it computes
    with, and the dtype each kind of tensor is held in (the CPU backend keeps the biases it packs
    in float32, beside bfloat16 weights). Every module holding a tensor counts it, as
    trainer_fingerprint does for a tied head."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (
        ParallelLMHead,
        VocabParallelEmbedding,
    )

    def computed(module, name: str, param: torch.Tensor) -> torch.Tensor:
        # The CPU backend packs each linear weight (and the LM head) for its GEMM kernel and
        # empties the parameter: read the weight back through that kernel, I @ W^T = W^T,
        # exactly (products with 1 and 0). The input embedding looks its rows up in `param`.
        lookup = isinstance(module, VocabParallelEmbedding) and not isinstance(
            module, ParallelLMHead)
        if name != "weight" or not hasattr(module, "cpu_linear") or lookup:
            return param
        k = getattr(module, "input_size_per_partition", None) or param.shape[-1]
        return module.cpu_linear(torch.eye(k, dtype=param.dtype), param, None)

    model = worker.model_runner.get_model()
    held = [(f"{prefix}.{name}", computed(module, name, param))
            for prefix, module in model.named_modules()
            for name, param in module.named_parameters(recurse=False)]
    return weight_fingerprint(held), stored_dtypes(held)


class VLLMEngine:
    """vLLM `LLM` over a checkpoint directory (or hub id); `sync_weights` pushes a trainer's
    transformers model into it after each optimizer step."""

    def __init__(
        self,
        model_path: str,
        tokenizer=None,
        *,
        batch_size: int | None = None,  # unused: vLLM schedules its own batches
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        dtype: str | None = None,  # None / "auto": float32 on CPU, bfloat16 on GPU
        max_model_len: int | None = None,  # None: the model's max_position_embeddings
        enable_sleep_mode: bool = False,  # CUDA only: sleep between generate calls
        kv_cache_memory_bytes: int | None = None,  # None: 1 GiB on CPU, utilization on GPU
        seed: int = 0,
        enforce_eager: bool | None = None,  # None: on CPU only (CUDA graphs on the GPU)
        max_logprobs: int = 0,  # the largest generate(top_k=...) this engine will serve
        # score() only: prompts run through the engine at most this many tokens a step (chunked
        # prefill), which bounds its (tokens, vocab) prompt log-prob block; a generating engine
        # keeps None (on CPU a seeded request cannot be split over steps: see below)
        prefill_chunk: int | None = None,
    ):
        # In-process engine (module docstring), except inside a multi-process training job:
        # vLLM would join the trainers' process group, so its engine core runs in a process of
        # its own there, started without the torchrun variables (RANK, WORLD_SIZE, ...).
        in_training_group = torch.distributed.is_initialized()
        self.out_of_process = in_training_group
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if in_training_group else "0"
        if in_training_group:  # sync_weights sends our own function to our own child process
            os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines drown our output
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        max_model_len = _clamp_max_model_len(model_path, max_model_len)
        self.tokenizer = tokenizer
        self.sleep_mode = enable_sleep_mode and not on_cpu
        self._asleep: set[str] = set()  # memory tags put to sleep: "weights", "kv_cache"
        self._warned_no_fingerprint = False
        extra = {}
        if kv_cache_memory_bytes or on_cpu:  # on CPU a fixed size, not a share of the machine
            extra["kv_cache_memory_bytes"] = kv_cache_memory_bytes or (1 << 30)
        if prefill_chunk:  # scoring: greedy, unseeded requests split over steps are fine
            extra.update(enable_chunked_prefill=True, max_num_batched_tokens=prefill_chunk)
        elif on_cpu:
            # A prefill split over steps rewinds a seeded request's generator, which CPU
            # generators cannot do (RuntimeError "CPU Generator does not use offset")...
            extra["enable_chunked_prefill"] = False
            if max_model_len:  # ...so one step must hold a whole prompt.
                extra["max_num_batched_tokens"] = max(4096, max_model_len)
        # The CPU worker replaces torch.set_num_threads with a no-op for the whole process, which
        # in-process would silently pin the trainer's thread count too: put the original back.
        set_num_threads = torch.set_num_threads
        hidden = {k: os.environ.pop(k) for k in TORCHRUN_VARIABLES if in_training_group
                  and k in os.environ}
        try:
            self.llm = LLM(
                model=model_path,
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,
                dtype=dtype if dtype not in (None, "auto") else "float32" if on_cpu else "bfloat16",
                max_model_len=max_model_len,
                enable_sleep_mode=self.sleep_mode,
                seed=seed,
                enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
                logprobs_mode="processed_logprobs",  # after temperature / top-p, as sampled
                generation_config="vllm",  # ignore the checkpoint's sampling defaults (top_k...)
                max_logprobs=max(max_logprobs, 20),  # 20: vLLM's default
                **extra,
            )
        finally:
            torch.set_num_threads = set_num_threads
            os.environ.update(hidden)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the engine holds its weights in (rl.py casts the trainer's to it)."""
        return self.llm.llm_engine.model_config.dtype

    def weight_fingerprint(self) -> tuple[dict[str, list[float]], dict[str, str]] | None:
        """The fingerprint (pear_exp.rollout) of the weights the engine computes with and the
        dtypes it holds them in (for trainer_fingerprint), or None
        under tensor parallelism, where each worker holds shards and replicas that a sum over
        the workers would miscount; there the log-prob probe alone checks the sync."""
        if self.llm.llm_engine.vllm_config.parallel_config.world_size > 1:
            if not self._warned_no_fingerprint:
                logger.warning("tensor_parallel_size > 1: the weight sync is checked by the "
                               "log-prob probe only (no exact fingerprint)")
                self._warned_no_fingerprint = True
            return None
        self._wake(["weights"])
        return self.llm.collective_rpc(_fingerprint_on_worker)[0]

    def close(self) -> None:
        """Shut the engine down and free its memory; idempotent. In process, the engine core's
        shutdown frees the worker's model and KV cache, undoes vLLM's gc.freeze() (without which
        the engine's objects are never collected) and tears down the distributed state it set
        up (a later engine would otherwise see torch.distributed initialised and start out of
        process); out of process, it stops the engine-core process."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _wake(self, tags: list[str] | None = None) -> None:
        wake = [t for t in (tags or ["weights", "kv_cache"]) if t in self._asleep]
        if wake:
            self.llm.wake_up(wake)
            self._asleep -= set(wake)

    def _sleep(self) -> None:
        if self.sleep_mode:  # level 1: weights offloaded to host memory, KV cache dropped
            self.llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}

    def sync_weights(self, model) -> None:
        """Copy `model`'s (transformers) weights into the engine; see the module docstring."""
        # state_dict, not named_parameters: it also lists tied weights (lm_head.weight) by name.
        weights = [(name, t.detach()) for name, t in model.state_dict().items()]
        if self.out_of_process:  # the engine core's own process: hand the weights over a file
            self._wake(["weights"])
            with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm")
                                             else None) as tmp:
                path = os.path.join(tmp, "weights.safetensors")
                tied = tied_duplicates(model)  # tied tensors (lm_head = embeddings): stored once
                save_file({name: t.contiguous().cpu() for name, t in weights if name not in tied},
                          path)
                self.llm.collective_rpc(_reload_weights_from_file, args=(path,))
            self.llm.reset_prefix_cache()
            return
        if self.llm.llm_engine.vllm_config.parallel_config.world_size > 1:
            weights = [(name, t.cpu()) for name, t in weights]  # pickled to worker processes
        self._wake(["weights"])  # asleep: bring the weights back, leave the KV cache freed
        self.llm.collective_rpc(_reload_weights_on_worker, args=(weights,))
        self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights

    def generate(
        self,
        prompts: list[list[int]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        stop_token_ids: list[int],
        seed: int = 0,
        desc: str = "generate",
        top_k: int = 0,
    ) -> list[list[Completion]]:
        """n completions for each prompt (token ids); temperature 0 means greedy; top_k > 0 also
        records the top-k of each step's processed distribution (Completion.top_ids; the engine
        must have been built with max_logprobs >= top_k).

        Returns completions[prompt_index][sample_index]. Sampling is reproducible for a seed:
        prompt i's sample k draws from the random stream _stream_seed(seed, i) + k.
        """
        from vllm import SamplingParams

        if not prompts:
            return []
        greedy = temperature <= 0
        top_k = min(top_k, self.llm.llm_engine.model_config.get_vocab_size())
        params = [
            SamplingParams(
                n=n,
                temperature=0.0 if greedy else temperature,
                top_p=1.0 if greedy else top_p,
                top_k=0,  # off
                max_tokens=max_new_tokens,
                stop_token_ids=list(stop_token_ids),
                ignore_eos=True,  # stop on stop_token_ids only, as HFEngine
                logprobs=top_k,  # the sampled token's log-prob, and the top-k when asked
                seed=None if greedy else _stream_seed(seed, i),  # vLLM adds k for sample k
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outputs = self._run(prompts, params, desc)
        results = []
        for request in outputs:  # in prompt order
            samples = []
            for c in sorted(request.outputs, key=lambda c: c.index):
                if c.finish_reason not in ("stop", "length"):
                    raise RuntimeError(f"vLLM request finished with {c.finish_reason!r}")
                ids = list(c.token_ids)
                logprobs = [step[t].logprob for step, t in zip(c.logprobs, ids)]
                samples.append(Completion(ids, logprobs, c.finish_reason))
                if top_k:
                    samples[-1].top_ids, samples[-1].top_logprobs = _topk(c.logprobs, top_k)
            results.append(samples)
        return results

    def score(self, sequences: list[list[int]], starts: list[int], *, top_k: int = 0,
              desc: str = "score") -> list[tuple[np.ndarray, np.ndarray | None,
                                                     np.ndarray | None]]:
        """Teacher-forced log-probs of each sequence's tokens from position `starts[i]` on,
        given the tokens before them, at temperature 1: vLLM's prompt log-probs, which are of
        the raw distribution (neither temperature nor top-p applies to them). One (log-probs
        (n,) float32, top-k ids (n, k) int32, top-k log-probs (n, k) float32) per sequence, the
        top-k None unless top_k > 0 (the engine built with max_logprobs >= top_k). Build the
        engine with prefill_chunk: vLLM then computes the log-probs at most that many positions
        a step, so its (positions, vocab) block does not grow with the rows' length."""
        from vllm import SamplingParams

        if not sequences:
            return []
        top_k = min(top_k, self.llm.llm_engine.model_config.get_vocab_size())
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=top_k,
                                detokenize=False)  # the one generated token is discarded
        outputs = self._run(sequences, params, desc)
        results = []
        for sequence, start, request in zip(sequences, starts, outputs):
            steps = request.prompt_logprobs[start:]  # entry t: the dict of token t (0: None)
            targets = sequence[start:]
            logprobs = np.array([step[t].logprob for step, t in zip(steps, targets)],
                                dtype=np.float32)
            results.append((logprobs, *(_topk(steps, top_k) if top_k else (None, None))))
        return results

    def _run(self, prompts: list[list[int]], params, desc: str):
        """llm.generate on token-id prompts (awake for the call), its outputs in prompt order."""
        from vllm.inputs import TokensPrompt

        self._wake()
        try:
            return self.llm.generate(
                [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                use_tqdm=lambda *a, **k: tqdm(*a, **{**k, "desc": desc, "leave": False}),
            )
        finally:
            self._sleep()


def _topk(steps, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, k) int32 ids and float32 log-probs from vLLM's per-token dicts, each holding the
    top-k by rank (plus the sampled or scored token, whatever its rank)."""
    top = np.array([sorted((e.rank, t, e.logprob) for t, e in step.items() if e.rank <= k)
                    for step in steps], dtype=np.float64).reshape(len(steps), k, 3)
    return top[..., 1].astype(np.int32), top[..., 2].astype(np.float32)  # exact: ids < 2^53
