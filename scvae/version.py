"""The installed version of scvae (the lowest layer: every module may import it)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("scvae")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
