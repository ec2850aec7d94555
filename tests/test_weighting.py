"""Tests for pear_exp.weighting: hand-computed numbers, a loop reference, and the equivalences
of docs/method.md."""

import math
from enum import Enum

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from pear_exp.weighting import LEVELS, STAT_KEYS, pear_weights, pear_weights_with_stats

NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# Hand-computed example. Non-loss positions hold nan: they must never be read.
#   row 0: [prompt, prompt, y1, y2, y3, pad]  p - b = [0.1, -0.2, 0.5] -> clipped [0.1, -0.08, 0.3]
#   row 1: [y1, gap, y2, y3, pad, pad]       p - b = [-0.05, -0.05, -0.05] (inside the clip)
# ---------------------------------------------------------------------------------------------
def hand_batch():
    p = torch.tensor([[NAN, NAN, -1.0, -2.0, -0.5, NAN], [-0.30, NAN, -0.40, -0.50, NAN, NAN]],
                     dtype=torch.float64)
    b = torch.tensor([[NAN, NAN, -1.1, -1.8, -1.0, NAN], [-0.25, NAN, -0.35, -0.45, NAN, NAN]],
                     dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 0, 1, 1, 0, 0]])
    return p, b, mask


def place(mask, values):
    """Scatter per-row lists of loss-token values into a (batch, seq) float64 tensor."""
    out = torch.zeros(mask.shape, dtype=torch.float64)
    for i, row in enumerate(values):
        out[i, mask[i].bool()] = torch.tensor(row, dtype=torch.float64)
    return out


def test_hand_computed_token_block_sequence():
    p, b, mask = hand_batch()
    g = 0.9  # log(0.9) = -0.1053605
    kw = dict(gamma=g, delta_clip=(-0.08, 0.3), log_weight_clip=(-10.0, 5.0))
    # token: logG_t = (T - t) log g + sum_{j>t} delta_j, T = 3
    #   row 0: t1: 2 log g + (-0.08 + 0.3); t2: log g + 0.3; t3: 0
    #   row 1: t1: 2 log g - 0.10;          t2: log g - 0.05; t3: 0
    token = place(mask, [[0.81 * math.exp(0.22), 0.9 * math.exp(0.3), 1.0],    # 1.009322, 1.214873, 1
                         [0.81 * math.exp(-0.1), 0.9 * math.exp(-0.05), 1.0]])  # 0.732918, 0.856106, 1
    assert_close(pear_weights(p, b, mask, level="token", **kw), token)
    # block, B = 2: blocks {1, 2}, {3}; e = [2, 2, 3]; logG = (T - e) log g + sum_{j>e} delta_j
    #   row 0: t1, t2: log g + 0.3;  t3: 0       row 1: t1, t2: log g - 0.05;  t3: 0
    block = place(mask, [[0.9 * math.exp(0.3)] * 2 + [1.0], [0.9 * math.exp(-0.05)] * 2 + [1.0]])
    assert_close(pear_weights(p, b, mask, level="block", block_size=2, **kw), block)
    # sequence (no discount): row 0: 0.1 - 0.08 + 0.3 = 0.32; row 1: -0.15
    seq = place(mask, [[math.exp(0.32)] * 3, [math.exp(-0.15)] * 3])     # 1.377128, 0.860708
    assert_close(pear_weights(p, b, mask, level="sequence", **kw), seq)
    assert_close(pear_weights(p, b, mask, level="none", **kw), mask.double())


def test_hand_computed_log_weight_clip_binds():
    p, b, mask = hand_batch()
    kw = dict(gamma=0.9, delta_clip=(-0.08, 0.3), log_weight_clip=(-0.1, 0.15))
    # token logG: row 0: [0.009279, 0.194639 -> 0.15, 0]; row 1: [-0.310721 -> -0.1, -0.155361 -> -0.1, 0]
    token = place(mask, [[0.81 * math.exp(0.22), math.exp(0.15), 1.0],
                         [math.exp(-0.1), math.exp(-0.1), 1.0]])
    assert_close(pear_weights(p, b, mask, level="token", **kw), token)
    # sequence logG: row 0: 0.32 -> 0.15; row 1: -0.15 -> -0.1
    seq = place(mask, [[math.exp(0.15)] * 3, [math.exp(-0.1)] * 3])
    assert_close(pear_weights(p, b, mask, level="sequence", **kw), seq)


def test_stats_hand_computed():
    p, b, mask = hand_batch()
    w, stats = pear_weights_with_stats(p, b, mask, level="token", gamma=0.9,
                                       delta_clip=(-0.08, 0.3), log_weight_clip=(-0.1, 0.15))
    assert set(stats) == set(STAT_KEYS) and all(type(v) is float for v in stats.values())
    # N = 6 loss tokens; W = [1.0093222, 1.1618342, 1, 0.9048374, 0.9048374, 1]
    # sum W = 5.9808312, sum W^2 = 6.0060515, ESS = 5.9808312^2 / (6 * 6.0060515) = 0.9926195
    assert stats["weight_ess"] == pytest.approx(0.9926195, abs=1e-6)
    assert stats["weight_mean"] == pytest.approx(5.9808312 / 6, abs=1e-6)
    assert stats["weight_min"] == pytest.approx(math.exp(-0.1))
    assert stats["weight_max"] == pytest.approx(math.exp(0.15))
    assert stats["delta_clip_low_frac"] == pytest.approx(1 / 6)   # -0.2 < -0.08
    assert stats["delta_clip_high_frac"] == pytest.approx(1 / 6)  # 0.5 > 0.3
    assert stats["log_weight_clip_frac"] == pytest.approx(3 / 6)  # row 0 t2, row 1 t1 and t2
    assert stats["delta_mean"] == pytest.approx((0.1 - 0.2 + 0.5 - 0.15) / 6)  # unclipped
    assert_close(w, pear_weights(p, b, mask, level="token", gamma=0.9, log_weight_clip=(-0.1, 0.15)))


def test_stats_two_tokens_weights_1_and_3():
    # two rows with T = 1, sequence level: logG = delta = [0, log 3] -> W = [1, 3]
    # mean 2, ESS = (1 + 3)^2 / (2 * (1 + 9)) = 0.8, delta_mean = log(3) / 2
    p = torch.tensor([[-1.0, 0.0], [0.0, math.log(3) - 2.0]], dtype=torch.float64)
    b = torch.tensor([[-1.0, 0.0], [0.0, -2.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False], [False, True]])
    _, s = pear_weights_with_stats(p, b, mask, level="sequence", delta_clip=(-2.0, 2.0))
    assert (s["weight_mean"], s["weight_min"], s["weight_max"]) == pytest.approx((2.0, 1.0, 3.0))
    assert s["weight_ess"] == pytest.approx(0.8)
    assert s["delta_mean"] == pytest.approx(math.log(3) / 2)
    assert s["delta_clip_low_frac"] == s["delta_clip_high_frac"] == s["log_weight_clip_frac"] == 0.0


def test_stats_without_loss_tokens_are_zero():
    p, b = torch.randn(2, 5), torch.randn(2, 5)
    w, s = pear_weights_with_stats(p, b, torch.zeros(2, 5), level="token")
    assert s == dict.fromkeys(STAT_KEYS, 0.0)
    assert_close(w, torch.zeros(2, 5))


# ---------------------------------------------------------------------------------------------
# Independent reference: plain loops over rows and loss tokens, Python float64 arithmetic.
# ---------------------------------------------------------------------------------------------
def reference(p, b, mask, level, block_size, gamma, delta_clip, log_weight_clip):
    p, b, mask = p.double().tolist(), b.double().tolist(), mask.tolist()
    out = [[0.0] * len(row) for row in mask]
    for i in range(len(mask)):
        idx = [j for j in range(len(mask[i])) if mask[i][j]]
        T = len(idx)
        d = [min(max(p[i][j] - b[i][j], delta_clip[0]), delta_clip[1]) for j in idx]  # d[t-1] = delta_t
        for t in range(1, T + 1):
            if level == "none":
                out[i][idx[t - 1]] = 1.0
                continue
            if level == "sequence":
                log_g = sum(d)
            elif level == "token":
                log_g = (T - t) * math.log(gamma) + sum(d[t:])
            else:
                e = min(block_size * math.ceil(t / block_size), T)
                log_g = (T - e) * math.log(gamma) + sum(d[e:])
            out[i][idx[t - 1]] = math.exp(min(max(log_g, log_weight_clip[0]), log_weight_clip[1]))
    return torch.tensor(out, dtype=torch.float64)


def random_batch(gen, kind, batch=6, seq=20):
    """p, b (float32, nan off the mask) and a mask with right / left padding or holes."""
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    for i in range(batch):
        prompt = int(torch.randint(0, 5, (1,), generator=gen))
        length = int(torch.randint(1, seq - prompt + 1, (1,), generator=gen))
        length = [0, 1, seq - prompt][i] if i < 3 else length  # empty, single-token, full rows
        if kind == "right":
            mask[i, prompt:prompt + length] = True
        elif kind == "left":
            mask[i, seq - length:] = True
        else:  # holes: multi-turn style, loss tokens non-contiguous
            mask[i] = torch.rand(seq, generator=gen) < 0.6
    p = -3 * torch.rand(batch, seq, generator=gen)
    b = p - 0.25 * torch.randn(batch, seq, generator=gen)
    return p.masked_fill(~mask, NAN), b.masked_fill(~mask, NAN), mask


def random_params(gen):
    u = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=gen))  # noqa: E731
    gamma = 1.0 if u(0, 1) < 0.2 else u(0.5, 1.0)
    return gamma, (-u(0.01, 0.3), u(0.01, 0.5)), (-u(0.05, 2.0), u(0.05, 2.0))


@pytest.mark.parametrize("level,block_size", [("none", 4), ("token", 4), ("sequence", 4)]
                         + [("block", bs) for bs in (1, 2, 3, 4, 7)])
def test_matches_loop_reference(level, block_size):
    gen = torch.Generator().manual_seed(10 * LEVELS.index(level) + block_size)
    for trial in range(12):
        kind = ("right", "left", "holes")[trial % 3]
        p, b, mask = random_batch(gen, kind)
        gamma, dclip, lclip = random_params(gen)
        got = pear_weights(p, b, mask, level=level, block_size=block_size, gamma=gamma,
                           delta_clip=dclip, log_weight_clip=lclip)
        want = reference(p, b, mask, level, block_size, gamma, dclip, lclip)
        assert got.dtype == torch.float32
        assert_close(got.double(), want, rtol=1e-6, atol=1e-7, msg=f"{kind=} {gamma=} {dclip=} {lclip=}")


# ---------------------------------------------------------------------------------------------
# Equivalences (docs/method.md, "Equivalences the tests check")
# ---------------------------------------------------------------------------------------------
def test_block_size_one_equals_token():
    p, b, mask = random_batch(torch.Generator().manual_seed(1), "holes")
    assert_close(pear_weights(p, b, mask, level="block", block_size=1, gamma=0.95),
                 pear_weights(p, b, mask, level="token", gamma=0.95))


@pytest.mark.parametrize("kind", ["right", "left", "holes"])
def test_block_covering_sequence_gives_one(kind):
    p, b, mask = random_batch(torch.Generator().manual_seed(2), kind)
    for bs in (int(mask.sum(1).max()), mask.shape[1], 1000):  # B = max T exactly, and larger
        assert_close(pear_weights(p, b, mask, level="block", block_size=bs, gamma=0.9), mask.float())


def test_policy_equals_behavior():
    _, b, mask = random_batch(torch.Generator().manual_seed(3), "holes")
    assert_close(pear_weights(b, b, mask, level="sequence"), mask.float())
    rank = mask.long().cumsum(1)                           # t, 1-based among loss tokens
    T = mask.long().sum(1, keepdim=True)
    expected = torch.where(mask, 0.9 ** (T - rank).double(), 0.0)  # gamma^(T - t): last token 1
    assert_close(pear_weights(b, b, mask, level="token", gamma=0.9).double(), expected)


def test_no_gradient_through_weights():
    p, b, mask = random_batch(torch.Generator().manual_seed(4), "right")
    p = p.nan_to_num(0.0).requires_grad_(True)
    b = b.nan_to_num(0.0).requires_grad_(True)
    for level in LEVELS:
        w = pear_weights(p, b, mask, level=level, block_size=3)
        assert not w.requires_grad and w.grad_fn is None
        p.grad = None
        loss = -(w * p * mask).sum()   # NLL weighted by W: d loss / d p must be -W exactly
        loss.backward()
        assert_close(p.grad, -w * mask)
        assert b.grad is None
    _, stats = pear_weights_with_stats(p, b, mask)
    assert all(type(v) is float for v in stats.values())


def test_padding_and_prompt_get_zero_and_none_is_mask():
    for kind in ("right", "left", "holes"):
        p, b, mask = random_batch(torch.Generator().manual_seed(5), kind)
        for level in LEVELS:
            w = pear_weights(p, b, mask, level=level, block_size=2)
            assert torch.isfinite(w).all()
            assert (w[~mask] == 0).all() and (w[mask] > 0).all()
        for m in (mask, mask.long(), mask.float()):
            assert_close(pear_weights(p, b, m, level="none", log_weight_clip=(0.5, 1.0)), mask.float())


def test_mask_dtypes_agree():
    p, b, mask = random_batch(torch.Generator().manual_seed(6), "holes")
    w = pear_weights(p, b, mask, level="block", block_size=3)
    assert_close(pear_weights(p, b, mask.int(), level="block", block_size=3), w)
    assert_close(pear_weights(p, b, mask.float(), level="block", block_size=3), w)


def test_left_and_right_padding_agree():
    gen = torch.Generator().manual_seed(7)
    seq, rows = 16, []
    for n in (3, 9, 16, 1, 12):  # (prompt + response) lengths; prompt is the first 2 (or fewer) tokens
        lp = -3 * torch.rand(n, generator=gen)
        rows.append((lp, lp - 0.3 * torch.randn(n, generator=gen), torch.arange(n) >= min(2, n - 1)))
    batches = {}
    for side in ("left", "right"):
        p, b = torch.zeros(len(rows), seq), torch.zeros(len(rows), seq)
        m = torch.zeros(len(rows), seq, dtype=torch.bool)
        for i, (lp, lb, lm) in enumerate(rows):
            sl = slice(seq - len(lp), seq) if side == "left" else slice(0, len(lp))
            p[i, sl], b[i, sl], m[i, sl] = lp, lb, lm
        batches[side] = (p, b, m)
    for level in LEVELS:
        w = {s: pear_weights(p, b, m, level=level, block_size=3, gamma=0.9)[m]
             for s, (p, b, m) in batches.items()}
        assert_close(w["left"], w["right"])


def test_dtypes():
    p, b, mask = random_batch(torch.Generator().manual_seed(8), "right")
    assert pear_weights(p.bfloat16(), b.bfloat16(), mask).dtype == torch.float32
    assert pear_weights(p.double(), b.double(), mask).dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# Long sequences: float64 sums, no cancellation, no overflow.
# ---------------------------------------------------------------------------------------------
def reference_numpy(p, b, mask, level, block_size, gamma, delta_clip, log_weight_clip):
    """Vectorised float64 reference: reverse cumsum per row (a different route from the module)."""
    out = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        m = mask[i].numpy()
        d = np.clip(p[i].double().numpy()[m] - b[i].double().numpy()[m], *delta_clip)
        T = len(d)
        suffix = np.append(np.cumsum(d[::-1])[::-1][1:], 0.0)  # suffix[t-1] = sum_{j>t} delta_j
        t = np.arange(1, T + 1)
        if level == "token":
            log_g = (T - t) * math.log(gamma) + suffix
        elif level == "block":
            e = np.minimum(block_size * np.ceil(t / block_size).astype(int), T)
            log_g = (T - e) * math.log(gamma) + suffix[e - 1]
        else:
            log_g = np.full(T, d.sum())
        out[i, m] = np.exp(np.clip(log_g, *log_weight_clip))
    return torch.from_numpy(out)


def test_32k_sequence_matches_float64_reference():
    gen = torch.Generator().manual_seed(9)
    seq = 32768
    mask = torch.ones(2, seq, dtype=torch.bool)
    mask[0, :100] = False                                   # prompt
    mask[1] = torch.rand(seq, generator=gen) < 0.7          # multi-turn holes
    p = -5 * torch.rand(2, seq, generator=gen)              # float32, realistic magnitudes
    b = p - 0.05 * torch.randn(2, seq, generator=gen)
    b[:, : seq // 2] = p[:, : seq // 2] - 0.5               # first half: delta = 0.3 (clipped) each,
    # so total ~ 4900 while the second half's suffix sums are O(1): float32 "total - prefix" would be
    # off by ~1e-4 there, float64 is exact to ~1e-12
    kw = dict(gamma=0.999, delta_clip=(-0.08, 0.3), log_weight_clip=(-30.0, 8.0))
    for level, bs in (("token", 4), ("block", 4), ("block", 7), ("sequence", 4)):
        w = pear_weights(p, b, mask, level=level, block_size=bs, **kw)
        assert torch.isfinite(w).all()
        want = reference_numpy(p, b, mask, level, bs, **kw)
        assert_close(w.double(), want, rtol=1e-5, atol=0.0)
    # default clips: large weights are clipped, never inf
    assert torch.isfinite(pear_weights(p, b + 1.0, mask, gamma=1.0)).all()


# ---------------------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------------------
class Level(str, Enum):
    TOKEN = "token"
    BLOCK = "block"


def test_arguments():
    p, b, mask = hand_batch()
    assert_close(pear_weights(p, b, mask, level=Level.BLOCK, block_size=2),
                 pear_weights(p, b, mask, level="block", block_size=2))
    with pytest.raises(ValueError, match="none, token, block, sequence"):
        pear_weights(p, b, mask, level="tokens")
    with pytest.raises(ValueError, match="block_size"):
        pear_weights(p, b, mask, level="block", block_size=0)
    for gamma in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="gamma"):
            pear_weights(p, b, mask, gamma=gamma)
    with pytest.raises(ValueError, match="shape"):
        pear_weights(p, b[:, :-1], mask)
    with pytest.raises(ValueError, match="delta_clip"):
        pear_weights(p, b, mask, delta_clip=(0.3, -0.08))


# ----------------------------------------------------------------------------- PEAR's relatives
def test_dft_weights_are_the_detached_probabilities_on_loss_tokens():
    from pear_exp.weighting import dft_weights

    logp = torch.tensor([[math.log(0.5), math.log(0.25), -3.0], [0.0, math.log(0.9), -1.0]],
                        requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    w = dft_weights(logp, mask)
    assert_close(w, torch.tensor([[0.5, 0.25, 0.0], [0.0, 0.9, math.exp(-1.0)]]))
    assert not w.requires_grad  # a constant for the optimizer, like PEAR's weights
    # the weighted loss's gradient is that of -sum sg(p) log p: d/dlogp = -p on loss tokens
    (-(w * logp).sum()).backward()
    assert_close(logp.grad, -torch.tensor([[0.5, 0.25, 0.0], [0.0, 0.9, math.exp(-1.0)]]))
    with pytest.raises(ValueError, match="same"):
        dft_weights(logp[:, :2], mask)


def test_pear_weights_refuses_the_relatives_names():
    with pytest.raises(ValueError, match="unknown PEAR weighting level 'dft'"):
        pear_weights(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), level="dft")


def test_iw_sft_weights_sequence_and_token_variants_hand_computed():
    from pear_exp.weighting import iw_sft_weights

    p = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, 0.0], [-0.5, -3.0, -0.1]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # d = p - ref on loss tokens: row 0 (0.5, -1.0) mean -0.25; row 1 (0, 2.5, -0.4) mean 0.7
    seq = iw_sft_weights(p, ref, mask, per_token=False, clip=(0.0, 16.0))
    assert_close(seq, torch.tensor([[math.exp(-0.25)] * 2 + [0.0], [math.exp(0.7)] * 3]))
    # temperature 2 doubles the mean log-ratio; clip (0, 2) caps exp(1.4) = 4.06 at 2
    hot = iw_sft_weights(p, ref, mask, per_token=False, clip=(0.0, 2.0), temperature=2.0)
    assert_close(hot, torch.tensor([[math.exp(-0.5)] * 2 + [0.0], [2.0] * 3]))
    token = iw_sft_weights(p, ref, mask, per_token=True, clip=(0.2, 1.8))
    # exp(0.5) = 1.65; exp(-1) = 0.37; exp(0) = 1; exp(2.5) = 12.2 -> 1.8; exp(-0.4) = 0.67
    assert_close(token, torch.tensor([[math.exp(0.5), math.exp(-1.0), 0.0],
                                      [1.0, 1.8, math.exp(-0.4)]]))
    assert not seq.requires_grad and not token.requires_grad
