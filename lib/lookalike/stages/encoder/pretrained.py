"""Where an encoder starts: `encoder.init` and `encoder.teacher` read into weights, architecture and a content hash.

A reference is one of:
  - `lookalike:<alias or encoder stage key>`: an earlier encoder in the artifacts root, read
    after its manifest's sha256 check (a changed `encoder.pt` is refused);
  - `torchvision:<weights>` (`ResNet18_Weights.IMAGENET1K_V1`, `ResNet50_Weights.DEFAULT`): through
    torchvision's weights API and its download cache (`$TORCH_HOME/hub/checkpoints`);
  - `timm:<model>`: `timm.create_model(..., pretrained=True)`, which reads the Hugging Face hub or its
    cache (`HF_HOME`, `HF_HUB_OFFLINE=1`);
  - `hf:<model id or folder>`: `transformers.AutoModel.from_pretrained`, the same cache;
  - a local path: a `save_pretrained` folder (as `hf:`), a lookalike `encoder.pt` or stage folder,
    or a state dict (`.pt`, `.pth`, `.bin`, `.safetensors`) for `encoder.backbone`.

Every source is read weights-only (`torch.load(weights_only=True)` or safetensors): nothing in an init
can execute code. A model that ships code of its own (transformers' `auto_map`) is refused before
transformers reads it, which is always told `trust_remote_code=False`; only regular files are opened. Its identity is `weights_sha256`: the tensors' names, dtypes, shapes and bytes with
the architecture, the same whichever file format carries them, so the encoder key follows the
weights, not the path. A machine that cannot reach a hub gets one line saying how to point at local weights.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from lookalike.core.errors import LookalikeError, brief
from lookalike.core.extras import import_extra
from lookalike.core.manifest import find_manifest, is_stage_key, verified_path
from lookalike.stages.encoder.backbones import build_backbone, with_pooling
from lookalike.stages.encoder.methods.normalize import IMAGENET_NORMALIZE

ENCODER_FILE = "encoder.pt"  # lookalike.stages.encoder.checkpoint's file (imported from there would be a cycle)
HUB_TIMEOUT_S = 5.0


class InitError(LookalikeError, ValueError):
    """An init or teacher reference that cannot be read, or weights that do not fit."""


@dataclass(frozen=True)
class Init:
    """An init read: what builds it (architecture, width, config), how it is fed, its weights and their hash."""

    reference: str
    describe: str
    architecture: str
    width: float
    config: dict[str, Any] | None
    native_size: int | None  # the input size it was trained at, when known
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    carries_architecture: bool  # False: a bare state dict for encoder.backbone
    state_dict: dict[str, torch.Tensor] = field(repr=False, compare=False)
    _hashes: dict = field(default_factory=dict, repr=False, compare=False)  # (architecture, width) -> sha256
    pooling: str | None = None  # a lookalike encoder's read-out (`backbones.with_pooling`): a teacher embeds with it
    grid_cells: int | None = None  # and its grid's cells per side

    @classmethod
    def of_module(cls, model: nn.Module, architecture: str, width: float = 1.0, native_size: int | None = None) -> Init:
        """An init made from a backbone in memory (benchmarks and tests build teachers this way)."""
        return cls(
            reference=f"<{architecture} in memory>",
            describe=f"{architecture} in memory",
            architecture=architecture,
            width=width,
            config=None,
            native_size=native_size,
            mean=tuple(IMAGENET_NORMALIZE["mean"]),
            std=tuple(IMAGENET_NORMALIZE["std"]),
            carries_architecture=True,
            state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        )

    def sha256(self, architecture: str | None = None, width: float | None = None) -> str:
        """The weights' hash as `architecture` x `width` (a bare state dict's; else its own), computed once."""
        key = (architecture or self.architecture, width or self.width)
        if key not in self._hashes:
            self._hashes[key] = weights_sha256(self.state_dict, *key, self.config)
        return self._hashes[key]

    def backbone(self, input_size: int) -> nn.Module:
        """The architecture built for `input_size` with these weights loaded (strictly), read out as it was
        indexed (a lookalike encoder's pooling)."""
        return with_pooling(
            fitted_backbone(self, self.architecture, self.width, input_size), self.pooling, self.grid_cells
        )


def weights_sha256(
    state_dict: dict[str, torch.Tensor], architecture: str, width: float, config: dict | None = None
) -> str:
    """sha256 of an architecture and its weights: names, dtypes, shapes and values in name order."""
    digest = hashlib.sha256(json.dumps([architecture, width, config], sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def read_init(reference: str, root: Path | str, backbone: str, width: float | str) -> Init:
    """Read a reference (module docstring) into an `Init`; `backbone`/`width` describe a bare state dict."""
    for prefix, reader in (
        ("lookalike:", _from_lookalike),
        ("torchvision:", _from_torchvision),
        ("timm:", _from_timm),
        ("hf:", _from_hf),
    ):
        if reference.startswith(prefix):
            return reader(reference, reference[len(prefix) :].strip(), Path(root))
    path = Path(reference).expanduser()
    if not path.exists():
        raise InitError(
            f"init {reference!r} is not a file or folder, and not lookalike:, torchvision:, timm: or hf: "
            "followed by a name: check the path or add the prefix"
        )
    _refuse_special_files(reference, path)
    return _from_path(reference, path, backbone, width)


def _refuse_special_files(reference: str, path: Path) -> None:
    """Only regular files and folders are read: opening a named pipe waits for a writer forever,
    and a device never ends."""
    inside = sorted(path.rglob("*")) if path.is_dir() else []
    special = next((p for p in [path, *inside] if p.exists() and not (p.is_file() or p.is_dir())), None)
    if special is not None:
        kind = "a named pipe" if special.is_fifo() else "a socket" if special.is_socket() else "a device"
        raise InitError(
            f"init {reference!r}: {special} is {kind}; point encoder.init at a weights file or a folder of them"
        )


def fitted_backbone(init: Init, architecture: str, width: float, input_size: int) -> nn.Module:
    """`architecture` at `input_size` with the init's weights, refusing weights that do not fit."""
    model, _ = build_backbone(architecture, input_size, width, init.config)
    missing, unexpected = _compare(model.state_dict(), init.state_dict)
    if missing or unexpected:
        what = architecture + (f" x{width:g}" if width != 1.0 else "")
        raise InitError(f"the weights of {init.describe} do not fit {what}: {_mismatch(missing, unexpected)}")
    model.load_state_dict(init.state_dict, strict=True)
    return model.eval()


def _compare(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [
        f"{k} is {list(given[k].shape)} in the weights, {list(v.shape)} in the model"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    return missing + shapes, unexpected


def _mismatch(missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} model tensors missing or of another shape (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
    return (
        "; ".join(parts) + ": set encoder.backbone (and encoder.width) to the architecture the weights were saved from"
    )


# --- sources ----------------------------------------------------------------------------------------


def _from_lookalike(reference: str, name: str, root: Path) -> Init:
    from lookalike.artifacts.aliases import read_alias

    if is_stage_key(name):
        manifest = find_manifest(root, "encoder", name)
        if manifest is None:
            raise InitError(f"init {reference!r}: no finished encoder stage {name} under {root}")
    else:
        alias = read_alias(root, name)  # AliasError: one line naming the alias and the root
        manifest = alias.manifest(root, "encoder")
    path = verified_path(root, manifest, ENCODER_FILE)  # a changed encoder.pt is refused here
    return _lookalike_checkpoint(reference, f"lookalike encoder {manifest.key}", path)


def _lookalike_checkpoint(reference: str, describe: str, path: Path, payload: dict | None = None) -> Init:
    payload = payload if payload is not None else _load_weights_only(path)
    spec = payload["spec"]
    return Init(
        reference=reference,
        describe=describe,
        architecture=spec["architecture"],
        width=float(spec.get("width", 1.0)),
        config=spec.get("config"),
        native_size=int(spec["input_size"]),
        mean=tuple(spec["mean"]),
        std=tuple(spec["std"]),
        carries_architecture=True,
        state_dict=payload["state_dict"],
        pooling=spec.get("pooling"),
        grid_cells=spec.get("grid_cells"),
    )


def _from_torchvision(reference: str, name: str, root: Path) -> Init:
    import torchvision
    from torch.hub import get_dir

    try:
        weights = torchvision.models.get_weight(name)
    except (KeyError, ValueError, AttributeError):
        raise InitError(
            f"init {reference!r}: torchvision has no weights {name!r}; name them as "
            "<Enum>.<value>, e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1 or ResNet50_Weights.DEFAULT"
        ) from None
    architecture = next(
        m
        for m in torchvision.models.list_models(module=torchvision.models)
        if torchvision.models.get_model_weights(m) is type(weights)
    )
    try:
        state = weights.get_state_dict(progress=False, weights_only=True)
    except Exception as exc:
        target = Path(get_dir()) / "checkpoints" / Path(weights.url).name
        raise InitError(
            f"init {reference!r}: cannot download {weights.url} ({type(exc).__name__}); on a machine without "
            f"network put that file at {target} (torchvision's cache, under TORCH_HOME) or pass a weights file "
            "as encoder.init"
        ) from None
    state = _without_classifier(state, architecture)
    preset = weights.transforms()
    return Init(
        reference=reference,
        describe=f"torchvision {name}",
        architecture=architecture,
        width=1.0,
        config=None,
        native_size=int(preset.crop_size[0]),
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        carries_architecture=True,
        state_dict=state,
    )


def _from_timm(reference: str, name: str, root: Path) -> Init:
    timm = import_extra("timm", f"init {reference!r}")
    overlay = {}
    try:
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
    except Exception:  # unknown name or tag: create_model below says which
        hub_id = None
    if hub_id:
        cached = _hub_cached(hub_id.split("@")[0], ("model.safetensors", "pytorch_model.bin"))
        if cached is not None:  # read from the cache without asking the hub
            overlay = {"pretrained_cfg_overlay": {"file": cached}}
        else:
            _require_hub(reference, name)
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0, **overlay)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "Invalid pretrained tag" in str(exc):
            raise InitError(f"init {reference!r}: timm has no model {name!r} (timm.list_models lists them)") from None
        raise _unreachable(reference, name, exc) from None
    except Exception as exc:  # huggingface_hub's offline and connection errors, OSError
        raise _unreachable(reference, name, exc) from None
    cfg = model.pretrained_cfg
    return Init(
        reference=reference,
        describe=f"timm {name}",
        architecture=f"timm:{name}",
        width=1.0,
        config=None,
        native_size=int(cfg["input_size"][-1]) if cfg.get("input_size") else None,
        mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_NORMALIZE["mean"])),
        std=tuple(float(v) for v in cfg.get("std", IMAGENET_NORMALIZE["std"])),
        carries_architecture=True,
        state_dict=model.state_dict(),
    )


def _from_hf(reference: str, name: str, root: Path) -> Init:
    transformers = import_extra("transformers", f"init {reference!r}")
    if Path(name).expanduser().exists():
        _refuse_special_files(reference, Path(name).expanduser())
    local = True
    # trust_remote_code=False everywhere: never run an init's code, and never ask (transformers' prompt
    # prints, and waits, when it is left unset); _refuse_custom_code says why in one line before that
    try:  # a folder, or the hub's local cache: no network
        _refuse_custom_code(reference, _hf_config_file(name, local_files_only=True))
        model = _from_pretrained(transformers, reference, name, local_files_only=True)
    except InitError:
        raise
    except OSError:
        _require_hub(reference, name)
        local = False
        try:
            config_file = _hf_config_file(name, local_files_only=False)
        except Exception as exc:  # OSError (not on the hub, no access)
            raise _unreachable(reference, name, exc) from None
        _refuse_custom_code(reference, config_file)
        try:
            model = _from_pretrained(transformers, reference, name)
        except InitError:
            raise
        except Exception as exc:  # OSError (not on the hub, no access), ValueError (unknown model type)
            raise _unreachable(reference, name, exc) from None
    except ValueError as exc:  # a config of a model type this transformers does not know
        raise _unreachable(reference, name, exc) from None
    config = model.config.to_dict()
    mean, std = IMAGENET_NORMALIZE["mean"], IMAGENET_NORMALIZE["std"]
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(
            name, local_files_only=local, trust_remote_code=False
        )
        mean, std = processor.image_mean, processor.image_std
    except Exception:  # no preprocessor_config.json: ImageNet statistics, what DINOv2 and most ViTs use
        pass
    size = config.get("image_size")
    return Init(
        reference=reference,
        describe=f"Hugging Face {name}",
        architecture=f"hf:{config['model_type']}",
        width=1.0,
        config=config,
        native_size=int(size) if isinstance(size, int) else None,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        carries_architecture=True,
        state_dict={f"model.{k}": v for k, v in model.state_dict().items()},
    )


def _from_pretrained(transformers, reference: str, name: str, **options):
    """`AutoModel.from_pretrained`, never running code (see `_from_hf`), and refusing pickles."""
    try:
        return transformers.AutoModel.from_pretrained(name, trust_remote_code=False, **options)
    except pickle.UnpicklingError:  # torch.load(weights_only=True) refused it: nothing in it ran
        raise InitError(
            f"init {reference!r}: its weights file (pytorch_model.bin) holds pickled Python objects besides tensors; "
            "refusing to load it: save the model with save_pretrained (safetensors), or pass its state dict "
            "saved with torch.save(model.state_dict()) as encoder.init"
        ) from None


def _hf_config_file(name: str, local_files_only: bool) -> Path:
    """The config.json of a save_pretrained folder or hub model (OSError: not there, or not cached)."""
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser() / "config.json"
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(name, "config.json", local_files_only=local_files_only))


def _refuse_custom_code(reference: str, config_file: Path) -> None:
    """Refuse a model whose config maps to code of its own (`auto_map`) or names a model type this
    transformers does not know (only code shipped with the model could build it)."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    text = config_file.read_text(encoding="utf-8", errors="replace")  # OSError: not there (the caller asks the hub)
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise InitError(f"init {reference!r}: {config_file} is not valid JSON ({brief_error(exc)})") from None
    if not isinstance(config, dict):
        raise InitError(f"init {reference!r}: {config_file} is not a JSON object")
    never = "lookalike never runs code from an init or teacher"
    if config.get("auto_map"):
        raise InitError(
            f"init {reference!r}: its config.json maps to custom code (auto_map {brief(config['auto_map'], 120)}); "
            f"{never}: use a "
            "model of a type transformers ships, or pass its state dict as encoder.init with encoder.backbone"
        )
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise InitError(
            f"init {reference!r}: its config.json names model_type {brief(model_type)}, which transformers "
            f"{transformers.__version__} does not know; {never}: use a model of a type transformers ships (or a "
            "newer transformers), or pass its state dict as encoder.init with encoder.backbone"
        )


def _from_path(reference: str, path: Path, backbone: str, width: float | str) -> Init:
    if path.is_dir():
        if (path / "config.json").is_file():
            return _from_hf(reference, str(path), path)
        if (path / ENCODER_FILE).is_file():
            path = path / ENCODER_FILE
        else:
            raise InitError(
                f"init folder {path} holds neither config.json (a save_pretrained model) nor {ENCODER_FILE} "
                "(a lookalike encoder stage): point at the weights file itself"
            )
    if path.suffix == ".safetensors":
        import_extra("safetensors", f"init {reference!r}")
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            payload: Any = load_file(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise InitError(f"init {path} is not a readable safetensors file ({brief_error(exc)})") from None
    else:
        payload = _load_weights_only(path)
    if isinstance(payload, dict) and "spec" in payload and "state_dict" in payload:
        return _lookalike_checkpoint(reference, f"lookalike encoder file {path.name}", path, payload)
    state = _state_dict_in(payload, path)
    width = 1.0 if width == "auto" and backbone.startswith(("timm:", "hf:")) else width
    return Init(
        reference=reference,
        describe=f"weights file {path.name}",
        architecture=backbone,
        width=width if isinstance(width, float) else 1.0,
        config=None,
        native_size=None,
        mean=tuple(IMAGENET_NORMALIZE["mean"]),
        std=tuple(IMAGENET_NORMALIZE["std"]),
        carries_architecture=False,
        state_dict=_without_classifier(state, backbone),
    )


def _load_weights_only(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InitError(
            f"init {path} is not a weights-only torch file ({brief_error(exc)}); refusing to load it: save "
            "model.state_dict() with torch.save, or use safetensors"
        ) from None


def _state_dict_in(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a plain, wrapped (`state_dict`, `model`) or DDP-prefixed (`module.`) state dict."""
    for _ in range(2):
        if isinstance(payload, dict) and not _all_tensors(payload):
            inner = next(
                (payload[k] for k in ("state_dict", "model", "teacher") if isinstance(payload.get(k), dict)), None
            )
            if inner is None:
                break
            payload = inner
    if not isinstance(payload, dict) or not payload or not _all_tensors(payload):
        raise InitError(f"init {path} holds no state dict (a mapping of names to tensors): save model.state_dict()")
    if all(k.startswith("module.") for k in payload):
        payload = {k.removeprefix("module."): v for k, v in payload.items()}
    return payload


def _all_tensors(mapping: dict) -> bool:
    return all(isinstance(v, torch.Tensor) for v in mapping.values())


def _without_classifier(state: dict[str, torch.Tensor], architecture: str) -> dict[str, torch.Tensor]:
    """lookalike backbones end before the classifier (`build_backbone` replaces it): its weights are dropped."""
    if architecture.startswith(("timm:", "hf:")):
        return state
    return {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier.", "heads.", "head.", "linear."))}


def _hub_cached(repo_id: str, filenames: tuple[str, ...]) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def _require_hub(reference: str, name: str) -> None:
    """Fail in one line, at once, when the weights are not cached and the hub cannot be reached
    (huggingface_hub would retry for half a minute before saying the same)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise _unreachable(reference, name, OSError("HF_HUB_OFFLINE is set and the local cache does not hold it"))
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError as exc:
        raise _unreachable(reference, name, OSError(f"{host} is unreachable: {exc}")) from None


def _unreachable(reference: str, name: str, exc: Exception) -> InitError:
    return InitError(
        f"init {reference!r}: cannot load {name!r} ({brief_error(exc)}); without a reachable hub, download it "
        "where there is one (`hf download <id> --local-dir DIR`, or save_pretrained) and pass the folder or weights file as "
        "encoder.init, or set HF_HUB_OFFLINE=1 with HF_HOME pointing at a cache that holds it"
    )


def brief_error(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:160]}" if first else type(exc).__name__


@lru_cache(maxsize=8)
def cached_init(reference: str, root: str, backbone: str, width: float | str, signature: tuple) -> Init:
    """`read_init` once per process for the same reference and file state (planning reads it for the key)."""
    return read_init(reference, root, backbone, width)


def read_init_cached(reference: str, root: Path | str, backbone: str, width: float | str) -> Init:
    return cached_init(reference, str(root), backbone, width, _signature(reference, Path(root)))


def _signature(reference: str, root: Path) -> tuple:
    """What invalidates the cache: a local file's size and mtime (an alias's file for lookalike:)."""
    if reference.startswith("lookalike:"):
        name = reference.removeprefix("lookalike:")
        target = root / "aliases" / f"{name}.json" if not is_stage_key(name) else root / "encoder" / name
    elif reference.startswith("hf:") and Path(reference.removeprefix("hf:")).expanduser().exists():
        target = Path(reference.removeprefix("hf:")).expanduser()
    elif reference.startswith(("torchvision:", "timm:", "hf:")):
        return ()  # a hub's or download cache's copy: the content hash still keys what was read
    else:
        target = Path(reference).expanduser()
    paths = sorted(target.rglob("*")) if target.is_dir() else [target]
    return tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file())


_FITTED: set[tuple[str, str, float, int]] = set()


def check_fit(init: Init, architecture: str, width: float, input_size: int) -> None:
    """Refuse weights that do not fit the architecture before any stage runs (once per process)."""
    key = (init.sha256(architecture, width), architecture, width, input_size)
    if key not in _FITTED:
        with torch.random.fork_rng(devices=[]):
            fitted_backbone(init, architecture, width, input_size)
        _FITTED.add(key)


def starting_weights(section, root: Path | str) -> tuple[Init | None, Init | None]:
    """(init, teacher) of resolved encoder settings, each checked against the sha256 its key was made from."""
    out = []
    for reference, pin, what in (
        (section.init, section.init_sha256, "init"),
        (section.teacher if section.method == "distill" else None, section.teacher_sha256, "teacher"),
    ):
        if not reference:
            out.append(None)
            continue
        init = read_init_cached(reference, root, section.backbone, section.width)
        actual = init.sha256(section.backbone, section.width) if what == "init" else init.sha256()
        if pin is not None and actual != pin:
            raise InitError(
                f"the {what} {reference!r} changed since this encoder was keyed: sha256 {actual}, recorded {pin}; "
                f"restore those weights, or run again to key the new ones"
            )
        out.append(init)
    return out[0], out[1]
