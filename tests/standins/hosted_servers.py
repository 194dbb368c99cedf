"""Local servers that speak the hosted vendors' HTTP protocols: Mistral, OpenAI and Gemini.

The engines' real clients (the vendors' own SDKs: ``mistralai``, ``openai``, ``google-genai``) are
pointed at them by base URL. Like the stand-in vLLM server, they "hear" marker tones
(tests/markers.py) and answer with the markers they hear, here with the times the markers sound
(``marker-3`` from 12.75 s to 14.25 s), so documents made through them can be checked marker by
marker. Speakers, when asked for, alternate with the marker's parity (even: one voice, odd: the
other), under each vendor's own label scheme.

What each one enforces, as its vendor documents it:

- Mistral (``/v1/audio/transcriptions`` multipart, ``/v1/chat/completions``): Bearer key; model
  ids; ``timestamp_granularities`` refused together with ``language``; ``context_bias`` at most 100
  entries without commas; 15 min per transcription and 20 min per chat audio; ``input_audio`` a plain
  base64 string; error bodies ``{"object": "error", "message", "type", "param", "code"}``.
- OpenAI (``/v1/audio/transcriptions``, ``/v1/chat/completions``): Bearer key; 25 MB per file (413);
  ``verbose_json`` for whisper-1 only, ``diarized_json`` for ``*-diarize`` only (which need
  ``chunking_strategy`` and refuse ``prompt``); 1,500 s per gpt-4o transcription; chat audio in WAV
  or MP3 only and only to audio models; error bodies ``{"error": {"message", "type", "param",
  "code"}}``.
- Gemini (``/v1beta/models/{m}:generateContent``, the resumable Files API under
  ``/upload/v1beta/files``, ``/v1beta/files/{id}``): ``x-goog-api-key``; 20 MB per inline request;
  files referenced by their URI; error bodies ``{"error": {"code", "message", "status", "details"}}``.

Rate limits: ``rate_limited=N`` answers the first N POSTs (uploads excepted) with 429 and the
vendor's retry hint: ``Retry-After`` (Mistral, OpenAI; OpenAI also ``retry-after-ms``) or
``google.rpc.RetryInfo`` in the body (Gemini). ``log`` records each request's arrival time so a
test can see that the client waited.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from tests.markers import detect_spans
from tests.speech import decode

MIB = 1024 * 1024
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class HeardMarker:
    k: int
    start_s: float
    end_s: float


def hear(data: bytes) -> tuple[float, list[HeardMarker]]:
    """The audio's duration and the markers it holds, with their times."""
    samples = decode(data)
    spans = [HeardMarker(k, a, b) for k, a, b in detect_spans(samples, SAMPLE_RATE)]
    return len(samples) / SAMPLE_RATE, spans


def words(heard: list[HeardMarker]) -> str:
    return " ".join(f"marker-{m.k}" for m in heard)


class VendorError(Exception):
    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(json.dumps(body))
        self.status = status
        self.body = body
        self.headers = headers or {}


@dataclass
class State:
    key: str
    rate_limited: int = 0  # the first N POSTs answer 429 with a retry hint
    retry_after_s: float = 1.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    posts: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)

    def arrive(self, endpoint: str, **entry: Any) -> tuple[dict[str, Any], bool]:
        """Record a request; True when it must be answered 429."""
        with self.lock:
            counted = endpoint not in ("upload", "delete")  # file handling is not rate-limited here
            self.posts += counted
            limited = counted and self.posts <= self.rate_limited
            record = {"endpoint": endpoint, "at": time.monotonic(), "limited": limited, **entry}
            self.log.append(record)
            return record, limited


# --- Mistral -----------------------------------------------------------------------------------

MISTRAL_TRANSCRIBE_MODELS = ("voxtral-mini-latest", "voxtral-mini-2507", "voxtral-mini-2602")
MISTRAL_CHAT_MODELS = ("voxtral-small-latest", "voxtral-mini-latest", "voxtral-small-2507")


def mistral_error(status: int, message: str, kind: str = "invalid_request_error") -> VendorError:
    return VendorError(
        status, {"object": "error", "message": message, "type": kind, "param": None, "code": None}
    )


def mistral_app(state: State, transcribe_max_s: float = 900.0, chat_max_s: float = 1200.0) -> FastAPI:
    app = FastAPI()

    def check_key(request: Request) -> None:
        if request.headers.get("authorization") != f"Bearer {state.key}":
            raise mistral_error(401, "Unauthorized", "authentication_error")

    def limited() -> VendorError:
        return VendorError(
            429,
            {
                "object": "error",
                "message": "Requests rate limit exceeded",
                "type": "rate_limited",
                "param": None,
                "code": "1300",
            },
            {"Retry-After": f"{state.retry_after_s:g}"},
        )

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        check_key(request)
        form = await request.form()
        upload = form.get("file")
        data = await upload.read() if upload is not None and not isinstance(upload, str) else None
        fields = {k: form.getlist(k) for k in form if k != "file"}
        entry, is_limited = state.arrive("transcriptions", fields=fields)
        if is_limited:
            raise limited()
        return await run_in_threadpool(_transcribe, fields, data, entry)

    def _transcribe(fields: dict[str, list[Any]], data: bytes | None, entry: dict[str, Any]) -> Response:
        one = {k: str(v[-1]) for k, v in fields.items() if v}
        model = one.get("model")
        if not model:
            raise mistral_error(422, "model: Field required")
        if model not in MISTRAL_TRANSCRIBE_MODELS:
            raise mistral_error(400, f"Invalid model: {model}")
        if data is None:
            raise mistral_error(422, "one of file, file_url or file_id is required")
        granularities = [str(g) for g in fields.get("timestamp_granularities", [])]
        if granularities and one.get("language"):
            raise mistral_error(
                400,
                "timestamp_granularities is currently not compatible with language, "
                "please use either one or the other",
            )
        if any(g not in ("segment", "word") for g in granularities):
            raise mistral_error(422, f"timestamp_granularities: invalid value {granularities}")
        bias = [str(b) for b in fields.get("context_bias", [])]
        if len(bias) > 100 or any("," in b for b in bias):
            raise mistral_error(400, "context_bias: at most 100 entries, without commas")
        diarize = one.get("diarize", "false").lower() == "true"
        duration, heard = hear(data)
        if duration > transcribe_max_s:
            raise mistral_error(
                400,
                f"Audio duration {duration:.0f}s exceeds the maximum allowed duration "
                f"of {transcribe_max_s:.0f}s.",
            )
        entry.update(
            model=model,
            granularities=granularities,
            diarize=diarize,
            context_bias=bias,
            language=one.get("language"),
            temperature=one.get("temperature"),
        )
        segments = (
            [
                {
                    "text": f" marker-{m.k}",
                    "start": round(m.start_s, 2),
                    "end": round(m.end_s, 2),
                    "type": "transcription_segment",
                    **({"speaker_id": f"speaker_{m.k % 2 + 1}"} if diarize else {}),
                }
                for m in heard
            ]
            if granularities
            else []
        )
        body = {
            "model": model,
            "text": words(heard),
            "language": one.get("language") or "en",
            "segments": segments,
            "usage": {
                "prompt_audio_seconds": round(duration),
                "prompt_tokens": 4,
                "completion_tokens": len(heard) * 3,
                "total_tokens": 4 + len(heard) * 3,
            },
        }
        return JSONResponse(body)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        check_key(request)
        body = await request.json()
        entry, is_limited = state.arrive("chat", model=body.get("model"))
        if is_limited:
            raise limited()
        return await run_in_threadpool(_chat, body, entry)

    def _chat(body: dict[str, Any], entry: dict[str, Any]) -> Response:
        model = body.get("model")
        if model not in MISTRAL_CHAT_MODELS:
            raise mistral_error(400, f"Invalid model: {model}")
        texts: list[str] = []
        heard: list[HeardMarker] = []
        for message in body.get("messages", []):
            if message.get("role") == "system":
                raise mistral_error(400, "system messages are not supported with audio input")
            content = message.get("content")
            for part in content if isinstance(content, list) else [{"type": "text", "text": content}]:
                if part.get("type") == "input_audio":
                    if not isinstance(part.get("input_audio"), str):
                        raise mistral_error(422, "input_audio: Input should be a valid string (base64)")
                    duration, found = hear(base64.b64decode(part["input_audio"]))
                    if duration > chat_max_s:
                        raise mistral_error(
                            400,
                            f"Audio duration {duration:.0f}s exceeds the maximum allowed "
                            f"duration of {chat_max_s:.0f}s.",
                        )
                    heard += found
                elif part.get("type") == "text":
                    texts.append(str(part.get("text")))
        entry.update(prompt=" ".join(texts), audio=bool(heard))
        answer = (
            f"Summary: {words(heard)}"
            if heard
            else "Summary: " + " ".join(w for w in " ".join(texts).split() if w.startswith("marker-"))
        )
        return JSONResponse(
            {
                "id": uuid.uuid4().hex,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer, "tool_calls": None},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        )

    return _with_errors(app)


# --- OpenAI ------------------------------------------------------------------------------------

OPENAI_TRANSCRIBE_MODELS = (
    "whisper-1",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "gpt-4o-transcribe-diarize",
)
OPENAI_AUDIO_CHAT_MODELS = ("gpt-4o-audio-preview", "gpt-audio")
OPENAI_TEXT_MODELS = ("gpt-4o-mini", "gpt-4.1-mini")


def openai_error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> VendorError:
    return VendorError(status, {"error": {"message": message, "type": kind, "param": param, "code": code}})


def openai_app(state: State) -> FastAPI:
    app = FastAPI()

    def check_key(request: Request) -> None:
        if request.headers.get("authorization") != f"Bearer {state.key}":
            raise VendorError(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
            )

    def limited() -> VendorError:
        err = openai_error(
            429, "Rate limit reached for requests. Please try again in 1s.", "requests", "rate_limit_exceeded"
        )
        err.headers = {
            "retry-after": f"{state.retry_after_s:g}",
            "retry-after-ms": f"{state.retry_after_s * 1000:g}",
            "x-ratelimit-remaining-requests": "0",
        }
        return err

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        check_key(request)
        form = await request.form()
        upload = form.get("file")
        data = await upload.read() if upload is not None and not isinstance(upload, str) else None
        fields = {k: form.getlist(k) for k in form if k != "file"}
        entry, is_limited = state.arrive(
            "transcriptions", fields={k: [str(x) for x in v] for k, v in fields.items()}
        )
        if is_limited:
            raise limited()
        return await run_in_threadpool(_transcribe, fields, data, entry)

    def _transcribe(fields: dict[str, list[Any]], data: bytes | None, entry: dict[str, Any]) -> Response:
        one = {k: str(v[-1]) for k, v in fields.items() if v}
        model = one.get("model", "")
        if model not in OPENAI_TRANSCRIBE_MODELS:
            raise openai_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        if data is None:
            raise openai_error(400, "you must provide a file", param="file")
        if len(data) > 25 * MIB:
            raise openai_error(
                413, f"Maximum content size limit ({25 * MIB}) exceeded ({len(data)} bytes read)"
            )
        fmt = one.get("response_format", "json")
        diarize = model.endswith("-diarize")
        if fmt == "verbose_json" and model != "whisper-1":
            raise openai_error(
                400,
                f"response_format 'verbose_json' is not compatible with model '{model}'. "
                "Use 'json' or 'text' instead.",
                param="response_format",
            )
        if fmt == "diarized_json" and not diarize:
            raise openai_error(
                400,
                f"response_format 'diarized_json' is not compatible with model '{model}'.",
                param="response_format",
            )
        if diarize and "prompt" in one:
            raise openai_error(400, "prompt is not supported for this model.", param="prompt")
        duration, heard = hear(data)
        if diarize and duration > 30 and "chunking_strategy" not in one:
            raise openai_error(
                400,
                "chunking_strategy is required for diarization models when input is longer than 30s",
                param="chunking_strategy",
            )
        if model.startswith("gpt-4o") and duration > 1500:
            raise openai_error(
                400,
                f"audio duration {duration:.1f} seconds is longer than 1500 seconds which is the "
                "maximum for this model",
                param="file",
            )
        entry.update(
            model=model,
            response_format=fmt,
            prompt=one.get("prompt"),
            language=one.get("language"),
            granularities=[str(g) for g in fields.get("timestamp_granularities[]", [])],
        )
        text = words(heard)
        if fmt == "verbose_json":
            segments = [
                {
                    "id": i,
                    "seek": 0,
                    "start": m.start_s,
                    "end": m.end_s,
                    "text": f" marker-{m.k}",
                    "tokens": [1],
                    "temperature": 0.0,
                    "avg_logprob": -0.1,
                    "compression_ratio": 1.0,
                    "no_speech_prob": 0.01,
                }
                for i, m in enumerate(heard)
            ]
            return JSONResponse(
                {
                    "task": "transcribe",
                    "language": one.get("language", "english"),
                    "duration": duration,
                    "text": text,
                    "segments": segments,
                }
            )
        if fmt == "diarized_json":
            segments = [
                {
                    "type": "transcript.text.segment",
                    "id": f"seg_{i}",
                    "start": m.start_s,
                    "end": m.end_s,
                    "text": f"marker-{m.k}",
                    "speaker": "AB"[m.k % 2],
                }
                for i, m in enumerate(heard)
            ]
            return JSONResponse(
                {
                    "task": "transcribe",
                    "duration": duration,
                    "text": text,
                    "segments": segments,
                    "usage": {"type": "duration", "seconds": round(duration)},
                }
            )
        return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": round(duration)}})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        check_key(request)
        body = await request.json()
        entry, is_limited = state.arrive("chat", model=body.get("model"))
        if is_limited:
            raise limited()
        return await run_in_threadpool(_chat, body, entry)

    def _chat(body: dict[str, Any], entry: dict[str, Any]) -> Response:
        model = body.get("model")
        if model not in OPENAI_AUDIO_CHAT_MODELS + OPENAI_TEXT_MODELS:
            raise openai_error(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
            )
        texts: list[str] = []
        heard: list[HeardMarker] = []
        for message in body.get("messages", []):
            content = message.get("content")
            for part in content if isinstance(content, list) else [{"type": "text", "text": content}]:
                if part.get("type") == "input_audio":
                    if model not in OPENAI_AUDIO_CHAT_MODELS:
                        raise openai_error(
                            400, f"This model does not support audio input: {model}", param="messages"
                        )
                    audio = part.get("input_audio") or {}
                    if audio.get("format") not in ("wav", "mp3"):
                        raise openai_error(
                            400,
                            "Invalid value: '"
                            + str(audio.get("format"))
                            + "'. Supported values are: 'wav' and 'mp3'.",
                            param="messages[0].content[1].input_audio.format",
                            code="invalid_value",
                        )
                    heard += hear(base64.b64decode(audio.get("data", "")))[1]
                elif part.get("type") == "text":
                    texts.append(str(part.get("text")))
        entry.update(prompt=" ".join(texts), audio=bool(heard))
        answer = (
            f"Summary: {words(heard)}"
            if heard
            else "Summary: " + " ".join(w for w in " ".join(texts).split() if w.startswith("marker-"))
        )
        return JSONResponse(
            {
                "id": "chatcmpl-" + uuid.uuid4().hex,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": answer,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        )

    return _with_errors(app)


# --- Gemini ------------------------------------------------------------------------------------

GEMINI_MODELS = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-3.5-flash")


def gemini_error(
    status: int, message: str, code: str, details: list[dict[str, Any]] | None = None
) -> VendorError:
    return VendorError(
        status,
        {
            "error": {
                "code": status,
                "message": message,
                "status": code,
                **({"details": details} if details else {}),
            }
        },
    )


def gemini_app(state: State, base: list[str]) -> FastAPI:
    """``base``: a one-element list the server fills with its own URL (file URIs name it)."""
    app = FastAPI()
    files: dict[str, dict[str, Any]] = {}
    uploads: dict[str, dict[str, Any]] = {}

    def check_key(request: Request) -> None:
        if request.headers.get("x-goog-api-key") != state.key:
            raise gemini_error(
                400,
                "API key not valid. Please pass a valid API key.",
                "INVALID_ARGUMENT",
                [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            )

    def limited() -> VendorError:
        return gemini_error(
            429,
            "Resource has been exhausted (e.g. check quota).",
            "RESOURCE_EXHAUSTED",
            [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaMetric": "requests"}],
                },
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{state.retry_after_s:g}s",
                },
            ],
        )

    @app.post("/upload/v1beta/files")
    async def upload(request: Request) -> Response:
        command = request.headers.get("x-goog-upload-command", "")
        upload_id = request.query_params.get("upload_id")
        if upload_id is None:
            check_key(request)
            if request.headers.get("x-goog-upload-protocol") != "resumable" or command != "start":
                raise gemini_error(
                    400, "Upload protocol must be resumable and start the upload", "INVALID_ARGUMENT"
                )
            meta = (await request.json()).get("file") or {}
            upload_id = uuid.uuid4().hex
            uploads[upload_id] = {"meta": meta, "data": bytearray()}
            url = f"{base[0]}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
            return Response(headers={"x-goog-upload-url": url, "x-goog-upload-status": "active"})
        pending = uploads.get(upload_id)
        if pending is None:
            raise gemini_error(404, "No such upload", "NOT_FOUND")
        if int(request.headers.get("x-goog-upload-offset", "-1")) != len(pending["data"]):
            raise gemini_error(400, "Upload offset does not match", "INVALID_ARGUMENT")
        pending["data"] += await request.body()
        if "finalize" not in command:
            return Response(headers={"x-goog-upload-status": "active"})
        name = "files/" + uuid.uuid4().hex[:12]
        record = {
            "name": name,
            "mimeType": _field(pending["meta"], "mimeType")
            or request.headers.get("x-goog-upload-header-content-type", ""),
            "sizeBytes": str(len(pending["data"])),
            "state": "ACTIVE",
            "uri": f"{base[0]}/v1beta/{name}",
            "createTime": "2026-01-01T00:00:00Z",
            "source": "UPLOADED",
        }
        files[name] = {**record, "data": bytes(pending.pop("data"))}
        del uploads[upload_id]
        state.arrive("upload", name=name)
        return JSONResponse({"file": record}, headers={"x-goog-upload-status": "final"})

    @app.get("/v1beta/files/{file_id}")
    async def get_file(file_id: str, request: Request) -> Response:
        check_key(request)
        record = files.get(f"files/{file_id}")
        if record is None:
            raise gemini_error(404, f"File files/{file_id} does not exist", "NOT_FOUND")
        return JSONResponse({k: v for k, v in record.items() if k != "data"})

    @app.delete("/v1beta/files/{file_id}")
    async def delete_file(file_id: str, request: Request) -> Response:
        check_key(request)
        if files.pop(f"files/{file_id}", None) is None:
            raise gemini_error(404, f"File files/{file_id} does not exist", "NOT_FOUND")
        state.arrive("delete", name=f"files/{file_id}")
        return JSONResponse({})

    @app.post("/v1beta/models/{model_call:path}")
    async def generate(model_call: str, request: Request) -> Response:
        check_key(request)
        raw = await request.body()
        model, _, method = model_call.partition(":")
        if method != "generateContent":
            raise gemini_error(404, f"Method {method} not found", "NOT_FOUND")
        if len(raw) > 20 * MIB:
            raise gemini_error(
                400, f"Request payload size exceeds the limit: {20 * MIB} bytes.", "INVALID_ARGUMENT"
            )
        body = json.loads(raw)
        entry, is_limited = state.arrive("generateContent", model=model)
        if is_limited:
            raise limited()
        return await run_in_threadpool(_generate, model, body, entry)

    def _generate(model: str, body: dict[str, Any], entry: dict[str, Any]) -> Response:
        if model not in GEMINI_MODELS:
            raise gemini_error(404, f"models/{model} is not found for API version v1beta", "NOT_FOUND")
        texts: list[str] = []
        heard: list[HeardMarker] = []
        sources: list[str] = []
        for content in body.get("contents", []):
            for part in content.get("parts", []):
                inline = _field(part, "inlineData")
                file_data = _field(part, "fileData")
                if inline is not None:
                    heard += hear(_b64(str(_field(inline, "data"))))[1]
                    sources.append("inline")
                elif file_data is not None:
                    uri = str(_field(file_data, "fileUri") or "")
                    name = uri.split("/v1beta/", 1)[-1]
                    if name not in files:
                        raise gemini_error(
                            403,
                            f"You do not have permission to access the File {name} or it may not exist.",
                            "PERMISSION_DENIED",
                        )
                    heard += hear(files[name]["data"])[1]
                    sources.append("file")
                elif "text" in part:
                    texts.append(part["text"])
        config = _field(body, "generationConfig") or {}
        schema = json.dumps(_field(config, "responseSchema") or _field(config, "responseJsonSchema") or {})
        as_json = _field(config, "responseMimeType") == "application/json"
        entry.update(prompt=" ".join(texts), sources=sources, json=as_json)
        if as_json:
            speakers = '"speaker"' in schema
            answer = json.dumps(
                [
                    {
                        "start_s": round(m.start_s, 2),
                        "end_s": round(m.end_s, 2),
                        "text": f"marker-{m.k}",
                        **({"speaker": "AB"[m.k % 2]} if speakers else {}),
                    }
                    for m in heard
                ]
            )
        elif heard:
            answer = f"Summary: {words(heard)}"
        else:
            answer = "Summary: " + " ".join(w for w in " ".join(texts).split() if w.startswith("marker-"))
        return JSONResponse(
            {
                "candidates": [
                    {
                        "content": {"parts": [{"text": answer}], "role": "model"},
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
                "modelVersion": model,
            }
        )

    return _with_errors(app)


def _field(obj: Any, camel: str) -> Any:
    """A field of Google's JSON, which accepts protobuf's lowerCamelCase and snake_case names alike."""
    if not isinstance(obj, dict):
        return None
    snake = "".join("_" + c.lower() if c.isupper() else c for c in camel)
    return obj.get(camel, obj.get(snake))


def _b64(text: str) -> bytes:
    """Google's JSON bytes: standard or URL-safe base64, padding optional."""
    text = text.replace("-", "+").replace("_", "/")
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _with_errors(app: FastAPI) -> FastAPI:
    @app.exception_handler(VendorError)
    async def vendor_error(request: Request, exc: VendorError) -> Response:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    return app


# --- running one ---------------------------------------------------------------------------------


class HostedServer:
    """One vendor's server on a free 127.0.0.1 port in a background thread, as a context manager.

    ``vendor``: "mistral", "openai" or "gemini". ``url``: the base URL its SDK is pointed at."""

    def __init__(self, vendor: str, key: str = "test-key", **options: Any) -> None:
        self.vendor = vendor
        self.state = State(
            key=key,
            rate_limited=options.pop("rate_limited", 0),
            retry_after_s=options.pop("retry_after_s", 1.0),
        )
        self._base: list[str] = [""]
        if vendor == "mistral":
            self.app = mistral_app(self.state, **options)
        elif vendor == "openai":
            self.app = openai_app(self.state)
        elif vendor == "gemini":
            self.app = gemini_app(self.state, self._base)
        else:
            raise ValueError(vendor)
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        """What VOXBATCH_<VENDOR>_URL is set to (OpenAI's and Mistral's SDK paths start after /v1)."""
        root = f"http://127.0.0.1:{self.port}"
        return root if self.vendor == "gemini" else root + "/v1"

    @property
    def log(self) -> list[dict[str, Any]]:
        with self.state.lock:
            return [dict(e) for e in self.state.log]

    def __enter__(self) -> HostedServer:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._base[0] = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the {self.vendor} server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
