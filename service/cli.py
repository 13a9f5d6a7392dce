"""The `dscm` command: stain | info | models (engine) and serve | worker | keys (service)."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dscm")
def main() -> None:
    """Digitally stained confocal microscopy: RCM/FCM slides to H&E-like pyramids."""


# ---- engine commands (stain, info, models) are defined below this line ----

# ---- service commands (serve, worker, keys) are defined below this line ----
