"""Local infrastructure started as plain processes from the pinned artifacts (`make up`) and, as a
fallback when no container engine runs, by the test fixtures. One module per service implements
:class:`skewless.stack.base.Service`."""
