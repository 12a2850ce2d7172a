"""Prompt-prefix reuse: which sequence slot a new request takes, and how much of its KV cache it keeps.

A finished sequence leaves its KV cells in its slot, with the tokens they hold (prompt + generated, in
order from position 0). A new request keeps the longest prefix of its prompt that an idle slot caches and
evaluates only the rest: turn N of a chat evaluates only the tokens after turn N-1's reply, and a prompt
sent again evaluates only its last token. Which slot it takes, in order (`SlotTable.take`):

1. a slot whose whole cache its prompt extends (nothing is lost), the longest first;
2. the slot with the longest shared prefix, if that prefix is at least half the prompt (llama-server's
   prompt similarity) and dropping that slot's tail loses no more cells than the next rule would;
3. otherwise the least recently used slot: idle caches live until a slot is needed (LRU), as in Ollama's
   runner. If another slot shares a longer prefix, its cells are copied into the slot taken (Ollama's
   findBestCacheSlot "forks" them the same way; in a unified KV cache a copy only tags the cells), so a
   prompt that shares a system prompt, or just a template's first tokens, with a long chat never wipes
   that chat's cache.

The prefix key is a sequence of prompt items compared by equality, one per KV cell: a token id, or one of
an image's placeholder ids (drawn from its digest, workers/vision.py), so that two prompts with different
images never share the cells after the first of them.

Cells and positions differ after an image with M-RoPE (the Qwen-VL families): its cells all sit at one
position and it advances the position by fewer than its cells. A slot remembers where such images lie in
its cells, so that a kept prefix never splits one and the next input goes on at the right position, even
for a prompt that carries those cells only as tokens (a client's `context` on /api/generate).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from itertools import count

PromptKey = Sequence[Hashable]

_clock = count(1)  # a use order, not wall time: ties never happen and no clock can go back


@dataclass(frozen=True)
class CachedImage:
    """An image whose cells take fewer positions than cells (M-RoPE): its first cell, cells and positions."""

    start: int
    n_cells: int
    n_pos: int

    @property
    def end(self) -> int:
        return self.start + self.n_cells


@dataclass
class Slot:
    """One sequence slot of a context: its id in llama.cpp, and what its KV cells hold while idle."""

    seq_id: int
    cached: list[Hashable] = field(default_factory=list)  # the items in cells 0 .. len-1
    images: list[CachedImage] = field(default_factory=list)  # the M-RoPE images among them, in order
    last_used: int = 0
    in_use: bool = False

    def keep(self, kept: int) -> tuple[int, int, list[CachedImage]]:
        """Keeping `kept` cached items: as many as can be kept without splitting an image, the position
        the next input takes after them, and the images among them."""
        for image in self.images:
            if image.start < kept < image.end:
                kept = image.start
        images = [image for image in self.images if image.end <= kept]
        return kept, kept - sum(image.n_cells - image.n_pos for image in images), images


def common_prefix(a: PromptKey, b: PromptKey) -> int:
    """How many leading items a and b share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(frozen=True)
class Claim:
    """A slot taken for a prompt: `kept` leading items of the prompt are cached in `source`'s cells (the
    slot's own when `source` is None), to be copied into the slot at admission."""

    slot: Slot
    kept: int
    source: Slot | None = None


def _best_claim(free: list[Slot], oldest: Slot, prompt: PromptKey, fork: bool) -> Claim:
    shared = {s.seq_id: common_prefix(s.cached, prompt) for s in free}
    # Longest shared prefix first; among equals the oldest, whose cache is the least wanted.
    best = max(free, key=lambda s: (shared[s.seq_id], -s.last_used))
    kept = shared[best.seq_id]
    extended = [s for s in free if shared[s.seq_id] == len(s.cached)]
    if extended:
        whole = max(extended, key=lambda s: (shared[s.seq_id], -s.last_used))
        if shared[whole.seq_id] == kept:
            return Claim(whole, kept)
    lost_here = len(best.cached) - kept
    lost_oldest = len(oldest.cached) - shared[oldest.seq_id]
    if best is oldest or (2 * kept >= len(prompt) and lost_here <= lost_oldest):
        return Claim(best, kept)
    if fork and kept > shared[oldest.seq_id]:
        return Claim(oldest, kept, source=best)
    return Claim(oldest, shared[oldest.seq_id])


class SlotTable:
    """The slots of one context; taking one picks the longest cached prefix, then the least recently used."""

    def __init__(self, n_slots: int):
        self.slots = [Slot(i) for i in range(n_slots)]

    @property
    def free(self) -> int:
        return sum(1 for s in self.slots if not s.in_use)

    def take(self, prompt: PromptKey, *, reuse: bool, fork: bool = True) -> Claim:
        """A free slot for `prompt`, and which cached items it keeps (see the module's docstring).

        With `reuse` false the cache is never kept (the deterministic mode): the least recently used
        slot, nothing kept. With `fork` false no slot's cells are copied into another (a recurrent
        memory's). Raises LookupError when every slot is in use.
        """
        free = [s for s in self.slots if not s.in_use]
        if not free:
            raise LookupError("every slot is in use")
        oldest = min(free, key=lambda s: s.last_used)
        claim = Claim(oldest, 0) if not reuse else _best_claim(free, oldest, prompt, fork)
        claim.slot.in_use = True
        claim.slot.last_used = next(_clock)
        return claim

    def give_back(self, slot: Slot, cached: list[Hashable], images: list[CachedImage]) -> None:
        """The slot is idle again, its KV cells holding `cached` (empty when they were cleared) and
        `images` among them."""
        slot.cached = cached
        slot.images = images
        slot.in_use = False
        slot.last_used = next(_clock)
