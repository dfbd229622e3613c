"""encoder.init and method=distill: pretrained weights from every source, keyed by content, refused when changed.

No hub is reachable here, so each source is tested on weights made locally and laid out as its
library expects: a state dict file, a lookalike encoder by alias, a `save_pretrained` folder, timm's
Hugging Face cache and torchvision's download cache.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import TINY, evaluated_chain

from lookalike.artifacts.aliases import set_alias
from lookalike.artifacts.shared_root import read_manifest
from lookalike.core.errors import LookalikeError
from lookalike.core.settings import SettingsError, load_settings
from lookalike.stages.dataset.stage import run_dataset_stage
from lookalike.stages.encoder.backbones import build_backbone
from lookalike.stages.encoder.checkpoint import load_encoder
from lookalike.stages.encoder.pretrained import InitError, read_init
from lookalike.stages.encoder.stage import encoder_key, run_encoder_stage
from lookalike.stages.inference import Embedder


def settings(root, **changes):
    return load_settings({**TINY, **changes, "artifacts_root": str(root)})


def dataset_of(root):
    return run_dataset_stage(settings(root).dataset, root).manifest


@pytest.fixture(scope="module")
def root(tmp_path_factory, tiny_chain):
    """A copy of the tiny chain with an alias on its encoder: the init the tests continue from."""
    root = tmp_path_factory.mktemp("pretrained") / "artifacts"
    shutil.copytree(tiny_chain, root)
    (encoder_folder,) = (root / "encoder").glob("*/manifest.json")
    set_alias(root, "teacher", {"encoder": encoder_folder.parent.name})
    return root


@pytest.fixture(scope="module")
def trained(root):
    return read_manifest(root, "encoder", (next((root / "encoder").glob("*/manifest.json"))).parent.name)


def random_key(root):
    return encoder_key(settings(root).encoder, dataset_of(root), root)


def test_init_from_a_state_dict_file_loads_exactly_and_is_keyed_by_content(root, trained, tmp_path):
    model, spec = load_encoder(root, trained)
    weights = tmp_path / "backbone.pt"
    torch.save(model.state_dict(), weights)
    changes = {"encoder.init": str(weights), "encoder.width": spec.width, "encoder.epochs": 0}
    key = encoder_key(settings(root, **changes).encoder, dataset_of(root), root)
    assert key != random_key(root)
    moved = tmp_path / "elsewhere" / "renamed.pt"
    moved.parent.mkdir()
    shutil.copy(weights, moved)  # where the weights live is not what they are
    assert encoder_key(settings(root, **{**changes, "encoder.init": str(moved)}).encoder, dataset_of(root), root) == key

    encoder = run_encoder_stage(settings(root, **changes).encoder, dataset_of(root), root).manifest
    assert encoder.key == key and len(encoder.settings["init_sha256"]) == 64
    exported, _ = load_encoder(root, encoder)  # steps 0: the init as it is
    for (name, a), b in zip(model.state_dict().items(), exported.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_changed_weights_file_is_refused_against_its_pin_and_a_pickle_is_refused(root, trained, tmp_path):
    model, spec = load_encoder(root, trained)
    weights = tmp_path / "backbone.pt"
    torch.save(model.state_dict(), weights)
    changes = {"encoder.init": str(weights), "encoder.width": spec.width}
    pinned = read_init(str(weights), root, "resnet-9", spec.width).sha256("resnet-9", spec.width)
    state = model.state_dict()
    state["conv1.weight"] = state["conv1.weight"] + 1e-3  # tampered
    torch.save(state, weights)
    with pytest.raises(InitError, match="the init's weights changed: their sha256 is .*, encoder.init_sha256 pins"):
        encoder_key(settings(root, **changes, **{"encoder.init_sha256": pinned}).encoder, dataset_of(root), root)

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    pickled = tmp_path / "pickle.pt"
    torch.save({"state_dict": Payload()}, pickled)
    with pytest.raises(InitError, match="is not a weights-only torch file .* refusing to load it"):
        read_init(str(pickled), root, "resnet-9", 0.25)


def test_weights_of_another_architecture_are_refused_in_one_line(root, trained, tmp_path):
    weights = tmp_path / "wide.pt"
    torch.save(build_backbone("resnet-9", 16, 0.5)[0].state_dict(), weights)
    with pytest.raises(InitError) as caught:
        encoder_key(settings(root, **{"encoder.init": str(weights)}).encoder, dataset_of(root), root)
    message = str(caught.value)
    assert "\n" not in message and "do not fit resnet-9 x0.25" in message
    assert "conv1.weight is [32, 3, 3, 3] in the weights, [16, 3, 3, 3] in the model" in message
    assert message.endswith("set encoder.backbone (and encoder.width) to the architecture the weights were saved from")


def test_init_from_a_lookalike_encoder_by_alias_continues_training_and_is_refused_when_tampered(root, trained):
    changes = {"encoder.init": "lookalike:teacher"}
    encoder, evaluation = evaluated_chain(root, **changes)
    assert encoder.key not in (trained.key, random_key(root))
    by_key = encoder_key(settings(root, **{"encoder.init": f"lookalike:{trained.key}"}).encoder, dataset_of(root), root)
    assert by_key == encoder.key  # the alias and the key name the same weights
    assert encoder.stats["spec"]["init_sha256"] == encoder.settings["init_sha256"]
    assert encoder.stats["recipe"]["init"].startswith(f"lookalike encoder {trained.key} (sha256 ")
    # the init baseline is the init itself: the trained encoder's own scores on the same queries
    init = evaluation.stats["baselines"]["init"]
    assert init["what"] == "resnet-9 x0.25 as its init lookalike:teacher left it"

    tampered = root.parent / "tampered"
    shutil.copytree(root, tampered)
    path = tampered / "encoder" / trained.key / "encoder.pt"
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(LookalikeError, match="sha256"):
        encoder_key(settings(tampered, **changes).encoder, dataset_of(tampered), tampered)


def test_init_from_a_save_pretrained_folder_builds_a_vit_that_embeds_and_is_pinned(root, tmp_path):
    from safetensors.torch import load_file, save_file
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=4, image_size=16
    )
    folder = tmp_path / "tiny-dinov2"
    Dinov2Model(config).save_pretrained(folder)
    changes = {"encoder.init": str(folder), "encoder.epochs": 0}
    key = encoder_key(settings(root, **changes).encoder, dataset_of(root), root)
    assert key == encoder_key(
        settings(root, **{**changes, "encoder.init": f"hf:{folder}"}).encoder, dataset_of(root), root
    )
    assert key != random_key(root)

    encoder = run_encoder_stage(settings(root, **changes).encoder, dataset_of(root), root).manifest
    spec = encoder.stats["spec"]
    assert (spec["architecture"], spec["feature_dim"], spec["config"]["model_type"]) == ("hf:dinov2", 32, "dinov2")
    embedder = Embedder(root, encoder)  # the checkpoint rebuilds the ViT from its recorded config, weights only
    from PIL import Image

    vectors = embedder.embed_images([Image.new("RGB", (20, 20), (i * 40, 0, 0)) for i in range(3)])
    reference = Dinov2Model.from_pretrained(folder).eval()
    x = torch.stack([torch.tensor([(i * 40 / 255 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]) for i in range(3)])
    with torch.no_grad():
        expected = reference(pixel_values=x.view(3, 3, 1, 1).expand(3, 3, 16, 16)).pooler_output
    torch.testing.assert_close(torch.from_numpy(vectors), expected, atol=1e-4, rtol=1e-4)

    weights = folder / "model.safetensors"
    state = load_file(weights)
    state["layernorm.weight"] = state["layernorm.weight"] * 2  # tampered
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(InitError, match="the init's weights changed"):
        encoder_key(
            settings(root, **changes, **{"encoder.init_sha256": encoder.settings["init_sha256"]}).encoder,
            dataset_of(root),
            root,
        )


@pytest.mark.parametrize(
    ("config", "refusal"),
    [
        ({"model_type": "evilnet", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}}, "custom code"),
        ({"model_type": "dinov2", "auto_map": {"AutoModel": "configuration_evil.EvilModel"}}, "custom code"),
        ({"model_type": "evilnet"}, "model_type 'evilnet', which transformers"),
    ],
)
def test_an_init_folder_with_code_of_its_own_is_refused_in_one_line_and_never_asked_about(
    root, tmp_path, monkeypatch, capsys, config, refusal
):
    import json

    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "code-ran"
    for module in ("configuration_evil.py", "modeling_evil.py"):
        (folder / module).write_text(f"open({str(marker)!r}, 'w').close()\n")
    # the same files as a hub model in the Hugging Face cache (refs/main -> snapshots/<commit>/)
    from huggingface_hub import constants

    repo = tmp_path / "hf" / "hub" / "models--someone--custom"
    shutil.copytree(folder, repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("builtins.input", lambda *_: "y")  # whoever is asked says yes
    for reference in (str(folder), f"hf:{folder}", "hf:someone/custom"):
        with pytest.raises(InitError) as caught:
            read_init(reference, root, "resnet-9", "auto")
        message = str(caught.value)
        assert refusal in message and "lookalike never runs code from an init or teacher" in message
        assert "\n" not in message
    assert not marker.exists()
    assert capsys.readouterr().out == ""  # no "Do you wish to run the custom code? [y/N]"


def test_an_init_that_is_a_named_pipe_is_refused_instead_of_waiting_for_a_writer_forever(root, tmp_path):
    import os
    import threading

    folder = tmp_path / "pretrained"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "dinov2"}')
    os.mkfifo(folder / "model.safetensors")
    os.mkfifo(tmp_path / "weights.pt")
    for reference, pipe in (
        (str(tmp_path / "weights.pt"), tmp_path / "weights.pt"),
        (str(folder), folder / "model.safetensors"),
        (f"hf:{folder}", folder / "model.safetensors"),
    ):
        raised = []

        def read(reference=reference, raised=raised) -> None:
            try:
                read_init(reference, root, "resnet-9", "auto")
            except Exception as exc:
                raised.append(exc)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        thread.join(20)
        if thread.is_alive():  # blocked opening the pipe: a writer that closes at once lets it go
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(20)
            pytest.fail(f"reading {reference} waited on a named pipe")
        (error,) = raised
        assert isinstance(error, InitError) and f"{pipe} is a named pipe" in str(error)


class _Marker:
    """A pickled object that would create a file when unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_in_a_save_pretrained_folder_is_a_one_line_refusal_not_a_crash(root, tmp_path):
    """It was refused (nothing ran) but surfaced as a raw UnpicklingError: a crash, with a traceback
    and the advice to run the same command again."""
    from transformers import Dinov2Config

    folder = tmp_path / "pickled"
    Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(
        folder
    )
    marker = tmp_path / "unpickled"
    torch.save({"embeddings.cls_token": torch.zeros(1), "payload": _Marker(marker)}, folder / "pytorch_model.bin")
    for reference in (str(folder), f"hf:{folder}"):
        with pytest.raises(InitError) as caught:
            read_init(reference, root, "resnet-9", "auto")
        message = str(caught.value)
        assert "\n" not in message and "holds pickled Python objects besides tensors; refusing to load it" in message
    assert not marker.exists()


def test_timm_and_torchvision_read_their_own_caches_offline(root, tmp_path, monkeypatch):
    import timm
    import torchvision
    from huggingface_hub import constants
    from safetensors.torch import save_file

    # timm: the Hugging Face cache as huggingface_hub lays it out (refs/main -> snapshots/<commit>/)
    repo = tmp_path / "hf" / "hub" / "models--timm--test_vit.r160_in1k"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    vit = timm.create_model("test_vit.r160_in1k", pretrained=False)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, snapshot / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    init = read_init("timm:test_vit.r160_in1k", root, "resnet-9", "auto")
    assert (init.architecture, init.native_size, init.mean) == ("timm:test_vit.r160_in1k", 160, (0.5, 0.5, 0.5))
    head_free = {k: v for k, v in vit.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(init.state_dict[k], v) for k, v in head_free.items())
    assert init.backbone(160)(torch.zeros(1, 3, 160, 160)).shape == (1, vit.num_features)

    # torchvision: its download cache, $TORCH_HOME/hub/checkpoints/<file name of the weights' url>
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(torchvision.models.shufflenet_v2_x0_5().state_dict(), cache / weights.url.rsplit("/", 1)[1])
    init = read_init("torchvision:ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1", root, "resnet-9", "auto")
    assert (init.architecture, init.native_size) == ("shufflenet_v2_x0_5", 224)
    assert init.backbone(64)(torch.zeros(1, 3, 64, 64)).shape == (1, 1024)


def test_an_unreachable_hub_is_one_line_that_says_how_to_use_local_weights(root, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    for reference in ("hf:facebook/dinov2-small", "timm:vit_small_patch14_dinov2.lvd142m"):
        with pytest.raises(InitError) as caught:
            read_init(reference, root, "resnet-9", "auto")
        message = str(caught.value)
        assert "\n" not in message and "127.0.0.1 is unreachable" in message
        assert "pass the folder or weights file as encoder.init" in message
    with pytest.raises(InitError, match="torchvision has no weights 'ResNet18_Weights.NOPE'"):
        read_init("torchvision:ResNet18_Weights.NOPE", root, "resnet-9", "auto")


def test_distill_needs_a_teacher_and_the_teacher_only_distill():
    with pytest.raises(SettingsError, match="method=distill learns a teacher's embedding space"):
        load_settings({"encoder.method": "distill"})
    with pytest.raises(SettingsError, match="encoder.teacher is read by method=distill only"):
        load_settings({"encoder.teacher": "lookalike:production"})


def test_distillation_reports_the_student_as_a_fraction_of_its_teacher(root, trained):
    changes = {"encoder.method": "distill", "encoder.teacher": "lookalike:teacher", "encoder.width": 0.125}
    encoder, evaluation = evaluated_chain(root, **changes)
    spec = encoder.stats["spec"]
    teacher_dim = trained.stats["spec"]["feature_dim"]
    assert (spec["width"], spec["projection"], spec["feature_dim"]) == (0.125, teacher_dim, teacher_dim)
    assert len(encoder.settings["teacher_sha256"]) == 64
    stats = evaluation.stats
    assert set(stats["baselines"]) == {"pixels", "init", "teacher"}
    report = stats["distillation"]
    for score, fraction in report["fraction"].items():
        assert fraction == pytest.approx(stats[score] / stats["baselines"]["teacher"][score], abs=1e-4)
    assert report["speedup"] == pytest.approx(
        report["images_per_second"]["student"] / report["images_per_second"]["teacher"], abs=0.01
    )
    assert report["speed_images"] == 48
    # the teacher baseline is the teacher searched exactly as a run of it would be: its own scores on these queries
    _, as_a_run = evaluated_chain(root, **{"encoder.init": "lookalike:teacher", "encoder.epochs": 0})
    for score in report["fraction"]:
        assert stats["baselines"]["teacher"][score] == pytest.approx(as_a_run.stats[score], abs=1e-6)
