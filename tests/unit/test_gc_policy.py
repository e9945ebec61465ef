import gc

from service.gc_policy import settle_after_startup


def test_settling_freezes_survivors_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        survivor = [object() for _ in range(10)]
        settle_after_startup(young_threshold=12_345)
        assert gc.get_freeze_count() >= len(survivor)
        assert gc.get_threshold() == (12_345, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
