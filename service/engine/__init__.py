"""The use case: ``stain_slide`` (and ``stain_region``), the one tile loop the CLI, the worker
and the tests all call, over the numerics (service.core) and the slide files (service.slide).

It takes a typed ``StainSpec``; the settings are turned into one at the edges (service.runtime).
"""
