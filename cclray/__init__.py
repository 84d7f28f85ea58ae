"""cclray: MRI contrast synthesis pretrained with constrained contrastive learning, trained with Ray."""
import importlib.metadata

try:
    __version__ = importlib.metadata.version("cclray")  # one source: pyproject.toml's version
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"
