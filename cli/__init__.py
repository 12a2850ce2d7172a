"""The ``herd`` command-line client: Ollama's CLI commands, talking HTTP to the API at OLLAMA_HOST.

``host`` resolves where to connect, ``api`` is the HTTP client, ``format`` and ``progress`` draw tables and
progress bars, ``repl`` is the interactive ``herd run``, and ``commands`` wires them to argparse.
"""
