"""A local fake of W&B's public API boundary (`wandb.Api().artifact(...)`), serving what offline
runs logged: the artifacts, with the aliases their runs gave them, and the files they staged.
That is what `wandb sync` would upload, so loading from it tests the logged lineage too."""

from __future__ import annotations

import shutil
from pathlib import Path

from wandb.errors import CommError
from wandb_offline import read_offline_run


class FakeEntry:
    def __init__(self, path: str, source: str) -> None:
        self.path, self._source = path, source

    def download(self, root: str | None = None, skip_cache: bool | None = None) -> str:
        target = Path(root) / self.path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._source, target)
        return str(target)


class FakeArtifact:
    def __init__(self, qualified_name: str, record: dict) -> None:
        self.qualified_name, self.type = qualified_name, record["type"]
        self.metadata = record["metadata"]
        self.files = {path: entry["local_path"] for path, entry in record["files"].items() if entry["local_path"]}

    def get_entry(self, name: str) -> FakeEntry:
        if name not in self.files:
            raise KeyError(f"Path not contained in artifact: {name}")
        return FakeEntry(name, self.files[name])


class FakeApi:
    """`artifact("entity/project/name:alias", type=...)` as wandb.Api answers it."""

    def __init__(self, entity: str, project: str, wandb_root: Path) -> None:
        self.prefix = f"{entity}/{project}/"
        self.versions: dict[str, dict] = {}  # name:alias -> record; inputs add aliases as on sync
        for folder in sorted(Path(wandb_root).glob("offline-run-*")):
            run = read_offline_run(folder)
            for record in [*run["artifacts"], *run["inputs"]]:
                for alias in record["aliases"]:
                    self.versions[f"{record['name']}:{alias}"] = record
        self.requests: list[str] = []

    def artifact(self, name: str, type: str | None = None) -> FakeArtifact:
        self.requests.append(name)
        if not name.startswith(self.prefix) or name.removeprefix(self.prefix) not in self.versions:
            raise CommError(f"artifact '{name}' not found in '{self.prefix.rstrip('/')}'")
        record = self.versions[name.removeprefix(self.prefix)]
        if type is not None and type != record["type"]:
            raise ValueError(f"type {type} does not match artifact type {record['type']}")
        return FakeArtifact(name, record)
