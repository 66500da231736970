"""The fast decode engine on the CPU: its weight layout, its Triton GEMV (interpreted) and its decoder against
gptqmodel and transformers on the real GPTQ / AWQ fixtures. Speed is measured on the GPU in benchmarks/."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import quantdeploy
from quantdeploy import GenerationParams
from quantdeploy.engine.quant import concat_n, dequantize, from_awq, from_gptq, pack_cols_k

pytestmark = pytest.mark.slow


def _pack_awq(x):
    r, c = x.shape
    x = x.reshape(r, c // 8, 8).long()
    out = torch.zeros(r, c // 8, dtype=torch.long)
    for i, src in enumerate((0, 2, 4, 6, 1, 3, 5, 7)):
        out |= (x[..., src] & 0xF) << (4 * i)
    return torch.where(out >= 2 ** 31, out - 2 ** 32, out).int()


def _random_case(k=512, n=192, g=128, act_order=False, seed=0):
    torch.manual_seed(seed)
    q = torch.randint(0, 16, (k, n), dtype=torch.int32)
    z = torch.randint(1, 16, (k // g, n), dtype=torch.int32)
    s = torch.rand(k // g, n) * 0.02 + 0.001
    g_idx = torch.argsort(torch.randperm(k)) // g if act_order else torch.arange(k) // g
    ref = (q.float() - z.float()[g_idx]) * s.half().float()[g_idx]
    qz = pack_cols_k((z - 1).t().contiguous()).t().contiguous()  # GPTQ v1 stores zero - 1, packed along N
    return q, z, s, g_idx, ref, qz


@pytest.mark.parametrize("layout", ["gptq", "gptq-act-order", "awq"])
def test_layouts_dequantize_exactly(layout):
    q, z, s, g_idx, ref, qz = _random_case(act_order=layout == "gptq-act-order")
    if layout == "awq":
        w = from_awq(_pack_awq(q), _pack_awq(z), s.half(), 128)
    else:
        w = from_gptq(pack_cols_k(q), qz, s.half(), g_idx, 128, 1)
    assert torch.allclose(dequantize(w, torch.float32), ref, atol=1e-4)


def test_fused_projections_equal_separate_ones():
    ws = []
    for seed in range(3):
        q, z, s, g_idx, ref, qz = _random_case(seed=seed)
        ws.append(from_gptq(pack_cols_k(q), qz, s.half(), g_idx, 128, 1))
    fused = dequantize(concat_n(ws), torch.float32)
    assert torch.equal(fused, torch.cat([dequantize(w, torch.float32) for w in ws], 1))


def test_triton_gemv_matches_reference_in_interpreter():
    """The GPU kernel's arithmetic, run by Triton's interpreter on the CPU (fresh process: the interpreter
    must be switched on before triton is imported)."""
    code = r'''
import torch
from quantdeploy.engine.quant import from_gptq, from_awq, pack_cols_k, dequantize
from quantdeploy.engine.triton_gemv import w4a16_gemv
import tests.test_engine as t
for layout in ("gptq", "act", "awq"):
    for (k, n) in ((512, 192), (1024, 320)):
        q, z, s, g_idx, ref, qz = t._random_case(k, n, act_order=layout == "act", seed=k + n)
        w = from_awq(t._pack_awq(q), t._pack_awq(z), s.half(), 128) if layout == "awq" else \
            from_gptq(pack_cols_k(q), qz, s.half(), g_idx, 128, 1)
        w = w.to("cpu", torch.float16)
        x = torch.randn(k).half()
        want = x.float() @ ref
        for half in (False, True):  # fp32 math, and fp16 math within a group
            out = torch.zeros(n)
            w4a16_gemv(x, w, out, {"block_n": 64, "num_warps": 4, "programs_per_sm": 4, "half": half})
            err = ((out - want).norm() / want.norm()).item()
            assert err < 2e-3, (layout, k, n, half, err)
print("ok")
'''
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


@pytest.fixture(scope="module", params=["gptq", "awq"])
def pair(request, model_paths):
    """(the transformers + gptqmodel model, the fast engine model) of one fixture."""
    hf = quantdeploy.load(str(model_paths[request.param]), engine="hf")
    fast = quantdeploy.load(str(model_paths[request.param]), engine="fast")
    yield hf, fast
    hf.close()
    fast.close()


def _their_weight(mod) -> tuple[torch.Tensor, float]:
    """gptqmodel's weight of one QuantLinear, [K, N] or [N, K], and the tolerance: its own dequantize_weight() (bf16,
    2e-3), or, for the classes without it (TorchAten* on CPUs without AVX-512), its forward on the identity
    (bf16 products, 5e-3)."""
    if hasattr(mod, "dequantize_weight"):
        return mod.dequantize_weight().float(), 2e-3
    dtype = next((b.dtype for b in mod.buffers() if b.is_floating_point()), torch.bfloat16)
    with torch.inference_mode():
        return mod(torch.eye(mod.in_features, dtype=dtype)).float(), 5e-3


def test_engine_weights_equal_gptqmodel_dequantization(pair):
    hf, fast = pair
    dec = fast.engine.dec
    h, kv, d = dec.cfg.heads, dec.cfg.kv_heads, dec.cfg.head_dim
    for i in (0, dec.cfg.layers - 1):
        layer = hf.model.model.layers[i]
        mine = dequantize(dec.layers[i].qkv.w, torch.float32).split([h * d, kv * d, kv * d], 1)
        for ours, mod in zip(mine, (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)):
            theirs, tol = _their_weight(mod)
            theirs = theirs if theirs.shape == ours.shape else theirs.t()
            assert ((theirs - ours).norm() / theirs.norm()).item() < tol
        theirs, tol = _their_weight(layer.mlp.down_proj)
        ours = dequantize(dec.layers[i].down.w, torch.float32)
        theirs = theirs if theirs.shape == ours.shape else theirs.t()
        assert ((theirs - ours).norm() / theirs.norm()).item() < tol


def _reference_with_engine_weights(fast, reference_path):
    """transformers' own Gemma3 code in float32, its linear weights replaced by the checkpoint's dequantized ones."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(str(reference_path), dtype=torch.float32)
    _load_engine_weights(ref, fast.engine.dec)
    ref.lm_head.weight = ref.model.embed_tokens.weight
    return ref


def _load_engine_weights(ref, dec):
    """Every weight of transformers model `ref` (float32) from the engine's decoder: the linears dequantized from
    the checkpoint, the rest as the checkpoint stores them."""
    h, kv, d = dec.cfg.heads, dec.cfg.kv_heads, dec.cfg.head_dim
    for i, L in enumerate(dec.layers):
        lay = ref.model.layers[i]
        q, k, v = dequantize(L.qkv.w, torch.float32).t().split([h * d, kv * d, kv * d], 0)
        g, u = dequantize(L.gate_up.w, torch.float32).t().chunk(2, 0)
        for lin, w in ((lay.self_attn.q_proj, q), (lay.self_attn.k_proj, k), (lay.self_attn.v_proj, v),
                       (lay.self_attn.o_proj, dequantize(L.o.w, torch.float32).t()), (lay.mlp.gate_proj, g),
                       (lay.mlp.up_proj, u), (lay.mlp.down_proj, dequantize(L.down.w, torch.float32).t())):
            lin.weight.data = w.contiguous()
        # norms too: the checkpoint stores them in its own dtype (bf16 for the Gemma fixtures), not fp32
        for name, w in L.norms.items():
            mod = getattr(lay.self_attn, name) if name in ("q_norm", "k_norm") else getattr(lay, name)
            mod.weight.data = w.float().clone()
    ref.model.norm.weight.data = dec.final_norm.float().clone()
    ref.model.embed_tokens.weight.data = dec.embed.float().clone()


def test_engine_greedy_tokens_equal_transformers(pair, reference_path):
    _, fast = pair
    ref = _reference_with_engine_weights(fast, reference_path)
    ids = fast.tokenize("The capital of France is", add_bos=True)
    want = ref.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):].tolist()
    got = list(fast.engine.generate(ids, max_new=32, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set()))
    assert got == want
    with torch.no_grad():
        text_ids = fast.tokenize("Water boils at one hundred degrees Celsius at sea level. " * 3)
        ref_logits = ref(torch.tensor([text_ids])).logits[0]
        ours = torch.from_numpy(fast.logits(text_ids))
    rel = ((ours - ref_logits).norm() / ref_logits.norm()).item()
    assert rel < 1e-4, rel


def test_a_padded_prompt_gives_the_prompts_logits(pair):
    """What a prompt's CUDA graph computes (the prompt padded to a power of two, the logits read at its last
    token), run eagerly on the CPU: the padding after the prompt changes nothing."""
    _, fast = pair
    eng = fast.engine
    ids = fast.tokenize("The capital of France is", add_bos=True)
    with torch.inference_mode():
        want = eng.prefill(ids).clone()
        m = eng.prefill_bucket(len(ids))
        toks = torch.tensor(ids + [7] * (m - len(ids)))
        got = eng._prefill_eager(toks, m, last=torch.tensor([len(ids) - 1]))
    assert m == 16 > len(ids)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4), float((got - want).abs().max())


def test_the_engine_refuses_a_kernel_it_does_not_run(model_paths):
    """--kernel names a kernel, and the engine follows from it: a gptqmodel kernel with --engine fast is a usage
    error that says which engine runs it."""
    from quantdeploy.errors import UsageError

    with pytest.raises(UsageError, match="--kernel marlin runs on the transformers \\+ gptqmodel \\(--engine hf\\), "
                                         "not --engine fast"):
        quantdeploy.load(str(model_paths["gptq"]), engine="fast", kernel="marlin")


def test_engine_through_the_common_interface(pair):
    _, fast = pair
    rep = fast.kernel_report()
    assert rep["engine"] == "fast" and rep["kernel"] == "fast_torch" and rep["gpu"] is False
    assert rep["quant_linear_classes"] == ["torch-dequant-matmul"] and "first kernel" in rep["kernel_reason"]
    assert rep["decode_graph"] == "none" and rep["prompt_graph"] == "eager"  # no CUDA graphs on the CPU
    g = fast.generate("The capital of France is", GenerationParams(max_tokens=8, temperature=0))
    text = "".join(g)
    assert g.usage.completion_tokens == 8 and g.finish_reason == "length" and text.strip()
    p = GenerationParams(max_tokens=6, temperature=0.9, top_p=0.9, seed=7)
    assert "".join(fast.generate("Once upon a time", p)) == "".join(fast.generate("Once upon a time", p))
    chat = fast.chat([{"role": "user", "content": "Say hi."}], GenerationParams(max_tokens=12, temperature=0))
    assert "<end_of_turn>" not in "".join(chat)


@pytest.mark.gpu
def test_greedy_graph_gives_the_tokens_of_the_argmax_outside_it(model_paths):
    """Greedy decoding on CUDA takes its argmax and the position step inside the decode graph: the same tokens as
    the argmax after each replay, across a bucket boundary (a new graph captured mid-generation)."""
    import torch

    from quantdeploy.engine.runner import FastEngine

    eng = FastEngine(model_paths["gptq"], "cuda", torch.float16, 1024)
    kw = dict(max_new=300, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set())
    ids = list(range(100, 200))
    a = list(eng.generate(ids, **kw))
    assert eng.greedy_graphs and eng.graph_kind == "cuda-graph"
    eng.greedy_graph = False
    eng.close()
    b = list(eng.generate(ids, **kw))
    assert len(a) == 300 and a == b


def _tiny_llama_gptq(out, hidden=256, inter=512, heads=4, kv_heads=2, vocab=1000, layers=2, seed=0, asym=False):
    """A random Llama-shaped GPTQ checkpoint (no tokenizer): the engine's Llama decode path on a GPU in seconds.
    asym: random zero points (sym false), which the engine keeps in the same meta form as AWQ's."""
    import json

    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    d = hidden // heads
    t = {"model.embed_tokens.weight": torch.randn(vocab, hidden, generator=g).half() * 0.5,
         "lm_head.weight": torch.randn(vocab, hidden, generator=g).half() * 0.05,
         "model.norm.weight": (torch.rand(hidden, generator=g) + 0.5).half()}
    for i in range(layers):
        p = f"model.layers.{i}"
        for n in ("input_layernorm", "post_attention_layernorm"):
            t[f"{p}.{n}.weight"] = (torch.rand(hidden, generator=g) + 0.5).half()
        for name, k, n in ((".self_attn.q_proj", hidden, hidden), (".self_attn.k_proj", hidden, kv_heads * d),
                           (".self_attn.v_proj", hidden, kv_heads * d), (".self_attn.o_proj", hidden, hidden),
                           (".mlp.gate_proj", hidden, inter), (".mlp.up_proj", hidden, inter),
                           (".mlp.down_proj", inter, hidden)):
            t[p + name + ".qweight"] = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // 8, n), generator=g,
                                                     dtype=torch.int32)
            t[p + name + ".qzeros"] = torch.randint(-2 ** 31, 2 ** 31 - 1, (k // 128, n // 8), generator=g,
                                                    dtype=torch.int32) if asym else \
                torch.full((k // 128, n // 8), 0x77777777, dtype=torch.int32)
            t[p + name + ".scales"] = (torch.rand(k // 128, n, generator=g) * 0.02 + 0.01).half()
            t[p + name + ".g_idx"] = (torch.arange(k) // 128).int()
    out.mkdir(parents=True, exist_ok=True)
    save_file(t, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": inter, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "num_hidden_layers": layers, "vocab_size": vocab, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float16",
        "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
                                "sym": not asym, "checkpoint_format": "gptq"}}))
    return out


def test_llama_path_greedy_tokens_equal_transformers(tmp_path):
    """The Llama branch of the engine (what the 8B benchmarks decode; the Gemma fixtures take the other branches)
    against transformers' own LlamaForCausalLM in float32 with the checkpoint's dequantized weights: the same 32
    greedy tokens and logits within 1e-4, on the CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from quantdeploy.engine.runner import FastEngine

    eng = FastEngine(_tiny_llama_gptq(tmp_path / "m"), "cpu", torch.float32, 256)
    dec = eng.dec
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                      num_hidden_layers=2, vocab_size=1000, rms_norm_eps=1e-5, max_position_embeddings=2048,
                      rope_theta=500000.0, tie_word_embeddings=False, head_dim=64)
    ref = LlamaForCausalLM(cfg).float().eval()
    assert ref.model.rotary_emb.inv_freq[1].item() == pytest.approx(500000.0 ** (-2 / 64))
    _load_engine_weights(ref, dec)
    ref.lm_head.weight.data = dec.lm_head.float().clone()
    ids = [1] + list(range(10, 40))
    with torch.no_grad():
        want, seq = [], list(ids)
        for _ in range(32):
            seq.append(int(ref(torch.tensor([seq])).logits[0, -1].argmax()))
            want.append(seq[-1])
        ref_logits = ref(torch.tensor([ids])).logits[0]
        ours = eng.prefill(ids, all_logits=True).float()
    assert list(eng.generate(ids, max_new=32, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set())) == want
    assert len(set(want)) > 3  # a model that says something, not one token over and over
    assert ((ours - ref_logits).norm() / ref_logits.norm()).item() < 1e-4


@pytest.mark.gpu
def test_llama_decode_on_cuda_matches_the_torch_step_and_its_graph(tmp_path):
    """The Llama path the 8B benchmarks run (the Gemma fixtures take the other branches): the fused decode step equals
    the torch-ops step, and greedy tokens are the same in the CUDA graph and outside it."""
    import torch

    from quantdeploy.engine.runner import FastEngine

    eng = FastEngine(_tiny_llama_gptq(tmp_path / "m"), "cuda", torch.float16, 1024, gemv="cuda")
    assert eng.dec.fused and eng.dec.gemv == "qd-w4a16-gemv"
    ids = list(range(10, 40))
    tok, pos = torch.tensor([7], device="cuda"), torch.tensor([30], device="cuda")
    with torch.inference_mode():
        eng.prefill(ids)
        a = eng._step_eager(tok, pos, 256).float().clone()
        eng.dec.fused = False
        eng.prefill(ids)
        b = eng._step_eager(tok, pos, 256).float().clone()
        eng.dec.fused = True
    assert float((a - b).norm() / b.norm()) < 1e-2 and int(a.argmax()) == int(b.argmax())
    kw = dict(max_new=300, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set())
    graph = list(eng.generate(ids, **kw))
    assert eng.graph_kind == "cuda-graph"
    eng.use_graph = False
    eng.close()
    assert list(eng.generate(ids, **kw)) == graph


@pytest.mark.gpu
@pytest.mark.parametrize("tail", [False, True])
def test_prompt_graphs_give_the_eager_prompts_logits(tmp_path, tail):
    """Prompts replayed from CUDA graphs (QUANTDEPLOY_PREFILL_GRAPH=1; padded to a power of two): the logits of the
    eager prefill, one graph per padded length, and a second prompt of a length reuses its graph. tail: the graph
    holds all layers but the last, which runs eagerly with the head (QUANTDEPLOY_PREFILL_GRAPH=tail)."""
    import torch

    from quantdeploy.engine.runner import FastEngine

    eng = FastEngine(_tiny_llama_gptq(tmp_path / "m"), "cuda", torch.float16, 1024, gemv="cuda")
    eng.prefill_graph, eng.prefill_tail = True, tail
    with torch.inference_mode():
        for n in (5, 30, 100, 30):
            ids = list(range(10, 10 + n))
            got = eng.prefill(ids).float().clone()
            eng.prefill_graph = False
            want = eng.prefill(ids).float().clone()
            eng.prefill_graph = True
            assert float((got - want).norm() / want.norm()) < 1e-2 and int(got.argmax()) == int(want.argmax()), n
    assert sorted(eng.prefill_graphs) == [16, 32, 128]
    assert eng.prompt_kind == ("cuda-graph, last layer eager" if tail else "cuda-graph")
