"""Model and experiment presets compose; plan mode prints sizes and memory without loading or
writing anything; parameter counts and memory terms (pear_exp/memory.py) equal hand computations
written out here."""

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pear_exp import memory, plan
from pear_exp.__main__ import CONF_DIR, ConfigKeyError, check_override_keys, plan_overrides
from pear_exp.config import ArchitectureConfig, Config, Engine, ModelConfig, ModelType, register_configs

register_configs()

MODEL_PRESETS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
REAL_PRESETS = [m for m in MODEL_PRESETS if not m.startswith("tiny")]
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
LARGE_EXPERIMENTS = ["aime_qwen2_5", "aime_qwen3", "aime_r1_distill", "logic_games",
                     "logic_games_shifted"]  # GPU nodes

# Published parameter counts (the model cards' sizes; exact figures as listed for the
# checkpoints, e.g. by the hub's safetensors metadata and llama.cpp's general.parameter_count).
PUBLISHED = {
    "qwen2_5_1_5b_instruct": 1_543_714_304,
    "qwen2_5_7b_instruct": 7_615_616_512,
    "qwen2_5_math_1_5b": 1_543_714_304,
    "qwen2_5_math_7b": 7_615_616_512,
    "qwen3_1_7b_base": 1_720_574_976,
    "qwen3_4b_base": 4_022_468_096,
    "qwen3_8b_base": 8_190_735_360,
    "qwen3_32b": 32_762_123_264,
    "r1_distill_qwen_1_5b": 1_777_088_000,
    "r1_distill_qwen_7b": 7_615_616_512,
    "r1_distill_qwen_32b": 32_763_876_352,
}


def composed(overrides=()):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def typed(overrides=()) -> Config:
    return OmegaConf.to_object(composed(overrides))


# ----------------------------------------------------------------------------- presets
@pytest.mark.parametrize("name", MODEL_PRESETS)
def test_every_model_preset_composes_as_student_and_teacher(name):
    cfg = typed([f"model={name}", f"model@teacher={name}"])
    for model in (cfg.model, cfg.teacher):
        assert model.name == name
        if name in REAL_PRESETS:
            assert model.path and model.dtype == "bfloat16" and model.context_length >= 4096
            assert isinstance(model.architecture, ArchitectureConfig)
            assert isinstance(model.architecture.model_type, ModelType)
            assert 0 < model.sampling.temperature <= 1 and 0 < model.sampling.top_p <= 1
        else:
            assert model.path is None and model.architecture is None and model.tiny is not None


def test_preset_parameter_counts_equal_the_published_ones():
    assert sorted(PUBLISHED) == REAL_PRESETS
    for name, published in PUBLISHED.items():
        model = typed([f"model={name}"]).model
        assert memory.count_parameters(memory.hf_config(model.architecture)) == published, name


def test_qwen2_5_1_5b_parameter_count_by_hand():
    V, H, L, I, KV = 151936, 1536, 28, 8960, 2 * 128  # vocab, hidden, layers, ffn, kv heads x dim
    embed = V * H  # 233,373,696, shared with the LM head (tied)
    attention = (H * H + H) + 2 * (H * KV + KV) + H * H  # q with bias, k and v with bias, o
    assert attention == 2_360_832 + 2 * 393_472 + 2_359_296 == 5_507_072
    mlp = 3 * H * I  # gate, up, down: 41,287,680
    layer = attention + mlp + 2 * H  # + two RMSNorm weights = 46,797,824
    total = embed + L * layer + H  # + final norm
    assert (embed, layer, total) == (233_373_696, 46_797_824, 1_543_714_304)
    arch = typed(["model=qwen2_5_1_5b_instruct"]).model.architecture
    assert memory.count_parameters(memory.hf_config(arch)) == total
    # DeepSeek-R1-Distill-Qwen-1.5B: the same shape with an untied LM head (V x H more)
    arch = typed(["model=r1_distill_qwen_1_5b"]).model.architecture
    assert memory.count_parameters(memory.hf_config(arch)) == total + embed == 1_777_088_000


def test_qwen3_4b_base_parameter_count_by_hand():
    V, H, L, I, D = 151936, 2560, 36, 9728, 128  # vocab, hidden, layers, ffn, head_dim
    Q, KV = 32 * D, 8 * D  # 4096 query features (> hidden: Qwen3 sets head_dim explicitly), 1024
    attention = H * Q + 2 * H * KV + Q * H + 2 * D  # no bias; q_norm and k_norm over a head
    assert attention == 10_485_760 + 5_242_880 + 10_485_760 + 256 == 26_214_656
    layer = attention + 3 * H * I + 2 * H  # 26,214,656 + 74,711,040 + 5,120
    total = V * H + L * layer + H  # tied embeddings, final norm
    assert (layer, total) == (100_930_816, 4_022_468_096)
    arch = typed(["model=qwen3_4b_base"]).model.architecture
    assert memory.count_parameters(memory.hf_config(arch)) == total


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_preset_composes_and_validates(name):
    cfg = typed([f"+experiment={name}"])
    assert isinstance(cfg, Config) and cfg.experiment == name
    for level in ("none", "token", "sequence"):  # a sweep's weighting override keeps the preset
        assert typed([f"+experiment={name}", f"weighting={level}"]).experiment == name


def test_the_large_presets_exist():
    assert set(LARGE_EXPERIMENTS) <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", LARGE_EXPERIMENTS)
def test_large_experiment_presets_are_consistent(name):
    cfg = typed([f"+experiment={name}"])
    # the paper's settings (docs/method.md, "The paper's experiment")
    w = cfg.weighting
    assert (w.block_size, w.gamma, w.delta_clip, w.log_weight_clip) == (4, 0.999, [-0.08, 0.3],
                                                                        [-10.0, 5.0])
    assert cfg.evaluate.num_samples == 64
    # interpolations: the teacher's and the student's recommended sampling, PEAR's target
    assert (cfg.behavior.temperature, cfg.behavior.top_p) == (cfg.teacher.sampling.temperature,
                                                              cfg.teacher.sampling.top_p)
    assert cfg.evaluate.temperature == cfg.model.sampling.temperature
    assert cfg.weighting.target_temperature == cfg.rl.temperature
    assert typed([f"+experiment={name}", "rl.temperature=0.8"]).weighting.target_temperature == 0.8
    # student trained with fp32 master weights under bf16 autocast, served in bf16
    assert cfg.model.dtype == "float32" and cfg.sft.precision.value == "bf16"
    assert cfg.rollout.engine == Engine.vllm and cfg.rollout.dtype == "bfloat16"
    # every generation fits the engine and both models
    prompt = cfg.sft.max_seq_len - cfg.behavior.max_new_tokens
    assert prompt >= 1024
    for max_new, model in ((cfg.behavior.max_new_tokens, cfg.teacher),
                           (cfg.rl.max_new_tokens, cfg.model),
                           (cfg.evaluate.max_new_tokens, cfg.model)):
        assert prompt + max_new <= min(cfg.rollout.max_model_len, model.context_length)
    # same tokenizer family for student and teacher (behavior data uses the student's ids)
    assert cfg.model.architecture.model_type == cfg.teacher.architecture.model_type
    if cfg.task.kind.value == "math":
        assert cfg.task.train_set


def test_fsdp_for_students_whose_training_state_does_not_fit_one_gpu():
    for name in LARGE_EXPERIMENTS:
        cfg = typed([f"+experiment={name}"])
        student = plan.model_plan("student", cfg.model)
        state = sum(memory.training_state_bytes(student.params, 4).values())  # fp32 + AdamW
        if state > 40 * memory.GiB:
            assert cfg.distributed.strategy.value == "fsdp", name


# ----------------------------------------------------------------------------- memory terms
def test_memory_terms_by_hand():
    P = 1_543_714_304  # Qwen2.5-1.5B
    # fp32 weights, gradients, two AdamW moments: 4 + 4 + 8 = 16 bytes a parameter
    assert memory.training_state_bytes(P, 4) == {"weights": 6_174_857_216,
                                                 "grads": 6_174_857_216, "adamw": 12_349_714_432}
    # FSDP over 8 GPUs: an eighth each
    assert memory.training_state_bytes(P, 4, shards=8)["adamw"] == 12_349_714_432 // 8
    arch = typed(["model=qwen2_5_1_5b_instruct"]).model.architecture
    # a = 4bh + 5eh + 2e(q + k) + 4ei with fp32 weights (b = 4) under bf16 autocast (e = 2):
    # h = q = 1536, k = 2 x 128 = 256, i = 8960
    a = 4 * 4 * 1536 + 5 * 2 * 1536 + 2 * 2 * (1536 + 256) + 4 * 2 * 8960
    assert a == 24_576 + 15_360 + 7_168 + 71_680 == 118_784
    assert memory.activation_bytes_per_token_layer(arch, residual_bytes=4, compute_bytes=2) == a
    # bf16 weights: nothing is cast, the projections read the bf16 norm outputs (2bh = 4h)
    assert memory.activation_bytes_per_token_layer(arch, 2, 2) == (8 + 4) * 1536 + 7_168 + 71_680
    T, copies = 2 * 4096, P * 2  # 2 sequences of 4,096 tokens; autocast's bf16 weight copies
    assert (memory.activation_bytes(arch, T, 4, False, P, 2)
            == 28 * T * a + copies == 27_246_198_784 + 3_087_428_608)
    # checkpointing keeps each layer's fp32 input, then the larger of the forward pass's weight
    # copies and the one layer recomputed in backward (T * a = 973,078,528)
    assert (memory.activation_bytes(arch, T, 4, True, P, 2)
            == 28 * T * 1536 * 4 + max(copies, T * a) == 1_409_286_144 + 3_087_428_608)
    assert memory.activation_bytes(arch, T, 2, True, P, 2) == 28 * T * 1536 * 2 + T * 97_280
    # scoring without gradient: one layer's 4 hidden-size and 3 intermediate-size values a token
    assert memory.scoring_forward_bytes(arch, 16_384, 2) == 16_384 * (4 * 1536 + 3 * 8960) * 2
    # log-probs: 12 bytes per token and vocabulary entry, all positions or one chunk
    assert memory.logprob_bytes(T, 151_936) == T * 151_936 * 12 == 14_935_916_544
    assert memory.logprob_bytes(T, 151_936, chunk_size=1024) == 1024 * 151_936 * 12
    assert memory.logprob_bytes(100, 151_936, chunk_size=1024) == 100 * 151_936 * 12
    # KV cache per token: K and V x 36 layers x 8 kv heads x 128 x 2 bytes (Qwen3-4B)
    qwen3_4b = typed(["model=qwen3_4b_base"]).model.architecture
    assert memory.kv_bytes_per_token(qwen3_4b) == 2 * 36 * 8 * 128 * 2 == 147_456
    # vLLM: 0.5 x 80 GiB reserved per GPU; 4,022,468,096 bf16 weights over 2 GPUs
    v = memory.vllm_bytes(4_022_468_096, 2, 2, 0.5, 80 * memory.GiB, 147_456, 10_000)
    assert v["reserved"] == 40 * memory.GiB and v["weights"] == 4_022_468_096
    assert v["kv_cache"] == 40 * memory.GiB - 4_022_468_096
    assert v["sequences"] == pytest.approx(v["kv_cache"] / (147_456 * 10_000 / 2))


def test_rl_row_adds_the_engine_unless_it_sleeps():
    base = ["+experiment=aime_qwen2_5"]
    for sleep in (True, False):
        cfg = typed(base + [f"rollout.enable_sleep_mode={sleep}"])
        student = plan.model_plan("student", cfg.model)
        teacher = plan.model_plan("teacher", cfg.teacher)
        rows = plan.memory_rows(cfg, student, teacher, 80 * memory.GiB, [1])
        rl = {r.term: r.per_world[0] for r in rows if r.stage == "rl"}
        state = rl["weights"] + rl["grads"] + rl["AdamW states"]
        update = state + rl["activations"] + rl["log-probs"]
        engine = int(0.5 * 80 * memory.GiB)
        assert rl["total"] == (max(update, state + engine) if sleep else update + engine)


def test_the_students_engines_have_their_own_tensor_parallelism():
    """The 32B teachers need 4 GPUs; the students' RL / evaluation engines run on one, where the
    weight sync is fingerprinted exactly (rollout/vllm.py gives no fingerprint above 1)."""
    cfg = typed(["+experiment=aime_qwen3"])
    assert (cfg.rollout.engine_tensor_parallel(policy=False),
            cfg.rollout.engine_tensor_parallel(policy=True)) == (4, 1)
    rows = plan.memory_rows(cfg, plan.model_plan("student", cfg.model),
                            plan.model_plan("teacher", cfg.teacher), 80 * memory.GiB, [1])
    notes = {(r.stage, r.term): r.note for r in rows}
    assert notes[("behavior", "vLLM teacher weights")] == "tp=4"
    assert notes[("rl", "vLLM student weights")] == notes[("evaluate", "vLLM student weights")] \
        == "tp=1"
    # 4,022,468,096 parameters in bf16 on one GPU
    weights = {(r.stage, r.term): r.per_world[0] for r in rows}
    assert weights[("rl", "vLLM student weights")] == 4_022_468_096 * 2
    # unset, the student's engines follow tensor_parallel_size
    cfg = typed(["+experiment=aime_qwen3", "rollout.policy_tensor_parallel_size=null"])
    assert cfg.rollout.engine_tensor_parallel(policy=True) == 4


def test_the_hf_engine_in_rl_is_the_trainers_own_model():
    """RL through the hf engine generates with the trainer's model object: only its KV cache
    adds to the update (a lent H200 measured 75.3 GiB for aime_qwen3's RL step against 90.4
    GiB planned while the weights were counted twice; experiments/gpu_check)."""
    cfg = typed(["+experiment=aime_qwen2_5", "rollout=hf"])
    student = plan.model_plan("student", cfg.model)
    rows = plan.memory_rows(cfg, student, plan.model_plan("teacher", cfg.teacher),
                            80 * memory.GiB, [1])
    rl = {r.term: r.per_world[0] for r in rows if r.stage == "rl"}
    assert rl["hf student weights"] == 0
    update = rl["weights"] + rl["grads"] + rl["AdamW states"] + rl["activations"] + rl["log-probs"]
    # KV cache: 2 (k, v) x 28 layers x 2 kv heads x 128 x 4 bytes (fp32) per token, for the
    # 64 x 8 rollouts of prompt budget (4096 - 3072) + 3072 tokens
    kv = 2 * 28 * 2 * 128 * 4 * (1024 + 3072) * 512
    assert rl["hf KV cache"] == kv
    assert rl["total"] == update + kv


def test_a_local_config_json_wins_over_the_preset(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2,
                tie_word_embeddings=True).save_pretrained(tmp_path)
    model = typed(["model=qwen2_5_7b_instruct", f"model.path={tmp_path}"]).model
    result = plan.model_plan("student", model)
    assert result.arch_from == f"{tmp_path}/config.json"
    # 1000*64 + 2 * ((64*64+64) + 2*(64*32+32) + 64*64 + 3*64*128 + 2*64) + 64
    assert result.params == 64_000 + 2 * (4_160 + 4_160 + 4_096 + 24_576 + 128) + 64 == 138_304
    assert result.arch.num_layers == 2 and result.arch.head_dim == 16
    # a hub id that is not cached uses the preset's numbers (and never the network)
    cfg = ModelConfig(path="nobody/not-cached", architecture=model.architecture)
    assert memory.architecture_of(cfg)[2] == "preset"


# ----------------------------------------------------------------------------- command line
def test_new_nested_keys_validate():
    check_override_keys(["model.sampling.temperature=0.7", "teacher.architecture.num_layers=3",
                         "model.context_length=4096", "plan=true"])
    with pytest.raises(ConfigKeyError, match=r"(?s)model.sampling.temp.*temperature, top_p"):
        check_override_keys(["model.sampling.temp=1"])
    with pytest.raises(ConfigKeyError, match=r"(?s)hidden.*hidden_size"):
        check_override_keys(["model.architecture.hidden=1"])


def test_plan_overrides():
    assert plan_overrides(["weighting=token"]) == []
    assert plan_overrides(["plan=false"]) == []
    assert plan_overrides(["plan=true"]) == ["hydra.run.dir=.", "hydra.output_subdir=null",
                                             "hydra/job_logging=stdout"]
    assert plan_overrides(["plan=True", "hydra.run.dir=x"]) == ["hydra.output_subdir=null",
                                                                "hydra/job_logging=stdout"]


def run_plan(tmp_path, *overrides):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "pear_exp", *overrides, "plan=true"],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


@pytest.mark.parametrize("name", LARGE_EXPERIMENTS)
def test_plan_mode_runs_offline_for_every_experiment_preset(tmp_path, name):
    result = run_plan(tmp_path, f"+experiment={name}", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    cfg = typed([f"+experiment={name}"])
    student = plan.model_plan("student", cfg.model)
    for text in (f"plan: {name}", cfg.model.path, cfg.teacher.path, f"{student.params:,}",
                 "memory per GPU"):
        assert text in out, text
    # long traces and the teachers' recommended sampling: PEAR weights are expected at the
    # floor (test_plan_flags_pear_weights_expected_at_the_floor); nothing else is flagged
    found = plan.checks(cfg, student, plan.model_plan("teacher", cfg.teacher))
    assert found and all(line.startswith("PEAR weights:") for line in found)
    assert out.count("check:") == out.count("check: PEAR weights:") == len(found)
    for stage in ("behavior", "sft", "rl", "evaluate"):
        assert any(line.split("│")[1].strip() == stage for line in out.splitlines()
                   if line.count("│") > 3), stage
    assert list(tmp_path.iterdir()) == []  # no run directory, no Hydra output, no log file


def test_plan_mode_on_the_tiny_default_builds_nothing(tmp_path):
    cache = tmp_path / "cache"
    result = run_plan(tmp_path, f"cache_dir={cache}")
    assert result.returncode == 0, result.stderr
    assert "tiny (built by the framework)" in result.stdout and "440,320" in result.stdout
    assert not cache.exists() and list(tmp_path.iterdir()) == []


def test_plan_flags_settings_that_would_fail(tmp_path):
    result = run_plan(tmp_path, "+experiment=aime_qwen2_5", "evaluate.max_new_tokens=8192",
                      "rollout.gpu_memory_utilization=0.1")
    assert result.returncode == 0, result.stderr
    assert "exceeds qwen2_5_math_1_5b's context of 4096" in result.stdout
    assert "exceeds rollout.max_model_len=4096" in result.stdout
    assert "DOES NOT FIT" in result.stdout  # a 14 GiB teacher in an 8 GiB reservation
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- PEAR weights
def test_floored_fraction_by_hand():
    from pear_exp.config import WeightingConfig, WeightLevel

    token = WeightingConfig(level=WeightLevel.token)  # gamma 0.999, delta clip -0.08, floor -10
    # every delta at -0.08: log G_t = (T - t)(log 0.999 - 0.08) = -0.0810005 (T - t), below -10
    # once T - t >= 124 (123 x 0.0810005 = 9.963, 124 x 0.0810005 = 10.044): T - 124 of T tokens
    assert plan.floored_fraction(16384, -1.0, token) == pytest.approx(16260 / 16384)
    # p = b: log G_t = (T - t) log 0.999, below -10 once T - t >= 9,995 (9,994 x 0.00100050 =
    # 9.9990, 9,995 x 0.00100050 = 10.0000008): T - 9,995 = 6,389 tokens
    assert plan.floored_fraction(16384, 0.0, token) == pytest.approx(6389 / 16384)
    # block of 4 counts from the block's end e(t) = 4 ceil(t / 4): T - e(t) >= 9,995 means
    # e(t) <= 6,389, so e(t) <= 6,388 and t <= 6,388; T - e(t) >= 124 means t <= 16,260
    block = WeightingConfig(level=WeightLevel.block)
    assert plan.floored_fraction(16384, 0.0, block) == pytest.approx(6388 / 16384)
    assert plan.floored_fraction(16384, -1.0, block) == pytest.approx(16260 / 16384)
    # sequence: one log G = -0.08 T for every token and no discount: floored from 126 tokens on
    sequence = WeightingConfig(level=WeightLevel.sequence)
    assert plan.floored_fraction(126, -1.0, sequence) == 1.0
    assert plan.floored_fraction(124, -1.0, sequence) == plan.floored_fraction(
        16384, 0.0, sequence) == 0.0
    assert plan.floored_fraction(48, -1.0, token) == 0.0  # the tiny world's 48 tokens


def test_plan_flags_pear_weights_expected_at_the_floor():
    cfg = typed(["+experiment=aime_qwen3"])  # teacher samples at 0.6 / 0.95, 16,384 tokens
    assert plan.weight_checks(cfg) == [
        "PEAR weights: behavior.temperature=0.6 differs from weighting.target_temperature=1: "
        "b_t is the teacher's log-prob at 0.6, p_t the student's at 1: the sharper behavior "
        "distribution makes p - b low on the tokens it sampled, pushing weights to the floor",
        "PEAR weights: behavior.top_p=0.95 < 1: b_t is the nucleus-renormalised log-prob (above "
        "the full distribution's by -log of the nucleus mass), so p - b is biased low",
        # 16,260 / 16,384 and 6,388 / 16,384 (block level: test_floored_fraction_by_hand)
        "PEAR weights: up to 99.2% of a 16,384-token response's tokens (behavior.max_new_tokens) "
        "can sit at the log-weight floor: 125 deltas at delta_clip[0]=-0.08 sum to "
        "log_weight_clip[0]=-10",
        "PEAR weights: the discount alone floors 39.0% of a 16,384-token response's tokens even "
        "where the student matches the behavior policy (gamma=0.999 to the power 9,995 is below "
        "exp(-10))",
    ]
    # 3,072-token traces: within 9,995 tokens of the end, the discount alone floors nothing
    short = plan.weight_checks(typed(["+experiment=aime_qwen3", "behavior.temperature=1.0",
                                      "behavior.top_p=1.0", "behavior.max_new_tokens=3072"]))
    assert short == ["PEAR weights: up to 96.0% of a 3,072-token response's tokens "
                     "(behavior.max_new_tokens) can sit at the log-weight floor: 125 deltas at "
                     "delta_clip[0]=-0.08 sum to log_weight_clip[0]=-10"]  # 2,948 / 3,072
    assert plan.weight_checks(typed([])) == []  # the tiny world: 48 tokens, matched sampling
    assert plan.weight_checks(typed(["+experiment=aime_qwen3", "weighting=none"])) == []


def test_plan_mode_lists_the_rl_task_and_evaluation_on_both_tasks(tmp_path):
    result = run_plan(tmp_path, "+experiment=logic_games_shifted", f"run_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr
    assert "zebra_puzzles (game)" in result.stdout  # the RL task's line
    for task in ("knights_knaves", "zebra_puzzles"):  # 100 problems x 64 samples x 3 each
        assert f"evaluation on {task}" in result.stdout
    assert result.stdout.count("100 problems x 64 samples x 3 checkpoints") == 2
