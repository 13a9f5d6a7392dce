"""Gareau's linear digital stain (Gareau 2009, J. Biomed. Opt. 14(3):034050).

Fluorescence becomes hematoxylin-like purple, reflectance eosin-like pink:
``DSCM_c = 1 - F (1 - H_c) - R (1 - E_c)``, clipped to [0, 1].
"""

from __future__ import annotations

import numpy as np

HEMATOXYLIN_RGB = (0.30, 0.20, 1.00)
EOSIN_RGB = (1.00, 0.55, 0.88)

_H_ABSORB = 1.0 - np.asarray(HEMATOXYLIN_RGB, dtype=np.float32)
_E_ABSORB = 1.0 - np.asarray(EOSIN_RGB, dtype=np.float32)


def gareau_stain(fcm: np.ndarray, rcm: np.ndarray) -> np.ndarray:
    """Stain normalised FCM and RCM (same shape ``(..., H, W)``, values in [0, 1]).

    Returns float32 RGB with channels first: ``(..., 3, H, W)`` in [0, 1], the layout the
    generator consumes.
    """
    if fcm.shape != rcm.shape:
        raise ValueError(f"FCM {fcm.shape} and RCM {rcm.shape} differ in shape")
    f = fcm.astype(np.float32, copy=False)[..., None, :, :]
    r = rcm.astype(np.float32, copy=False)[..., None, :, :]
    shape = (1,) * (f.ndim - 3) + (3, 1, 1)
    rgb = 1.0 - f * _H_ABSORB.reshape(shape) - r * _E_ABSORB.reshape(shape)
    return np.clip(rgb, 0.0, 1.0, out=rgb)
