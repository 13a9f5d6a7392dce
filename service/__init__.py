"""dscm: digitally stained confocal microscopy as a service."""

__version__ = "0.1.0"
