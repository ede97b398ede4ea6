# Helpers shared by every stage: where each family's OpenFWI-layout data comes from.

import os

from wavediffusion.data.families import get_family

DATA = config["data"]


def openfwi_root():
    """The folder holding the families in OpenFWI's native layout, for the configured source."""
    if DATA["source"] == "embedded":
        return "results/embedded/openfwi"
    if DATA["openfwi_root"]:
        return DATA["openfwi_root"]
    return "results/openfwi/download"


def family_inputs():
    """What preprocess waits for, per family: the folder (simulated or a local copy), or
    the record a complete download writes (the folder itself is not a download output, so
    a failed download keeps its partial files for the retry to resume)."""
    folders = [f"{openfwi_root()}/{get_family(name).directory}" for name in DATA["families"]]
    if DATA["source"] == "openfwi" and not DATA["openfwi_root"]:
        return [f"{folder}/download.json" for folder in folders]
    return folders


def synthetic_seed(family_dir):
    """The generator seed for a synthetic family; 0 (unused) for families with real maps."""
    family = get_family(family_dir.replace("_", "-"))
    return DATA["embedded"]["synthetic_seed"] if family.embedded == "synthetic" else 0


def root_of(family_input):
    """The OpenFWI root above a family input (a family folder or its download.json)."""
    folder = os.path.dirname(family_input) if family_input.endswith("download.json") else family_input
    return os.path.dirname(folder)
