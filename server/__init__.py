"""edgefleet: a self-hosted edge inference node, fleet router and latency benchmark suite."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgefleet")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
