"""One error hierarchy for the whole service.

Each error carries a machine-readable ``code`` and the HTTP status the API answers with; the CLI
prints ``str(error)`` on one line and exits non-zero. Classes also subclass the matching builtin
so that callers who only know the standard library still catch them sensibly.
"""

from __future__ import annotations


class DscmError(Exception):
    """Base of every error the service raises on purpose."""

    code = "dscm_error"
    http_status = 500
    title = "Internal error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InputError(DscmError, ValueError):
    """The caller's input is unusable (shape, format, options)."""

    code = "invalid_input"
    http_status = 422
    title = "Invalid input"


class PixelSizeUnknown(InputError):
    """Neither the files, the caller nor the operator says how large a pixel is."""

    code = "pixel_size_unknown"
    title = "Pixel size unknown"


class SlideNotFound(InputError, FileNotFoundError):
    code = "slide_not_found"
    http_status = 404
    title = "Slide not found"


class UnsupportedFormat(InputError):
    """Not an image format we accept (text renamed .tif, an untrusted loader, ...)."""

    code = "unsupported_format"
    http_status = 415
    title = "Unsupported media type"


class CorruptSlide(InputError):
    """Truncated or corrupt image data."""

    code = "corrupt_slide"
    http_status = 422
    title = "Corrupt or truncated image"


class SizeMismatch(InputError):
    code = "size_mismatch"
    http_status = 422
    title = "RCM and FCM sizes differ"


class BandError(InputError):
    code = "wrong_band_count"
    http_status = 422
    title = "Input must be single-band grayscale"


class PixelLimitExceeded(InputError):
    code = "pixel_limit_exceeded"
    http_status = 422
    title = "Image too large"


class InputsSwapped(InputError):
    """The file given as FCM looks like reflectance and the RCM like fluorescence
    (service.core.sanity); refused unless the caller allows it (allow_swapped)."""

    code = "inputs_swapped"
    http_status = 422
    title = "FCM and RCM look swapped"


class InputsIdentical(InputError):
    """FCM and RCM are the same image (service.core.sanity)."""

    code = "inputs_identical"
    http_status = 422
    title = "FCM and RCM are the same image"


class ModelError(DscmError, RuntimeError):
    """A model file or its card is missing, inconsistent or fails to load."""

    code = "model_error"
    http_status = 500
    title = "Model error"


class OutputError(DscmError, OSError):
    """The output cannot be written (disk full, permissions)."""

    code = "output_unwritable"
    http_status = 507
    title = "Output cannot be written"


class JobCancelled(DscmError):
    """Raised from a progress callback to stop a stain between tiles."""

    code = "cancelled"
    http_status = 409
    title = "Job cancelled"
