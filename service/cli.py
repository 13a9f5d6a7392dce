"""The `dscm` command: stain | info | models (engine) and serve | worker | keys (service)."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, cast

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from service.runtime.config import get_settings
from service.vocabulary.case import Case, Patient
from service.vocabulary.errors import DscmError, InputError, OutputError
from service.vocabulary.options import (
    COMPRESSIONS,
    DEFAULT_OPTIONS,
    FCM_DETECTOR,
    JPEG_QUALITY_RANGE,
    OPTION_HELP,
    OUTPUT_FORMATS,
    RCM_DETECTOR,
    ExtraLayer,
    JobOptions,
    OutputFormat,
    StageName,
)
from service.vocabulary.progress import overall_progress
from service.vocabulary.report import StainReport

if TYPE_CHECKING:
    from service.slide import SlideInputs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dscm")
def main() -> None:
    """Digitally stained confocal microscopy: RCM/FCM slides to H&E-like pyramids."""


# ---- engine commands (stain, info, models) are defined below this line ----


def fail(error: DscmError) -> NoReturn:
    """One line on stderr and a non-zero exit: the CLI's face for every expected error."""
    click.echo(f"dscm: error: {error.detail}", err=True)
    sys.exit(EXIT_CODES.get(error.http_status, 1))


EXIT_CODES = {404: 3, 415: 4, 422: 4, 507: 5, 500: 1}


@main.command()
@click.argument("scan_dir", required=False, type=click.Path(path_type=Path))
@click.option("--rcm", type=click.Path(path_type=Path), help="Reflectance image (with --fcm).")
@click.option("--fcm", type=click.Path(path_type=Path), help="Fluorescence image (with --rcm).")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output TIFF (a folder with --format dicom).",
)
@click.option("--stages", help=OPTION_HELP["stages"])
@click.option("--layers", help=OPTION_HELP["layers"])
@click.option("--mpp", "mpp_um", type=float, help=OPTION_HELP["mpp_um"])
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.option("--models", "models_dir", type=click.Path(path_type=Path), help="Model folder.")
@click.option("--tile-px", type=int, help="Output tile edge in pixels (multiple of 16).")
@click.option(
    "--batch-size", type=int, help="Tiles per model call (default: DSCM_BATCH_SIZE or 1)."
)
@click.option(
    "--threads",
    type=int,
    help="Threads of the inference backend, onnxruntime or OpenVINO, whichever runs "
    "(`dscm models` names it; default: all cores).",
)
@click.option(
    "--compression", type=click.Choice(COMPRESSIONS), default=DEFAULT_OPTIONS.compression,
    show_default=True, help=OPTION_HELP["compression"],
)  # fmt: skip
@click.option(
    "--quality", "jpeg_quality", type=click.IntRange(*JPEG_QUALITY_RANGE),
    default=DEFAULT_OPTIONS.jpeg_quality, show_default=True, help=OPTION_HELP["jpeg_quality"],
)  # fmt: skip
@click.option(
    "--format", "output_format", type=click.Choice(OUTPUT_FORMATS),
    default=DEFAULT_OPTIONS.output_format, show_default=True, help=OPTION_HELP["output_format"],
)  # fmt: skip
@click.option(
    "--label", help="The case's label (one line, at most 200 characters), in the TIFF description."
)
@click.option("--external-id", help="The hospital's accession number, in the TIFF description.")
@click.option("--patient-id", help="DICOM output: Patient ID (at most 64 characters).")
@click.option("--patient-name", help="DICOM output: Patient's Name (Family^Given).")
@click.option("--study-uid", help="DICOM output: the Study Instance UID to file the series under.")
@click.option("--accession-number", help="DICOM output: Accession Number (at most 16 characters).")
@click.option("--rcm-detector", default=RCM_DETECTOR, show_default=True)
@click.option("--fcm-detector", default=FCM_DETECTOR, show_default=True)
@click.option("--allow-swapped", is_flag=True, help=OPTION_HELP["allow_swapped"])
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report on stdout.")
def stain(
    scan_dir: Path | None,
    rcm: Path | None,
    fcm: Path | None,
    output: Path,
    stages: str | None,
    layers: str | None,
    mpp_um: float | None,
    overwrite: bool,
    models_dir: Path | None,
    tile_px: int | None,
    batch_size: int | None,
    threads: int | None,
    compression: Literal["jpeg", "lossless"],
    jpeg_quality: int,
    output_format: OutputFormat,
    label: str | None,
    external_id: str | None,
    patient_id: str | None,
    patient_name: str | None,
    study_uid: str | None,
    accession_number: str | None,
    rcm_detector: str,
    fcm_detector: str,
    allow_swapped: bool,
    as_json: bool,
) -> None:
    """Stain an RCM/FCM pair (--rcm/--fcm) or a Vivascope SCAN_DIR into a pyramidal TIFF (or
    a DICOM whole-slide series, with its TIFF pyramid beside it)."""
    from service.engine.pipeline import stain_slide
    from service.runtime.spec import stain_spec

    try:
        inputs = stain_inputs(scan_dir, rcm, fcm, rcm_detector, fcm_detector)
        try:
            patient = Patient.checked(
                patient_id=patient_id,
                patient_name=patient_name,
                study_instance_uid=study_uid,
                accession_number=accession_number,
            )
            case = replace(Case.checked(label, external_id), patient=patient)
        except ValueError as exc:  # the message names the rule, never the value
            raise InputError(f"{exc}") from exc
        options = JobOptions(
            stages=stage_names(stages),
            layers=cast(tuple[ExtraLayer, ...], comma_names(layers) or ()),
            output_format=output_format,
            compression=compression,
            jpeg_quality=jpeg_quality,
            mpp_um=mpp_um,
            allow_swapped=allow_swapped,
        )
        check_output_path(output, overwrite, options)
        spec = stain_spec(
            get_settings(),
            options,
            case,
            models_dir=models_dir,
            tile_px=tile_px,
            batch_size=batch_size,
            threads=threads,
        )
        with ProgressBar() as bar:
            report = stain_slide(inputs, output, spec, progress=bar.update)
    except DscmError as error:
        fail(error)
    print_stain_result(report, output, as_json)


def stage_names(stages: str | None) -> tuple[StageName, ...] | None:
    """``--stages a,b`` as names (none or blank: the default); JobOptions checks them."""
    return cast(tuple[StageName, ...] | None, comma_names(stages))


def comma_names(text: str | None) -> tuple[str, ...] | None:
    """``a, b,`` as ``("a", "b")``; None for none or blank. JobOptions checks the names."""
    names = tuple(dict.fromkeys(n.strip() for n in (text or "").split(",") if n.strip()))
    return names or None


def print_stain_result(report: StainReport, output: Path, as_json: bool) -> None:
    """The report as JSON on stdout, or one summary line on stderr."""
    flags = [report.qc.flag, report.inputs_check.flag if report.inputs_check else None]
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        for text in filter(None, flags):
            click.echo(f"dscm: warning: {text}", err=True)
        return
    seconds, tiles = report.timings_s["total"], report.tiles
    flag = "".join(f"; {text}" for text in flags if text)
    written = f"{output}"
    if report.dicom is not None:
        instances = len(report.dicom.instances)
        written = f"{output}/ (DICOM series, {instances} instances) and {report.output}"
    click.echo(
        f"wrote {written} ({len(report.levels)} levels, stages {','.join(report.stages)}, "
        f"{tiles.computed}/{tiles.total} tiles computed, {seconds:.1f} s{flag})",
        err=True,
    )


def stain_inputs(
    scan_dir: Path | None,
    rcm: Path | None,
    fcm: Path | None,
    rcm_detector: str,
    fcm_detector: str,
) -> SlideInputs:
    """The pair from a scan folder or from --rcm/--fcm, never both."""
    from service.slide import SlideInputs, resolve_scan_dir

    if scan_dir is not None and (rcm or fcm):
        raise InputError("give either SCAN_DIR or --rcm and --fcm, not both")
    if scan_dir is not None:
        return resolve_scan_dir(scan_dir, rcm_detector, fcm_detector)
    if rcm is not None and fcm is not None:
        return SlideInputs(rcm=rcm, fcm=fcm)
    raise InputError("give a SCAN_DIR, or both --rcm and --fcm")


OUTPUT_SUFFIXES = (".tif", ".tiff")


def check_output_path(output: Path, overwrite: bool, options: JobOptions) -> None:
    """The output is a TIFF by name (a DICOM series: a folder, not named .tif), and an
    existing output is replaced only when asked."""
    is_tiff_name = output.suffix.lower() in OUTPUT_SUFFIXES
    if options.output_format == "dicom" and is_tiff_name:
        raise InputError(
            f"{output.name}: a DICOM series is a folder of instances; name it without .tif "
            "(its TIFF pyramid is written beside it)"
        )
    if options.output_format != "dicom" and not is_tiff_name:
        raise InputError(
            f"{output.name}: the output is a pyramidal TIFF; name it .tif or .tiff (or .ome.tif)"
        )
    if output.is_file() and options.output_format == "dicom":
        raise OutputError(f"{output} is a file; a DICOM series needs a folder")
    for path in {output, options.pyramid_path(output)}:
        if path.exists() and not overwrite:
            raise OutputError(f"{path} exists; pass --overwrite to replace it")


class ProgressBar:
    """One bar for the whole job on a terminal; without one, a line on stderr each time the job
    passes another tenth (logs and pipelines see progress too) and one at 100 % when it ends.

    A phase of few large tiles can pass two tenths at once (the sample's four 1024 px tiles
    are 21 % each): then one line says where the job is, nothing is made up in between."""

    def __init__(self) -> None:
        console = Console(stderr=True)
        self.tty = console.is_terminal
        self.progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f} %"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not self.tty,
        )
        self.task: TaskID | None = None
        self.logged_tenth = -1  # the last tenth of the job a line was printed for

    def __enter__(self) -> ProgressBar:
        self.progress.start()
        self.task = self.progress.add_task("preparing", total=1000)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.progress.stop()
        if exc_type is None and not self.tty and self.logged_tenth < 10:
            self.logged_tenth = 10
            click.echo("100 % done", err=True)

    def update(self, phase: str, done: int, total: int) -> None:
        """Advance the bar; without a terminal, log each further tenth to stderr once the inputs
        were checked."""
        fraction, message = overall_progress(phase, done, total)
        if self.task is not None:
            self.progress.update(self.task, completed=round(fraction * 1000), description=message)
        # nothing while the inputs are checked: a refused input gives its one-line error only
        checked = phase not in ("load_models", "prepare")
        tenth = math.floor(fraction * 10 + 1e-9)
        if not self.tty and checked and tenth > self.logged_tenth:
            self.logged_tenth = tenth
            click.echo(f"{fraction * 100:3.0f} % {message}", err=True)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="JSON on stdout.")
def info(path: Path, as_json: bool) -> None:
    """Levels, size and microns per pixel of an image (input or stained pyramid), or of both
    images of a Vivascope scan folder."""
    from service.slide import resolve_scan_dir
    from service.slide.info import describe

    try:
        if path.is_dir():
            inputs = resolve_scan_dir(path, RCM_DETECTOR, FCM_DETECTOR)
            described = [describe(inputs.rcm), describe(inputs.fcm)]
        else:
            described = [describe(path)]
    except DscmError as error:
        fail(error)
    if as_json:
        click.echo(json.dumps(described[0] if len(described) == 1 else described, indent=2))
        return
    for data in described:
        mpp = f"{data['mpp_um']:.4g} um/px" if data["mpp_um"] else "pixel size unknown"
        click.echo(
            f"{data['path']}: {data['format']}, {data['bands']} band(s) "
            f"{data['pixel_format']}, {mpp}"
        )
        for i, level in enumerate(data["levels"]):
            click.echo(f"  level {i}: {level['width_px']} x {level['height_px']} px")


@main.command()
@click.option("--models", "models_dir", type=click.Path(path_type=Path), help="Model folder.")
@click.option("--json", "as_json", is_flag=True, help="The full cards as JSON.")
def models(models_dir: Path | None, as_json: bool) -> None:
    """The installed models, which stages run by default, and their measured quality."""
    from service.core.cards import read_card_json
    from service.core.chain import card_mpp_um, resolve_stages
    from service.core.models import discover_stage_models, stages_off_by_default

    folder = models_dir or get_settings().models_dir
    try:
        found = discover_stage_models(folder)
        # through the card schema: a broken card is named here as it is when a job loads it
        cards = {role: read_card_json(path.with_suffix(".json")) for role, path in found.items()}
        default_off = stages_off_by_default(found)
        default = resolve_stages(None, found, default_off)
    except (DscmError, OSError, ValueError) as error:
        fail(error if isinstance(error, DscmError) else InputError(str(error)))
    if as_json:
        click.echo(json.dumps(cards, indent=2))
        return
    click.echo(f"default chain: {' -> '.join(default)}")
    click.echo(f"inference: {describe_backend()}")
    for role in default_off:
        click.echo(f"one flag away: --stages {','.join((*default, role))}")
    if not found:
        click.echo(f"no models in {folder}: only the median and gareau stages can run")
    for role, card in cards.items():
        state = "off by default" if role in default_off else "on"
        click.echo(f"{role:<10} {card.get('name')} v{card.get('version')} ({state})")
        if "architecture" in card:
            click.echo(f"           {card['architecture']}, halo {card.get('halo_px')} px")
            click.echo(f"           runs on {describe_model_backend(found[role], card)}")
        trained = card_mpp_um(card)
        if trained:
            click.echo(f"           trained at {trained} um/px")
        real = card.get("metrics", {}).get("real_crop") or {}
        for method, values in real.items():
            click.echo(
                f"           real crop, {method}: FD_skin {values['fd_skin']:.1f}, "
                f"cb {values['cb_db']:.1f} dB, nuc_r {values['nuc_r']:.3f}"
            )


def describe_backend() -> str:
    """The backend DSCM_INFERENCE picks on this machine, and why (or why it cannot run)."""
    from service.core.backends import choose_backend

    settings = get_settings()
    try:
        backend = choose_backend(settings.inference, settings.inference_precision)
    except DscmError as error:
        return f"unavailable: {error.detail}"
    return f"{backend.label} ({backend.reason})"


def describe_model_backend(path: Path, card: dict[str, Any]) -> str:
    """The backend one model runs on here, and why: under ``auto`` on a CPU with bf16 units,
    the timed probe's figures (measured once per machine and model, then cached)."""
    import os

    from service.core.backend_probe import settle_backend
    from service.core.backends import choose_backend

    settings = get_settings()
    try:
        backend = choose_backend(settings.inference, settings.inference_precision)
        threads = settings.threads or os.cpu_count() or 1
        backend = settle_backend(backend, path, str(card.get("sha256")), threads)
    except DscmError as error:
        return f"unavailable: {error.detail}"
    return f"{backend.label} ({backend.reason})"


# ---- service commands (serve, worker, keys) are defined below this line ----


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--log-level", default=None, help="Override DSCM_LOG_LEVEL (debug, info, ...).")
def serve(host: str, port: int, log_level: str | None) -> None:
    """Run the HTTP API (with an in-process worker unless DSCM_BROKER_URL is set)."""
    from service.api import create_app
    from service.api.server import run_server
    from service.jobs.stainer import PipelineStainer
    from service.runtime.logs import configure_logging

    settings = get_settings()
    level = (log_level or settings.log_level).upper()
    configure_logging(settings.log_format, level)
    if not settings.broker_url:
        click.echo("dscm: no DSCM_BROKER_URL: jobs run in an in-process worker", err=True)
    app = create_app(PipelineStainer(), settings)
    run_server(app, settings, host, port, level.lower())


@main.command()
@click.option(
    "--pool",
    type=click.Choice(["solo", "prefork", "threads"]),
    default="solo",
    show_default=True,
    help="solo: one process per GPU (models loaded once, metrics served in-process).",
)
@click.option("--concurrency", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--hostname", default=None, help="Celery node name (default: celery@host).")
@click.option("--loglevel", default=None, help="Override DSCM_LOG_LEVEL.")
def worker(pool: str, concurrency: int, hostname: str | None, loglevel: str | None) -> None:
    """Run a Celery worker for the jobs the API enqueues (needs DSCM_BROKER_URL)."""
    settings = get_settings()
    if not settings.broker_url:
        raise click.UsageError(
            "DSCM_BROKER_URL is not set; without a broker `dscm serve` runs jobs in-process"
        )
    from service.runtime.logs import install_celery_logging
    from service.worker.app import create_worker_app

    level = (loglevel or settings.log_level).upper()
    install_celery_logging(settings.log_format, level)
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        from service.jobs.telemetry import WORKER_REGISTRY

        start_http_server(settings.worker_metrics_port, registry=WORKER_REGISTRY)
    app = create_worker_app(settings)
    argv = [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--queues={settings.queue_name}",
        f"--loglevel={level}",
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


@main.group()
def keys() -> None:
    """Manage API keys (stored hashed in DSCM_API_KEYS_FILE)."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant the key acts for (e.g. a hospital).")
@click.option(
    "--roles",
    default="submit,read",
    show_default=True,
    help="Comma-separated: submit, read, admin.",
)
@click.option("--file", "key_file", type=click.Path(path_type=Path), default=None)
def keys_create(tenant: str, roles: str, key_file: Path | None) -> None:
    """Create a key; it is printed once, only its sha256 is stored."""
    from pydantic import ValidationError

    from service.api.auth import add_key

    path = key_file or get_settings().effective_api_keys_file
    wanted = [r.strip() for r in roles.split(",") if r.strip()]
    try:
        entry, key = add_key(path, tenant, wanted)
    except (ValidationError, ValueError) as exc:
        raise click.BadParameter(str(exc).splitlines()[0]) from exc
    roles_text = ", ".join(entry.roles)
    click.echo(f"created key {entry.id} for tenant {tenant} ({roles_text}) in {path}", err=True)
    click.echo("store it now; it cannot be shown again:", err=True)
    click.echo(key)


@keys.command("list")
@click.option("--file", "key_file", type=click.Path(path_type=Path), default=None)
def keys_list(key_file: Path | None) -> None:
    """List key ids, tenants and roles (never the keys)."""
    from service.api.auth import read_key_file

    for entry in read_key_file(key_file or get_settings().effective_api_keys_file):
        roles_text = ",".join(entry.roles)
        click.echo(f"{entry.id}\t{entry.tenant}\t{roles_text}\t{entry.created_at or ''}")


@keys.command("revoke")
@click.argument("key_id")
@click.option("--file", "key_file", type=click.Path(path_type=Path), default=None)
def keys_revoke(key_id: str, key_file: Path | None) -> None:
    """Remove a key by its id; the running API stops accepting it at once."""
    from service.api.auth import remove_key

    if not remove_key(key_file or get_settings().effective_api_keys_file, key_id):
        raise click.BadParameter(f"no key with id {key_id}")
    click.echo(f"revoked key {key_id}", err=True)


if __name__ == "__main__":
    main()
