"""Build openfwi_manifest.json: every native file of the ten 2D OpenFWI families.

Regenerate with `python -m wavediffusion.data.make_openfwi_manifest` (writes the JSON beside
this file; tests check the committed JSON equals what this script builds). Every fact names
its source (lanl/OpenFWI's split files, the OpenFWI data page, the Hugging Face mirror
ashynf/OpenFWI, numpy's .npy header, Git-LFS pointers); what no source gives stays null.
OpenFWI's held-out split "val" is this project's "test".
Details: docs/data.md, 'The OpenFWI manifest'.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from .families import FAMILIES, SAMPLES_PER_FILE, SEISMIC_SHAPE, VELOCITY_SHAPE, Family

MANIFEST_PATH = Path(__file__).with_name("openfwi_manifest.json")

DATA_PAGE = "https://openfwi-lanl.github.io/docs/data.html"
SPLIT_FILES = "https://github.com/lanl/OpenFWI/tree/dff72fc46631456663f4921e93a5a31f24fe8304/split_files"
MIRROR_BASE = "https://huggingface.co/datasets/ashynf/OpenFWI/resolve/main"

# Google Drive folder of each family, as linked from the OpenFWI data page (DATA_PAGE),
# with the total size that page gives.
FOLDERS = {
    "FlatVel-A": ("https://drive.google.com/drive/folders/1NIdjiYhjWSV9NHn7ZEFYTpJxzvzxqYRb?usp=sharing", "43GB"),
    "FlatVel-B": ("https://drive.google.com/drive/folders/1XnQjke4vG8DpHvfpoCIKQaG0D7Jsi_8O?usp=sharing", "43GB"),
    "CurveVel-A": ("https://drive.google.com/drive/folders/1NGXnVG0gUFHfDcUvJxfozCgiI4WwquVk?usp=sharing", "43GB"),
    "CurveVel-B": ("https://drive.google.com/drive/folders/1d1N6DIISC0fBMwPxnOYOhFP3p2ZtCPmf?usp=sharing", "43GB"),
    "FlatFault-A": ("https://drive.google.com/drive/folders/1jOB6R_zewuFj5wZam7nDP7GixQnbnRLR?usp=sharing", "77GB"),
    "FlatFault-B": ("https://drive.google.com/drive/folders/1mfu5DCMTiEzrYoXbMfq9ILAM0RJ2SqNX?usp=sharing", "77GB"),
    "CurveFault-A": ("https://drive.google.com/drive/folders/1vqUHJ-iRwp3ozL-e4HhKGpdO0e7NQZE1?usp=sharing", "77GB"),
    "CurveFault-B": ("https://drive.google.com/drive/folders/1QTDno4_qed94mqhxJRzqWC19iYfANRqD?usp=sharing", "77GB"),
    "Style-A": ("https://drive.google.com/drive/folders/1CQceUL5ITTHV-PRqbIzkyZwCDdUk0XkU?usp=sharing", "95GB"),
    "Style-B": ("https://drive.google.com/drive/folders/1JbyhbEq8TIrJbH-FZJje9WOejktE0f0Y?usp=sharing", "95GB"),
}

# Families whose files the mirror (MIRROR_BASE) is seen to hold under OpenFWI's paths.
MIRROR_EVIDENCE = {
    "FlatVel-A": "a third-party fetch script downloads FlatVel_A/{data,model}/*.npy from this mirror "
    "(its project also records model1.npy as 9,800,128 bytes)",
    "CurveVel-A": "the same third-party fetch script fetches CurveVel_A/{data,model}/*.npy "
    "from this mirror by default",
    "FlatVel-B": "file pages https://huggingface.co/datasets/ashynf/OpenFWI/blob/main/"
    "FlatVel_B/data/data{4,18,19,28,40,42}.npy",
}

# sha256 published for single files: Git-LFS pointers shown on Hugging Face pages.
_ASHYNF = "https://huggingface.co/datasets/ashynf/OpenFWI/blob/main/"
_SAMITIZERXU = (
    "https://huggingface.co/datasets/samitizerxu/openfwi/commit/46836709e71b6fd386dce8d8f8b7a4f578962fef"
)
SHA256 = {
    # family directory / relative path: (sha256, page that shows it)
    "FlatVel_B/data/data4.npy": ("c19870d2a235ec7a54bbfa062c4f09bbf15f51ca6f839bae557412e17fd38ab6", _ASHYNF + "FlatVel_B/data/data4.npy"),
    "FlatVel_B/data/data18.npy": ("adf56c667d44d20b939dc55860c9a112839af311d2a1bd8d700cc46a5154c3fc", _ASHYNF + "FlatVel_B/data/data18.npy"),
    "FlatVel_B/data/data19.npy": ("f7423330c1ec111d213bcb98fcfb3165ed8803451bdbcb61b986c5bc6866ed17", _ASHYNF + "FlatVel_B/data/data19.npy"),
    "FlatVel_B/data/data28.npy": ("c9f92f60b809101f1db107ffa48061c88ab2aa5532e0bcb0636734fcdb9ff6f5", _ASHYNF + "FlatVel_B/data/data28.npy"),
    "FlatVel_B/data/data40.npy": ("57f20e77525d9bc3c9769e0807fff4723ad1d0dcb0de76c781830c8c27937ed6", _ASHYNF + "FlatVel_B/data/data40.npy"),
    "FlatVel_B/data/data42.npy": ("2a31aa28325b23211fb7c8f4206a4a5a5501d7b98a024d1ff7b2132af1e90681", _ASHYNF + "FlatVel_B/data/data42.npy"),
    # another mirror (samitizerxu/openfwi, Git-LFS pointers with size 700000128)
    "FlatFault_A/seis2_1_0.npy": ("ac659db6f467b35b16032f64ec64ae2771b7272b89035748c259f814c405ebd0", _SAMITIZERXU),
    "FlatFault_A/seis2_1_1.npy": ("4ad1d14e69549accaa35d026f3dd9d344db98f0143bdf4926e785778dc4d1878", _SAMITIZERXU),
}

# Fault families number their files seis{group}_1_{i}.npy: three groups per family,
# i = 0..31 train and 32..35 test (split_files/*fault*_{train,val}.txt).
FAULT_GROUPS = {"A": (2, 3, 4), "B": (6, 7, 8)}
FAULT_TRAIN_INDICES = range(0, 32)
FAULT_TEST_INDICES = range(32, 36)


def npy_size(shape: tuple[int, ...]) -> int:
    """Bytes of a float32 C-order .npy file of this shape, header written by numpy itself."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": shape}
    )
    return len(header.getvalue()) + int(np.prod(shape)) * 4


def pair_names(family: Family, split: str) -> list[tuple[str, str]]:
    """(seismic, velocity) paths relative to the family folder, in split_files order."""
    if family.seismic_prefix == "seis":  # Fault family: flat folder, grouped numbering
        groups = FAULT_GROUPS[family.name[-1]]
        indices = FAULT_TRAIN_INDICES if split == "train" else FAULT_TEST_INDICES
        return [(f"seis{g}_1_{i}.npy", f"vel{g}_1_{i}.npy") for g in groups for i in indices]
    # Vel and Style families: data/data{n}.npy and model/model{n}.npy, train first
    first = 1 if split == "train" else family.train_files + 1
    count = family.train_files if split == "train" else family.test_files
    return [(f"data/data{n}.npy", f"model/model{n}.npy") for n in range(first, first + count)]


def build_manifest() -> dict:
    """The whole manifest document (what goes into openfwi_manifest.json)."""
    seismic_size = npy_size((SAMPLES_PER_FILE, *SEISMIC_SHAPE))
    velocity_size = npy_size((SAMPLES_PER_FILE, *VELOCITY_SHAPE))
    families, files = {}, []
    for family in FAMILIES.values():
        folder_url, page_size = FOLDERS[family.name]
        mirrored = family.name in MIRROR_EVIDENCE
        families[family.name] = {
            "directory": family.directory,
            "folder_url": folder_url,
            "size_on_data_page": page_size,
            "mirror_evidence": MIRROR_EVIDENCE.get(family.name),
        }
        for split in ("train", "test"):
            for seismic, velocity in pair_names(family, split):
                for kind, path, size in (("seismic", seismic, seismic_size), ("velocity", velocity, velocity_size)):
                    key = f"{family.directory}/{path}"
                    files.append(
                        {
                            "family": family.name,
                            "split": split,
                            "kind": kind,
                            "path": path,
                            "size": size,
                            "sha256": SHA256[key][0] if key in SHA256 else None,
                            "url": f"{MIRROR_BASE}/{key}" if mirrored else None,
                        }
                    )
    return {
        "about": (
            "Native files of the ten 2D OpenFWI families (Vel, Fault, Style), 500 samples each. "
            "path is relative to the family folder (families.<name>.directory). "
            "url null: no per-file URL is known; fetch from the family's folder_url (Google Drive) "
            "by hand, or use a mirror with OpenFWI's layout. sha256 null: no digest is published."
        ),
        "generated_by": "src/wavediffusion/data/make_openfwi_manifest.py",
        "sources": {
            "data_page": DATA_PAGE,
            "split_files": SPLIT_FILES,
            "readme": "https://github.com/lanl/OpenFWI/blob/main/README.md",
            "licence": "CC BY-NC-SA 4.0 (data), per the OpenFWI data page",
        },
        "mirror": {
            "name": "ashynf/OpenFWI on Hugging Face (unofficial mirror)",
            "base_url": MIRROR_BASE,
            "revision_seen": "9ed98af (README update; files uploaded in 486582f)",
            "note": (
                "Not run by OpenFWI. A third-party fetcher resumes from it with HTTP Range requests. "
                "Sizes and (where known) sha256 are checked on download."
            ),
        },
        "sha256_sources": {key: page for key, (_, page) in sorted(SHA256.items())},
        "families": families,
        "files": files,
    }


def render(document: dict) -> str:
    """JSON text: metadata indented, one line per file so diffs stay readable."""
    head = {k: v for k, v in document.items() if k != "files"}
    text = json.dumps(head, indent=2)[:-2]  # drop the closing "\n}"
    lines = [json.dumps(entry) for entry in document["files"]]
    return text + ',\n  "files": [\n    ' + ",\n    ".join(lines) + "\n  ]\n}\n"


def main() -> None:
    MANIFEST_PATH.write_text(render(build_manifest()))
    print(f"wrote {MANIFEST_PATH}")


if __name__ == "__main__":
    main()
