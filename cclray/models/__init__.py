"""Networks: the shared 3D encoder-decoder and the two stage wrappers."""
from cclray.models.heads import (
    CCLNet,
    ProjectionHead,
    Synthesizer,
    build_ccl_net,
    build_synthesizer,
    transfer_pretrained,
)
from cclray.models.layout import to_channels_last
from cclray.models.unet import ConvBlock, EncoderDecoder

__all__ = [
    "CCLNet", "ConvBlock", "EncoderDecoder", "ProjectionHead", "Synthesizer",
    "build_ccl_net", "build_synthesizer", "to_channels_last", "transfer_pretrained",
]
