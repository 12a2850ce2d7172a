"""Model templates: the Go-template engine, chat rendering, built-in templates, tool calls, capabilities."""
