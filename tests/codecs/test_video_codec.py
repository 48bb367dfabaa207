"""PatchCodec: exact round trips, documented token order, positions and shape errors."""

from __future__ import annotations

import pytest
import torch

from lightning_mf.codecs import PatchCodec
from lightning_mf.codecs.video import to_uint8
from lightning_mf.spec import AVSpec

SPEC = AVSpec(fps=16, height=32, width=24, frames_per_chunk=4)


def _uint8_video(b: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, 3, SPEC.height, SPEC.width), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("patch,tubelet", [(4, 1), (8, 2), (2, 4)])
def test_uint8_round_trip_is_bit_exact(patch: int, tubelet: int) -> None:
    codec = PatchCodec(SPEC, patch=patch, tubelet=tubelet)
    video = _uint8_video(2, 8)
    tokens = codec.encode(video)
    assert tokens.dtype == torch.float32
    assert tokens.min() >= -1 and tokens.max() <= 1
    assert torch.equal(to_uint8(codec.decode(tokens)), video)


@pytest.mark.parametrize("tubelet", [1, 2])
def test_float_round_trip_is_exact(tubelet: int) -> None:
    codec = PatchCodec(SPEC, patch=4, tubelet=tubelet)
    video = torch.rand(3, 4, 3, SPEC.height, SPEC.width, generator=torch.Generator().manual_seed(1)) * 2 - 1
    tokens = codec.encode(video.double())
    assert tokens.dtype == torch.float64
    assert torch.equal(codec.decode(tokens), video.double())


def test_token_shape_and_order() -> None:
    codec = PatchCodec(SPEC, patch=4)
    video = _uint8_video(2, 3)
    tokens = codec.encode(video)
    rows, cols = SPEC.height // 4, SPEC.width // 4
    assert tokens.shape == (2, 3 * rows * cols, 4 * 4 * 3)
    assert (codec.token_dim, codec.tokens_per_frame, codec.tokens_per_chunk) == (48, rows * cols, 4 * rows * cols)
    as_float = video.float() / 127.5 - 1
    # First token: top-left patch of frame 0, flattened as (channel, pixel row, pixel column).
    assert torch.equal(tokens[1, 0], as_float[1, 0, :, :4, :4].flatten())
    # Raster order: time-major, then patch row, then patch column.
    t, r, c = 2, 5, 3
    patch = as_float[0, t, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4]
    assert torch.equal(tokens[0, (t * rows + r) * cols + c], patch.flatten())


def test_tubelet_token_holds_consecutive_frames() -> None:
    codec = PatchCodec(SPEC, patch=8, tubelet=2)
    video = _uint8_video(1, 6)
    tokens = codec.encode(video)
    rows, cols = SPEC.height // 8, SPEC.width // 8
    assert tokens.shape == (1, 3 * rows * cols, 2 * 8 * 8 * 3)
    assert codec.tokens_per_chunk == 2 * rows * cols
    as_float = video.float() / 127.5 - 1
    # Token of time step 1 (frames 2 and 3), row 1, column 2: (frame in tubelet, channel, y, x) order.
    expected = as_float[0, 2:4, :, 8:16, 16:24].flatten()
    assert torch.equal(tokens[0, (1 * rows + 1) * cols + 2], expected)


def test_positions_follow_token_order() -> None:
    codec = PatchCodec(SPEC, patch=8)
    rows, cols = SPEC.height // 8, SPEC.width // 8
    pos = codec.positions(5)
    assert pos.shape == (5 * rows * cols, 3) and pos.dtype == torch.float32
    t, r, c = 3, 2, 1
    assert pos[(t * rows + r) * cols + c].tolist() == [pytest.approx((t + 0.5) / SPEC.fps), r, c]  # frame t's centre
    assert torch.allclose(pos[:: rows * cols, 0], (torch.arange(5) + 0.5) / SPEC.fps)

    tube = PatchCodec(SPEC, patch=8, tubelet=2).positions(4)
    assert tube.shape == (2 * rows * cols, 3)
    assert tube[rows * cols, 0].item() == pytest.approx(3 / SPEC.fps)  # frames 2 and 3 cover [2, 4) / fps


def test_construction_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"patch=5 must divide the frame size spec.height=32 and spec.width=24"):
        PatchCodec(SPEC, patch=5)
    with pytest.raises(ValueError, match=r"patch=16 .*spec.width=24"):
        PatchCodec(SPEC, patch=16)
    with pytest.raises(ValueError, match=r"tubelet=3 does not divide spec.frames_per_chunk=4"):
        PatchCodec(SPEC, tubelet=3)
    with pytest.raises(ValueError, match=r"patch must be a positive integer, got 0"):
        PatchCodec(SPEC, patch=0)


def test_encode_and_decode_shape_errors_say_what_was_expected() -> None:
    codec = PatchCodec(SPEC, patch=4, tubelet=2)
    with pytest.raises(ValueError, match=r"must be \(B, T, 3, 32, 24\).*got \(1, 2, 3, 24, 32\)"):
        codec.encode(torch.zeros(1, 2, 3, 24, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"got \(2, 3, 32, 24\)"):
        codec.encode(torch.zeros(2, 3, SPEC.height, SPEC.width))
    with pytest.raises(ValueError, match=r"num_frames=3 must be a positive multiple of tubelet=2"):
        codec.encode(torch.zeros(1, 3, 3, SPEC.height, SPEC.width))
    with pytest.raises(ValueError, match=r"uint8 or float"):
        codec.encode(torch.zeros(1, 2, 3, SPEC.height, SPEC.width, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"tokens must be \(B, N, 96\)"):
        codec.decode(torch.zeros(1, codec.tokens_per_frame, 48))
    with pytest.raises(ValueError, match=r"num_frames=5"):
        codec.positions(5)
