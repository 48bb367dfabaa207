"""Flex attention with a block mask built from the layout rule == SDPA with the dense mask, for every layout the model
uses: the forward on the CPU (flex attention has no CPU backward; ``benchmarks/gpu.py`` checks the backward on CUDA)."""

from __future__ import annotations

import pytest
import torch

from lightning_mf.batch import Cond
from lightning_mf.models import AVTransformer, Layout, Tokens
from lightning_mf.models.attention import LayoutMask, attend_layouts, attention_backend

from tiny_models import sequence


def _layout(chunks: list[int], clean: list[bool]) -> Layout:
    return Layout(torch.tensor(chunks), torch.tensor(clean))


LAYOUTS = {  # (queries, keys, window, shift of each key: a sink copy when non-zero)
    "block-causal": (_layout([0, 1, 1, 2, 2, 3], [True] * 6), _layout([0, 1, 1, 2, 2, 3], [True] * 6), None, None),
    "teacher forcing": (
        _layout([0, 1, 2, 1, 2], [True, True, True, False, False]), _layout([0, 1, 2, 1, 2], [True, True, True, False, False]), None, None,
    ),
    "window + moved sink": (
        _layout([5, 5, 6], [False] * 3), _layout([0, 4, 5, 0, 0, 5, 6], [True, True, True, True, True, False, False]), 1,
        torch.tensor([0, 0, 0, 3, 4, 0, 0]),
    ),
    "empty rows (prefix vs audio)": (_layout([0, 0, 1], [True] * 3), _layout([1, 1], [True] * 2), None, None),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_flex_attention_equals_sdpa(name: str) -> None:
    q_layout, k_layout, window, shift = LAYOUTS[name]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g) for n in (len(q_layout), len(k_layout), len(k_layout)))
    outs = {}
    for backend in ("sdpa", "flex"):
        with attention_backend(backend):
            outs[backend] = attend_layouts(q, k, v, LayoutMask(q_layout, k_layout, window, shift))
    mask = LayoutMask(q_layout, k_layout, window, shift).dense()
    assert mask.any() and not mask.all()  # not vacuous: some pairs are masked, some are not
    torch.testing.assert_close(outs["flex"], outs["sdpa"], atol=1e-5, rtol=1e-5)
    if name.startswith("empty"):
        assert outs["flex"][:, :, :2].abs().max() == 0  # no visible key: zeros, as SDPA's path gives


def _teacher_forcing(tokens: dict[str, Tokens]) -> dict[str, Tokens]:
    """[clean chunks ; noisy copies of chunks >= 1] per modality (the training layout)."""
    out = {}
    for m, t in tokens.items():
        later = t.layout.chunk > 0
        noisy = Layout(t.layout.chunk[later], torch.zeros(int(later.sum()), dtype=torch.bool))
        out[m] = Tokens(torch.cat([t.x, t.x[:, later] + 0.3], 1), torch.cat([t.s, t.s[:, later]], 1), torch.cat([t.pos, t.pos[later]]), Layout.cat([t.layout, noisy]))
    return out


@pytest.mark.parametrize("window", [None, 2])
def test_the_joint_model_gives_the_same_velocities_with_either_backend(window: int | None, joint_model: AVTransformer) -> None:
    """A whole forward: prefix, cross-modal gates, teacher forcing's noisy copies and, with a window, moved sinks."""
    tokens = _teacher_forcing(sequence(("video", "audio"), 5))
    cond = Cond.from_transcripts([[{"token": "a", "start": 0.1, "end": 0.3}]] * 2, 16)
    out = {}
    with torch.no_grad():
        for backend in ("sdpa", "flex"):
            with attention_backend(backend):
                out[backend] = joint_model(tokens, d=0.25, cond=cond, window=window)
    for m in tokens:
        assert out["sdpa"][m].abs().max() > 0.1
        torch.testing.assert_close(out["flex"][m], out["sdpa"][m], atol=1e-4, rtol=1e-4)


def test_an_unknown_backend_is_refused_and_the_previous_one_restored() -> None:
    with pytest.raises(ValueError, match="attention backend must be one of"):
        with attention_backend("xformers"):
            pass
    with attention_backend("flex"):
        with pytest.raises(RuntimeError):
            with attention_backend("sdpa"):
                raise RuntimeError
        from lightning_mf.models import attention

        assert attention._backend == "flex"
