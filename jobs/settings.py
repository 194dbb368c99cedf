"""Configuration, read once at the edges (CLI, worker start, API start) from ``VOXBATCH_*``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.limits import MAX_WINDOW_MINUTES
from jobs.profiles import get_profile

DATA_DIR = Path("voxbatch-data")


# Settings that hold a secret (a password inside the database URL counts).
PLACEHOLDER_CHECKED = (
    "database_url",
    "flower_basic_auth",
    "vllm_api_key",
    "mistral_api_key",
    "gemini_api_key",
    "openai_api_key",
    "metrics_token",
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VOXBATCH_", extra="ignore")

    data_dir: Path = Field(default=DATA_DIR, description="where embedded defaults keep their files")
    database_url: str = ""
    broker_url: str = "redis://localhost:6379/0"
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    engine: Literal["auto", "vllm", "mistral", "gemini", "openai", "offline"] = "auto"
    vllm_url: str | None = None
    vllm_api_key: str | None = None
    model: str = "mistralai/Voxtral-Small-24B-2507"
    # The model's profile (jobs/profiles.py: voxtral-small, qwen2-audio, ...); unset: matched from
    # VOXBATCH_MODEL, Voxtral Small's when nothing matches.
    model_profile: str | None = None
    # A hint for servers whose caps are known; when unset the client learns them from refusals.
    vllm_max_audio_s: float | None = None
    vllm_max_upload_mb: float | None = None
    mistral_api_key: str | None = None
    mistral_url: str = "https://api.mistral.ai/v1"
    mistral_transcribe_model: str = "voxtral-mini-latest"
    mistral_chat_model: str = "voxtral-small-latest"
    # Hosted engines (docs/models.md, "Hosted engines"): keys, base URLs (tests point the vendors'
    # SDKs at local servers), models. Speaker labels: "auto" asks for them for the panel and
    # meeting presets, "on" always, "off" never.
    diarize: Literal["auto", "on", "off"] = "auto"
    gemini_api_key: str | None = None
    gemini_url: str | None = None  # default: the SDK's https://generativelanguage.googleapis.com
    gemini_model: str = "gemini-2.5-flash"
    openai_api_key: str | None = None
    openai_url: str | None = None  # default: the SDK's https://api.openai.com/v1
    openai_transcribe_model: str = "whisper-1"
    openai_chat_model: str = "gpt-4o-audio-preview"
    openai_text_model: str = "gpt-4o-mini"
    # The longest any one attempt of a model request may take; each attempt's own deadline is
    # shorter, from its audio and answer length (``request_deadline_s``).
    request_timeout_s: float = 1800.0
    engine_retries: int = 5
    # An attempt's deadline: base + per second of audio + per token of the longest answer asked
    # for. A request past it is cancelled and sent again (workers/engines/scheduler.py). The
    # defaults leave 3-5x the time a GPU under a full batch takes (~0.05 s per decode step).
    request_deadline_base_s: float = Field(default=60.0, gt=0)
    request_deadline_per_audio_s: float = Field(default=0.1, ge=0)
    request_deadline_per_token_s: float = Field(default=0.15, ge=0)
    # An attempt is also sent again, before its deadline, once at least eight requests of its size
    # sent after it have been answered and it has been out this many times the longest of their
    # times (and a quarter of its deadline): the server lost it. 0: only the deadline.
    request_overtaken_factor: float = Field(default=3.0, ge=0)
    # Requests each process keeps at the model server (vLLM's --max-num-seqs, which `voxbatch vllm`
    # sets to the same number): windows put their requests into one queue, this many go out.
    max_inflight: int = Field(default=256, ge=1, le=4096)
    # While a clip's requests (an interactive job of at most 30 minutes) wait or are out, the other
    # work (long jobs, batch jobs) keeps at most this ratio times the clips' own audio in its
    # requests at the vLLM server (at least ten minutes, at most max_audio_beside_clips_s), so the
    # clip's decoding is not slowed much by the prefills admitted beside it
    # (workers/engines/scheduler.py). A lone 5-minute clip then has ten minutes beside its
    # summary: behind twelve 2-hour talks it took 1.77x its time alone at ten minutes and
    # 2.6-2.8x at half an hour, while eight clips at once fill more of their own decode steps and
    # keep the ceiling, half an hour (at ten minutes a drop-folder storm lost 5 points of
    # throughput; docs/benchmarks.md).
    audio_beside_clips_ratio: float = Field(default=2.0, ge=0)
    max_audio_beside_clips_s: float = Field(default=1800.0, ge=0)
    # A running window none of whose requests was answered for this long stops renewing its lease,
    # so the sweep gives it to another worker.
    window_stall_s: float = Field(default=1200.0, gt=0)
    window_minutes: float = MAX_WINDOW_MINUTES
    drop_url: str | None = None
    outbox_url: str | None = None
    # The drop-folder watcher (workers/watcher.py).
    watch_interval_s: float = Field(default=60.0, gt=0, description="seconds between full inbox scans")
    # Preset per prefix under the inbox, as JSON: {"panels/": "panel", "standups/": "meeting"};
    # the longest matching prefix wins, a sidecar's "preset" wins over it.
    drop_presets: dict[str, str] = Field(default_factory=dict)
    # Tag each ingested recording (voxbatch=<job id> or voxbatch=rejected); content and ETag unchanged.
    drop_tag_processed: bool = False
    # SQS queue receiving the bucket's s3:ObjectCreated:* notifications; scans still reconcile.
    drop_sqs_queue_url: str | None = None
    # The tenant drop-folder jobs belong to (fair share, limits, GET /v1/jobs with its key); a
    # sidecar's "tenant" may name another tenant that exists. It needs no key or tenant row.
    drop_tenant: str = Field(default="drop", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    # The drop tenant's own limits (the per-tenant limits below are sized for one API client; a
    # conference's recordings land in the inbox at once). Past them a recording waits in the inbox
    # and is taken at a later scan.
    drop_max_active_jobs: int = Field(default=1000, ge=1)
    drop_max_queued_hours: float = Field(default=2000.0, gt=0)
    lease_seconds: float = 120.0
    # A queued or transcribing job with no progress for this long, no running window and an empty
    # queue has lost its messages (e.g. Redis died without its AOF): the sweep enqueues them again.
    orphan_after_s: float = 900.0
    # Fair metering (workers/meter.py): windows sent to the gpu queue and not yet taken by a gpu
    # worker, at most. The next window is chosen when a slot frees, so a new interactive job waits
    # behind at most this many queued windows, not behind the whole backlog.
    gpu_queue_target: int = Field(default=2, ge=1)
    # A window sent this long ago, still untaken while the gpu queue is empty, lost its message
    # (Redis restarted without its data): the sweep sends it again.
    window_lost_after_s: float = Field(default=60.0, gt=0)
    # Cpu workers look for steps left in the outbox (their submitter died right after the commit)
    # this often; a submitter relays its own steps at once.
    relay_poll_s: float = Field(default=2.0, gt=0)
    # An announce step (a job's end: webhook, drop-folder outbox) sent this long ago and not yet
    # done is sent again (its message was lost, or its worker died or could not reach S3). Above a
    # cpu queue's usual wait: a repeat costs a second webhook delivery (receivers deduplicate).
    announce_resend_s: float = Field(default=120.0, gt=0)
    # A watcher's claim on a recording lasts this long unless the live watcher renews it; then any
    # watcher takes the recording over at its next scan.
    drop_claim_lease_s: float = Field(default=30.0, gt=0)
    # New recordings a watcher takes at once (sidecar, ffprobe, the job's transaction: mostly
    # waiting on S3 and the database).
    drop_ingest_threads: int = Field(default=4, ge=1, le=64)
    max_window_attempts: int = 4
    flower_basic_auth: str | None = None
    flower_url: str | None = None
    # Windows a gpu worker process runs at once. Cheap: they mostly wait on the request scheduler,
    # which keeps VOXBATCH_MAX_INFLIGHT at the server whatever the number of windows. Long windows
    # fill it with a few (16 x 64 segments); short ones need many: a 2-minute recording is about 5
    # segments and a summary, so 16 of them filled ~100 of 256 in the storm benchmark. 64 keeps
    # it full with short windows too; a running 30-minute window holds its samples (57.6 MB, so
    # ~3.7 GB at most), and the windows' database use stays small (short sessions; one meter and
    # one relay turn at a time per process, workers/meter.py).
    gpu_concurrency: int = 64
    # Segments each running window hands the request scheduler at once (jobs/steps/segments.py);
    # windows x this should stay above VOXBATCH_MAX_INFLIGHT so the server's batch stays full.
    # 32, not 64: `voxbatch run` then holds 256 / 32 + 1 = 9 windows (4.5 h) side by side and the
    # scheduler takes every one's summary at once. With 64 it held 5, each until its summary was
    # answered (~150 s behind the segments' prefills), and the last windows' summaries, which the
    # overall summary waits for, went out late: 0.866 of the one-job ideal on a 3-h talk against
    # 0.969 (bench.fleet --local). A gpu worker's 64 windows x 32 stay far above the cap.
    segment_concurrency: int = Field(default=32, ge=1, le=1024)
    max_upload_mb: float = 20_000.0
    webhook_allow_private: bool = False
    # Buckets besides the storage bucket that API tenants may name as s3:// sources (comma-separated):
    # the server's credentials may read more than any one tenant should.
    source_buckets: str = ""
    # First webhook retry waits this long, doubling each time (workers/webhooks.py).
    webhook_backoff_s: float = Field(default=10.0, ge=0)
    # --- Limits on what a tenant can send (docs/security.md); all checked before work is stored. ---
    # Longest recording, per job (after ffprobe, before any job row or message).
    max_duration_hours: float = Field(default=24.0, gt=0)
    # Largest JSON body of POST /v1/jobs (413 past it, before parsing).
    max_json_kb: float = Field(default=64.0, gt=0)
    # Per tenant: jobs not yet ended, and hours of audio in them (429 with Retry-After past them).
    max_active_jobs_per_tenant: int = Field(default=20, ge=1)
    max_queued_hours_per_tenant: float = Field(default=100.0, gt=0)
    # Uploads streaming into one API process at once, in all and per tenant (429 past them).
    max_uploads: int = Field(default=32, ge=1)
    max_uploads_per_tenant: int = Field(default=4, ge=1)
    # A client that sends nothing of its request body for this long is cut (408).
    request_read_timeout_s: float = Field(default=30.0, gt=0)
    # Open connections one API process accepts (uvicorn answers 503 past it).
    max_connections: int = Field(default=1000, ge=1)
    # Live events (GET /v1/jobs/{id}/events): how often an open stream looks at what is stored,
    # how often an idle one sends a comment (proxies cut silent connections), how long one event
    # may wait for a client that does not read before the stream is cut (its buffer stays bounded),
    # and how many streams one tenant may hold open (429 past it): across all API processes that
    # share the broker's Redis, else in each process. A stream counts until its lease runs out; its
    # API process renews it every third of the lease, so a killed process's streams stop counting
    # after at most one lease (api/stream_slots.py).
    events_poll_s: float = Field(default=0.5, gt=0)
    events_keepalive_s: float = Field(default=15.0, gt=0)
    events_send_timeout_s: float = Field(default=30.0, gt=0)
    max_event_streams_per_tenant: int = Field(default=8, ge=1)
    event_streams_lease_s: float = Field(default=30.0, gt=0)
    # Bearer token for /metrics (operators and Prometheus); unset: /metrics answers 401.
    metrics_token: str | None = None
    # A message redelivered this many times after its worker died (OOM kill, crash) fails its job.
    max_redeliveries: int = Field(default=3, ge=1)
    # GPU seconds one second of audio costs (transcript and summary, with the server's batching):
    # turns the backlog's audio into the GPU seconds /metrics exports for autoscaling
    # (docs/operations.md, "Autoscaling"). Calibrate from voxbatch_window_duration_seconds.
    gpu_seconds_per_audio_second: float = Field(default=0.05, gt=0)

    @model_validator(mode="after")
    def _no_placeholder_secrets(self) -> Settings:
        # infra/.env.example and the Kubernetes secret example ship "change-me" values: a stack
        # started without replacing them would run with publicly known passwords.
        for name in PLACEHOLDER_CHECKED:
            value = getattr(self, name) or ""
            if "change-me" in value.lower():
                raise ValueError(
                    f"VOXBATCH_{name.upper()} still holds the placeholder 'change-me' from the examples; "
                    "set a real secret"
                )
        return self

    @field_validator("model_profile")
    @classmethod
    def _known_profile(cls, value: str | None) -> str | None:
        if value:
            get_profile(value)  # UnknownProfile (a ValueError) names the choices
        return value or None

    @field_validator("window_minutes")
    @classmethod
    def _window_fits_voxtral(cls, value: float) -> float:
        if not 0 < value <= MAX_WINDOW_MINUTES:
            raise ValueError(f"window_minutes must be in (0, {MAX_WINDOW_MINUTES}]")
        return value

    def resolved_database_url(self) -> str:
        if self.database_url:
            url = self.database_url
            # People paste libpq URLs; SQLAlchemy needs the driver named to pick psycopg 3.
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url[len("postgresql://") :]
            elif url.startswith("postgres://"):
                url = "postgresql+psycopg://" + url[len("postgres://") :]
            return url
        return f"sqlite:///{(self.data_dir / 'voxbatch.db').resolve()}"

    def request_deadline_s(self, audio_s: float, max_tokens: int) -> float:
        """How long one attempt of a model request may take before it is sent again."""
        deadline = (
            self.request_deadline_base_s
            + audio_s * self.request_deadline_per_audio_s
            + max_tokens * self.request_deadline_per_token_s
        )
        return min(deadline, self.request_timeout_s)

    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "store").resolve().as_uri()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
