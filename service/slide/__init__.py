"""Slide I/O: the only package that imports pyvips."""

from service.slide.reader import (
    ImageInfo,
    OpenedMode,
    PairInfo,
    SlideInputs,
    open_pair,
    probe_pair,
    resolve_scan_dir,
)
from service.slide.writer import PyramidWriter, read_overview, write_thumbnail

__all__ = [
    "ImageInfo",
    "OpenedMode",
    "PairInfo",
    "PyramidWriter",
    "SlideInputs",
    "open_pair",
    "probe_pair",
    "read_overview",
    "resolve_scan_dir",
    "write_thumbnail",
]
