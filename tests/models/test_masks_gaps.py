"""Layout's validation: a chunk index and a clean flag per token, as two equal 1-D tensors."""

import pytest
import torch

from lightning_mf.models.masks import Layout

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
