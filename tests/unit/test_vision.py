"""Images through the worker's real path: /api/create's projector layer, libmtmd, the engine's prefill.

A tiny text model and a tiny random-weight projector (tests/support/tiny_projector.py) are created in a
real store as Ollama ships a vision model (a model layer and a projector layer), loaded by the worker's
model cache, and generated from with real llama.cpp decodes.
"""

from __future__ import annotations

import base64
import ctypes
from collections.abc import Iterator

import llama_cpp as llama
import numpy as np
import pytest
from llama_cpp import mtmd_cpp as mtmd

from herd.contracts import ChatMessage, CreateSpec, GenerateJob
from herd.names import ModelName
from herd.store import MEDIA_MODEL, MEDIA_PROJECTOR, ModelStore, StoredModel
from herd.store.create import CreateError, ModelBuilder
from tests.support.tiny_gguf import CHATML_TEMPLATE, write_tiny_llama
from tests.support.tiny_projector import (
    TOKENS_PER_IMAGE,
    png,
    write_tiny_projector,
    write_tiny_qwen2vl_projector,
    write_tiny_qwen3vl_projector,
    write_tiny_qwen25vl_projector,
)
from workers import prepare
from workers.cache import LoadedModel, ModelCache
from workers.engine_io import DoneEvent, SequenceRequest, TokenEvent
from workers.prefix_cache import CachedImage, Slot
from workers.prepare import JobError
from workers.sampling import SamplingParams
from workers.vision import MediaPrompt

RED = base64.b64encode(png(40, 30, (255, 0, 0))).decode()
BLUE = base64.b64encode(png(24, 24, (0, 0, 255), stripe=(255, 255, 0))).decode()
GREEDY = SamplingParams(temperature=0, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("vision")
    store = ModelStore(root / "models")
    text = write_tiny_llama(root / "text.gguf", seed=5, chat_template=CHATML_TEMPLATE)
    projector = write_tiny_projector(root / "mmproj.gguf", text_n_embd=64)
    files = {}
    for name, path in (("model.gguf", text), ("mmproj.gguf", projector)):
        digest, _ = store.write_blob_from_file(path)
        files[name] = digest
    builder = ModelBuilder(store, progress=lambda _: None)
    builder.build(ModelName.parse("tiny-vision"), CreateSpec(files=files))
    builder.build(ModelName.parse("tiny-blind"), CreateSpec(files={"model.gguf": files["model.gguf"]}))
    # A Qwen2-VL pair: its images take M-RoPE positions, fewer than their embeddings.
    qwen_text = write_tiny_llama(
        root / "qwen.gguf", seed=6, chat_template=CHATML_TEMPLATE, architecture="qwen2vl"
    )
    qwen_projector = write_tiny_qwen2vl_projector(root / "qwen-mmproj.gguf", text_n_embd=64)
    qwen_files = {}
    for name, path in (("model.gguf", qwen_text), ("mmproj.gguf", qwen_projector)):
        digest, _ = store.write_blob_from_file(path)
        qwen_files[name] = digest
    builder.build(ModelName.parse("tiny-qwen2vl"), CreateSpec(files=qwen_files))
    # A Qwen2.5-VL projector (window attention, gated feed-forward, RMSNorm) on the same text model, as
    # Ollama's qwen2.5vl pairs a qwen2vl text model with a qwen2.5vl_merger.
    qwen25_projector = write_tiny_qwen25vl_projector(root / "qwen25-mmproj.gguf", text_n_embd=64)
    digest, _ = store.write_blob_from_file(qwen25_projector)
    builder.build(
        ModelName.parse("tiny-qwen25vl"),
        CreateSpec(files={"model.gguf": qwen_files["model.gguf"], "mmproj.gguf": digest}),
    )
    # A Qwen3-VL pair: interleaved M-RoPE, and embeddings that carry deepstack features for the text model.
    qwen3_text = write_tiny_llama(
        root / "qwen3.gguf", seed=6, chat_template=CHATML_TEMPLATE, architecture="qwen3vl"
    )
    qwen3_projector = write_tiny_qwen3vl_projector(root / "qwen3-mmproj.gguf", text_n_embd=64)
    qwen3_files = {}
    for name, path in (("model.gguf", qwen3_text), ("mmproj.gguf", qwen3_projector)):
        digest, _ = store.write_blob_from_file(path)
        qwen3_files[name] = digest
    builder.build(ModelName.parse("tiny-qwen3vl"), CreateSpec(files=qwen3_files))
    return store


@pytest.fixture(scope="module")
def cache() -> Iterator[ModelCache]:
    cache = ModelCache(max_loaded=2, n_parallel=1, threads=2, n_gpu_layers=0, memory_limit=1 << 32)
    yield cache
    cache.close()


def _loaded(cache: ModelCache, stored: StoredModel) -> LoadedModel:
    loaded, _ = cache.acquire(stored, n_ctx=256, keep_alive=60)
    cache.release(loaded)
    return loaded


@pytest.fixture(scope="module")
def vision(store: ModelStore, cache: ModelCache) -> LoadedModel:
    return _loaded(cache, store.get(ModelName.parse("tiny-vision")))


def chat(content: str, images: list[str] | None = None) -> GenerateJob:
    message = ChatMessage(role="user", content=content, images=images)
    return GenerateJob(job_id="j", request_id="r", kind="chat", model="m", messages=[message], admitted_ns=0)


def run(loaded: LoadedModel, job: GenerateJob, max_tokens: int = 8) -> tuple[str, DoneEvent]:
    tokens, media = prepare.prompt_input(job, loaded)
    loaded.engine.submit(SequenceRequest("k", tokens, GREEDY, max_tokens=max_tokens, media=media))
    text = ""
    while True:
        for event in loaded.engine.step():
            if isinstance(event, TokenEvent):
                text += event.text
            elif isinstance(event, DoneEvent):
                assert event.error is None, event.error
                return text, event


def test_create_classifies_the_projector_gguf(store: ModelStore) -> None:
    stored = store.get(ModelName.parse("tiny-vision"))
    assert [media for media, _, _ in stored.layers] == [MEDIA_PROJECTOR, MEDIA_MODEL]
    assert len(stored.projectors) == 1
    assert not store.get(ModelName.parse("tiny-blind")).projectors


def test_projector_as_adapter_and_lora_refused(store: ModelStore) -> None:
    vision = store.get(ModelName.parse("tiny-vision"))
    projector_digest = next(d for m, d, _ in vision.layers if m == MEDIA_PROJECTOR)
    builder = ModelBuilder(store, progress=lambda _: None)
    built = builder.build(
        ModelName.parse("tiny-adapted"),
        CreateSpec(from_model="tiny-blind", adapters={"mmproj.gguf": projector_digest}),
    )
    assert len(built.projectors) == 1
    model_digest = next(d for m, d, _ in vision.layers if m == MEDIA_MODEL)
    with pytest.raises(CreateError, match="adapters are not supported yet"):
        builder.build(
            ModelName.parse("tiny-lora"),
            CreateSpec(from_model="tiny-blind", adapters={"x.gguf": model_digest}),
        )


def test_an_image_is_evaluated_and_steers_the_output(vision: LoadedModel) -> None:
    plain_tokens, media = prepare.prompt_input(chat("what is this?"), vision)
    assert media is None
    red, red_done = run(vision, chat("what is this?", [RED]))
    # The "[img-0]" tag became one image chunk of TOKENS_PER_IMAGE embeddings in place of its text.
    assert red_done.prompt_tokens == len(plain_tokens) + TOKENS_PER_IMAGE
    blue, _ = run(vision, chat("what is this?", [BLUE]))
    again, _ = run(vision, chat("what is this?", [RED]))
    assert red != blue
    assert red == again
    text_only, _ = run(vision, chat("what is this?"))
    assert text_only not in (red, blue)
    # What the model saw were the image's embeddings from libmtmd, not the placeholder ids that hold its
    # positions in the token list: decoded as plain tokens, those give another continuation.
    tokens, _ = prepare.prompt_input(chat("what is this?", [RED]), vision)
    vision.engine.submit(SequenceRequest("p", tokens, GREEDY, max_tokens=8))
    as_tokens = ""
    while vision.engine.busy:
        as_tokens += "".join(e.text for e in vision.engine.step() if isinstance(e, TokenEvent))
    assert as_tokens != red


def test_two_images_and_img_placement(vision: LoadedModel) -> None:
    tokens, media = prepare.prompt_input(chat("left [img] right", [RED, BLUE]), vision)
    assert media is not None and len(media.images) == 2
    assert len(tokens) == len(prepare.prompt_input(chat("left  right"), vision)[0]) + 2 * TOKENS_PER_IMAGE
    # As Ollama's imageTaggedMessages: the first image takes the "[img]", the second becomes a prefix
    # ("[img-1]left [img-0] right"), so the text "left " lies between the two images.
    first, second = media.images
    between = vision.llama.detokenize(tokens[first.start + first.n_tokens : second.start])
    assert between == "left "


def test_truncation_counts_images_as_ollama(vision: LoadedModel) -> None:
    old = ChatMessage(role="user", content="an old picture", images=[RED])
    job = GenerateJob(
        job_id="j",
        request_id="r",
        kind="chat",
        model="m",
        messages=[old, ChatMessage(role="assistant", content="ok"), ChatMessage(role="user", content="now?")],
        admitted_ns=0,
    )
    # Ollama counts 768 tokens an image: the old turn never fits num_ctx 256, so it and its image go.
    tokens, media = prepare.prompt_input(job, vision)
    assert media is None
    assert "old picture" not in vision.llama.detokenize(tokens)


def test_generate_images_and_image_errors(store: ModelStore, cache: ModelCache, vision: LoadedModel) -> None:
    job = GenerateJob(
        job_id="j", request_id="r", kind="generate", model="m", prompt="hi", images=[RED], admitted_ns=0
    )
    _, done = run(vision, job, max_tokens=2)
    assert done.prompt_tokens > TOKENS_PER_IMAGE
    not_image = base64.b64encode(b"this is text, not a picture").decode()
    with pytest.raises(JobError, match=r"images\[0\] is not an image") as exc:
        prepare.prompt_input(chat("x", [not_image]), vision)
    assert exc.value.status == 400
    raw = GenerateJob(
        job_id="j",
        request_id="r",
        kind="generate",
        model="m",
        prompt="x",
        raw=True,
        images=[RED],
        admitted_ns=0,
    )
    with pytest.raises(JobError, match=r"no \[img-N\] tag"):
        prepare.prompt_input(raw, vision)
    blind = _loaded(cache, store.get(ModelName.parse("tiny-blind")))
    with pytest.raises(JobError, match="tiny-blind:latest does not support vision"):
        prepare.prompt_input(chat("x", [RED]), blind)


def test_image_tokens_count_toward_num_ctx_and_name_their_image(vision: LoadedModel) -> None:
    red, _ = prepare.prompt_input(chat("x", [RED]), vision)
    blue, _ = prepare.prompt_input(chat("x", [BLUE]), vision)
    # An image's placeholder ids come from its digest: equal token lists mean the same image, so KV reuse
    # by token prefix can never take one image's cells for another's.
    assert red == prepare.prompt_input(chat("x", [RED]), vision)[0]
    assert red != blue and len(red) == len(blue)
    many, media = prepare.prompt_input(chat("x", [RED] * 16), vision)
    assert media is not None and len(many) > vision.n_ctx
    with pytest.raises(JobError, match="prompt is too long"):
        prepare.check_fits(many, vision.n_ctx)


def test_images_are_part_of_the_prompt_prefix_key(store: ModelStore) -> None:
    # Turn two of a chat about one image reuses the image's cells; the same words about another image
    # reuse only the text before it, so one image's embeddings never stand in for another's. A context
    # of its own: at 256 cells, turn two would drop the image's turn (Ollama counts 768 tokens an image).
    own = ModelCache(max_loaded=1, n_parallel=1, threads=2, n_gpu_layers=0, memory_limit=1 << 32)
    try:
        vision, _ = own.acquire(store.get(ModelName.parse("tiny-vision")), n_ctx=2048, keep_alive=60)
        own.release(vision)
        _prefix_key_checks(vision)
    finally:
        own.close()


def _prefix_key_checks(vision: LoadedModel) -> None:
    first = [ChatMessage(role="user", content="what is this?", images=[RED])]
    reply, done = run(vision, _chat_of(first))
    image = next(iter(prepare.prompt_input(_chat_of(first), vision)[1].images))  # type: ignore[union-attr]
    follow_up = [
        *first,
        ChatMessage(role="assistant", content=reply),
        ChatMessage(role="user", content="and?"),
    ]
    _, same = run(vision, _chat_of(follow_up))
    assert same.cached_tokens >= image.start + image.n_tokens
    assert same.prompt_tokens - same.cached_tokens < done.prompt_tokens - image.n_tokens
    other = [ChatMessage(role="user", content="what is this?", images=[BLUE]), *follow_up[1:]]
    _, switched = run(vision, _chat_of(other))
    assert 0 < switched.cached_tokens <= image.start


def _chat_of(messages: list[ChatMessage]) -> GenerateJob:
    return GenerateJob(job_id="j", request_id="r", kind="chat", model="m", messages=messages, admitted_ns=0)


# --- M-RoPE (the qwen2-vl, qwen2.5-vl and qwen3-vl families) ----------------------------------------


@pytest.fixture(scope="module", params=["tiny-qwen2vl", "tiny-qwen25vl", "tiny-qwen3vl"])
def qwen(store: ModelStore, request: pytest.FixtureRequest) -> Iterator[LoadedModel]:
    # A cache of its own (the module's holds two models), and room for a chat turn with an image (Ollama
    # counts 768 tokens an image when it truncates history).
    own = ModelCache(max_loaded=1, n_parallel=1, threads=2, n_gpu_layers=0, memory_limit=1 << 32)
    try:
        stored = store.get(ModelName.parse(request.param))
        loaded, _ = own.acquire(stored, n_ctx=2048, keep_alive=60)
        own.release(loaded)
        yield loaded
    finally:
        own.close()


def test_a_slot_keeps_mrope_images_whole_and_knows_the_position_after_them() -> None:
    # Cells 5..16 hold an image of 12 embeddings at 4 positions; cells 20..28 one of 9 at 3.
    images = [CachedImage(5, 12, 4), CachedImage(20, 9, 3)]
    slot = Slot(0, cached=list(range(40)), images=images)
    assert slot.keep(3) == (3, 3, [])
    assert slot.keep(5) == (5, 5, [])
    assert slot.keep(9) == (5, 5, [])  # inside the first image: none of it is kept
    assert slot.keep(17) == (17, 9, images[:1])
    assert slot.keep(25) == (20, 12, images[:1])
    assert slot.keep(40) == (40, 26, images)


def _libmtmd_greedy(loaded: LoadedModel, media: MediaPrompt, n: int) -> tuple[list[int], float]:
    """The reference: libmtmd evaluates the whole prompt (text and images at the positions it gives
    them, as llama-server and mtmd-cli do) in a context of its own, then `n` greedy tokens are decoded
    from where it says the prompt ended. Returns them and the first one's log probability."""
    params = llama.llama_context_default_params()
    params.n_ctx = 2048
    params.n_threads = params.n_threads_batch = 2
    ctx = llama.llama_init_from_model(loaded.llama.handle, params)
    assert ctx
    batch = llama.llama_batch_init(1, 0, 1)
    try:
        n_past = llama.llama_pos(0)
        assert loaded.projector is not None
        rc = mtmd.mtmd_helper_eval_chunks(
            loaded.projector.handle, ctx, media.chunks, 0, 0, params.n_batch, True, ctypes.byref(n_past)
        )
        assert rc == 0
        tokens: list[int] = []
        first_logprob = 0.0
        for i in range(n):
            logits = np.ctypeslib.as_array(llama.llama_get_logits_ith(ctx, -1), shape=(loaded.llama.n_vocab,))
            token = int(logits.argmax())
            if i == 0:
                shifted = logits - logits.max()
                first_logprob = float(shifted[token] - np.log(np.exp(shifted).sum()))
            tokens.append(token)
            batch.n_tokens = 1
            batch.token[0] = token
            batch.pos[0] = n_past.value + i
            batch.n_seq_id[0] = 1
            batch.seq_id[0][0] = 0
            batch.logits[0] = True
            assert llama.llama_decode(ctx, batch) == 0
        return tokens, first_logprob
    finally:
        llama.llama_batch_free(batch)
        llama.llama_free(ctx)


def _run_tokens(
    loaded: LoadedModel, job: GenerateJob, max_tokens: int = 8
) -> tuple[list[int], DoneEvent, float]:
    """The engine's greedy tokens for `job`, its done event and the first token's log probability."""
    tokens, media = prepare.prompt_input(job, loaded)
    request = SequenceRequest("k", tokens, GREEDY, max_tokens=max_tokens, media=media, logprobs=0)
    loaded.engine.submit(request)
    logprobs: list[float] = []
    while True:
        for event in loaded.engine.step():
            if isinstance(event, TokenEvent):
                logprobs.extend(entry["logprob"] for entry in event.logprobs or ())
            elif isinstance(event, DoneEvent):
                assert event.error is None, event.error
                return event.tokens[len(tokens) :], event, logprobs[0]


def test_mrope_text_after_an_image_goes_on_from_the_image_positions(qwen: LoadedModel) -> None:
    plain, _ = prepare.prompt_input(chat("what is this?"), qwen)
    tokens, media = prepare.prompt_input(chat("what is this?", [RED]), qwen)
    assert media is not None and len(media.images) == 1
    image = media.images[0]
    # RED (40x30) is resized to 64x48 pixels: 4x3 embeddings, one KV cell each, but max(4, 3) positions.
    assert (image.n_tokens, image.n_pos) == (12, 4)
    # prompt_eval_count counts every embedding, as Ollama's does.
    _, done = run(qwen, chat("what is this?", [RED]))
    assert done.prompt_tokens == len(tokens) > len(plain) + image.n_tokens
    # The engine's prefill (text in its own batches, the image through libmtmd, text again from the
    # position after the image) gives what libmtmd's evaluation of the whole prompt gives.
    for picture in (RED, BLUE):
        _, media = prepare.prompt_input(chat("what is this?", [picture]), qwen)
        assert media is not None
        generated, _, logprob = _run_tokens(qwen, chat("what is this?", [picture]))
        expected, expected_logprob = _libmtmd_greedy(qwen, media, len(generated))
        assert generated == expected
        assert logprob == pytest.approx(expected_logprob, abs=1e-3)


def test_mrope_images_steer_the_output(qwen: LoadedModel) -> None:
    red, _ = run(qwen, chat("what is this?", [RED]))
    blue, _ = run(qwen, chat("what is this?", [BLUE]))
    again, _ = run(qwen, chat("what is this?", [RED]))
    text_only, _ = run(qwen, chat("what is this?"))
    assert red != blue
    assert red == again
    assert text_only not in (red, blue)


def test_mrope_a_reused_prefix_with_an_image_goes_on_at_its_positions(qwen: LoadedModel) -> None:
    first = [ChatMessage(role="user", content="what is this?", images=[RED])]
    reply, _ = run(qwen, _chat_of(first))
    follow_up = _chat_of(
        [*first, ChatMessage(role="assistant", content=reply), ChatMessage(role="user", content="and?")]
    )
    _, media = prepare.prompt_input(follow_up, qwen)
    assert media is not None
    image = media.images[0]
    warm, warm_done, warm_logprob = _run_tokens(qwen, follow_up)
    # The image's cells and the first turn's text after it came from the cache; the new text was decoded
    # from the positions after them, which are 8 fewer than their indexes.
    assert warm_done.cached_tokens > image.start + image.n_tokens
    run(qwen, chat("something else entirely, to take the slot"))
    cold, cold_done, cold_logprob = _run_tokens(qwen, follow_up)
    assert cold_done.cached_tokens <= image.start
    assert warm == cold
    # Not bit for bit: the F16 KV cells were computed in other batches (about 2e-3 apart measured).
    assert warm_logprob == pytest.approx(cold_logprob, abs=1e-2)
    expected, _ = _libmtmd_greedy(qwen, media, len(warm))
    assert warm == expected


def test_mrope_a_context_with_an_image_goes_on_at_its_positions(qwen: LoadedModel) -> None:
    # /api/generate's `context` gives back the last turn's tokens, the image's placeholders among them,
    # with no image: the slot's cells still hold the image, and the new text must follow it at the
    # position the image left (what a cold evaluation of the same image and tokens gives).
    first = GenerateJob(
        job_id="j", request_id="r", kind="generate", model="m", prompt="what?", images=[RED], admitted_ns=0
    )
    _, done = run(qwen, first)
    follow_up = first.model_copy(update={"prompt": " and?", "images": None, "context": done.tokens})
    tokens, media = prepare.prompt_input(follow_up, qwen)
    assert media is None and tokens[: len(done.tokens)] == done.tokens
    warm, warm_done, _ = _run_tokens(qwen, follow_up)
    assert warm_done.cached_tokens == len(done.tokens) - 1  # all but the last token sampled
    run(qwen, chat("something else entirely, to take the slot"))
    _, cold_media = prepare.prompt_input(first, qwen)
    assert cold_media is not None
    cold_media.tokens[:] = tokens  # the same tokens, with the image's chunk where its placeholders are
    qwen.engine.submit(SequenceRequest("c", tokens, GREEDY, max_tokens=len(warm), media=cold_media))
    cold: list[int] = []
    while qwen.engine.busy:
        for event in qwen.engine.step():
            if isinstance(event, DoneEvent):
                assert event.error is None and event.cached_tokens <= cold_media.images[0].start
                cold = event.tokens[len(tokens) :]
    assert warm == cold
