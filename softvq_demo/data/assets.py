"""The asset bank of textscenes v2: fonts, photographs, graphics and a word list, built once from
Debian packages into an ignored folder (never committed: the fonts' licences travel with the
packages, and the repository stays small).

    apt-get download fonts-lato fonts-urw-base35 ... mate-backgrounds plasma-workspace-wallpapers wamerican
    python -m softvq_demo.data.assets build --debs /tmp/debs --out .carry/textscenes

The folder holds ``fonts/<package>/<file>`` (subset to printable ASCII when fontTools is
installed, so each font is a few tens of KB), ``photos/<source>/<name>.jpg`` and
``graphics/<source>/<name>.jpg`` (short side at most 512 px), ``words.txt`` and ``manifest.json``.
:func:`find_bank` looks for it in ``$SOFTVQ_TEXTSCENES_ASSETS``, then ``<repo>/.carry/textscenes``.

Which font packages are reserved for evaluation, which photographs are held out and how words are
split is decided in :mod:`.textscenes2`, not here.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from PIL import Image, ImageFont

# The font packages whose fonts only textscenes v2's held-out split uses (the bank marks them).
RESERVED_FONT_PACKAGES: tuple[str, ...] = ("fonts-urw-base35", "fonts-ebgaramond", "fonts-comic-neue",
                                           "fonts-cantarell")

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / ".carry" / "textscenes"
ENV_VAR = "SOFTVQ_TEXTSCENES_ASSETS"
PHOTO_SIDE = 512
MAX_FONTS_PER_PACKAGE = 8
REQUIRED_CHARS = string.ascii_letters + string.digits + ".,:;!?-'&$%#/()"

# Wallpapers that are photographs (the other wallpapers of these packages are graphics).
PHOTO_WALLPAPERS = {
    "mate-backgrounds": ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird",
                         "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower"),
    "plasma-workspace-wallpapers": ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
                                    "FallenLeaf", "Grey", "Kite", "MilkyWay", "OneStandsOut", "Path",
                                    "summer_1am"),
}
# Graphics kept from the same packages (illustrations, abstract art, textures); plain or nearly
# empty images and ones with logos/text in them are left out.
GRAPHIC_WALLPAPERS = {
    "plasma-workspace-wallpapers": ("Altai", "Autumn", "Canopee", "Cascade", "Cluster", "Elarun", "Flow",
                                    "Honeywave", "IceCold", "Kay", "Kokkini", "Opal", "PastelHills",
                                    "Patak", "Shell", "Volna"),
    "ukui-wallpapers": ("calla", "fluent-color", "string", "rollpaper", "city", "goldfish", "desert", "rhythm",
                        "2004default"),
    "gnome-backgrounds": ("grid-d", "grid-l", "licorice-d", "licorice-l", "truchet-d", "truchet-l", "wood-d",
                          "wood-l", "adwaita-d", "adwaita-l", "pixels-d"),
    "mate-backgrounds": ("Elephants", "Flow", "Gulp", "Float-into-MATE"),
}
WORD_LISTS = ("usr/share/dict/american-english", "usr/share/dict/british-english", "usr/share/dict/words")


def find_bank(path: Optional[os.PathLike] = None) -> Optional[Path]:
    """The asset folder to use, or None when there is none (textscenes v2 then falls back to the
    repository's DejaVu fonts, the scikit-image photographs and generated words)."""
    for cand in (path, os.environ.get(ENV_VAR), DEFAULT_DIR):
        if cand and (Path(cand) / "manifest.json").is_file():
            return Path(cand)
    return None


def load_manifest(folder: os.PathLike) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


# ------------------------------------------------------------------------------------ build
def _has_chars(path: Path) -> bool:
    """Whether the font maps every character textscenes renders (symbol fonts do not)."""
    try:  # optional: fontTools is not installed everywhere (PIL's glyph check below instead)
        from fontTools.ttLib import TTFont
        with TTFont(str(path), lazy=True, fontNumber=0) as f:
            cmap = f.getBestCmap() or {}
        return all(ord(c) in cmap for c in REQUIRED_CHARS)
    except ImportError:
        font = ImageFont.truetype(str(path), 24)
        # a missing glyph renders as the same .notdef box for two different letters
        return font.getmask("Q").getbbox() != font.getmask("\u0378").getbbox()
    except Exception:
        return False


def _subset(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` keeping printable ASCII only (layout tables kept), or as is."""
    try:  # optional: fontTools (without it the font is copied whole)
        from fontTools import subset
    except ImportError:
        shutil.copyfile(src, dst)
        return
    opts = subset.Options()
    opts.layout_features = ["*"]
    opts.name_IDs = ["*"]
    opts.notdef_outline = True
    opts.hinting = False
    font = subset.load_font(str(src), opts)
    sub = subset.Subsetter(opts)
    sub.populate(text=string.printable)
    sub.subset(font)
    subset.save_font(font, str(dst), opts)


def _pick_fonts(files: list[Path], limit: int) -> list[Path]:
    """One file per font name (TTF over OTF), then at most ``limit`` spread over the family."""
    by_stem: dict[str, Path] = {}
    for f in sorted(files):
        stem = f.stem.lower()
        if stem not in by_stem or f.suffix.lower() == ".ttf":
            by_stem[stem] = f
    chosen = sorted(by_stem.values(), key=lambda p: p.name.lower())
    if len(chosen) > limit:
        step = len(chosen) / limit
        chosen = [chosen[int(i * step)] for i in range(limit)]
    return chosen


def _save_image(src: Path, dst: Path) -> None:
    im = Image.open(src).convert("RGB")
    k = PHOTO_SIDE / min(im.size)
    if k < 1:
        im = im.resize((round(im.width * k), round(im.height * k)), Image.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    im.save(dst, "JPEG", quality=88, optimize=True)


def _wallpaper_files(root: Path, name: str) -> Optional[Path]:
    """The largest image file named ``name`` (or under a folder ``name``) in an extracted package."""
    cands = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")
             and (p.stem == name or (name in p.parts and "screenshot" not in p.name))]
    cands = [p for p in cands if not p.stem.startswith(name + "_")]  # Elephants_3840x2160 duplicates
    return max(cands, key=lambda p: p.stat().st_size) if cands else None


def build(debs: Path, out: Path, reserved: tuple[str, ...] = ()) -> dict:
    """Extract every ``*.deb`` in ``debs`` and write the asset folder ``out``."""
    debs, out = Path(debs), Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "fonts").mkdir(parents=True)
    manifest: dict = {"fonts": [], "photos": [], "graphics": [], "words": None, "packages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for deb in sorted(debs.glob("*.deb")):
            pkg = deb.name.split("_", 1)[0]
            root = Path(tmp) / pkg
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            manifest["packages"][pkg] = deb.name
            if pkg.startswith("fonts-"):
                files = [p for p in root.rglob("*") if p.suffix.lower() in (".ttf", ".otf") and p.is_file()]
                files = [p for p in files if _has_chars(p)]
                limit = 10_000 if pkg in reserved else MAX_FONTS_PER_PACKAGE
                for f in _pick_fonts(files, limit):
                    dst = out / "fonts" / pkg / f.name
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    _subset(f, dst)
                    manifest["fonts"].append(dict(package=pkg, file=f"fonts/{pkg}/{f.name}", name=f.stem))
            for kind, table in (("photos", PHOTO_WALLPAPERS), ("graphics", GRAPHIC_WALLPAPERS)):
                for name in table.get(pkg, ()):
                    src = _wallpaper_files(root, name)
                    if src is None:
                        print(f"{pkg}: no image {name!r}", file=sys.stderr)
                        continue
                    rel = f"{kind}/{pkg}/{name}.jpg"
                    _save_image(src, out / rel)
                    manifest[kind].append(dict(package=pkg, file=rel, name=name))
            for rel in WORD_LISTS:
                if (root / rel).is_file() and manifest["words"] is None:
                    words = sorted({w.strip() for w in (root / rel).read_text(errors="ignore").splitlines()
                                    if w.strip().isascii() and w.strip().isalpha() and 2 <= len(w.strip()) <= 12})
                    (out / "words.txt").write_text("\n".join(words) + "\n")
                    manifest["words"] = dict(package=pkg, file="words.txt", count=len(words))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m softvq_demo.data.assets", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the asset folder from downloaded .deb files")
    b.add_argument("--debs", required=True, help="folder of .deb files (apt-get download ...)")
    b.add_argument("--out", default=str(DEFAULT_DIR))
    args = p.parse_args(argv)
    m = build(Path(args.debs), Path(args.out), reserved=RESERVED_FONT_PACKAGES)
    size = sum(f.stat().st_size for f in Path(args.out).rglob("*") if f.is_file())
    print(f"{len(m['fonts'])} fonts from {len({f['package'] for f in m['fonts']})} packages, "
          f"{len(m['photos'])} photos, {len(m['graphics'])} graphics, "
          f"{(m['words'] or {}).get('count', 0)} words; {size / 2**20:.1f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
