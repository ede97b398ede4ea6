"""The random streams (wavediffusion.seeds): one config seed never gives two uses, or two
draws of one use, the same seed."""

from __future__ import annotations

import itertools

import pytest

from wavediffusion.seeds import Stream, derive_seed

SEEDS = (0, 1, 3)  # config seeds the workflow uses
SMALL = range(12)  # shard indices, ranks, epochs, family codes...


def small_key_tuples() -> list[tuple[int, ...]]:
    """No key, one key, two keys, each below len(SMALL): zeros in every position included."""
    return [(), *((k,) for k in SMALL), *itertools.product(SMALL, SMALL)]


def test_distinct_draws_never_share_a_seed():
    """Every (seed, stream, keys) gets its own seed: e.g. sampling shard 0 is not the FID
    reference subset, nor rank 0's training stream, nor another config seed's shard."""
    draws = [(seed, stream, keys) for seed in SEEDS for stream in Stream for keys in small_key_tuples()]
    derived = [derive_seed(seed, stream, *keys) for seed, stream, keys in draws]
    assert len(set(derived)) == len(draws)
    assert all(0 <= value < 2**63 for value in derived)  # fits torch's manual_seed and an int64 column


@pytest.mark.parametrize("stream", list(Stream))
def test_trailing_zero_keys_count(stream):
    """SeedSequence drops trailing zero words; derive_seed must not: (s, a, k) and (s, a, k, 0)
    are two draws (e.g. a shard k and the first sub-draw of k)."""
    for seed in SEEDS:
        assert derive_seed(seed, stream) != derive_seed(seed, stream, 0)
        for k in SMALL:
            assert derive_seed(seed, stream, k) != derive_seed(seed, stream, k, 0)
            assert derive_seed(seed, stream, k, 0) != derive_seed(seed, stream, k, 0, 0)


def test_the_stream_must_be_named():
    """A bare integer where the stream goes (the old derive_seed(seed, k)) is refused, even
    one equal to a stream's value."""
    with pytest.raises(TypeError, match="Stream"):
        derive_seed(0, int(Stream.SAMPLING_SHARD), 0)
    with pytest.raises(TypeError, match="Stream"):
        derive_seed(0, 0)


def test_seeds_do_not_change():
    """Every stored result (pairs-store seeds, checkpoints' data order, Table 8 samples) was
    drawn from these values: changing the mixing or renumbering a stream changes them all."""
    assert derive_seed(0, Stream.SAMPLING_SHARD, 0) == 982568622751215081
    assert derive_seed(3, Stream.VALIDATION, 1, 2, 3) == 8037893996294421233
