"""MkDocs hooks: the pages made from the repository at build time, offline.

- The repository's own Markdown outside docs/ (README.md, the deployments runbook and sizing, the
  benchmarks and research notes) becomes pages of the site, read where it lives, so each file keeps
  one copy and its links work both on a code host and in the site.
- The reference is generated from the code: the CLI from the typer app (typer's own Markdown
  generator, the one behind `typer ... utils docs`), the settings from the pydantic models' fields and
  descriptions, and the HTTP API from FastAPI's OpenAPI schema. The Python API is mkdocstrings' (see
  docs/reference/python-api.md).
- Relative links are resolved where their file lives in the repository and pointed at the page that
  file became; a linked file that is no page (prefect.yaml, the Dockerfile) is copied in beside them.
"""

from __future__ import annotations

import json
import posixpath
import re
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

REPO = Path(__file__).resolve().parents[1]

# repository file -> the page it is in the site
PAGES = {
    "README.md": "index.md",
    "deployments/README.md": "operations/deployments.md",
    "deployments/SIZING.md": "operations/sizing.md",
    "benchmarks/README.md": "benchmarks/index.md",
    "benchmarks/PHOTO_COPIES.md": "benchmarks/photo-copies.md",
    "research/README.md": "research/index.md",
    "research/GPU.md": "research/gpu.md",
}
# linked repository files that are not pages: copied into the site under this folder
COPIES = "repo"

LINK = re.compile(r"(\]\()([^)\s]+)(\))")
# numbered citations side by side, `[12][13]` (deployments/SIZING.md): text, not a reference link
CITATIONS = re.compile(r"\[(\d+)\]\[(\d+)\]")
# a list item nested by two spaces, as code hosts read it; Python-Markdown nests by four
NESTED_ITEM = re.compile(r"^((?:  )+)(?=(?:[-*]|\d+\.) )", re.M)
# a list right under a paragraph line; Python-Markdown needs a blank line between them
LIST_AFTER_TEXT = re.compile(r"^((?![ \t]|(?:[-*]|\d+\.) |[|#>]).+)\n(?=(?:[-*]|\d+\.) )", re.M)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)

_source_of: dict[str, str] = {}  # site page -> the repository file it was read from

HTTP_PAGE = "reference/http-api.md"
# FastAPI's schema needs lookalike.app.api, whose imports (torch among them) take seconds: a second
# process makes it while this one reads and renders the other pages
_openapi: subprocess.Popen[str] | None = None
_openapi_schema: dict[str, Any] | None = None
_openapi_json: File | None = None


def on_config(config: Any) -> Any:
    global _openapi, _openapi_schema
    _openapi = subprocess.Popen([sys.executable, __file__, "openapi"], stdout=subprocess.PIPE, text=True)
    _openapi_schema = None
    return config


def _schema() -> dict[str, Any]:
    global _openapi_schema
    if _openapi_schema is None:
        assert _openapi is not None
        out, _ = _openapi.communicate()
        if _openapi.returncode != 0:
            raise PluginError(f"the HTTP API reference: `{__file__} openapi` exited with {_openapi.returncode}")
        _openapi_schema = json.loads(out)
    return _openapi_schema


def on_env(env: Any, config: Any, files: Files) -> Any:
    assert _openapi_json is not None
    _openapi_json.content_string = json.dumps(_schema(), indent=2) + "\n"
    return env


def _targets(markdown: str, source: str) -> list[tuple[str, str]]:
    """(repository path, anchor) of every relative link outside code blocks in `source`."""
    found = []
    for match in LINK.finditer(FENCE.sub("", markdown)):
        target = match.group(2)
        if target.startswith("#") or re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        found.append((posixpath.normpath(posixpath.join(posixpath.dirname(source), path)), anchor))
    return found


def _site_path(repo_path: str) -> str | None:
    """Where a repository file is in the site (None: outside the repository)."""
    if repo_path.startswith("docs/"):
        return repo_path.removeprefix("docs/")
    if repo_path in PAGES:
        return PAGES[repo_path]
    if (REPO / repo_path).is_file():
        return f"{COPIES}/{repo_path}"
    return None


def on_files(files: Files, config: Any) -> Files:
    global _openapi_json
    _source_of.clear()
    for page in files.documentation_pages():
        _source_of[page.src_uri] = f"docs/{page.src_uri}"
    for source, page in PAGES.items():
        if (REPO / source).is_file():
            files.append(File.generated(config, page, content=(REPO / source).read_text()))
            _source_of[page] = source
    files.append(File.generated(config, "reference/cli.md", content=cli_reference()))
    files.append(File.generated(config, "reference/settings.md", content=settings_reference()))
    # filled in once the schema has come (on_page_markdown, on_env): the last pages to be read
    files.append(File.generated(config, HTTP_PAGE, content=""))
    _openapi_json = File.generated(config, "reference/openapi.json", content="")
    files.append(_openapi_json)
    # the repository files that pages link to and that are no page travel with the site
    copied = set()
    for source in _source_of.values():
        text = (REPO / source).read_text()
        for repo_path, _ in _targets(text, source):
            site = _site_path(repo_path)
            if site and site.startswith(f"{COPIES}/") and site not in copied:
                copied.add(site)
                files.append(File.generated(config, site, abs_src_path=str(REPO / repo_path)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri == HTTP_PAGE:
        return http_reference(_schema())
    source = _source_of.get(page.file.src_uri)
    if source is None:
        return markdown
    here = posixpath.dirname(page.file.src_uri)

    def relink(match: re.Match[str]) -> str:
        target = match.group(2)
        if target.startswith("#") or re.match(r"[a-z][a-z0-9+.-]*:", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        repo_path = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        site = _site_path(repo_path)
        if site is None:
            return match.group(0)  # left for MkDocs to report
        new = posixpath.relpath(site, here or ".") + (f"#{anchor}" if anchor else "")
        return f"{match.group(1)}{new}{match.group(3)}"

    def text(part: str) -> str:
        part = LIST_AFTER_TEXT.sub(r"\1\n\n", NESTED_ITEM.sub(lambda m: m.group(1) * 2, part))
        return CITATIONS.sub(r"[\1]\\[\2]", LINK.sub(relink, part))

    # code blocks are left as they are: only the text between them is relinked
    parts, last = [], 0
    for block in FENCE.finditer(markdown):
        parts.append(text(markdown[last : block.start()]))
        parts.append(block.group(0))
        last = block.end()
    parts.append(text(markdown[last:]))
    return "".join(parts)


# --- the CLI, from the typer app ------------------------------------------------------------------


def cli_reference() -> str:
    import click
    import typer.main
    from typer.cli import get_docs_for_click

    from lookalike.cli.main import app

    command = typer.main.get_command(app)
    ctx = click.Context(command, info_name="lookalike")
    body = get_docs_for_click(obj=command, ctx=ctx, name="lookalike", title="Command line reference")
    intro = (
        "Generated from the `lookalike` command itself (typer's Markdown generator over "
        "`typer.main.get_command(app)`) each time the site is built: the same text as "
        "`lookalike --help` and `lookalike COMMAND --help`. The guide: [The command line](../user-guide/cli.md).\n\n"
    )
    title, _, rest = body.partition("\n\n")
    # typer writes help text as it is; the usage lines are code
    rest = "".join(
        part if part.startswith("```") else _literal(part) for part in re.split(r"(```.*?```)", rest, flags=re.S)
    )
    return f"{title}\n\n{intro}{rest.strip()}\n"


# --- the settings, from the pydantic models -------------------------------------------------------


def _type_name(annotation: Any, limits: list[str]) -> str:
    """`int | "auto"` for Union[Annotated[int, Gt(0)], Literal['auto']]; constraints go to `limits`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        limits += _limits(args[1:])
        return _type_name(args[0], limits)
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a, limits) for a in args if a is not type(None)]
        return " | ".join(names + ["None"] * (type(None) in args))
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a, limits) for a in args)
        return f"{origin.__name__}[{inner}]"
    return getattr(annotation, "__name__", str(annotation))


def _limits(metadata: Any) -> list[str]:
    found = []
    for item in metadata:
        for name, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, name, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return found


def _literal(text: str, special: str = "*<") -> str:
    """Help text as Markdown: outside `code`, a `*` or `<` is the character, not emphasis or an HTML tag
    (`path~*/cats/*`, `--set encoder.teacher=<model>`)."""
    escapes = {"*": "\\*", "<": "&lt;", "|": "\\|"}
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(
        part if part.startswith("`") else "".join(escapes[c] if c in special else c for c in part) for part in parts
    )


def _cell(text: str) -> str:
    """Help text for a table cell: one line, and a `|` outside `code` that does not end the cell."""
    return _literal(" ".join(text.split()), "*<|")


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "empty"
    if isinstance(value, frozenset | set | tuple | list):
        value = sorted(value) if isinstance(value, frozenset | set) else list(value)
    return f"`{json.dumps(value, default=str)}`"


def _rows(model: Any, prefix: str) -> list[str]:
    from lookalike.core.settings import env_name

    rows = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        limits = _limits(field.metadata)
        kind = _type_name(field.annotation, limits)
        rows.append(
            f"| `{dotted}` | `{kind}`{' (' + ', '.join(limits) + ')' if limits else ''} "
            f"| {_cell(_default(field))} "
            f"| `{env_name(dotted)}` | {_cell(field.description or '')} |"
        )
    return rows


def settings_reference() -> str:
    from lookalike.core.settings import SECTIONS, Settings

    header = ["| setting | type | default | environment variable | description |", "|---|---|---|---|---|"]
    out = [
        "# Settings reference",
        "",
        "Generated from the settings models (`lookalike.core.settings`: each field's type, default, "
        "constraints and description) each time the site is built. Set any of them with "
        "`--set section.field=value`, the environment variable, or `.env`; see "
        "[Settings and stage keys](../concepts/stage-keys.md) for the precedence and for which stage "
        "each one invalidates.",
        "",
        "## Top-level",
        "",
        *header,
    ]
    top = type("Top", (), {"model_fields": {n: f for n, f in Settings.model_fields.items() if n not in SECTIONS}})
    out += _rows(top, "")
    for section, field in Settings.model_fields.items():
        if section not in SECTIONS:
            continue
        model = typing.cast(Any, field.annotation)
        out += ["", f"## `{section}`", ""]
        if model.__doc__:
            out += [" ".join(model.__doc__.split()), ""]
        out += [*header, *_rows(model, f"{section}.")]
    return "\n".join(out) + "\n"


# --- the HTTP API, from FastAPI's OpenAPI schema --------------------------------------------------


def openapi_schema() -> dict[str, Any]:
    """The app's HTTP API as FastAPI describes it; building the routes loads no index (the holder is
    only called by a request)."""
    from lookalike.app.api import create_api

    return create_api(typing.cast(Any, None)).openapi()


def _schema_type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_schema_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_schema_type(schema.get('items', {}))}"
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    return str(schema.get("type", "any"))


def http_reference(schema: dict[str, Any]) -> str:
    out = [
        "# HTTP API reference",
        "",
        f"{schema['info']['description']} Generated from the app's OpenAPI schema (FastAPI's "
        "`app.openapi()` over `lookalike.app.api.create_api`) each time the site is built; the schema "
        "itself: [openapi.json](openapi.json). A running `lookalike serve` shows the same at `/docs`. "
        "The guide: [The retrieval app](../user-guide/app.md).",
        "",
        "| method | path | request | response |",
        "|---|---|---|---|",
    ]
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            request = "".join(
                f"{_schema_type(body['schema'])} (`{kind}`)"
                for kind, body in op.get("requestBody", {}).get("content", {}).items()
            )
            params = ", ".join(f"`{p['name']}` ({p['in']})" for p in op.get("parameters", []))
            ok = op["responses"].get("200", {}).get("content", {})
            # a route answering raw bytes (the dataset image) declares no body; its media type is the route's
            response = ", ".join(_schema_type(c["schema"]) for c in ok.values()) or "the image, `image/png`"
            out.append(f"| `{method.upper()}` | `{path}` | {request or params} | {response} |")
    out += ["", "## Schemas"]
    for name, model in schema["components"]["schemas"].items():
        out += ["", f"### {name}", ""]
        if model.get("description"):
            out += [" ".join(model["description"].split()), ""]
        required = set(model.get("required", []))
        out += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
        for field, spec in model.get("properties", {}).items():
            default = f"`{json.dumps(spec['default'])}`" if "default" in spec else ""
            out.append(
                f"| `{field}` | {_cell(_schema_type(spec))} | {'yes' if field in required else ''} "
                f"| {_cell(default)} | {_cell(spec.get('description', ''))} |"
            )
    return "\n".join(out) + "\n"


if __name__ == "__main__" and sys.argv[1:] == ["openapi"]:
    print(json.dumps(openapi_schema()))
