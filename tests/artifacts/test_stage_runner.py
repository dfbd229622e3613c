"""The stage runner's own duties beyond keys and locks: what a finished stage leaves resident."""

import platform

import pytest

from lookalike.artifacts.stage_runner import _malloc_trim, release_freed_memory


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(platform.system() != "Linux" or _malloc_trim() is None, reason="glibc's malloc_trim")
def test_memory_a_stage_freed_goes_back_to_the_system_before_the_next_stage():
    # 300 MB in 64 KB blocks, under glibc's mmap threshold: freed, they stay in the heap until trimmed
    blocks = [bytearray(64 << 10) for _ in range(4800)]
    for block in blocks[::50]:
        block[0] = 1
    holding = resident_mb()
    del blocks[:-1]  # the last block keeps the heap's top in place, as a stage's surviving objects do
    before = resident_mb()
    release_freed_memory()
    assert before - resident_mb() > 200 and holding - before < 100  # freed but resident, until released


def test_a_large_process_also_frees_what_only_reference_cycles_held(monkeypatch):
    import weakref

    from lookalike.artifacts import stage_runner

    class Held:
        pass

    held = Held()
    held.itself = held  # a cycle: refcounting alone never frees it
    alive = weakref.ref(held)
    del held
    gc_was = stage_runner.gc.isenabled()
    stage_runner.gc.disable()
    try:
        monkeypatch.setattr(stage_runner, "COLLECT_ABOVE", 0)
        release_freed_memory()
    finally:
        if gc_was:
            stage_runner.gc.enable()
    assert alive() is None
