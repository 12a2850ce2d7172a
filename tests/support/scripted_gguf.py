"""Tiny GGUFs whose greedy output, under real llama.cpp decoding, is a given script.

    python -m tests.support.scripted_gguf OUT.gguf --says TEXT [--template NAME]

The model is a one-layer llama whose attention and feed-forward weights are zero, so the hidden state
at a position is the embedding of the token there. Embeddings are one-hot, and the output matrix maps
each token to the next one of the script: the logits come from the weights through llama.cpp's real
forward pass, and sampling picks the script (the margin is so wide that even default sampling does).

The script is cut into pieces of three or more characters (six by default), each its own vocabulary token, so that no
piece repeats (a token has one successor) and no piece can come out of tokenizing a prompt (the SPM
tokenizer only merges pieces whose two halves are tokens, and no two-character piece exists). Every
other token, whatever the prompt ends with, maps to the first piece; the last piece maps to EOS.

The vocabulary is tiny_gguf's (byte-complete, ChatML markers) plus the markers thinking and tool-call
formats use, typed as real models type them: `<think>`, `</think>`, `<tool_call>`, `</tool_call>` as
user-defined tokens (Qwen3), and harmony's `<|start|>`, `<|channel|>`, `<|message|>`, `<|end|>`, … as
control tokens (gpt-oss), which llama.cpp then renders (or, for `<|end|>`, hides) as it does for gpt-oss.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np

from tests.support.tiny_gguf import _SPACE_PIECE, EOS_ID, _vocab, add_llama_tokenizer

__all__ = ["GO_TEMPLATES", "JINJA_TEMPLATES", "TEMPLATES", "script_pieces", "write_scripted"]

USER_DEFINED = ("<think>", "</think>", "<tool_call>", "</tool_call>")
HARMONY_CONTROL = (
    "<|start|>",
    "<|end|>",
    "<|message|>",
    "<|channel|>",
    "<|constrain|>",
    "<|return|>",
    "<|call|>",
)
MIN_PIECE = 3

# --- chat templates, by name: the GGUF carries the Jinja one; the Go one is Ollama's TEMPLATE form --

_CHATML_JINJA = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CHATML_GO = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

# Qwen3's manner: thinking in <think> tags; `think: false` pre-fills an empty thinking block.
_QWEN3_JINJA = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.role == 'assistant' and message.reasoning_content %}"
    "<think>\n{{ message.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
_QWEN3_GO = """{{- if .Tools }}<|im_start|>system
# Tools
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ json .Function }}}
{{- end }}
</tools>
Call a function as <tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>
{{ end }}{{ .Content }}
{{- if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ json .Function.Arguments }}}
{{ end }}</tool_call>{{ end }}{{ if not (and $last (eq .Role "assistant")) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) }}<think>

</think>

{{ end }}
{{- end }}
{{- end }}"""

# DeepSeek-R1's manner: the generation prompt opens the thinking, so the model never writes <think>.
_OPEN_JINJA = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.role == 'assistant' and message.reasoning_content %}"
    "<think>\n{{ message.reasoning_content }}\n</think>\n\n{% endif %}"
    "{{ message.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% else %}<think>\n{% endif %}{% endif %}"
)
_OPEN_GO = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>
{{ end }}{{ .Content }}{{ if not (and $last (eq .Role "assistant")) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ if $.Think }}<think>
{{ else }}<think>

</think>

{{ end }}
{{- end }}
{{- end }}"""

# gpt-oss's harmony: a system header with the reasoning level, channels per assistant message.
_HARMONY_JINJA = (
    "<|start|>system<|message|>Reasoning: {{ reasoning_effort | default('medium') }}\n"
    "# Valid channels: analysis, commentary, final.<|end|>"
    "{% if tools %}<|start|>developer<|message|># Tools\n{% for tool in tools %}"
    "{{ tool.function.name }}: {{ tool.function.description }}\n{% endfor %}<|end|>{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'assistant' %}"
    "{% if message.thinking %}<|start|>assistant<|channel|>analysis<|message|>{{ message.thinking }}<|end|>"
    "{% endif %}<|start|>assistant<|channel|>final<|message|>{{ message.content }}<|end|>"
    "{% elif message.role == 'tool' %}<|start|>functions.{{ message.tool_name }} to=assistant"
    "<|channel|>commentary<|message|>{{ message.content }}<|end|>"
    "{% else %}<|start|>{{ message.role }}<|message|>{{ message.content }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|start|>assistant{% endif %}"
)
_HARMONY_GO = """<|start|>system<|message|>Reasoning: {{ if $.ThinkLevel }}{{ $.ThinkLevel }}{{ else }}medium{{ end }}
# Valid channels: analysis, commentary, final.<|end|>
{{- if .Tools }}<|start|>developer<|message|># Tools
{{ range .Tools }}{{ .Function.Name }}: {{ .Function.Description }}
{{ end }}<|end|>{{ end }}
{{- range .Messages }}
{{- if eq .Role "assistant" }}
{{- if .Thinking }}<|start|>assistant<|channel|>analysis<|message|>{{ .Thinking }}<|end|>{{ end }}
{{- range .ToolCalls }}<|start|>assistant<|channel|>commentary to=functions.{{ .Function.Name }} <|constrain|>json<|message|>{{ json .Function.Arguments }}<|call|>{{ end }}
{{- if .Content }}<|start|>assistant<|channel|>final<|message|>{{ .Content }}<|end|>{{ end }}
{{- else if eq .Role "tool" }}<|start|>functions.{{ .ToolName }} to=assistant<|channel|>commentary<|message|>{{ .Content }}<|end|>
{{- else }}<|start|>{{ .Role }}<|message|>{{ .Content }}<|end|>
{{- end }}
{{- end }}<|start|>assistant"""

JINJA_TEMPLATES = {
    "chatml": _CHATML_JINJA,
    "qwen3": _QWEN3_JINJA,
    "open": _OPEN_JINJA,
    "harmony": _HARMONY_JINJA,
}
GO_TEMPLATES = {"chatml": _CHATML_GO, "qwen3": _QWEN3_GO, "open": _OPEN_GO, "harmony": _HARMONY_GO}
TEMPLATES = tuple(JINJA_TEMPLATES)


def _base_vocab() -> tuple[list[str], list[float], list[int]]:
    tokens, scores, types = _vocab()
    for text in USER_DEFINED:
        tokens.append(text)
        types.append(int(gguf.TokenType.USER_DEFINED))
    for text in HARMONY_CONTROL:
        tokens.append(text)
        types.append(int(gguf.TokenType.CONTROL))
    scores += [0.0] * (len(tokens) - len(scores))
    return tokens, scores, types


def script_pieces(says: str, taken: set[str], size: int = 6) -> list[str]:
    """The script cut into pieces of `size` (at least MIN_PIECE) or more characters, none repeated nor in
    `taken`. Pieces are in SentencePiece spelling (spaces as "▁"); joined, they are the script.
    """
    size = max(size, MIN_PIECE)
    text = says.replace(" ", _SPACE_PIECE)
    if len(text) < MIN_PIECE:
        raise ValueError(f"the script {says!r} is shorter than {MIN_PIECE} characters")
    pieces: list[str] = []
    used = set(taken)
    i = 0
    while i < len(text):
        n = size
        while i + n <= len(text) and text[i : i + n] in used:
            n += 1
        # A tail too short (or all taken) to stand alone joins this piece.
        if i + n > len(text) or len(text) - (i + n) < size:
            n = len(text) - i
        piece = text[i : i + n]
        while piece in used and pieces:  # the whole tail repeats an earlier piece: merge backwards
            earlier = pieces.pop()
            used.discard(earlier)
            piece = earlier + piece
        if piece in used:
            raise ValueError(f"cannot cut the script {says!r} into distinct pieces")
        pieces.append(piece)
        used.add(piece)
        i += n
    return pieces


def write_scripted(
    path: Path, says: str, *, template: str | None = "chatml", name: str = "scripted", piece: int = 6
) -> Path:
    """Write a GGUF whose greedy continuation of any prompt is `says`, then EOS; returns `path`.

    `template` names the chat template it carries (TEMPLATES), or None for none; `piece` is about how
    many characters each generated token carries (fewer tokens make faster tests; at least 3).
    """
    if template is not None and template not in JINJA_TEMPLATES:
        raise ValueError(f"unknown template {template!r}; one of {', '.join(TEMPLATES)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokens, scores, types = _base_vocab()
    first_piece = len(tokens)
    pieces = script_pieces(says, set(tokens), piece)
    tokens += pieces
    types += [int(gguf.TokenType.NORMAL)] * len(pieces)
    # Below every single character's score: SPM merges never prefer a piece (none is reachable anyway).
    scores += [-1000.0 - i for i in range(len(pieces))]
    n_vocab = len(tokens)
    # One-hot embeddings need a dimension per token; a multiple of 64 keeps 4 heads of even size.
    n_embd = -(-n_vocab // 64) * 64
    n_head, n_ff = 4, 64

    embeddings = np.zeros((n_vocab, n_embd), dtype=np.float16)
    embeddings[np.arange(n_vocab), np.arange(n_vocab)] = 1.0
    # After RMS norm a one-hot row is sqrt(n_embd) at its token; the output row of the successor
    # weighs it by 4, so the scripted token's logit leads every other (all 0) by 4*sqrt(n_embd) >= 32.
    successor = np.full(n_vocab, first_piece, dtype=np.int64)
    successor[first_piece:] = [*range(first_piece + 1, n_vocab), EOS_ID]
    output = np.zeros((n_vocab, n_embd), dtype=np.float16)
    output[successor, np.arange(n_vocab)] = 4.0

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(2048)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(1)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(n_vocab)
    add_llama_tokenizer(writer, tokens, scores, types)
    if template is not None:
        writer.add_chat_template(JINJA_TEMPLATES[template])

    zeros = np.zeros((n_embd, n_embd), dtype=np.float16)
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
    for proj in ("q", "k", "v", "output"):
        writer.add_tensor(f"blk.0.attn_{proj}.weight", zeros)
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.add_tensor("blk.0.ffn_gate.weight", np.zeros((n_ff, n_embd), dtype=np.float16))
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((n_ff, n_embd), dtype=np.float16))
    writer.add_tensor("blk.0.ffn_down.weight", np.zeros((n_embd, n_ff), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.scripted_gguf",
        description="Write a tiny GGUF whose greedy output is a given script.",
    )
    parser.add_argument("out", type=Path, help="the GGUF file to write")
    parser.add_argument("--piece", type=int, default=6, help="characters per generated token (>= 3)")
    parser.add_argument("--says", required=True, help="the text the model generates, then stops")
    parser.add_argument(
        "--template",
        default="chatml",
        choices=[*TEMPLATES, "none"],
        help="the chat template the GGUF carries (default: chatml)",
    )
    args = parser.parse_args(argv)
    says = args.says.replace("\\n", "\n")  # a shell passes a newline most easily as \n
    template = None if args.template == "none" else args.template
    write_scripted(args.out, says, template=template, piece=args.piece)


if __name__ == "__main__":
    main()
