"""fracture-curate: an honest, leakage-free training set from a messy folder of bone X-rays."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fracture-curate")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
