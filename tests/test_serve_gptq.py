"""`quantdeploy serve` on the real GPTQ fixture (transformers + gptqmodel), driven by the `openai` client."""

from __future__ import annotations

import openai
import pytest

from quantdeploy.server.process import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gptq_server(gptq_path):
    with ServerProcess(str(gptq_path), "--name", "gemma-gptq") as s:
        yield s


def test_gptq_served_with_its_kernel(gptq_server):
    c = openai.OpenAI(base_url=gptq_server.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    (m,) = c.models.list().data
    info = m.model_extra
    assert m.id == "gemma-gptq" and info["format"] == "gptq" and info["backend"] == "transformers+gptqmodel"
    assert info["quantization"].startswith("gptq 4-bit")
    assert info["kernel"] and info["device"]

    args = dict(model="gemma-gptq", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=6,
                temperature=0, extra_body={"ignore_eos": True})
    r = c.chat.completions.create(**args)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    chunks = list(c.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 6

    done = c.completions.create(model="gemma-gptq", prompt="1, 2, 3, 4, 5, 6,", max_tokens=8, temperature=0,
                                stop=[" 9"])
    assert done.choices[0].finish_reason == "stop" and " 9" not in done.choices[0].text
    assert done.choices[0].text.startswith(" 7")


@pytest.mark.gpu
def test_fast_engine_on_cuda_serves_concurrent_requests_on_one_model(gptq_path):
    """--max-concurrency 4 with the fast engine on CUDA: one model whose scheduler thread alone drives the GPU, so
    every concurrent request completes (copies of the model on four threads collided capturing CUDA graphs)."""
    import threading

    with ServerProcess(str(gptq_path), "--engine", "fast", "--device", "cuda", "--max-concurrency", "4",
                       "--name", "gemma-gptq") as s:
        c = openai.OpenAI(base_url=s.base_url + "/v1", api_key="unused", max_retries=0, timeout=300)
        results, errors = {}, []

        def one(i: int) -> None:
            try:
                msgs = [{"role": "user", "content": f"Count to {i}."}]
                r = c.chat.completions.create(model="gemma-gptq", messages=msgs, max_tokens=16, temperature=0,
                                              extra_body={"ignore_eos": True})
                results[i] = (r.choices[0].finish_reason, r.usage.completion_tokens)
            except Exception as e:  # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert not errors, errors
    assert results == {i: ("length", 16) for i in range(8)}
    assert "up to 4 generations at once" in s.logs()
