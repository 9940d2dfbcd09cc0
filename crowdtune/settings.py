"""Typed settings shared by the app, the CLI and the jobs.

Sources, strongest first: keyword arguments, environment variables (prefix `CROWDTUNE_`, plus
plain `REDIS_URL`), the TOML file named by `CROWDTUNE_CONFIG` (default `crowdtune.toml` in the
working directory, if present), then the defaults below. Secrets (face tokens) are not settings:
see `faces.secrets`; they are never part of this object.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from crowdtune.errors import SettingsError
from crowdtune.training.configs import DEFAULT_BASE_MODEL

QUEUE_TRAIN = "train"
QUEUE_DEFAULT = "default"
QUEUE_CONTROL = "control"
QUEUE_STORE = "store"
# What each queue carries (the System page and `crowdtune status` show it beside the workers).
QUEUE_ROLES = {
    QUEUE_CONTROL: "light work that keeps its times: controller ticks, reaction reads, imports, probes",
    QUEUE_TRAIN: "offline training and online RL updates",
    QUEUE_DEFAULT: "generation and background embedding: publishing posts, Playground samples, reward-model "
                   "fits, a sandbox's set-up, a face's post embeddings (in chunks)",
    QUEUE_STORE: "every store write and the reads of jobs (the single store writer)",
}


def config_file() -> Path:
    return Path(os.environ.get("CROWDTUNE_CONFIG", "crowdtune.toml"))


WORKER_ENTRY_GPU = r"@(?:cuda|gpu):(\d+)$"  # the end of a worker_queues entry that pins it to a GPU


def worker_entry(entry: str) -> tuple[list[str], int | None]:
    """One `worker_queues` entry, e.g. "train,default@cuda:1", as (queue names in order, GPU index or
    None). Raises ValueError naming the entry when a queue is unknown or the GPU part is malformed."""
    known = {QUEUE_TRAIN, QUEUE_DEFAULT, QUEUE_CONTROL}
    queues, gpu = entry, None
    if "@" in entry:
        match = re.search(WORKER_ENTRY_GPU, entry.replace(" ", ""))
        if match is None:
            raise ValueError(f"worker entry {entry!r}: after '@' comes the GPU it runs on, e.g. 'train,default@cuda:0'")
        queues, gpu = entry[:entry.index("@")], int(match.group(1))
    names = [name.strip() for name in queues.split(",") if name.strip()]
    if not names or set(names) - known:
        raise ValueError(f"worker entry {entry!r} must list queues among {sorted(known)} "
                         f"(the '{QUEUE_STORE}' queue has its own single writer)")
    return names, gpu


class Settings(BaseSettings):
    """Everything Crowdtune needs to find its parts (each setting's default and help are on its field)."""

    model_config = SettingsConfigDict(env_prefix="CROWDTUNE_", extra="ignore", validate_default=True)

    data_dir: Path = Field(Path("data"), description="folder for the store, the embedded Redis, logs and artifacts")
    db_path: Path | None = Field(None, description="the DuckDB store; None = `<data_dir>/crowdtune.duckdb`")
    artifacts_url: str | None = Field(
        None, description="model versions, any fsspec URL (`s3://...`, `gs://...`); None = `<data_dir>/artifacts`")
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("REDIS_URL", "CROWDTUNE_REDIS_URL"),
        description="a shared Redis for several machines (also plain REDIS_URL); None = the embedded server")
    result_ttl_seconds: int = Field(
        7 * 24 * 3600, ge=60, description="how long Redis keeps a finished job's result (training, publishing, "
                                          "imports: the System page shows it; the store's job audit keeps it)")
    failure_ttl_seconds: int = Field(
        30 * 24 * 3600, ge=60, description="how long Redis keeps a failed job with its arguments and traceback "
                                           "(`rq requeue` brings it back within this time; a failed store write "
                                           "is the only copy of its rows)")
    store_result_ttl_seconds: int = Field(
        600, ge=10, description="how long Redis keeps a store write once applied: its arguments are rows the store "
                                "now holds (the job that queued it reads its outcome within this time)")
    app_host: str = Field("localhost", description="address the app listens on")
    app_port: int = Field(default=8501, ge=1, le=65535, description="port the app listens on")
    worker_queues: list[str] = Field(default_factory=lambda: ["control", "train", "default"],
                                     description="one preloading worker per entry, serving those queues in order; "
                                                 "`train,default@cuda:1` pins that worker to GPU 1; "
                                                 "a `control` worker is added when no entry serves it")
    store_lock_wait_seconds: float = Field(default=3600.0, gt=0,
                                           description="how long a store write waits for a held file")
    read_retry_seconds: float = Field(default=5.0, gt=0, description="how long a page read waits for the file")
    worker_maintenance_seconds: int = Field(default=30, ge=1,
                                            description="how often workers requeue the jobs of dead workers")
    log_file_mb: float = Field(10.0, gt=0, description="size at which a process's event log "
                                                       "(`<data_dir>/logs/<name>.jsonl`) is rotated")
    log_files_kept: int = Field(5, ge=1, le=100, description="rotated event logs kept per process "
                                                            "(`<name>.jsonl.1` is the newest)")
    training_retry_seconds: list[Annotated[int, Field(ge=0, le=7 * 24 * 3600)]] = Field(
        default_factory=lambda: [60, 300, 900], max_length=20,
        description="waits before an offline run that failed on a transient error (disk, network, memory) runs again")
    secrets_file: Path | None = Field(
        None, description="the TOML file of face tokens (also CROWDTUNE_SECRETS_FILE, see faces.secrets); "
                          "None = `<data_dir>/secrets.toml`, created by the Settings page, owner-only")
    base_model: str = Field(DEFAULT_BASE_MODEL, min_length=1,
                            description="what runs and samples that name no base model start from (the Overview's "
                                        "first version, the forms' default): a packaged name, a hub id or a local "
                                        "folder")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|(cuda|gpu)(:\d+)?)$",
                        description='the one device this machine\'s workers train on: "cpu", "cuda", "cuda:1", "mps"; '
                                    '"auto" = the first GPU if there is one, else the CPU')
    loggers: list[Literal["tensorboard", "csv", "mlflow", "wandb"]] = Field(
        default_factory=list, description='trackers every run also logs to, e.g. ["tensorboard", "csv"]; '
                                          'each but csv needs its extra: pip install -e ".[tensorboard]"')
    tracking_dir: Path | None = Field(
        None, description="the trackers' folder (`<dir>/tensorboard`, `<dir>/csv`, `<dir>/mlruns`); "
                          "None = `<data_dir>/tracking`")
    mlflow_tracking_uri: str | None = Field(
        None, description="an MLflow server or store for the `mlflow` logger; "
                          "None = a file store in `<tracking_dir>/mlruns`")
    wandb_project: str = Field("crowdtune", description="the W&B project of the `wandb` logger (`wandb login` first, "
                                                         "or WANDB_MODE=offline)")
    login_password: str | None = Field(None, description="set to require a password for the control pages")
    allow_readonly_links: bool = Field(True, description="without login, shared links open read-only")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @field_validator("artifacts_url")
    @classmethod
    def _artifacts_reachable(cls, value: str | None) -> str | None:
        from crowdtune.artifacts import missing_package

        problem = missing_package(value) if value else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("worker_queues")
    @classmethod
    def _queues_are_known(cls, value: list[str]) -> list[str]:
        entries = [worker_entry(entry) for entry in value]  # names a bad entry
        # Ticks and reaction reads must never wait behind training or generation: someone serves them.
        if not any(QUEUE_CONTROL in names for names, _ in entries):
            value = [*value, QUEUE_CONTROL]
        return value

    @property
    def store_path(self) -> Path:
        return self.db_path if self.db_path is not None else self.data_dir / "crowdtune.duckdb"

    @property
    def secrets_path(self) -> Path:
        return self.secrets_file if self.secrets_file is not None else self.data_dir / "secrets.toml"

    @property
    def artifacts(self) -> str:
        return self.artifacts_url if self.artifacts_url else str((self.data_dir / "artifacts").absolute())

    @property
    def tracking(self) -> Path:
        """The trackers' folder (tracking_dir, or `<data_dir>/tracking`)."""
        return self.tracking_dir if self.tracking_dir is not None else self.data_dir / "tracking"

    @property
    def log_dir(self) -> Path:
        """Where every process's event log and output go (`crowdtune logs` reads them)."""
        return self.data_dir / "logs"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @cached_property
    def redis_display_url(self) -> str:
        """The Redis URL with any password masked: safe to show and log."""
        if not self.redis_url:
            return f"embedded ({self.redis_dir})"
        return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", self.redis_url)


def load_settings(**overrides) -> Settings:
    """Read settings from the environment and the TOML file; raise SettingsError on a bad value."""
    from pydantic import ValidationError

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(
            f"Invalid settings: {problems}",
            f"Correct the value in {config_file()} or in the CROWDTUNE_* environment variable.",
        ) from None
    except Exception as exc:  # e.g. a TOML syntax error
        raise SettingsError(
            f"Could not read settings: {exc}",
            f"Check the syntax of {config_file()} (TOML) and the CROWDTUNE_* environment variables.",
        ) from None
