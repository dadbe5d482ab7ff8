"""The JSON API: prediction of uploaded files, the loaded model's description and liveness.

* ``POST /api/v1/predict`` - multipart field ``file``; ``?timeline=true`` adds VAD segments.
* ``POST /api/v1/predict/batch`` - multipart fields ``files``; one result or error per file.
* ``GET /api/v1/model`` - labels, training data, scores and the model card.
* ``GET /healthz`` - liveness and the loaded model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request

from emovox.audio import SAMPLE_RATE
from emovox.errors import EmovoxError
from emovox.serve_errors import ApiError
from emovox.serve_model import RecognizerLike, Service, prediction_dict, segment_dict
from emovox.serve_settings import API
from emovox.serve_uploads import MULTIPART_OVERHEAD, Upload, decode_upload, read_uploads


def _multipart_body(field: str, many: bool) -> dict[str, Any]:
    """OpenAPI request body of a multipart upload of one file (or a list of files) named ``field``."""
    binary: dict[str, Any] = {"type": "string", "format": "binary"}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": [field],
                        "properties": {field: {"type": "array", "items": binary} if many else binary},
                    }
                }
            },
        }
    }


_UPLOAD_SCHEMA = _multipart_body("file", many=False)
_BATCH_SCHEMA = _multipart_body("files", many=True)
_ERRORS = {
    code: {"description": text}
    for code, text in {
        400: "empty file or malformed multipart",
        413: "file, request or audio over the limit",
        415: "not audio / not multipart",
        422: "no file, or audio the model cannot use",
    }.items()
}


def predict_upload(
    rec: RecognizerLike, upload: Upload, max_duration: float, timeline: bool
) -> dict[str, Any]:
    """The result of ``POST /predict`` for one upload (blocking: run it in a worker thread)."""
    wave = decode_upload(upload, max_duration)
    try:
        result = {"filename": upload.filename, **prediction_dict(rec.predict(wave, sr=SAMPLE_RATE))}
        if timeline:
            result["segments"] = [segment_dict(s) for s in rec.timeline(wave, sr=SAMPLE_RATE)]
    except EmovoxError as exc:
        raise ApiError(422, "unusable_audio", f"{upload.filename}: {exc}") from None
    return result


def predict_uploads(
    rec: RecognizerLike, uploads: Sequence[Upload], max_duration: float
) -> list[dict[str, Any]]:
    """One result or error per upload, in order: every file is decoded first, then predicted.

    Blocking: run it in a worker thread. A file that cannot be decoded or used is an error row
    (``ok: false`` with its status, code and detail); it never fails the others.
    """
    results: list[dict[str, Any]] = []
    waves: list[tuple[int, np.ndarray]] = []
    for upload in uploads:
        try:
            waves.append((len(results), decode_upload(upload, max_duration)))
            results.append({"filename": upload.filename, "ok": True})
        except ApiError as exc:
            results.append({"filename": upload.filename, "ok": False, "status": exc.status, **exc.body()})
    for index, wave in waves:
        try:
            results[index].update(prediction_dict(rec.predict(wave, sr=SAMPLE_RATE)))
        except EmovoxError as exc:
            results[index].update(ok=False, status=422, error="unusable_audio", detail=str(exc))
    return results


def register_api_routes(app: FastAPI, service: Service) -> None:
    """``GET /healthz``, ``GET /api/v1/model`` and the two prediction endpoints on ``app``."""
    settings = service.settings

    @app.get("/healthz", summary="Liveness: the service is up and its model loaded")
    async def healthz() -> dict[str, Any]:
        rec = service.get()
        return {"status": "ok", "model": service.model, "labels": list(rec.labels)}

    @app.get(f"{API}/model", summary="The loaded model: labels, training data, scores, model card")
    async def model_endpoint() -> dict[str, Any]:
        return service.info()

    @app.post(
        f"{API}/predict",
        summary="Emotion of one audio file",
        description="Multipart field `file` (wav, flac, ogg, opus, mp3, aiff). `?timeline=true` adds "
        "per-segment emotions over the speech found by voice activity detection.",
        openapi_extra=_UPLOAD_SCHEMA,
        responses=_ERRORS,
    )
    async def predict(
        request: Request, timeline: bool = Query(False, description="add VAD segments with their emotions")
    ) -> dict[str, Any]:
        rec = service.get()
        (upload,) = await read_uploads(
            request,
            "file",
            file_limit=settings.max_upload_bytes,
            body_limit=settings.max_upload_bytes + MULTIPART_OVERHEAD,
            shown_limit_mb=settings.max_upload_mb,
            max_files=1,
            strict=True,
            idle_timeout=settings.body_timeout_s,
        )
        return await service.run(predict_upload, rec, upload, settings.max_duration_s, timeline)

    @app.post(
        f"{API}/predict/batch",
        summary="Emotions of several audio files",
        description="Multipart fields `files`. Each file gets its own result or error; one bad file never "
        "fails the batch.",
        openapi_extra=_BATCH_SCHEMA,
        responses=_ERRORS,
    )
    async def predict_batch(request: Request) -> dict[str, Any]:
        rec = service.get()
        uploads = await read_uploads(
            request,
            "files",
            file_limit=settings.max_upload_bytes,
            body_limit=settings.max_batch_bytes,
            shown_limit_mb=settings.max_batch_mb,
            max_files=settings.max_batch_files,
            strict=False,
            idle_timeout=settings.body_timeout_s,
        )
        results = await service.run(predict_uploads, rec, uploads, settings.max_duration_s)
        return {
            "results": results,
            "ok": sum(r["ok"] for r in results),
            "failed": sum(not r["ok"] for r in results),
        }
