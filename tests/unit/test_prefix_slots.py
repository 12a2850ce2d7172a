"""Which slot a new prompt takes and what of its cache it keeps (workers/prefix_cache.py), on plain lists:
the rules the engine's prefix reuse follows, each case as a user meets it."""

from __future__ import annotations

from workers.prefix_cache import SlotTable

SYSTEM = list(range(100, 140))  # a 40-token system prompt shared by several chats


def _table(*caches: list[int]) -> SlotTable:
    """Idle slots holding these caches, used in this order (the first is the least recently used)."""
    table = SlotTable(len(caches))
    for cached in caches:
        claim = table.take(cached, reuse=True)
        table.give_back(claim.slot, list(cached), [])
    return table


def test_a_follow_up_takes_the_slot_whose_whole_cache_it_extends() -> None:
    chat = [*SYSTEM, 1, 2, 3, 4]
    table = _table([7, 8, 9], chat)
    claim = table.take([*chat, 5, 6], reuse=True)
    assert (claim.slot.seq_id, claim.kept, claim.source) == (1, len(chat), None)


def test_a_prompt_sent_again_keeps_its_cells_though_the_slot_also_holds_its_reply() -> None:
    """llama-server's prompt similarity: the prompt is wholly cached there, so that slot is taken and only
    the reply's cells are dropped (no other slot would lose fewer)."""
    prompt = [1, 2, 3, 4, 5, 6]
    table = _table([9] * 40, [*prompt, 50, 51, 52, 53])
    claim = table.take(prompt, reuse=True)
    assert (claim.slot.seq_id, claim.kept, claim.source) == (1, len(prompt), None)


def test_a_new_chat_sharing_a_system_prompt_copies_it_and_leaves_the_other_chat_whole() -> None:
    """Ollama's fork: the least recently used slot (here an empty one) gets the shared cells."""
    chat_a = [*SYSTEM, 1, 2, 3, 4, 5, 6, 7, 8]
    table = SlotTable(2)
    claim = table.take(chat_a, reuse=True)
    table.give_back(claim.slot, chat_a, [])
    chat_b = [*SYSTEM, 20, 21]
    claim = table.take(chat_b, reuse=True)
    assert claim.kept == len(SYSTEM)
    assert claim.source is not None and claim.source.cached == chat_a
    assert claim.slot is not claim.source and not claim.source.in_use


def test_a_short_prompt_sharing_a_template_start_never_wipes_a_long_chat() -> None:
    chat = [*SYSTEM, *range(200, 400)]
    table = _table([5, 6, 7], chat)  # the small cache is the least recently used
    claim = table.take([*SYSTEM[:4], 900, 901], reuse=True)
    assert claim.slot.seq_id == 0 and claim.kept == 4 and claim.source is not None
    assert claim.source.seq_id == 1


def test_an_unrelated_prompt_takes_the_least_recently_used_slot() -> None:
    table = _table([1, 2, 3], [4, 5, 6], [7, 8, 9])
    claim = table.take([10, 11, 12], reuse=True)
    assert (claim.slot.seq_id, claim.kept, claim.source) == (0, 0, None)


def test_no_copy_where_the_memory_cannot_fork() -> None:
    chat = [*SYSTEM, *range(200, 400)]
    table = _table([5, 6, 7], chat)
    claim = table.take([*SYSTEM, 900], reuse=True, fork=False)
    assert claim.source is None and claim.slot.seq_id == 0 and claim.kept == 0


def test_the_deterministic_mode_keeps_nothing() -> None:
    table = _table([1, 2, 3])
    claim = table.take([1, 2, 3, 4], reuse=False)
    assert (claim.kept, claim.source) == (0, None)
