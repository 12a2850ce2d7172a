"""Prompt-prefix reuse: which sequence slot a new request takes, and how much of its KV cache it keeps.

A finished sequence leaves its KV cells in its slot, with the tokens they hold (prompt + generated, in
order from position 0). A new request takes the free slot whose cached tokens share the longest prefix
with its prompt, and evaluates only the rest: turn N of a chat evaluates only the tokens after turn N-1's
reply. Among slots that share as much, the least recently used is taken, so an idle slot's cache lives
until a slot is needed (LRU), as in Ollama's runner (llamarunner/cache.go, findLongestCacheSlot) and
llama-server's prompt cache. A slot counts as a match only when the prompt keeps at least half of what it
caches: otherwise a prompt that shares just the template's first tokens with a long chat would take that
chat's slot (and wipe its cache) while an empty or stale slot was free; it then goes by LRU alone.

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


class SlotTable:
    """The slots of one context; taking one picks the longest cached prefix, then the least recently used."""

    def __init__(self, n_slots: int):
        self.slots = [Slot(i) for i in range(n_slots)]

    @property
    def free(self) -> int:
        return sum(1 for s in self.slots if not s.in_use)

    def take(self, prompt: PromptKey, *, reuse: bool) -> tuple[Slot, int]:
        """A free slot for `prompt` and how many of its cached items the prompt can keep.

        With `reuse` false the cache is never kept (the deterministic mode): the least recently used
        slot, 0. Raises LookupError when every slot is in use.
        """
        free = [s for s in self.slots if not s.in_use]
        if not free:
            raise LookupError("every slot is in use")
        if reuse:
            shared = {s.seq_id: common_prefix(s.cached, prompt) for s in free}
            matches = [s for s in free if 2 * shared[s.seq_id] >= len(s.cached)]
            if matches:
                # Longest shared prefix first; among equals the oldest, whose cache is the least wanted.
                slot = max(matches, key=lambda s: (shared[s.seq_id], -s.last_used))
                kept = shared[slot.seq_id]
            else:
                slot = min(free, key=lambda s: s.last_used)
                kept = shared[slot.seq_id]
        else:
            slot, kept = min(free, key=lambda s: s.last_used), 0
        slot.in_use = True
        slot.last_used = next(_clock)
        return slot, kept

    def give_back(self, slot: Slot, cached: list[Hashable], images: list[CachedImage]) -> None:
        """The slot is idle again, its KV cells holding `cached` (empty when they were cleared) and
        `images` among them."""
        slot.cached = cached
        slot.images = images
        slot.in_use = False
        slot.last_used = next(_clock)
