"""Weights & Biases: the only module that imports wandb.

Mode `auto` runs online when wandb finds an API key the usual way (WANDB_API_KEY, netrc,
`wandb login`) and offline otherwise; offline runs are real run folders that
`wandb sync` uploads later. The key is never read into our settings or logs.
All of wandb's own files are kept under the W&B directory (WANDB_DIR, default
`<artifacts_root>`), so a run writes nothing under $HOME.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lookalike.core.errors import LookalikeError
from lookalike.core.settings import TrackingSettings
from lookalike.reporting.lineage import ArtifactSpec

FLOW_JOB_TYPE = "upload-embeddings"  # the flow run's own W&B run, as in the article


def wandb_dir(artifacts_root: Path) -> Path:
    return Path(os.environ.get("WANDB_DIR") or artifacts_root)


def _contain_wandb_files(base: Path) -> None:
    """Point wandb's staging, cache and download folders inside `base` (before import)."""
    aux = base / "wandb-aux"
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        if var not in os.environ:
            (aux / sub).mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(aux / sub)
    os.environ.setdefault("WANDB_SILENT", "true")


def api_key_configured() -> bool:
    """True when wandb would find credentials without prompting or touching the network."""
    try:
        from wandb.errors import AuthenticationError
        from wandb.sdk import wandb_setup
        from wandb.sdk.lib import wbauth

        auth = wbauth.authenticate_session(
            host=wandb_setup.singleton().settings.base_url,
            source="lookalike",
            prompt=False,
            verify=False,
            update_session=False,
        )
        return auth is not None
    except (ImportError, AttributeError, TypeError):  # wandb internals moved: fall back
        return bool(os.environ.get("WANDB_API_KEY"))
    except (AuthenticationError, ValueError):
        return False


def resolve_mode(section: TrackingSettings) -> str:
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]  # wandb's own switch wins, as users expect
    if section.mode != "auto":
        return section.mode
    return "online" if api_key_configured() else "offline"


class TrackingRun:
    """One W&B run. In `disabled` mode every method is a no-op and `run_dir` is None."""

    def __init__(
        self,
        section: TrackingSettings,
        base_dir: Path,
        *,
        name: str | None,
        job_type: str,
        group: str | None,
        config: dict[str, Any],
    ) -> None:
        base_dir.mkdir(parents=True, exist_ok=True)
        _contain_wandb_files(base_dir)  # before wandb reads its environment, i.e. before resolve_mode
        self.mode = resolve_mode(section)
        self._run = None
        if self.mode == "disabled":
            return
        import wandb

        self._run = wandb.init(
            project=section.project,
            entity=section.entity,
            name=name,
            job_type=job_type,
            group=group,
            config=config,
            dir=str(base_dir),
            mode=self.mode,
            reinit="create_new",
        )

    @property
    def run_dir(self) -> str | None:
        return str(Path(self._run.dir).parent) if self._run else None

    @property
    def url(self) -> str | None:
        return self._run.url if self._run and self.mode == "online" else None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._run:
            self._run.log(metrics, step=step)

    def log_images(self, images: dict[str, Path]) -> None:
        if self._run:
            import wandb

            self._run.log({key: wandb.Image(str(path)) for key, path in images.items() if Path(path).is_file()})

    def set_summary(self, metrics: dict[str, Any]) -> None:
        if self._run:
            self._run.summary.update({k: v for k, v in metrics.items() if v is not None})

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Log a table; PIL images in its cells become W&B images (thumbnails in the UI)."""
        if self._run:
            import wandb
            from PIL import Image

            data = [[wandb.Image(cell) if isinstance(cell, Image.Image) else cell for cell in row] for row in rows]
            self._run.log({key: wandb.Table(columns=columns, data=data)})

    def log_artifact(self, spec: ArtifactSpec, aliases: list[str]) -> None:
        """Log a stage folder as this run's output, with `aliases` (e.g. `latest` and its stage key)."""
        if self._run:
            self._run.log_artifact(_draft(spec), aliases=aliases)

    def use_artifact(self, spec: ArtifactSpec, aliases: list[str] | None = None) -> None:
        """Declare a stage folder's artifact as this run's input.

        It is declared by content, as `Run.use_artifact` does for an artifact object: the producer
        logged the same files, so W&B resolves both to one version (and adds `aliases` to it),
        whether or not the producing run has been synced yet. Online this is the public
        `use_artifact`. Offline, wandb refuses `use_artifact`, so this records what it records for
        an artifact object: the artifact with `use_after_commit`, which `wandb sync` logs and then
        marks as used by this run.
        """
        if not self._run:
            return
        artifact = _draft(spec)
        if self.mode == "online":
            self._run.use_artifact(artifact, aliases=aliases or [])
        else:
            self._run._log_artifact(artifact, aliases=aliases or [], is_user_created=True, use_after_commit=True)

    def finish(self, exit_code: int = 0) -> None:
        if self._run:
            self._run.finish(exit_code=exit_code)
            self._run = None


def _draft(spec: ArtifactSpec):
    import wandb

    artifact = wandb.Artifact(name=spec.name, type=spec.type, metadata=spec.metadata)
    for file in spec.files:  # `immutable`: no staging copy; stage folders never change once finished
        artifact.add_file(str(spec.folder / file), name=file, policy="immutable")
    for name, uri in spec.references.items():  # schemes wandb cannot fetch are tracked as-is
        artifact.add_reference(uri, name=name, checksum=False)
    return artifact


# --- reading offline run folders (for tests and for checking what will be synced) ---

# --- reading artifacts back (needs W&B online: the public API) ---

WANDB_REF = re.compile(r"^(?:wandb://)?(?P<entity>[\w.-]+)/(?P<project>[\w.-]+)/(?P<name>[\w.-]+):(?P<alias>[\w.-]+)$")


class WandbLoadError(LookalikeError, RuntimeError):
    """A W&B artifact could not be read (no credentials, no network, no such artifact)."""


def parse_wandb_ref(ref: str) -> re.Match | None:
    """`entity/project/name:alias` (optionally `wandb://`-prefixed), or None."""
    return WANDB_REF.match(ref)


def public_api():
    """wandb's public API client; credentials the usual way (WANDB_API_KEY, `wandb login`)."""
    import wandb
    from wandb.errors import Error

    try:
        return wandb.Api()
    except (Error, ValueError, OSError) as exc:  # no key, or the key cannot be verified (no network)
        raise WandbLoadError(
            f"loading a W&B artifact needs W&B online with an API key (WANDB_API_KEY or `wandb login`): {exc}"
        ) from None


def open_artifact(api, path: str, type: str):
    """`api.artifact(path, type)`, wandb's errors turned into one line naming the artifact."""
    from wandb.errors import Error

    try:
        return api.artifact(path, type=type)
    except (Error, ValueError, OSError) as exc:
        raise WandbLoadError(f"cannot read W&B artifact {path} (type {type}): {exc}") from None


def download_entry(artifact, name: str, target: Path) -> None:
    """One file of an artifact to `target` (bypassing wandb's own cache: no second copy)."""
    import shutil
    import tempfile

    from wandb.errors import Error

    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".wandb-") as tmp:
        try:
            path = artifact.get_entry(name).download(root=tmp, skip_cache=True)
        except (Error, KeyError, ValueError, OSError) as exc:
            raise WandbLoadError(f"cannot download {name} of W&B artifact {artifact.qualified_name}: {exc}") from None
        shutil.move(path, target)
