"""``e2urec-service``: migrate the database, import a catalogue, train and register the base
model, and run the API."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(
    help="The e2urec service: database, catalogue, base model and API.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)
ROOT = Path(__file__).resolve().parents[1]
MIGRATION_LOCK = 0x6532_6D67  # "e2mg"


def friendly(fn):
    """The library's one-line errors (exit code 2, never a traceback), plus a database that
    cannot be reached."""
    from e2urec.cli import friendly_errors

    inner = friendly_errors(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from sqlalchemy.exc import OperationalError

        try:
            return inner(*args, **kwargs)
        except OperationalError as exc:
            err.print(
                f"[bold red]error:[/] cannot reach the database ({escape(str(exc.orig))}); "
                "check E2UREC_DATABASE_URL",
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(2) from None

    return wrapper


def migrate_database(url: str) -> None:
    """``alembic upgrade head`` on ``url``: the only way the schema is ever created or changed.
    On PostgreSQL it holds an advisory lock, so API containers starting together migrate one
    after the other instead of racing."""
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import text

    from service.core.db.session import make_engine

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            postgres = engine.dialect.name == "postgresql"
            if postgres:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
                connection.commit()
            try:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()
            finally:
                if postgres:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
                    connection.commit()
    finally:
        engine.dispose()


@app.command()
@friendly
def migrate() -> None:
    """Create or upgrade the database schema (alembic upgrade head)."""
    from service.core.settings import get_settings

    url = get_settings().db_url
    migrate_database(url)
    console.print(f"database at {_safe(url)} is at the latest schema")


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


Format = Annotated[str, typer.Option("--format", help="auto, synthetic, ml-1m, ml-100k, goodbooks")]


def import_catalog(
    path: Path | None = None,
    fmt: str = "auto",
    ratings_file: str | None = None,
    synthetic=None,  # e2urec.data.SyntheticConfig; default 300 users, 400 items, seed 42
) -> None:
    """Load a dataset (the synthetic default without ``path``) into an empty database, in one
    transaction, with a progress bar per table."""
    from tqdm import tqdm

    from e2urec.data import SyntheticConfig, load_dataset
    from service.core.db.session import session_scope
    from service.core.settings import get_settings
    from service.domain.importer import import_dataset

    settings = get_settings()
    migrate_database(settings.db_url)
    started = time.perf_counter()
    dataset = load_dataset(
        fmt if path else "synthetic",
        path,
        ratings_file=ratings_file,
        synthetic=synthetic or SyntheticConfig(users=300, items=400, seed=42),
    )
    console.print(f"loaded {dataset.summary()}")
    source = {"format": fmt, "path": str(path) if path else None, "ratings_file": ratings_file}
    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int) -> None:
        bar = bars.setdefault(name, tqdm(total=total, desc=f"importing {name}", unit="row"))
        bar.update(done - bar.n)

    with session_scope(settings.db_url) as session:
        report = import_dataset(session, dataset, source, progress=progress)
    for bar in bars.values():
        bar.close()
    console.print(
        f"imported {report.users:,} users, {report.items:,} items and "
        f"{report.interactions:,} interactions in {time.perf_counter() - started:.1f}s"
    )


@app.command("import")
@friendly
def import_(
    path: Annotated[
        Path | None, typer.Option(help="dataset folder; omit for the synthetic default")
    ] = None,
    fmt: Format = "auto",
    ratings_file: Annotated[str | None, typer.Option(help="ratings file inside the folder")] = None,
    synthetic_users: int = 300,
    synthetic_items: int = 400,
    seed: int = 42,
) -> None:
    """Load a dataset's users, items and ratings into an empty database (one transaction)."""
    from e2urec.data import SyntheticConfig

    synthetic = SyntheticConfig(users=synthetic_users, items=synthetic_items, seed=seed)
    import_catalog(path, fmt, ratings_file, synthetic)


@app.command()
@friendly
def bootstrap(
    backbone: Annotated[
        str, typer.Option(help="tiny, tiny-t5, smollm2-135m, an HF folder or a .gguf")
    ] = "tiny",
    epochs: Annotated[int | None, typer.Option(help="default: the backbone's recipe")] = None,
    lr: Annotated[float | None, typer.Option(help="default: the backbone's recipe")] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            help="train on the last N samples (0 = all; default: all for tiny, 2000 for a "
            "pretrained LLM, about 30 minutes on 2 CPU cores)"
        ),
    ] = None,
    seed: int = 0,
) -> None:
    """Make the service ready on the embedded default: migrate, import the synthetic catalogue
    if the database has none, train the base LLMRec if none is registered, register it."""
    from service.core.db.session import session_scope
    from service.core.settings import get_settings
    from service.domain.bootstrap import ensure_base_model
    from service.domain.catalog import NoCatalog, catalog_info

    settings = get_settings()
    migrate_database(settings.db_url)
    with session_scope(settings.db_url, write=False) as session:
        try:
            info = catalog_info(session)
        except NoCatalog:
            info = None
    if info is None:
        console.print("no catalogue yet: importing the synthetic default")
        import_catalog()
    else:
        console.print(
            f"catalogue: {info['name']} ({info['users']:,} users, {info['items']:,} items)"
        )
    base = ensure_base_model(
        settings,
        backbone=backbone,
        epochs=epochs,
        lr=lr,
        samples=samples,
        seed=seed,
        log=console.print,
    )
    console.print(f"base model {base.id} is active: {base.path}")


@app.command("trained-users")
@friendly
def trained_users_(
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many to print")] = 5,
) -> None:
    """Print ids of users the active base trained on (most ratings first), one per line: the
    users whose forget request really trains an adapter. Others (audit users, users newer than
    the training window) complete by deleting their data alone."""
    from service.core.db.session import session_scope
    from service.core.settings import get_settings
    from service.domain.bootstrap import trained_users

    settings = get_settings()
    with session_scope(settings.db_url, write=False) as session:
        for user in trained_users(session, settings, limit):
            print(user)


@app.command()
@friendly
def consolidate() -> None:
    """Queue a consolidation: retrain the base without every forgotten or waiting user; adapters
    then start again from empty (a worker runs it, one job at a time)."""
    from service.core.db.session import session_scope
    from service.core.settings import get_settings
    from service.domain.jobs import request_consolidation
    from service.domain.tasks_client import send_run_job

    settings = get_settings()
    with session_scope(settings.db_url) as session:
        job = request_consolidation(session, actor="cli")
        job_id = job.id
    sent = send_run_job(settings, job_id)
    console.print(
        f"consolidation job {job_id} queued"
        + ("" if sent else " (broker unreachable: the next worker tick will start it)")
    )


@app.command("batch-now")
@friendly
def batch_now() -> None:
    """Cut a batch from every pending forget request now, without waiting for the policy."""
    from service.core.db.session import session_scope
    from service.core.settings import get_settings
    from service.domain.jobs import BatchPolicy, cut_batch
    from service.domain.tasks_client import send_run_job

    s = get_settings()
    with session_scope(s.db_url) as session:
        policy = BatchPolicy.from_settings(s)
        job = cut_batch(session, policy, force=True, actor="cli")
        job_id = job.id if job is not None else None
    if job_id is None:
        console.print("no pending requests: nothing to batch")
        return
    send_run_job(s, job_id)
    console.print(f"job {job_id} queued")


@app.command("gen-secrets")
@friendly
def gen_secrets(
    out: Annotated[Path, typer.Option(help="the .env file to write")] = Path(".env"),
    force: Annotated[bool, typer.Option(help="replace an existing file")] = False,
) -> None:
    """Write a fresh .env (from .env.example) with new API keys, user-hash salt and Flower
    password. The file is readable by its owner only. Keep the salt for the deployment's life:
    changing it orphans the hashes of completed deletions."""
    import os
    import secrets

    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it (its salt is lost)")
    template = ROOT / ".env.example"
    values = {
        "E2UREC_API_KEYS": (
            f"admin-{secrets.token_hex(24)}:admin+forget+recommend,"
            f"client-{secrets.token_hex(24)}:forget+recommend"
        ),
        "E2UREC_USER_HASH_SALT": secrets.token_hex(32),
        "FLOWER_BASIC_AUTH": f"operator:{secrets.token_urlsafe(24)}",
    }
    lines = []
    for line in template.read_text().splitlines():
        name = line.split("=", 1)[0]
        lines.append(f"{name}={values.pop(name)}" if name in values else line)
    lines += [f"{k}={v}" for k, v in values.items()]  # any the template lacks
    tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, out)
    console.print(f"wrote {out} (mode 600): new API keys, salt and Flower login")


@app.command("verify-certificate")
@friendly
def verify_certificate(
    file: Annotated[
        Path,
        typer.Argument(
            help="a certificate (GET /forget/requests/{id}/certificate) or a chain "
            "(GET /certificates/chain), saved as JSON"
        ),
    ],
    public_key: Annotated[
        str | None,
        typer.Option(
            help="the key to trust (hex, from GET /certificates/public-key); default: the one "
            "in the file, which proves only that the file is self-consistent"
        ),
    ] = None,
) -> None:
    """Check receipts offline: each one's hash and Ed25519 signature, and that consecutive
    receipts link (each names the previous one's hash, no gap in the sequence)."""
    import json

    from service.domain.receipts import ReceiptError, verify, verify_chain

    try:
        document = json.loads(file.read_text())
        documents = document["receipts"]
        key = public_key or document["public_key"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{file} is not a certificate or a chain from the API ({type(exc).__name__}: {exc})"
        ) from None
    if not documents:
        raise ValueError(f"{file} holds no receipts (is the request completed?)")
    try:
        if "request_id" in document:  # one request's receipts: not consecutive in the chain
            bodies = [verify(d, key) for d in documents]
            others = {b["request_id"] for b in bodies} - {document["request_id"]}
            if others:
                raise ReceiptError(f"receipts of another request in this certificate: {others}")
        else:
            bodies = verify_chain(documents, key)
    except ReceiptError as exc:
        err.print(f"[bold red]INVALID:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None  # not typer.Exit: @friendly would take it for an error
    for body in bodies:
        console.print(
            f"receipt {body['seq']}: {body['kind']}, request {body['request_id']}, "
            f"completed {body['completed_at']}, base {body['base_model']}, "
            f"adapter {body['adapter_version']}"
        )
    trust = "the key given" if public_key else "the key in the file (pin it with --public-key)"
    linked = (
        ""
        if "request_id" in document
        else f", chain linked {bodies[0]['seq']}..{bodies[-1]['seq']}"
    )
    console.print(f"[bold green]valid:[/] {len(bodies)} receipt(s), signed by {trust}{linked}")


@app.command("settings")
def settings_() -> None:
    """Print every setting (environment variable, default, meaning) as a Markdown table."""
    from service.core.settings import settings_table

    print(settings_table())


@app.command()
@friendly
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Run the API (one process: it owns the model)."""
    import uvicorn

    from service.api.main import create_app
    from service.core.settings import get_settings

    settings = get_settings()
    migrate_database(settings.db_url)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level, workers=1)


if __name__ == "__main__":
    app()
