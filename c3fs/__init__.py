"""c3fs: a content-addressed filesystem for the outputs of compute jobs."""

__version__ = "0.2.0"
