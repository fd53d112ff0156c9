"""Batches built ahead in a child process are exactly those built in place."""

import numpy as np
import pytest
import torch

from vitdemo.classroom import scenes
from vitdemo.classroom.batches import BatchMaker
from vitdemo.classroom.model import build_processor
from vitdemo.classroom.prefetch import Prefetcher


@pytest.fixture(scope="module")
def processor():
    return build_processor()


def test_prefetched_batches_and_random_state_equal_in_place_ones(processor):
    kwargs = {"batch_size": 3, "max_turns": 2, "form_weights": {f: 1.0 for f in scenes.FORMS}}
    in_place = BatchMaker(processor, np.random.default_rng(5))
    expected = [in_place.instruction_batch(**kwargs) for _ in range(3)]
    ahead = BatchMaker(processor, np.random.default_rng(5))
    with Prefetcher(ahead, "instruction_batch", kwargs, count=3) as feed:
        got = [feed.next() for _ in range(3)]
        with pytest.raises(RuntimeError, match="all 3"):
            feed.next()
    for want, have in zip(expected, got):
        assert want.keys() == have.keys()
        for key in want:
            assert torch.equal(want[key], have[key]), key
    # The parent's generator continues where the child's stopped.
    assert ahead.rng.random() == in_place.rng.random()


def test_a_failing_batch_is_reported_not_waited_on(processor):
    maker = BatchMaker(processor, np.random.default_rng(0))
    with Prefetcher(maker, "instruction_batch", {"batch_size": 2, "max_turns": 1, "form_weights": {}},
                    count=2) as feed:
        with pytest.raises(RuntimeError, match="building a batch failed"):
            feed.next()
