"""Layout's validation (a chunk index and a clean flag per token, as two equal 1-D tensors) and attention through a
mask with empty rows."""

import pytest
import torch

from lightning_mf.models.masks import Layout
from lightning_mf.models.attention import attend

FAULTS = {  # chunk shape, clean shape: each fault alone
    "unequal": ((3,), (2,)),
    "2-D": ((2, 3), (2, 3)),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_layout_refuses_unequal_or_multidimensional_flags(fault: str) -> None:
    """Either fault alone is refused (a layout that is not one flag per token would broadcast in the masks), with
    both shapes in the message."""
    chunk, clean = FAULTS[fault]
    shapes = rf"chunk {tuple(chunk)} and clean {tuple(clean)}".replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(ValueError, match=rf"Layout: {shapes} must be equal 1-D shapes"):
        Layout(torch.zeros(chunk, dtype=torch.long), torch.ones(clean, dtype=torch.bool))


def test_a_query_with_no_visible_key_gets_zeros_and_the_others_their_masked_attention() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 4, generator=g) for n in (3, 5, 5))
    mask = torch.rand(2, 1, 3, 5, generator=g) > 0.3
    mask[..., 0] = True
    mask[1, :, 1] = False  # the second query of the second sample sees nothing
    out = attend(q, k, v, mask)
    assert torch.equal(out[1, :, 1], torch.zeros(2, 4))
    for b, i in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2)):
        logits = (q[b, :, i, None] @ k[b].transpose(-1, -2))[:, 0] / 2.0  # (H, Nk), scaled by sqrt(Dh)
        weights = torch.softmax(logits + torch.where(mask[b, 0, i], 0.0, -torch.inf), -1)
        torch.testing.assert_close(out[b, :, i], (weights[:, None] @ v[b])[:, 0])
    torch.testing.assert_close(attend(q, k, v, mask[:1].expand(2, -1, -1, -1)), torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:1]))
