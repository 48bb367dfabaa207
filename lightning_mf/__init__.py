"""lightning-mf: Mutual Forcing for fast autoregressive audio-video character generation, on PyTorch Lightning."""

from lightning_mf.batch import AVBatch
from lightning_mf.spec import AVSpec

__all__ = ["AVBatch", "AVSpec", "__version__"]
__version__ = "0.1.0"
