"""Run under TRITON_INTERPRET=1 by tests/test_fused_ops.py: the fused step vs the torch step on a real model, and a
prompt split where the prompt graphs split it."""
import os
import sys

import torch

import quantdeploy

path = sys.argv[1]
os.environ["QUANTDEPLOY_FUSED"] = "0"
ref = quantdeploy.load(path, engine="fast", device="cpu")
os.environ["QUANTDEPLOY_FUSED"] = "1"
fused = quantdeploy.load(path, engine="fast", device="cpu")
assert not ref.engine.dec.fused and fused.engine.dec.fused
ids = ref.tokenize("The capital of France is", add_bos=True)
kw = dict(max_new=12, temperature=0, top_p=1, top_k=0, seed=None, stop_ids=set())
a = list(ref.engine.generate(ids, **kw))
b = list(fused.engine.generate(ids, **kw))
assert a == b, (a, b)
with torch.inference_mode():
    la, lb = ref.engine.prefill(ids, all_logits=True), fused.engine.prefill(ids, all_logits=True)
err = float((la - lb).norm() / la.norm())
assert err < 1e-5, err
# a prompt split as the prompt graphs split it (every layer but the last, then the last and the head): the same
# last logits as the whole prefill, here on Gemma-3 (its post-feedforward norm carried across the split)
eng, dec = fused.engine, fused.engine.dec
with torch.inference_mode():
    toks = torch.tensor(ids)
    pos, kv_len = eng.arange[:len(ids)], eng.bucket(len(ids) - 1)
    state = dec.prompt_layers(toks, pos, dec.masks(pos, kv_len), kv_len, len(dec.layers) - 1)
    split = dec.prompt_rest(state, pos, dec.masks(pos, kv_len), kv_len, len(dec.layers) - 1)
    whole = eng.prefill(ids)
assert dec.layers[0].norms.get("post_feedforward_layernorm") is not None
err = float((split - whole).norm() / whole.norm())
assert err < 1e-5, err
print("ok", a)
