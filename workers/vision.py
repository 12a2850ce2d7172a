"""Images in prompts through llama.cpp's libmtmd: a model's projector, image chunks and their evaluation.

A model whose manifest has a projector layer loads it here beside its weights. A prompt with images
is tokenized by mtmd into text and image chunks; the engine sees one token list in which each image
holds as many placeholder tokens as the embeddings it becomes, so prompt_eval_count, num_ctx and the
context shift count image tokens as they count text. When a sequence's prefill reaches an image, the
engine hands it back here and mtmd evaluates the image's embeddings into the sequence's KV cells.

An image takes one KV cell per embedding, but not always one position per embedding: with M-RoPE (the
Qwen-VL families) an image of h x w embeddings takes max(h, w) positions, all its cells sit at its first
one, and the text after it goes on from there (llama-server's `n_pos`). So the engine keeps a sequence's
next position apart from its cells in use, and a slot remembers where such images lie in its cached cells
(workers/prefix_cache.py).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import random
import re
import secrets
import weakref
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as llama
from llama_cpp import mtmd_cpp as mtmd

from workers.llama import LlamaModel, ModelLoadError

log = logging.getLogger(__name__)

# Ollama renders images into a prompt as "[img-N]" (server/prompt.go) and swaps each for the runner's
# media marker just before tokenizing (llm/llama_server.go); Herd does the same.
IMAGE_TAG = re.compile(r"\[img-(\d+)\]")


def placeholders(seed: bytes, n_tokens: int, n_vocab: int) -> list[int]:
    """The ids that stand for an image's positions in the token list: never decoded as tokens, so any ids
    of the vocabulary do, but drawn from the image's digest, so that two prompts share a token prefix
    through an image only when it is the same image (anything that reuses KV cells by comparing tokens
    then never takes one image's cells for another's)."""
    rng = random.Random(hashlib.sha256(seed).digest())
    return [rng.randrange(n_vocab) for _ in range(n_tokens)]


@llama.llama_log_callback
def _mtmd_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # libmtmd writes every tokenized chunk to stderr by default; keep it at debug like llama.cpp's log.
    message = text.decode("utf-8", errors="replace").rstrip()
    if message:
        log.debug("mtmd: %s", message)


def _route_log() -> None:
    mtmd.mtmd_log_set(_mtmd_log, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(_mtmd_log, ctypes.c_void_p(0))


class ProjectorError(ModelLoadError):
    """libmtmd refused the projector file (not a projector, or made for another text model)."""


class ImageError(ValueError):
    """A request's image or image placement libmtmd cannot use; the message says which."""


@dataclass
class ImageChunk:
    """One image of a prompt: where its placeholders start, its embeddings and the positions it takes."""

    start: int
    n_tokens: int  # embeddings, so KV cells and placeholders
    n_pos: int  # positions it advances the sequence by: n_tokens, or fewer with M-RoPE
    chunk: int  # the mtmd_input_chunk, owned by its MediaPrompt's chunk list


class MediaPrompt:
    """A tokenized prompt with images: the token list (placeholders for images) and its image chunks."""

    def __init__(self, projector: Projector, chunks: int, tokens: list[int], images: list[ImageChunk]):
        self.projector = projector
        self.tokens = tokens
        self.images = images
        self.chunks = chunks  # the mtmd_input_chunks: text and images in order, as libmtmd tokenized them
        # The chunk list is C memory: freed when the prompt is dropped (a finished or cancelled sequence).
        self._free = weakref.finalize(self, mtmd.mtmd_input_chunks_free, chunks)

    def prepend(self, tokens: list[int]) -> None:
        """Put `tokens` (a client's `context`) before the prompt, moving the images along."""
        self.tokens[:0] = tokens
        for image in self.images:
            image.start += len(tokens)

    @property
    def image_tokens(self) -> int:
        return sum(image.n_tokens for image in self.images)

    def text_end(self, pos: int) -> int:
        """Where the text run at `pos` ends: the next image's start, or the end of the prompt."""
        return min((i.start for i in self.images if i.start >= pos), default=len(self.tokens))

    def image_boundary(self, pos: int) -> int:
        """`pos`, or the start of the image that `pos` falls inside: a reused prefix never splits an image."""
        return next((i.start for i in self.images if i.start < pos < i.start + i.n_tokens), pos)

    def prefill_image(
        self, ctx: llama.llama_context_p, seq_id: int, index: int, pos: int, n_batch: int
    ) -> tuple[int, int]:
        """Evaluate the image whose placeholders start at `index` into the sequence's KV cells from
        position `pos`; returns the cells it filled and the position after it, or (0, pos) when no image
        starts there (the engine then decodes text as usual)."""
        image = next((i for i in self.images if i.start == index), None)
        if image is None:
            return 0, pos
        new_n_past = llama.llama_pos(pos)
        rc = mtmd.mtmd_helper_eval_chunk_single(
            self.projector.handle, ctx, image.chunk, pos, seq_id, n_batch, False, ctypes.byref(new_n_past)
        )
        if rc != 0:
            raise ImageError(f"libmtmd could not evaluate the image at prompt index {index} (error {rc})")
        return image.n_tokens, int(new_n_past.value)


class Projector:
    """A vision projector loaded with libmtmd for one text model."""

    def __init__(self, path: Path, model: LlamaModel, *, n_threads: int = 0, use_gpu: bool = False):
        _route_log()
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.print_timings = False
        if n_threads > 0:
            params.n_threads = n_threads
        # A marker no client can guess, so text in a message can never stand in for an image (llama.cpp
        # randomises its own for the same reason; Ollama passes a per-process one to llama-server).
        self.marker = f"<__herd_media_{secrets.token_hex(8)}__>"
        self._marker_bytes = self.marker.encode()
        params.media_marker = self._marker_bytes
        handle = mtmd.mtmd_init_from_file(str(path).encode(), model.handle, params)
        if not handle:
            raise ProjectorError(
                f"libmtmd could not load the projector {path.name} for {model.path.name} "
                "(not a projector GGUF, or its embedding width differs from the model's)"
            )
        if not mtmd.mtmd_support_vision(handle):
            mtmd.mtmd_free(handle)
            raise ProjectorError(f"the projector {path.name} has no vision encoder")
        self.path = path
        self.handle = handle
        self.bos = model.bos
        self.n_vocab = model.n_vocab
        self.add_bos = model.add_bos
        self.size = path.stat().st_size

    def tokenize(self, text: str, images: list[bytes], *, add_special: bool = True) -> MediaPrompt:
        """Tokenize a prompt whose "[img-N]" tags stand for `images[N]`, each tag used once."""
        order: list[int] = []

        def marker(match: re.Match[str]) -> str:
            index = int(match.group(1))
            if index >= len(images) or index in order:
                return match.group(0)  # not one of this request's images: left as text, as Ollama leaves it
            order.append(index)
            return self.marker

        prompt = IMAGE_TAG.sub(marker, text)
        if len(order) != len(images):
            missing = sorted(set(range(len(images))) - set(order))
            raise ImageError(f"the prompt has no [img-N] tag for image(s) {missing}")
        bitmaps: list[int] = []
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            for i in order:
                bitmaps.append(self._bitmap(images[i], i))
            data = prompt.encode()
            text_input = mtmd.mtmd_input_text(data, len(data), add_special, True)
            array = (mtmd.mtmd_bitmap_p_ctypes * len(bitmaps))(*bitmaps)
            rc = mtmd.mtmd_tokenize(self.handle, chunks, ctypes.byref(text_input), array, len(bitmaps))
        finally:
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)
        if rc != 0:
            mtmd.mtmd_input_chunks_free(chunks)
            raise ImageError(
                f"libmtmd could not tokenize the prompt with its {len(images)} image(s) (error {rc})"
            )
        tokens: list[int] = []
        spans: list[ImageChunk] = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens.extend(ids[j] for j in range(n.value))
                continue
            n_tokens = int(mtmd.mtmd_input_chunk_get_n_tokens(chunk))
            n_pos = int(mtmd.mtmd_input_chunk_get_n_pos(chunk))
            spans.append(ImageChunk(len(tokens), n_tokens, n_pos, chunk))
            # The chunk's id is its image's digest (set on the bitmap), and its index tells apart the
            # chunks of an image that some projectors split into several.
            seed = (mtmd.mtmd_input_chunk_get_id(chunk) or b"") + b"/%d" % len(spans)
            tokens.extend(placeholders(seed, n_tokens, self.n_vocab))
        if (
            self.add_bos
            and len(tokens) >= 2
            and tokens[0] == tokens[1] == self.bos
            and not (spans and spans[0].start < 2)
        ):
            # A template that spells out BOS, tokenized with add_special, starts with two (as LlamaModel
            # strips them).
            del tokens[0]
            for span in spans:
                span.start -= 1
        if spans and spans[-1].start + spans[-1].n_tokens == len(tokens):
            # The engine samples from the last prompt token's logits, which mtmd does not keep.
            mtmd.mtmd_input_chunks_free(chunks)
            raise ImageError("the prompt ends with an image; put text after it")
        return MediaPrompt(self, chunks, tokens, spans)

    def _bitmap(self, data: bytes, index: int) -> int:
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self.handle, buf, len(data), False)
        if not bitmap:
            raise ImageError(f"images[{index}] is not an image libmtmd can decode (PNG, JPEG, GIF, BMP, ...)")
        mtmd.mtmd_bitmap_set_id(bitmap, hashlib.sha256(data).hexdigest().encode())
        return int(bitmap)

    def close(self) -> None:
        """Free the projector; prompts tokenized with it must be finished first."""
        if self.handle:
            mtmd.mtmd_free(self.handle)
            self.handle = None
