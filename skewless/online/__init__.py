"""Online reads of windowed features from the Redis tiles (and batch records) the pipeline writes."""

from skewless.online.reader import AsOfNotAlignedError, EntityValues, WindowedRead, read_windowed

__all__ = ["AsOfNotAlignedError", "EntityValues", "WindowedRead", "read_windowed"]
