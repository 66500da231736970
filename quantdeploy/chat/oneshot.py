"""Answer one prompt, streaming the reply to stdout."""

from __future__ import annotations

import sys

from ..backends.base import GenerationParams, ModelSpec


def stats_line(model, gen) -> str:
    u = gen.usage
    rep = model.kernel_report()
    ttft = f"{u.ttft_s * 1000:.0f} ms" if u.ttft_s is not None else "-"
    return (f"[{model.format} · {rep.get('kernel')} on {model.device} · {u.prompt_tokens} prompt + "
            f"{u.completion_tokens} tokens · TTFT {ttft} · {u.decode_tok_s:.1f} tok/s · finish {gen.finish_reason}]")


def answer_once(spec: ModelSpec, prompt: str, params: GenerationParams, *, system: str | None = None,
                template: str | None = None, raw: bool = False, verbose: bool = False) -> None:
    from ..models import load_spec

    model = load_spec(spec, verbose=verbose)
    if verbose:
        print(f"[loaded {spec.display_name} in {model.load_time_s:.1f}s]", file=sys.stderr)
    try:
        if raw:
            gen = model.generate(prompt, params)
        else:
            from .templates import template_notice

            notice = template_notice(model, template)
            if notice:
                print(notice, file=sys.stderr)
            messages = ([{"role": "system", "content": system}] if system else []) + \
                [{"role": "user", "content": prompt.strip()}]
            gen = model.chat(messages, params, template=template)
        wrote = False
        for piece in gen:
            sys.stdout.write(piece)
            sys.stdout.flush()
            wrote = wrote or bool(piece.strip())
        sys.stdout.write("\n")
        sys.stdout.flush()
        if not wrote:
            print("(the model returned an empty reply)", file=sys.stderr)
        if verbose:
            print(stats_line(model, gen), file=sys.stderr)
    finally:
        model.close()
