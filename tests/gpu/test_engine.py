"""The GPU proxy-tuning engine against a float32 transformers reference on the same
random weights: greedy tokens, fused logits, speculative decoding, sampling."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="GPU tests need torch (CI has no GPU)")
pytest.importorskip("transformers", reason="the reference is plain transformers")

from clients.gpu import sampling  # noqa: E402
from clients.gpu.engine import ProxyEngine  # noqa: E402
from clients.gpu.llama import LlamaStack, compiled_kernels, read_shape  # noqa: E402
from clients.gpu.reference import (  # noqa: E402
    random_llama, reference_proxy_generate, structure_, successor_rules)

VOCAB = 32000
STEPS = 256
PROMPTS = [[1, 450, 4996, 17354, 1701, 432, 17204, 975, 278, 17366, 11203, 29889],
           [1, 13, 29937, 5132, 740, 363, 3273, 292, 263, 1051, 297, 263],
           [1, 3532, 29879, 29958, 518, 25580, 29962, 1724, 338, 278, 7483, 310],
           [1, 29871, 29896, 29892, 29871, 29906, 29892, 29871, 29941, 29892, 29871, 29946]]
# Llama-2-like base (MHA) and TinyLlama-like pair (GQA), scaled down to keep tests short.
GPU_SHAPES = (dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=6,
                   num_attention_heads=16, num_key_value_heads=16),
              dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                   num_attention_heads=8, num_key_value_heads=2))
CPU_SHAPES = (dict(hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                   num_attention_heads=8, num_key_value_heads=8),
              dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2))


def _models(device: str, structured: bool = False):
    big, small = GPU_SHAPES if device == "cuda" else CPU_SHAPES
    ms = [random_llama(big, 1, device, torch.float32, VOCAB),
          random_llama(small, 2, device, torch.float32, VOCAB),
          random_llama(small, 3, device, torch.float32, VOCAB)]
    if structured:
        rules = successor_rules(VOCAB, 7, tuned=0.3, base_only=0.2, device=device)
        for m, (succ, strength) in zip((ms[2], ms[1], ms[0]), rules):
            structure_(m, succ, strength)
    return ms


@pytest.fixture(scope="module")
def models(device):
    return _models(device)


@pytest.fixture(scope="module")
def reference(models):
    """float32 greedy proxy-tuned tokens and the fused logits at every step."""
    steps = STEPS if next(models[0].parameters()).is_cuda else 48
    return reference_proxy_generate(*models, PROMPTS, steps, alpha=1.0, return_logits=True)


def _engine(models, dtype, device, base_source=None, **kw) -> ProxyEngine:
    base, expert, anti = models
    bs = LlamaStack(read_shape(base.config.to_dict()), [base_source or base.state_dict()],
                    device, dtype)
    ps = LlamaStack(read_shape(expert.config.to_dict()),
                    [expert.state_dict(), anti.state_dict()], device, dtype)
    kernels = compiled_kernels() if device == "cuda" and kw.pop("compiled", True) else None
    kw.setdefault("capacity", 512)
    return ProxyEngine(bs, ps, alpha=1.0, slots=kw.pop("slots", 8), kernels=kernels,
                       min_span=64, **kw)


def _decode(engine: ProxyEngine, prompts, steps: int, k: int = 0, force=None):
    """Greedy tokens for ``prompts`` decoded together; ``force`` feeds given tokens
    (teacher forcing) and collects the fused logits of every plain step."""
    n = len(prompts)
    outs = [[engine.prefill(i, p)] for i, p in enumerate(prompts)]
    logits = [engine.last_fused[:n].clone()]
    while min(len(o) for o in outs) < steps:
        if force is not None:
            at = len(outs[0]) - 1
            engine.pending[:n] = torch.tensor([f[at] for f in force], device=engine.device)
        max_pos = int(engine.pos[:n].max())
        if k:
            for o, row in zip(outs, engine.spec_step(n, max_pos, True, k)):
                o.extend(row)
        else:
            for o, t in zip(outs, engine.step(n, max_pos, True)):
                o.append(t)
            logits.append(engine.last_fused[:n].clone())
    return [o[:steps] for o in outs], torch.stack(logits, 1)[:, :steps]


def _rel_err(a, b):
    """||a - b|| / ||b|| per row after removing each row's mean (a constant added to
    every logit changes nothing)."""
    c = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
    return ((c(a) - c(b)).norm(dim=-1) / c(b).norm(dim=-1)).max().item()


def test_float32_engine_equals_reference_token_for_token(models, reference, device, tmp_path):
    """Greedy: all prompts in one batch, through CUDA graphs, crossing span buckets;
    the base read from a safetensors checkpoint directory."""
    ref_tokens, ref_logits = reference
    models[0].save_pretrained(tmp_path, safe_serialization=True)
    engine = _engine(models, torch.float32, device, base_source=str(tmp_path))
    tokens, logits = _decode(engine, PROMPTS, len(ref_tokens[0]))
    assert tokens == ref_tokens
    assert _rel_err(logits, ref_logits) < 1e-4


@pytest.mark.parametrize("k", [1, 4])
def test_speculative_greedy_equals_plain_greedy(models, reference, device, k):
    engine = _engine(models, torch.float32, device)
    tokens, _ = _decode(engine, PROMPTS, len(reference[0][0]), k=k)
    assert tokens == reference[0]


def test_bf16_fused_logits_within_tolerance(models, reference, device):
    """bf16 weights and activations, teacher-forced along the reference's tokens."""
    ref_tokens, ref_logits = reference
    engine = _engine(models, torch.bfloat16, device)
    _, logits = _decode(engine, PROMPTS, len(ref_tokens[0]), force=ref_tokens)
    assert _rel_err(logits, ref_logits) <= 1e-2


def test_rows_of_different_lengths_and_compaction(models, device):
    """Each row has its own positions; a finished row's slot is refilled by moving the
    last row into it; every sequence decodes as it would alone."""
    prompts = [PROMPTS[0][:5], PROMPTS[1], PROMPTS[2][:9]]
    alone = [_decode(_engine(models, torch.float32, device, slots=1), [p], 40)[0][0]
             for p in prompts]
    engine = _engine(models, torch.float32, device, slots=4)
    outs = [[engine.prefill(i, p)] for i, p in enumerate(prompts)]
    for _ in range(19):
        for o, t in zip(outs, engine.step(3, int(engine.pos[:3].max()), True)):
            o.append(t)
    done = outs.pop(0)  # the first sequence leaves; the last row moves into slot 0
    engine.move(2, 0, int(engine.pos[2]))
    outs.insert(0, outs.pop())
    while len(outs[0]) < 40:
        for o, t in zip(outs, engine.step(2, int(engine.pos[:2].max()), True)):
            o.append(t)
    assert done == alone[0][:20]
    assert outs[1] == alone[1] and outs[0] == alone[2]


def test_bf16_greedy_equals_float32_reference_on_confident_models(device):
    """With a successor rule built into the random weights (see clients/gpu/reference.py)
    the top logit leads by units, as in trained models: bf16 and float32 agree for 256
    tokens, and speculative bf16 agrees with plain bf16 (at high acceptance)."""
    models = _models(device, structured=True)
    steps = STEPS if device == "cuda" else 48
    ref = reference_proxy_generate(*models, PROMPTS, steps)
    plain, _ = _decode(_engine(models, torch.bfloat16, device), PROMPTS, steps)
    assert plain == ref
    spec, _ = _decode(_engine(models, torch.bfloat16, device), PROMPTS, steps, k=4)
    assert spec == ref


def _chi2_pvalue(counts, expected):
    """Pearson's chi-square with bins of expected count < 5 pooled."""
    big = expected >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]])
    exp = torch.cat([expected[big], expected[~big].sum()[None]])
    keep = exp > 0
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    dof = int(keep.sum()) - 1
    return torch.special.gammaincc(torch.tensor(dof / 2.0), stat.cpu() / 2).item(), dof


@pytest.mark.parametrize("k", [0, 3])
def test_sampled_tokens_follow_the_fused_distribution(models, device, k):
    """The token at a fixed step (after a greedy first token) over many seeds, plain and
    speculative, against softmax(fused / T) cut to top-p."""
    top_p, rounds = 0.9, (500 if device == "cuda" else 60)
    engine = _engine(models, torch.float32, device)
    first = engine.prefill(0, PROMPTS[0])
    n = len(PROMPTS[0])
    for s in range(1, 8):
        engine.copy_slot(0, s, n)
    engine.pending[:8], engine.pos[:8] = first, n
    engine.step(8, n, True)  # greedy: the fused logits at the fixed step, in last_fused
    # A temperature that spreads the mass over about ten tokens, whatever the shapes.
    top = engine.last_fused[0].topk(10).values
    engine.temp[:8], engine.top_p[:8] = float(top[0] - top[9]) / 2, top_p
    want = sampling.probs(engine.last_fused[:1], engine.temp[:1], engine.top_p[:1])[0]
    counts = torch.zeros(VOCAB, device=device)
    for r in range(rounds):
        engine.pending[:8], engine.pos[:8] = first, n
        engine.seed[:8] = torch.arange(8 * r, 8 * r + 8, device=device) + 1000 * k
        if k:
            toks = [row[0] for row in engine.spec_step(8, n, False, k)]
        else:
            toks = engine.step(8, n, False)
        counts.index_add_(0, torch.tensor(toks, device=device), torch.ones(8, device=device))
    p, dof = _chi2_pvalue(counts, want * counts.sum())
    assert dof >= 3, "the distribution is too peaked for a meaningful test"
    assert p > 1e-3, f"chi-square p={p:.2e} over {dof} degrees of freedom"
    assert counts[want == 0].sum() == 0  # nothing outside the nucleus
