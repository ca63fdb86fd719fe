"""The slot policy of the batch engine's prefix cache (clients/llama_cpp/slots.py)."""

from __future__ import annotations

from clients.llama_cpp.slots import SlotPlan, plan_slot, runs

SYS = list(range(100, 140))  # a 40-token system prompt shared by every conversation


def test_returning_conversation_finds_its_own_slot():
    conv = SYS + [1, 2, 3, 4] + [7, 7]  # history: a user turn and the answer generated
    free = {0: SYS + [9, 9, 9], 1: conv, 2: []}
    assert plan_slot(conv + [5, 6], 99, free, {}, {}) == SlotPlan(1, len(conv))
    # The answer regenerated (history re-sent without it): the same slot, 2 tokens lost.
    assert plan_slot(conv[:-2] + [5], 99, free, {}, {}) == SlotPlan(1, len(conv) - 2)


def test_new_conversation_takes_the_empty_slot_and_copies_the_shared_prefix():
    free = {0: SYS + [1, 2, 3] * 10, 1: []}
    plan = plan_slot(SYS + [8, 8], 99, free, {}, {})
    assert plan == SlotPlan(1, len(SYS), copy_from=0)  # slot 0's conversation survives


def test_prefix_held_by_a_running_sequence_is_copied():
    plan = plan_slot(SYS + [8], 99, {3: []}, {0: SYS + [5] * 20}, {})
    assert plan == SlotPlan(3, len(SYS), copy_from=0)


def test_short_shared_prefix_is_not_worth_a_copy():
    prompt = [1, 2, 3, 4, 9]
    # Reusing slot 0 saves 4 tokens and loses 2: taken, no copy.
    assert plan_slot(prompt, 99, {0: [1, 2, 3, 4, 5, 6], 1: []}, {}, {}) == SlotPlan(0, 4)
    # Losing 30 to save 4 is not: the empty slot, evaluated from scratch.
    assert plan_slot(prompt, 99, {0: [1, 2, 3, 4] + [5] * 30, 1: []}, {}, {}) == SlotPlan(1, 0)


def test_without_an_empty_slot_the_least_valuable_cache_goes_least_recently_used_first():
    free = {0: SYS + [1] * 50, 1: SYS + [2] * 5, 2: SYS + [3] * 5}
    last_used = {0: 1, 1: 3, 2: 2}
    plan = plan_slot(SYS + [8], 99, free, {}, last_used)
    assert plan == SlotPlan(2, len(SYS))  # loses 5 tokens, and is older than slot 1


def test_limits_on_reuse():
    prompt = SYS + [8]
    # The last prompt token always runs (its logits are needed).
    assert plan_slot(prompt, 99, {0: prompt}, {}, {}) == SlotPlan(0, len(prompt) - 1)
    # Prompt logits from position 10 on: at most 10 tokens reused.
    # Prompt logits from position 10 on: 10 tokens reusable, not worth losing 31.
    assert plan_slot(prompt, 10, {0: prompt, 1: []}, {}, {}) == SlotPlan(1, 0)
    assert plan_slot(prompt, 10, {0: prompt}, {}, {}) == SlotPlan(0, 10)
    # limit 0 (every position scored): the least cached slot, nothing reused or copied.
    assert plan_slot(prompt, 0, {0: prompt, 1: [5]}, {}, {}) == SlotPlan(1, 0)


def test_common_prefix_across_block_edges():
    from clients.llama_cpp.slots import common_prefix

    base = list(range(1000))
    for cut in (0, 1, 255, 256, 257, 511, 512, 999):
        other = base[:cut] + [-1] + base[cut + 1:]
        assert common_prefix(base, other) == cut
    assert common_prefix(base, base[:700]) == 700
    assert common_prefix((), base) == 0


def test_running_slots_stay_one_run():
    """llama.cpp runs one ubatch per run of consecutive running slots: a new sequence
    takes the slot next to the running ones, not an isolated one."""
    assert runs([]) == 0 and runs([3]) == 1 and runs([2, 0, 1]) == 1 and runs([0, 2, 3]) == 2
    running = {0: [5] * 10, 1: [6] * 10}
    # Both empty: slot 2 (next to the run) rather than slot 5.
    assert plan_slot([1, 2, 3], 99, {5: [], 2: []}, running, {}).slot == 2
    # A hole in the run is filled first: {0, 1, 3} + 2 is one run.
    assert plan_slot([1, 2, 3], 99, {2: [], 4: [], 7: []}, {**running, 3: [7]}, {}).slot == 2


def test_returning_conversation_keeps_its_own_slot_apart_from_the_run():
    """No copy at admission for the run's sake (a burst fills its own gaps; the engine
    closes a gap that lasts): the cheapest slot still wins."""
    conv = SYS + [1, 2, 3, 4] + [7, 7]
    running = {0: [5] * 10, 1: [6] * 10}
    assert plan_slot(conv + [5, 6], 99, {2: [], 6: conv}, running, {}) == SlotPlan(6, len(conv))
