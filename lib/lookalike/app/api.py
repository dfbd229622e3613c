"""HTTP API for programs: search by image (multipart upload or base64), by row id, or by vector.

    GET  /api/index              which index is served (key, alias, metrics, created)
    POST /api/search             JSON: exactly one of image_base64 | row | vector, k, and a filter
    POST /api/search/upload      multipart: file=<image>, k=<int>, filter=<expression>
    POST /api/search/batch       JSON: queries (1 to 64 of image_base64 | row | vector), k, filter
    GET  /api/images/{row}       a dataset image as PNG (the `image_url` of each hit)
    POST /api/reload             re-read the alias now (it is also polled)

A `filter` keeps only the rows it matches (`label=Sneaker,Sandal and width>=64`, `or`, parentheses,
quoted values, or a list of filters that must all hold: see `lookalike.core.filters`); hits carry
each row's metadata.

Every error is a 4xx with {"detail": "<one line naming the problem>"}; the server keeps running.
A field a request does not take (a misspelt `top_k`, an upload's `?k=` in the URL), or a form field
given twice, is a 422, never ignored; `true` is not a row or a k. Uploaded images are decoded one at
a time at the size the encoder takes, and the images of one request may decode to
`IndexHolder.max_request_pixels` in all (4 images at the per-image limit; a 413 past it). Responses are typed models, so the OpenAPI docs at /docs show each one.
JSON bodies must hold finite numbers: NaN, Infinity and numbers beyond float range are refused
as they are parsed.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Optional

from fastapi import APIRouter, FastAPI, Form, Request, UploadFile
from fastapi import Query as InQueryString
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from lookalike.core.errors import brief, one_line, redact_urls
from lookalike.core.names import MAX_K, TOP_K
from lookalike.serving.holder import MAX_BATCH, IndexHolder, QueryError

MAX_UPLOAD_BYTES = 20 << 20


class _NotFinite(ValueError):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf without ever naming it
        raise _NotFinite(text)
    return value


def _refuse_constant(name: str) -> float:
    raise _NotFinite(name)  # NaN, Infinity, -Infinity: Python's json accepts them, JSON does not


class _FiniteJSONRequest(Request):
    """A request whose JSON body may hold only finite numbers.

    A NaN that reaches validation fails there, and FastAPI's 422 then cannot serialise the
    NaN it echoes back (a 500 with a traceback); refused while parsing, it never gets that far.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body, parse_float=_finite_float, parse_constant=_refuse_constant)
            except _NotFinite as exc:
                doc = body.decode("utf-8", "replace")
                # FastAPI turns a JSONDecodeError into a 422 (json_invalid), like any malformed body
                raise json.JSONDecodeError(
                    f"{exc.text} is not a finite number (JSON numbers must be finite)", doc, max(doc.find(exc.text), 0)
                ) from None
        return self._json


class _FiniteJSONRoute(APIRoute):
    """Routes that read their body through `_FiniteJSONRequest` (FastAPI's custom request class hook)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def finite_json_handler(request: Request) -> Response:
            return await handler(_FiniteJSONRequest(request.scope, request.receive))

        return finite_json_handler


def validation_detail(errors: list[dict[str, Any]]) -> str:
    """Pydantic's error list as the one `detail` line the API promises:
    `k: Input should be greater than or equal to 1 (got 0)`, several joined with `; `."""
    parts = []
    for error in errors:
        loc = [str(part) for part in error.get("loc", ())]
        where = ".".join(loc[1:] if loc[:1] == ["body"] and len(loc) > 1 else loc) or "body"
        if error.get("type") == "json_invalid":
            parts.append(f"body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}")
            continue
        if error.get("type") == "extra_forbidden":  # a misspelt field would otherwise be ignored silently
            where = f"query parameter {'.'.join(loc[1:])}" if loc[:1] == ["query"] else where
            parts.append(f"{where}: unknown field (the fields each request takes are listed at /docs)")
            continue
        got = error.get("input")
        shown = f" (got {brief(got)})" if isinstance(got, (str, int, float, bool)) else ""
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}{shown}")
    return one_line("; ".join(parts))


FILTER_HELP = (
    "Only rows matching this filter: terms like label=Sneaker, label=Sneaker,Sandal, width>=64, path~*/cats/*, "
    "joined by and / or (and binds first; parentheses group; quotes keep a value whole), or a list of filters "
    "that must all hold. Fields: the index's metadata (GET /api/index)."
)


class Query(BaseModel):
    # finite numbers also when built in process, not parsed from JSON; an unknown (misspelt) field is a 422
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")
    image_base64: Optional[str] = Field(None, description="An encoded image (PNG, JPEG, ...), base64.")
    # strict: JSON true is not row 1, nor "3" row 3 (the Python API refuses them too); a vector's ints are floats
    row: Optional[StrictInt] = Field(None, description="A dataset row id already in the index.")
    vector: Optional[list[StrictFloat]] = Field(None, description="A raw embedding of the index's dimension.")

    @model_validator(mode="after")
    def _exactly_one(self) -> Query:
        given = [n for n in ("image_base64", "row", "vector") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of image_base64, row, vector (got {', '.join(given) or 'none'})")
        return self


class SearchRequest(Query):
    k: StrictInt = Field(TOP_K, ge=1, le=MAX_K, description="How many neighbours.")
    filter: Optional[str | list[str]] = Field(None, description=FILTER_HELP)


class BatchSearchRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")
    queries: list[Query] = Field(
        ..., min_length=1, max_length=MAX_BATCH, description=f"1 to {MAX_BATCH} queries, answered in this order."
    )
    k: StrictInt = Field(TOP_K, ge=1, le=MAX_K, description="How many neighbours for each query.")
    filter: Optional[str | list[str]] = Field(None, description=FILTER_HELP)


class UploadForm(BaseModel):
    """The multipart form of POST /api/search/upload."""

    model_config = ConfigDict(extra="forbid")
    file: UploadFile = Field(description="The query image.")
    k: int = Field(TOP_K, ge=1, le=MAX_K, description="How many neighbours.")
    filter: Optional[str] = Field(None, description=FILTER_HELP)


class NoQueryParameters(BaseModel):
    """An endpoint that takes no query parameters: one sent (`?k=3` instead of the form's k) is a 422,
    not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# --- responses: typed, so /docs and /openapi.json show what comes back ------------------------------


class Hit(BaseModel):
    """One neighbour: the row's built-in metadata, then the dataset's metadata columns (extra fields)."""

    model_config = ConfigDict(extra="allow")
    row: int = Field(description="The dataset row id.")
    distance: float = Field(description="In the index's metric (squared L2, or cosine similarity for ip).")
    label: Optional[str | int] = None
    path: Optional[str] = None
    split: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    sha256: Optional[str] = None
    image_url: str = Field(description="GET it for the row's image as PNG.")


class SearchResponse(BaseModel):
    index: str = Field(description="The index stage key that answered.")
    neighbours: list[Hit] = Field(description="Nearest first.")


class BatchResult(BaseModel):
    neighbours: list[Hit] = Field(description="Nearest first.")


class BatchSearchResponse(BaseModel):
    index: str = Field(description="The index stage key that answered every query.")
    results: list[BatchResult] = Field(description="One per query, in the order asked.")


class IndexInfo(BaseModel):
    ref: str = Field(description="What the server was asked to serve (an alias, a key, s3://, W&B).")
    alias: Optional[str] = Field(description="The alias followed, if any.")
    index: str
    encoder: str
    dataset: str
    created: str
    ntotal: Optional[int]
    dim: Optional[int]
    metric: Optional[str]
    metadata_columns: list[str] = Field(description="What hits carry and filters can name.")
    method: Optional[str]
    metrics: dict[str, Optional[float]] = Field(description="The index's own scores and its evaluation's.")
    loaded_at: float
    reload_error: Optional[str] = Field(description="Why the alias's new index is not served, if it is not.")


class ReloadResponse(IndexInfo):
    swapped: bool = Field(description="Whether the alias had moved and its new index is now served.")


class Health(BaseModel):
    ok: bool
    index: str


def create_api(holder: IndexHolder) -> FastAPI:
    api = FastAPI(title="lookalike", description="Image in, top-k most similar images out.")
    router = APIRouter(prefix="/api", route_class=_FiniteJSONRoute)

    @api.exception_handler(QueryError)
    async def _query_error(request: Request, exc: QueryError) -> JSONResponse:
        return JSONResponse({"detail": redact_urls(str(exc))}, status_code=exc.status)

    @api.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_detail(exc.errors())}, status_code=422)

    def answer(request: Request, result: tuple[str, list[dict]]) -> SearchResponse:
        base = str(request.base_url).rstrip("/")
        index, hits = result
        return SearchResponse(
            index=index, neighbours=[Hit(**{**h, "image_url": f"{base}/api/images/{h['row']}"}) for h in hits]
        )

    @router.get("/index")
    def index_info() -> IndexInfo:
        return IndexInfo(**holder.info())

    def query_of(query: Query):
        """What `IndexHolder.search_many` takes for one query: image bytes (decoded there, one at a time,
        within the request's pixel budget), a row id or a vector."""
        if query.image_base64 is not None:
            try:
                data = base64.b64decode(query.image_base64, validate=True)
            except (binascii.Error, ValueError):
                raise QueryError("image_base64 is not valid base64", status=400) from None
            return _limited(data)
        return query.row if query.row is not None else query.vector

    @router.post("/search")
    def search(body: SearchRequest, request: Request) -> SearchResponse:
        key, hits = holder.search_many([query_of(body)], body.k, body.filter)
        return answer(request, (key, hits[0]))

    @router.post("/search/batch")
    def search_batch(body: BatchSearchRequest, request: Request) -> BatchSearchResponse:
        key, hits = holder.search_many([query_of(q) for q in body.queries], body.k, body.filter)
        return BatchSearchResponse(
            index=key, results=[BatchResult(neighbours=answer(request, (key, found)).neighbours) for found in hits]
        )

    @router.post("/search/upload")
    async def search_upload(
        request: Request,
        form: Annotated[UploadForm, Form(media_type="multipart/form-data")],
        _: Annotated[NoQueryParameters, InQueryString()],
    ) -> SearchResponse:
        _refuse_repeated_fields(await request.form())  # parsed once: Starlette keeps it on the request
        data = await form.file.read(MAX_UPLOAD_BYTES + 1)
        # the forward pass runs in the thread pool, as sync routes do, never on the event loop
        return answer(request, await run_in_threadpool(holder.by_image_bytes, _limited(data), form.k, form.filter))

    @router.get("/images/{row}", response_class=Response)
    def image(row: int) -> Response:
        buffer = io.BytesIO()
        holder.image_of_row(row).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @router.post("/reload")
    def reload() -> ReloadResponse:
        return ReloadResponse(swapped=holder.reload(), **holder.info())

    api.include_router(router)

    @api.get("/healthz")
    def health() -> Health:
        return Health(ok=True, index=holder.info()["index"])

    return api


def _refuse_repeated_fields(form: FormData) -> None:
    """A form field given twice is a 422: the form model would keep one of them and drop the other
    without a word (a second `filter` ignored, a second `file` never searched)."""
    for name in form.keys():
        count = len(form.getlist(name))
        if count > 1:
            also = "; join filter terms with 'and' or 'or' in one field" if name == "filter" else ""
            raise QueryError(f"form field {brief(name)} is given {count} times: give it once{also}")


def _limited(data: bytes) -> bytes:
    if len(data) > MAX_UPLOAD_BYTES:
        raise QueryError(f"image is over {MAX_UPLOAD_BYTES >> 20} MiB; send a smaller file", status=413)
    return data
