"""Chat: templates and stop tokens, conversation state, the terminal REPL."""
