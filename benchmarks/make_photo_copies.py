"""Build `photo-copies`: a copy-detection collection of real photos, all from pinned Debian packages.

    .venv/bin/python benchmarks/make_photo_copies.py --cache /tmp/photo-copies-cache --out /tmp/photo-copies

1. Downloads six Debian bookworm `.deb` files (`apt-get download <package>=<version>` into
   `<cache>/debs`; no root, nothing installed) and checks each against the SHA256 that the
   bookworm archive lists for it (`SOURCES` below). A `.deb` already in `<cache>/debs` with the
   right SHA256 is used as it is, so a machine without apt works once the files are copied there.
2. Reads the chosen photos straight out of the packages' `data.tar.*` (GCompris keeps its images
   inside Qt `.rcc` resource bundles; `read_rcc` unpacks those). Only the photos named below are
   used: each was looked at by hand, and drawings, renders, abstract art, paintings and textures
   in the same packages are left out.
3. Writes an `imagefolder` (one subfolder per source photo, the class = the photo) to `--out`:
   `ref.jpg`, the photo itself at 256 px on its longest side (JPEG q95), and `copy01.jpg` ...
   `copy11.jpg`, eleven edited copies of it (random resized crop, horizontal flip, rotation,
   colour jitter, JPEG re-encoding at a random quality; see `augment`). Seeded: the same seed,
   Pillow and libjpeg give byte-identical files; the printed `tree_sha256` checks that.
   Provenance (package, file, author, licence, every copy's edit parameters) goes into the
   hidden file `<out>/.photo_copies.json`, which lookalike's dataset stage does not read.

Run with the project's virtualenv (Pillow with WebP, numpy). Prints the counts and the digest.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

Image.MAX_IMAGE_PIXELS = None  # the wallpapers are large, and trusted (pinned by SHA256)

LONGEST_SIDE = 256
COPIES = 11
WORKING_SIDE = 1024  # sources are first brought down to this, so copies are cut from comparable detail
CROP_AREA = (0.35, 1.0)  # fraction of the photo's area a copy keeps
CROP_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))  # aspect change of the crop
ROTATION_DEG = 10.0
JITTER = 0.3  # brightness, contrast, saturation factors in [1 - JITTER, 1 + JITTER]
HUE_SHIFT = 0.04  # of the hue circle
JPEG_QUALITY = (30, 90)  # inclusive
REFERENCE_QUALITY = 95


# --------------------------------------------------------------------------- the packages


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str  # as listed by the Debian bookworm archive (apt-cache show <name>=<version>)
    licence_note: str  # what the package's debian/copyright (or upstream credits) say for the photos used

    @property
    def deb_name(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_all.deb"


PACKAGES = {
    p.name: p
    for p in (
        Package(
            "mate-backgrounds",
            "1.26.0-1",
            "7bf4c2209f34b4f61ba6d24c8b58c28b361e82e4b943aae6d42c030169af9e04",
            "GPL-2+ (debian/copyright, per file, authors listed there)",
        ),
        Package(
            "lomiri-wallpapers-16.04",
            "20.04.0-2",
            "a99ff6a3bfe451e4cc0682ecb3cc82e71740626d59e4845ae34a0a0e45421eab",
            "per file in debian/copyright: CC-BY-4.0, CC-BY-SA-4.0 or CC0-1.0",
        ),
        Package(
            "lomiri-wallpapers-20.04",
            "20.04.0-2",
            "d44e89b8473aafe64a5b678f014862dc31335aaaf18665c544d985d854f1a709",
            "per file in debian/copyright",
        ),
        Package(
            "plasma-workspace-wallpapers",
            "4:5.27.5-2",
            "32cd18b71c8c938a18b3b351f217c02ac590e323caa3cf322fbb875ce8892f8b",
            "GPL-2+ (debian/copyright, Files: *); LGPLv3 in each wallpaper's metadata.json",
        ),
        Package(
            "palapeli-data",
            "4:22.12.3-1",
            "69a15dce2ac25ed8708ac518cd0cee5f4eb0c70ed15da2fdb8899a19ac0ee058",
            "GPL-2+ (debian/copyright, Files: *); each puzzle's .desktop names a Wikimedia Commons source and licence",
        ),
        Package(
            "gcompris-qt-data",
            "3.1-2",
            "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f",
            "GPL-3+ (debian/copyright, Files: *); the per-photo Wikimedia Commons author, source and licence "
            "(CC-BY-SA-4.0, CC-BY-2.0, CC0-1.0, public domain, ...) come from the README in each activity's resources",
        ),
    )
}

# --------------------------------------------------------------------------- the photos
# (class name, package, path inside the package [, resource path inside a GCompris .rcc]).
# Class names avoid the words datasets reads as split names (train, test, val, dev, eval).

MATE = "usr/share/backgrounds/mate/nature/"
LOMIRI = "usr/share/backgrounds/"
PLASMA = "usr/share/wallpapers/"
PALAPELI = "usr/share/palapeli/collection/"
GC_RCC = "usr/share/gcompris-qt/rcc/"

PHOTOS: list[tuple[str, str, str, str | None]] = []

for name in (
    "Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood YellowFlower"
).split():
    PHOTOS.append((f"mate-{name.lower()}", "mate-backgrounds", f"{MATE}{name}.jpg", None))

for name in (
    "Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly Picture_0B_by_freespace Picture_1A_by_freespace "
    "Wine_by_Jakkub_Mede aitzgorri_by_Aitzol_Berasategi free_by_Peter_Nerlich friends_by_Aitzol_Berasategi "
    "greentock_by_Peter_Nerlich life_by_Aitzol_Berasategi picosdeeuropa_by_Aitzol_Berasategi "
    "seeding_by_Clements_Engelhardt sunset_by_Aitzol_Berasategi"
).split():
    PHOTOS.append((f"lomiri-{name.split('_by_')[0].lower()}", "lomiri-wallpapers-16.04", f"{LOMIRI}{name}.jpg", None))
PHOTOS.append(("lomiri-kleiber", "lomiri-wallpapers-20.04", f"{LOMIRI}Kleiber_by_Lukas_Baubkus.jpg", None))

# the largest rendition each wallpaper ships (they are crops/rescales of one photo)
for name, size in (
    ("BytheWater", "2560x1600"),
    ("ColdRipple", "2560x1600"),
    ("ColorfulCups", "2560x1600"),
    ("DarkestHour", "2560x1600"),
    ("EveningGlow", "2560x1600"),
    ("FallenLeaf", "2560x1600"),
    ("Grey", "2560x1600"),
    ("OneStandsOut", "2560x1600"),
    ("Path", "2560x1600"),
    ("summer_1am", "2560x1600"),
):
    PHOTOS.append(
        (f"plasma-{name.lower()}", "plasma-workspace-wallpapers", f"{PLASMA}{name}/contents/images/{size}.jpg", None)
    )

for name in "castle-maintenon cincinnati-bridge citrus-fruits european-honey-bee panther-chameleon-female".split():
    PHOTOS.append((f"palapeli-{name}", "palapeli-data", f"{PALAPELI}{name}.jpg", None))

_GC = {
    "erase": (
        "resource/",
        "alpaca bee butterfly calf camels caterpillar chamaeleon cheetah crab dolphin flying_fox gibbon giraffe "
        "goat gorilla gosling heron horse kingfisher kitten long_nosed_monkey macaque meerkats northern_harrier "
        "nubian_ibex penguin pika red_panda rhinoceros spoonbills squirrel swans toucan",
    ),
    "explore_world_animals": (
        "resource/animals/",
        "bison chameleon crocodile dragon giraffe hedgehog jaguar kangaroo koala lemur moose narwhal panda "
        "polar_bear scarlet_macaw",
    ),
    "explore_farm_animals": ("resource/animals/", "cat chicken cow dog duck horse owl pig sheep"),
    "explore_world_music": (
        "resource/music/",
        "africa america australia ireland italy japan mexico middleeast orchestra",
    ),
    "explore_monuments": (
        "resource/",
        "egypt/bentPyramid egypt/greatPyramidOfGiza egypt/meidumPyramid egypt/redPyramid "
        "france/arlesAmphitheater france/chateaudeChambord france/chateaudeChenonceau france/citedeCarcassonne "
        "france/eiffelTower france/montStMichel france/palaisdesPapes france/pontduGard france/reimsCathedral "
        "france/rocamadour germany/aulaPalatina germany/berlinCathedral germany/brandenburgGate "
        "germany/neuschwansteinCastle germany/schwerinPalace germany/trierImperialBaths germany/wormsCathedral "
        "india/ajantaCave india/charminar india/gatewayofIndia india/goldenTemple india/greatStupa "
        "india/hawaMahal india/konarkSunTemple india/mysorePalace india/qutubMinar india/rangGhar "
        "india/victoriaMemorial usa/cabrillo usa/canyondeChelly usa/castillodeSanMarcos usa/castleClinton "
        "usa/fortSumter usa/georgeWashingtonBirthplace usa/lincolnMemorial usa/mountRushmore usa/navajo "
        "usa/statueofLiberty wonders/chichenItza wonders/christTheRedeemer wonders/colosseum "
        "wonders/greatWallofChina wonders/machuPicchu wonders/petra wonders/tajMahal",
    ),
}
_GC_SHORT = {
    "erase": "animals",
    "explore_world_animals": "world-animals",
    "explore_farm_animals": "farm-animals",
    "explore_world_music": "music",
    "explore_monuments": "monuments",
}
for activity, (folder, names) in _GC.items():
    for name in names.split():
        PHOTOS.append(
            (
                f"gcompris-{_GC_SHORT[activity]}-{name.replace('/', '-').replace('_', '-').lower()}",
                "gcompris-qt-data",
                f"{GC_RCC}{activity}.rcc",
                f"/gcompris/src/activities/{activity}/{folder}{name}.webp",
            )
        )

_SPLIT_WORD = re.compile(
    r"(^|[-._ 0-9/])(train|training|test|testing|eval|evaluation|val|valid|validation|dev)([-._ 0-9/]|$)"
)


# --------------------------------------------------------------------------- reading packages


def fetch_debs(cache: Path) -> dict[str, Path]:
    """Each package's .deb in <cache>/debs, downloaded with apt-get when missing, SHA256-checked."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    out = {}
    for pkg in PACKAGES.values():
        path = debs / pkg.deb_name
        if not path.is_file() or _sha256(path) != pkg.sha256:
            print(f"apt-get download {pkg.name}={pkg.version}", flush=True)
            try:
                subprocess.run(["apt-get", "download", f"{pkg.name}={pkg.version}"], cwd=debs, check=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                sys.exit(
                    f"cannot download {pkg.name}={pkg.version} ({exc}). It is in Debian 12 (bookworm); when the "
                    f"archive no longer has it, fetch {pkg.deb_name} from "
                    f"https://snapshot.debian.org/binary/{pkg.name}/ into {debs} and run again."
                )
        got = _sha256(path)
        if got != pkg.sha256:
            sys.exit(f"{path}: sha256 {got}, expected {pkg.sha256}; not the pinned package")
        out[pkg.name] = path
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def deb_members(deb: Path, wanted: set[str]) -> dict[str, bytes]:
    """The files `wanted` (paths without a leading './') read from the .deb's data.tar.*."""
    data = _ar_member(deb, "data.tar")
    if data is None:
        raise SystemExit(f"{deb}: no data.tar.* member")
    name, blob = data
    if name.endswith(".zst"):  # not in bookworm's archive, but dpkg-deb reads it if ever needed
        blob = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True).stdout
    found = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tar:
        for member in tar:
            path = member.name[2:] if member.name.startswith("./") else member.name
            if path in wanted and member.isfile():
                found[path] = tar.extractfile(member).read()
    missing = wanted - set(found)
    if missing:
        raise SystemExit(f"{deb.name} lacks {sorted(missing)}")
    return found


def _ar_member(path: Path, prefix: str) -> tuple[str, bytes] | None:
    raw = path.read_bytes()
    if raw[:8] != b"!<arch>\n":
        raise SystemExit(f"{path} is not a .deb (ar archive)")
    pos = 8
    while pos + 60 <= len(raw):
        header = raw[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        if name.startswith(prefix):
            return name, raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size & 1)
    return None


def read_rcc(blob: bytes) -> dict[str, bytes]:
    """{resource path: bytes} of a Qt binary resource file (format versions 1-3; zlib or stored)."""
    if blob[:4] != b"qres":
        raise ValueError("not a Qt .rcc file")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version == 1 else 22
    out: dict[str, bytes] = {}

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> None:
        p = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[p : p + 6])
        name = name_at(name_offset) if index else ""
        if flags & 2:  # directory
            count, first = struct.unpack(">II", blob[p + 6 : p + 14])
            for child in range(first, first + count):
                walk(child, f"{prefix}{name}/" if index else "/")
            return
        (offset,) = struct.unpack(">I", blob[p + 10 : p + 14])
        (size,) = struct.unpack(">I", blob[data + offset : data + offset + 4])
        payload = blob[data + offset + 4 : data + offset + 4 + size]
        if flags & 1:  # qCompress: 4-byte length, then zlib
            payload = zlib.decompress(payload[4:])
        elif flags & 4:  # zstd: not used by these files
            return
        out[prefix + name] = payload

    walk(0, "")
    return out


def gcompris_credits(resources: dict[str, bytes]) -> dict[str, dict[str, str]]:
    """{resource path: {Copyright, License, Source}} from the READMEs next to GCompris's images."""
    credits: dict[str, dict[str, str]] = {}
    for path, blob in resources.items():
        if not path.endswith("/README"):
            continue
        folder = path[: -len("README")]
        for block in re.split(r"\n\s*\n", blob.decode("utf-8", "replace")):
            fields, files, in_files = {}, [], False
            for line in block.splitlines():
                key, sep, value = line.partition(":")
                if sep and key in ("Copyright", "License", "Source", "Comments", "Files"):
                    in_files = key == "Files"
                    if in_files:
                        files += value.split()
                    else:
                        fields[key] = value.strip()
                elif in_files and line.strip():
                    files.append(line.strip())
            for f in files:
                credits[folder + _README_TYPOS.get(f, f)] = fields
    return credits


_README_TYPOS = {"germany/audaPalatina.webp": "germany/aulaPalatina.webp"}  # explore_monuments' README


def dep5_credits(copyright_text: str) -> dict[str, dict[str, str]]:
    """{file name: {Copyright, License}} from a machine-readable debian/copyright (by base name)."""
    credits: dict[str, dict[str, str]] = {}
    for stanza in re.split(r"\n\s*\n", copyright_text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        for pattern in fields.get("Files", "").split():
            credits[pattern.rsplit("/", 1)[-1]] = {
                "Copyright": "; ".join(x for x in fields.get("Copyright", "").splitlines() if x),
                "License": fields.get("License", "").splitlines()[0] if fields.get("License") else "",
            }
    return credits


def load_sources(cache: Path) -> list[dict]:
    """Every photo in PHOTOS as {class, package, path, credit, image (RGB, longest side <= WORKING_SIDE)}."""
    debs = fetch_debs(cache)
    wanted: dict[str, set[str]] = {}
    for _, pkg, path, _ in PHOTOS:
        wanted.setdefault(pkg, set()).add(path)
    # the metadata that carries each photo's author and licence
    for _, pkg, path, _ in PHOTOS:
        if pkg == "plasma-workspace-wallpapers":
            wanted[pkg].add(path.split("/contents/")[0] + "/metadata.json")
        if pkg == "palapeli-data":
            wanted[pkg].add(path[: -len(".jpg")] + ".desktop")
        if pkg in ("mate-backgrounds", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"):
            wanted[pkg].add(f"usr/share/doc/{pkg}/copyright")
    files: dict[str, dict[str, bytes]] = {}
    for pkg, paths in wanted.items():
        t = time.perf_counter()
        files[pkg] = deb_members(debs[pkg], paths)
        print(f"read {len(paths):3d} files from {PACKAGES[pkg].deb_name} ({time.perf_counter() - t:.1f} s)", flush=True)
    rcc: dict[str, dict[str, bytes]] = {}
    credits: dict[str, dict[str, str]] = {}
    sources = []
    for cls, pkg, path, resource in PHOTOS:
        if _SPLIT_WORD.search(cls):
            raise SystemExit(f"class name {cls!r} contains a split keyword")
        blob = files[pkg][path]
        credit: dict[str, str] = {}
        if resource is not None:
            if path not in rcc:
                rcc[path] = read_rcc(blob)
                credits.update(gcompris_credits(rcc[path]))
            blob = rcc[path][resource]
            credit = credits.get(resource, {})
        elif pkg == "plasma-workspace-wallpapers":
            meta = json.loads(files[pkg][path.split("/contents/")[0] + "/metadata.json"])["KPlugin"]
            credit = {
                "Copyright": ", ".join(a.get("Name", "") for a in meta.get("Authors", [])),
                "License": meta.get("License", ""),
            }
        elif pkg == "palapeli-data":
            desktop = files[pkg][path[: -len(".jpg")] + ".desktop"].decode("utf-8", "replace")
            field = dict(re.findall(r"^(X-KDE-PluginInfo-(?:Author|License|Website))=(.*)$", desktop, re.M))
            credit = {
                "Copyright": field.get("X-KDE-PluginInfo-Author", ""),
                "License": field.get("X-KDE-PluginInfo-License", ""),
                "Source": field.get("X-KDE-PluginInfo-Website", ""),
            }
        else:  # mate, lomiri: per-file stanzas of debian/copyright
            copyright_text = files[pkg][f"usr/share/doc/{pkg}/copyright"].decode("utf-8", "replace")
            credit = dep5_credits(copyright_text).get(path.rsplit("/", 1)[-1], {})
        image = Image.open(io.BytesIO(blob))
        image = ImageOps.exif_transpose(image).convert("RGB")
        original_size = image.size
        if max(image.size) > WORKING_SIDE:
            image = _fit_longest(image, WORKING_SIDE)
        sources.append(
            {
                "class": cls,
                "package": f"{pkg}={PACKAGES[pkg].version}",
                "path": path if resource is None else f"{path}:{resource}",
                "sha256": hashlib.sha256(blob).hexdigest(),
                "size": list(original_size),
                "credit": credit,
                "image": image,
            }
        )
    return sources


# --------------------------------------------------------------------------- the copies


def _fit_longest(image: Image.Image, side: int) -> Image.Image:
    w, h = image.size
    scale = side / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)


def _largest_inner_rect(w: int, h: int, angle_deg: float) -> tuple[float, float]:
    """Width and height of the largest axis-aligned rectangle inside a w x h rectangle rotated by angle."""
    angle = math.radians(abs(angle_deg))
    if w <= 0 or h <= 0:
        return 0.0, 0.0
    long_side, short_side = max(w, h), min(w, h)
    sin_a, cos_a = math.sin(angle), math.cos(angle)
    if short_side <= 2.0 * sin_a * cos_a * long_side or abs(sin_a - cos_a) < 1e-10:
        x = 0.5 * short_side
        wr, hr = (x / sin_a, x / cos_a) if w >= h else (x / cos_a, x / sin_a)
    else:
        cos_2a = cos_a * cos_a - sin_a * sin_a
        wr, hr = (w * cos_a - h * sin_a) / cos_2a, (h * cos_a - w * sin_a) / cos_2a
    return wr, hr


def augment(image: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, int, dict]:
    """One edited copy: (image at LONGEST_SIDE, JPEG quality to save it at, the parameters drawn)."""
    W, H = image.size
    # random resized crop keeping CROP_AREA of the photo, aspect changed by up to 4:3
    area = rng.uniform(*CROP_AREA)
    ratio = math.exp(rng.uniform(*CROP_LOG_RATIO))
    cw = min(W, round(W * math.sqrt(area * ratio)))
    ch = min(H, round(H * math.sqrt(area / ratio)))
    x0 = int(rng.integers(0, W - cw + 1))
    y0 = int(rng.integers(0, H - ch + 1))
    out = image.crop((x0, y0, x0 + cw, y0 + ch))
    # small rotation, then the largest upright rectangle inside it (no black corners)
    angle = float(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    rotated = out.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False)
    iw, ih = _largest_inner_rect(cw, ch, angle)
    iw, ih = max(1, int(iw)), max(1, int(ih))
    left, top = (cw - iw) // 2, (ch - ih) // 2
    out = rotated.crop((left, top, left + iw, top + ih))
    flip = bool(rng.random() < 0.5)
    if flip:
        out = ImageOps.mirror(out)
    # colour jitter
    brightness, contrast, saturation = (float(v) for v in rng.uniform(1 - JITTER, 1 + JITTER, size=3))
    hue = float(rng.uniform(-HUE_SHIFT, HUE_SHIFT))
    out = ImageEnhance.Brightness(out).enhance(brightness)
    out = ImageEnhance.Contrast(out).enhance(contrast)
    out = ImageEnhance.Color(out).enhance(saturation)
    hsv = np.asarray(out.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + round(hue * 256)) % 256
    out = Image.fromarray(hsv, "HSV").convert("RGB")
    out = _fit_longest(out, LONGEST_SIDE)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    params = {
        "crop_xywh_at_working_size": [x0, y0, cw, ch],
        "crop_area": round(cw * ch / (W * H), 4),
        "rotation_deg": round(angle, 3),
        "hflip": flip,
        "brightness": round(brightness, 4),
        "contrast": round(contrast, 4),
        "saturation": round(saturation, 4),
        "hue_shift": round(hue, 4),
        "jpeg_quality": quality,
        "size": list(out.size),
    }
    return out, quality, params


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def near_duplicates(sources: list[dict], threshold: float = 0.97) -> list[tuple[str, str, float]]:
    """Pairs of sources whose 16x16 grey thumbnails correlate above threshold (would be one photo twice)."""
    vecs = []
    for s in sources:
        v = np.asarray(ImageOps.fit(s["image"], (16, 16)).convert("L"), dtype=np.float32).ravel()
        v = v - v.mean()
        vecs.append(v / (np.linalg.norm(v) + 1e-6))
    m = np.stack(vecs)
    sim = m @ m.T
    return [
        (sources[i]["class"], sources[j]["class"], float(sim[i, j]))
        for i in range(len(sources))
        for j in range(i + 1, len(sources))
        if sim[i, j] > threshold
    ]


def photos_of_part(sources: list[dict], spec: str) -> list[dict]:
    """The sources of parts K-L of N (`spec` "K/N" or "K-L/N", 1-based): every photo is in exactly one of the N
    parts, whatever the seed of the copies, so collections cut from different parts share no source photo."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?/(\d+)", spec)
    if not match:
        sys.exit(f"--part {spec!r}: use K/N or K-L/N, e.g. 2/6 or 2-3/6")
    first, last, n = int(match[1]), int(match[2] or match[1]), int(match[3])
    if not 1 <= first <= last <= n:
        sys.exit(f"--part {spec!r}: parts are numbered 1 to {n}")
    order = np.random.default_rng(PART_SEED).permutation(sorted(s["class"] for s in sources))
    bounds = [round(i * len(order) / n) for i in range(n + 1)]
    chosen = set(order[bounds[first - 1] : bounds[last]].tolist())
    return [s for s in sources if s["class"] in chosen]


PART_SEED = 43  # fixed: parts must not move with --seed


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.jpg")):
        digest.update(f"{path.relative_to(root).as_posix()}\0{_sha256(path)}\n".encode())
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=Path("/tmp/photo-copies-cache"), help="where the .deb files go")
    ap.add_argument("--out", type=Path, default=Path("/tmp/photo-copies"), help="the imagefolder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copies", type=int, default=COPIES, help="edited copies per photo (plus ref.jpg)")
    ap.add_argument("--force", action="store_true", help="replace --out if it is an earlier output of this script")
    ap.add_argument(
        "--part",
        help="only the photos of parts K (or K-L) of N, e.g. 2-3/6: the photos, shuffled by a fixed seed, cut into N "
        "near-equal parts, so collections made from different parts share no source photo",
    )
    args = ap.parse_args(argv)

    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        if not (args.force and (out / ".photo_copies.json").is_file()):
            sys.exit(f"{out} exists and is not empty; pass --force to replace an earlier photo-copies output")
    started = time.perf_counter()
    sources = load_sources(args.cache.resolve())
    if args.part:
        sources = photos_of_part(sources, args.part)
    dups = near_duplicates(sources)
    if dups:
        sys.exit(f"near-duplicate sources, drop one of each pair: {dups}")

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record_sources = []
    for s in sources:
        cls = s["class"]
        folder = tmp / cls
        folder.mkdir()
        # one generator per photo: adding or removing a photo does not change the others' copies
        rng = np.random.default_rng([args.seed, int.from_bytes(hashlib.sha256(cls.encode()).digest()[:8], "big")])
        ref = _fit_longest(s["image"], LONGEST_SIDE)
        (folder / "ref.jpg").write_bytes(_jpeg(ref, REFERENCE_QUALITY))
        copies = []
        for i in range(1, args.copies + 1):
            image, quality, params = augment(s["image"], rng)
            name = f"copy{i:02d}.jpg"
            (folder / name).write_bytes(_jpeg(image, quality))
            copies.append({"file": name, **params})
        record_sources.append(
            {k: v for k, v in s.items() if k != "image"}
            | {"ref": {"file": "ref.jpg", "size": list(ref.size)}, "copies": copies}
        )

    by_package: dict[str, int] = {}
    for s in sources:
        by_package[s["package"]] = by_package.get(s["package"], 0) + 1
    n_images = sum(1 for _ in tmp.rglob("*.jpg"))
    digest = tree_digest(tmp)
    record = {
        "name": "photo-copies",
        "seed": args.seed,
        "part": args.part,
        "n_classes": len(sources),
        "images_per_class": 1 + args.copies,
        "n_images": n_images,
        "tree_sha256": digest,
        "sources_by_package": by_package,
        "packages": {
            p.name: {"version": p.version, "sha256": p.sha256, "licence": p.licence_note} for p in PACKAGES.values()
        },
        "augmentation": {
            "working_side": WORKING_SIDE,
            "longest_side": LONGEST_SIDE,
            "crop_area": CROP_AREA,
            "crop_aspect_change": [3 / 4, 4 / 3],
            "rotation_deg": ROTATION_DEG,
            "hflip_p": 0.5,
            "jitter": JITTER,
            "hue_shift": HUE_SHIFT,
            "jpeg_quality": JPEG_QUALITY,
            "reference_quality": REFERENCE_QUALITY,
        },
        "pillow": Image.__version__,
        "numpy": np.__version__,
        "sources": record_sources,
    }
    (tmp / ".photo_copies.json").write_text(json.dumps(record, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)

    print(f"\nphoto-copies -> {out}")
    for pkg, n in by_package.items():
        print(f"  {n:4d} photos from {pkg}")
    print(f"  {len(sources):4d} classes (source photos) x {1 + args.copies} images (ref + {args.copies} copies)")
    print(f"  {n_images:4d} images, tree_sha256 {digest}")
    print(f"  {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
