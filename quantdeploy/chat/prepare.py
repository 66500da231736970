"""From a chat request to what the backend runs: the rendered prompt and its tokens, the grammar the reply must
follow (response_format, or a forced tool call) and the tool plan that reads calls back out of the reply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .tools import ToolPlan

if TYPE_CHECKING:
    from ..backends.base import LoadedModel


@dataclass
class ChatPrompt:
    text: str
    ids: list[int]
    grammar: str | None = None
    tools: ToolPlan | None = None  # set when the reply may hold tool calls

    def reply_filter(self):
        if self.tools is None:
            return None
        from .toolcalls import ToolCallFilter

        return ToolCallFilter(self.tools)


def prepare_chat(model: "LoadedModel", messages: list[dict], *, template: str | None = None, tools: Any = None,
                 tool_choice: Any = None, parallel_tool_calls: bool = False, response_format: Any = None) -> ChatPrompt:
    """Check and render a chat. Bad input raises RequestError naming the field (`tools.0.function.parameters`)."""
    from ..structured.grammar import response_format_grammar
    from .templates import render, resolve_template
    from .tools import check_history, check_tool_choice, check_tools, plan

    messages = [{**m, "role": "system"} if isinstance(m, dict) and m.get("role") == "developer" else m
                for m in messages]
    offered = check_tools(tools)
    choice = check_tool_choice(tool_choice, offered)
    grammar = response_format_grammar(response_format)
    src, _ = resolve_template(model, template)
    info = model.chat_template_info()
    tool_plan, variables = None, {}
    if offered or any(isinstance(m, dict) and (m.get("role") == "tool" or m.get("tool_calls")) for m in messages):
        check_history(messages)
        tool_plan = plan(src, messages, offered, choice, parallel_tool_calls, lambda text: special_id(model, text))
        messages, variables = tool_plan.messages, tool_plan.render_kwargs
        if tool_plan.forced or not grammar:  # a forced call's grammar wins; response_format wins over "auto"'s
            grammar = tool_plan.grammar or grammar
    text = render(src, messages, bos_token=info.bos_token, eos_token=info.eos_token, **variables)
    reads_calls = tool_plan is not None and tool_plan.tools and tool_plan.choice != "none"
    return ChatPrompt(text, model.tokenize(text, add_bos=False), grammar, tool_plan if reads_calls else None)


def special_id(model: "LoadedModel", text: str) -> int | None:
    """The id of `text` when the model's vocabulary has it as one special token (a grammar names it <[id]>)."""
    ids = model.tokenize(text, add_bos=False)
    if len(ids) == 1 and model.grammar_tokenizer().is_special_token(ids[0]):
        return ids[0]
    return None
