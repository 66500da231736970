"""The interactive chat loop (minimal; see issue 4 for the full REPL)."""

from __future__ import annotations

import sys

from ..backends.base import GenerationParams, ModelSpec


def run_repl(spec: ModelSpec, params: GenerationParams, *, system: str | None = None, template: str | None = None,
             verbose: bool = False) -> None:
    from ..cli.common import load_spec

    model = load_spec(spec)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    print(f"quantdeploy chat · {spec.display_name} ({model.format}, {model.kernel_report().get('kernel')} on "
          f"{model.device}) · /bye or Ctrl-D to leave", file=sys.stderr)
    try:
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                print()
                return
            if line.strip() in ("/bye", "exit", "quit"):
                return
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            gen = model.chat(history, params, template=template)
            for piece in gen:
                sys.stdout.write(piece)
                sys.stdout.flush()
            print()
            history.append({"role": "assistant", "content": gen.text})
    except KeyboardInterrupt:
        print()
    finally:
        model.close()
