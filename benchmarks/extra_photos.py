"""More real photographs for key-point training, taken from Debian packages.

The shared photos (``../shared/data/photos``) are 34 wallpapers and OpenCV sample photos; their
README says more of the same kind come from ``apt-get download`` of the packages they came from.
This script does that: it downloads the packages named in :data:`PHOTOS` (``apt-get download``,
nothing is installed), extracts the listed files, and writes them as JPEGs with the longer side
at most 1280 px (the shared photos' size), with ``SOURCES.json`` naming the package, its version,
the file, its SHA-256 and its split. Only the package mirror is reached; detkd itself never
downloads data.

Splits: in the order of their file names, every fourth photo goes to ``--out/test`` (held out:
``keypoint_anchors.py --more-photos`` judges on them, nothing trains or chooses on them) and the
others to ``--out/train`` (``learning_curve.py --extra-images``). A rule fixed before any result,
so the split is not chosen by what it does to a number.

Licences (each package's ``/usr/share/doc/PACKAGE/copyright``, also in the ``.deb``): the lomiri
wallpapers (Ubuntu's wallpaper contests) CC-BY-4.0 / CC-BY-SA-4.0 per photo, named with their
authors; plasma's under GPL-2+ / CC-BY-SA; OpenCV's sample data under its BSD/Apache terms. The
photos are not redistributed by detkd: the script fetches them where they are used.

The list is chosen by eye from every image in those packages (photographs, not logos, masks,
drawings or flat gradients) and leaves out everything that would leak into a judgement:

* every photo already among the shared ones (the ``mate-backgrounds`` nature photos, ten plasma
  wallpapers, twelve OpenCV photos);
* near copies of the six validation photos of ``learning_curve.py``: ``right.jpg`` (the other
  camera of the validation photo ``opencv-left.jpg``), ``box.png`` (the object in
  ``opencv-box_in_scene.jpg``), and the ``left01..14``/``right01..14`` chessboard series;
* near copies of training photos (``aloeR``, ``basketball2``, ``rubberwhale2``, ``ela_modified``,
  ``graf3``, ``leuvenB``) add little and are left out too.

As a guard, every written photo is compared with the validation photos and scikit-image's held-out
photos (grey 32x32 thumbnails, correlation above 0.9 is refused), so an edit of the list cannot
slip a copy of one of them (resized or recompressed) into training. The guard does not see another
view of the same scene (``right.jpg`` against ``opencv-left.jpg``: 0.43); the list does.

    python benchmarks/extra_photos.py --out runs/extra_photos      # downloads into runs/extra_photos/debs
    python benchmarks/learning_curve.py --extra-images runs/extra_photos/train ...
    python benchmarks/keypoint_anchors.py --more-photos runs/extra_photos/test ...
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from detkd.data.images import BUILTIN_HELDOUT_PHOTOS, builtin_photo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import ROOT, SHARED_PHOTOS, VALIDATION_PHOTOS  # noqa: E402  (validation: never trained on)

OPENCV = "usr/share/doc/opencv-doc/examples"
#: package -> (short name used as the file prefix, files inside the package).
PHOTOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lomiri-wallpapers-16.04": ("lomiri", tuple(f"usr/share/backgrounds/{name}.jpg" for name in (
        "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace", "Picture_1A_by_freespace",
        "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi", "analogpattern_by_Peter_Nerlich",
        "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
        "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt",
        "sunset_by_Aitzol_Berasategi"))),
    "lomiri-wallpapers-20.04": ("lomiri", (
        "usr/share/backgrounds/Infinite-Sea_by_Aury88.jpg", "usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg")),
    "plasma-workspace-wallpapers": ("plasma", ("usr/share/wallpapers/Kite/contents/images/2560x1600.jpg",)),
    "opencv-doc": ("opencv", tuple(f"{OPENCV}/data/{name}" for name in (
        "Blender_Suzanne1.jpg", "aero1.jpg", "aero3.jpg", "apple.jpg", "baboon.jpg", "board.jpg", "building.jpg",
        "fruits.jpg", "graf1.png", "home.jpg", "leuvenA.jpg", "orange.jpg", "sudoku.png"))
        + tuple(f"{OPENCV}/text/scenetext0{k}.jpg" for k in range(1, 7))
        + tuple(f"{OPENCV}/text/scenetext_segmented_word0{k}.jpg" for k in range(1, 6))),
}
MAX_SIDE = 1280
TEST_EVERY = 4  # every fourth photo, by file name, is held out
DUPLICATE_CORRELATION = 0.9


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """Zero-mean, unit-norm grey 32x32 thumbnail of an ``(H, W)`` or ``(H, W, 3)`` uint8 image."""
    grey = Image.fromarray(pixels).convert("L").resize((32, 32), Image.BILINEAR)
    flat = np.asarray(grey, np.float64).ravel()
    flat -= flat.mean()
    return flat / max(np.linalg.norm(flat), 1e-9)


def protected_thumbnails() -> dict[str, np.ndarray]:
    """Thumbnails of the validation photos and scikit-image's held-out photos."""
    protected = {name: thumbnail(np.asarray(Image.open(SHARED_PHOTOS / name).convert("RGB")))
                 for name in VALIDATION_PHOTOS if (SHARED_PHOTOS / name).exists()}
    for name in BUILTIN_HELDOUT_PHOTOS:
        protected[f"skimage-{name}"] = thumbnail((builtin_photo(name, grey=True) * 255).round().astype(np.uint8))
    return protected


def download(package: str, debs: Path) -> Path:
    """The package's ``.deb`` in ``debs``, fetched with ``apt-get download`` when missing."""
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        debs.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            reason = result.stderr.strip() or result.stdout.strip()
            raise SystemExit(f"apt-get download {package} failed in {debs}: {reason}. "
                             "Put the package's .deb file in that folder and rerun.")
    return found[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "extra_photos", help="folder of the photos [runs/extra_photos]")
    parser.add_argument("--debs", type=Path, default=None, help="folder of the .deb files [OUT/debs]")
    args = parser.parse_args(argv)
    debs = args.debs or args.out / "debs"
    protected = protected_thumbnails()
    args.out.mkdir(parents=True, exist_ok=True)
    sources, photos = [], {}
    for package, (prefix, files) in PHOTOS.items():
        deb = download(package, debs)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
            for member in files:
                path = Path(tmp) / member
                if not path.exists():
                    raise SystemExit(f"{member} is not in {deb.name}: the package changed; update PHOTOS in {__file__}")
                image = Image.open(path).convert("RGB")
                image.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
                pixels = np.asarray(image)
                stem = Path(member).stem if prefix != "plasma" else Path(member).parts[-4]
                name = f"{prefix}-{stem}.jpg"
                probe = thumbnail(pixels)
                for other, reference in protected.items():
                    correlation = float(probe @ reference)
                    if correlation > DUPLICATE_CORRELATION:
                        raise SystemExit(f"{member} of {deb.name} looks like the validation or held-out photo {other} "
                                         f"(correlation {correlation:.2f}); remove it from PHOTOS")
                photos[name] = image
                sources.append({"file": name, "package": deb.name, "member": member,
                                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "size": list(image.size)})
    split = {name: "test" if k % TEST_EVERY == TEST_EVERY - 1 else "train" for k, name in enumerate(sorted(photos))}
    for name, image in photos.items():
        (args.out / split[name]).mkdir(parents=True, exist_ok=True)
        image.save(args.out / split[name] / name, quality=95)
    for source in sources:
        source["split"] = split[source["file"]]
    (args.out / "SOURCES.json").write_text(json.dumps(sources, indent=1) + "\n")
    counts = {part: sum(1 for v in split.values() if v == part) for part in ("train", "test")}
    print(f"{len(sources)} photos from {len(PHOTOS)} packages: {counts['train']} in {args.out / 'train'}, "
          f"{counts['test']} held out in {args.out / 'test'} (sources: SOURCES.json)")


if __name__ == "__main__":
    main()
