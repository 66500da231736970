"""Run under TRITON_INTERPRET=1 by tests/test_fused_ops.py: the fused step vs the torch step on a real model."""
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
print("ok", a)
