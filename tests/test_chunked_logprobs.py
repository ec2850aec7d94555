"""Chunked log-probs equal the naive ones (values and gradients), and use far less memory for a
152k vocabulary (peak RSS of a fresh process each way)."""

import json
import subprocess
import sys

import pytest
import torch

from pear_exp.losses import chunked_token_logprobs, token_logprobs


@pytest.mark.parametrize("chunk", [1, 5, 64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_equal_the_naive_computation(chunk, temperature):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 9, 16, generator=g, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, requires_grad=True)
    ids = torch.randint(0, 50, (3, 9), generator=g)
    naive = token_logprobs(hidden @ weight.T, ids, temperature)
    chunked = chunked_token_logprobs(hidden, weight, ids, temperature, chunk_size=chunk)
    torch.testing.assert_close(chunked, naive)
    upstream = torch.randn(3, 9, generator=g)
    grads_naive = torch.autograd.grad((naive * upstream).sum(), (hidden, weight))
    grads_chunked = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight))
    for a, b in zip(grads_chunked, grads_naive):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


PROBE = """
import json, resource, sys, torch
from pear_exp.losses import chunked_token_logprobs, token_logprobs
torch.manual_seed(0)
vocab, hidden, seq = 151_936, 64, 1024
h = torch.randn(1, seq, hidden, requires_grad=True)
w = (torch.randn(vocab, hidden) * 0.02).requires_grad_()
ids = torch.randint(0, vocab, (1, seq))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "naive":
    logp = token_logprobs(h @ w.T, ids)
else:
    logp = chunked_token_logprobs(h, w, ids, chunk_size=64)
logp.sum().backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"extra_mib": (peak - base) / 1024}))
"""


def peak_extra_mib(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)["extra_mib"]


def test_peak_memory_of_the_chunked_path_is_far_below_the_naive_one():
    naive, chunked = peak_extra_mib("naive"), peak_extra_mib("chunked")
    # naive: (1024 x 151936) float32 logits = 594 MiB, plus log_softmax and its gradient
    assert naive > 1000
    assert chunked < naive / 4, (naive, chunked)
