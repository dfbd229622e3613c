"""HTTP API for programs: search by image (multipart upload or base64), by row id, or by vector.

    GET  /api/index              which index is served (key, alias, metrics, created)
    POST /api/search             JSON: exactly one of image_base64 | row | vector, and k
    POST /api/search/upload      multipart: file=<image>, k=<int>
    GET  /api/images/{row}       a dataset image as PNG (the `image_url` of each hit)
    POST /api/reload             re-read the alias now (it is also polled)

Every error is a 4xx with {"detail": "<one line naming the problem>"}; the server keeps running.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Annotated, Optional

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, model_validator
from starlette.concurrency import run_in_threadpool

from lookalike.serving.holder import MAX_K, IndexHolder, QueryError

MAX_UPLOAD_BYTES = 20 << 20


class SearchRequest(BaseModel):
    image_base64: Optional[str] = Field(None, description="An encoded image (PNG, JPEG, ...), base64.")
    row: Optional[int] = Field(None, description="A dataset row id already in the index.")
    vector: Optional[list[float]] = Field(None, description="A raw embedding of the index's dimension.")
    k: int = Field(5, ge=1, le=MAX_K, description="How many neighbours.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchRequest:
        given = [n for n in ("image_base64", "row", "vector") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of image_base64, row, vector (got {', '.join(given) or 'none'})")
        return self


def create_api(holder: IndexHolder) -> FastAPI:
    api = FastAPI(title="lookalike", description="Image in, top-k most similar images out.")
    router = APIRouter(prefix="/api")

    @api.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    def answer(request: Request, result: tuple[str, list[dict]]) -> dict:
        base = str(request.base_url).rstrip("/")
        index, hits = result
        return {"index": index, "neighbours": [{**h, "image_url": f"{base}/api/images/{h['row']}"} for h in hits]}

    @router.get("/index")
    def index_info() -> dict:
        return holder.info()

    @router.post("/search")
    def search(body: SearchRequest, request: Request) -> dict:
        if body.image_base64 is not None:
            try:
                data = base64.b64decode(body.image_base64, validate=True)
            except (binascii.Error, ValueError):
                raise QueryError("image_base64 is not valid base64", status=400) from None
            return answer(request, holder.by_image_bytes(_limited(data), body.k))
        if body.row is not None:
            return answer(request, holder.by_row(body.row, body.k))
        return answer(request, holder.by_vector(body.vector, body.k))

    @router.post("/search/upload")
    async def search_upload(
        request: Request,
        file: Annotated[UploadFile, File(description="The query image.")],
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 5,
    ) -> dict:
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        # the forward pass runs in the thread pool, as sync routes do, never on the event loop
        return answer(request, await run_in_threadpool(holder.by_image_bytes, _limited(data), k))

    @router.get("/images/{row}", response_class=Response)
    def image(row: int) -> Response:
        buffer = io.BytesIO()
        holder.image_of_row(row).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @router.post("/reload")
    def reload() -> dict:
        return {"swapped": holder.reload(), **holder.info()}

    api.include_router(router)

    @api.get("/healthz")
    def health() -> dict:
        return {"ok": True, "index": holder.info()["index"]}

    return api


def _limited(data: bytes) -> bytes:
    if len(data) > MAX_UPLOAD_BYTES:
        raise QueryError(f"image is over {MAX_UPLOAD_BYTES >> 20} MiB; send a smaller file", status=413)
    return data
