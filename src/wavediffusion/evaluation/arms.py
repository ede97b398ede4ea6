"""The InversionNet augmentation experiments (the paper's Tables 2-4, and the filter's own
table) as named *arms*.

An arm is an InversionNet trained on one kind of data, named by what it trains on; the name
is the {arm} wildcard, and every arm runs once per seed of inversionnet.seeds (one job, one
folder results/inversionnet/<arm>/seed<seed>/): real, gen-<variant>-<seismic>, real-<p>pct,
gen-<variant>-<seismic>+real-<p>pct, finetune-real, finetune-<variant>-<seismic>, and the
filter arms gen-<variant>-<seismic>-accepted and gen-<variant>-<seismic>-unfiltered, with
<seismic> "decoded" or "simulated". It imports no torch: the Snakefile imports it.
evaluation/inversion_experiments.py trains, evaluates and tabulates them.
Details: docs/training.md, 'The arms'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import only_known

KEY = "inversionnet"
SEISMIC_KINDS = ("decoded", "simulated")
# The filter arms' generated pairs: those the physics filter accepted, or as many drawn from
# every pair the filter judged, to tell whether filtering helps (the tool's own premise)
FILTER_DRAWS = ("accepted", "unfiltered")
TABLES = ("table2", "table3", "table4", "table_filter")
# The tables' `mae_vs_real`: do the arm's and `real`'s MAE intervals (mean ± std over seeds,
# same family) overlap? (inversion_experiments.separation; claims compare any two arms alike)
SEPARATED, NOT_SEPARATED, ONE_SEED = "separated", "not separated", "one seed"
REFERENCE, NOT_TRAINED, NO_REAL = "reference", "not trained", "no real run"
# the sections of TrainConfig fields; none may set `seed`, which is each run's (`seeds`)
TRAINING_SECTIONS = ("training", "finetune_training", "real_training")


@dataclass(frozen=True)
class ExperimentSettings:
    """config.yaml `inversionnet` (its model and training slices become InversionNetSettings:
    inversion_experiments.network_settings)."""

    model: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    finetune_training: dict = field(default_factory=dict)  # TrainConfig overrides for Table 4's fine-tuning
    # TrainConfig overrides for the `real` arm: Table 2's reference and the InversionNet that
    # Stage 1's velocity decoder is measured against at equal GPU time (e.g. max_seconds)
    real_training: dict = field(default_factory=dict)
    real_percents: tuple[float, ...] = (10.0, 1.0)  # Table 3
    seismic: tuple[str, ...] = SEISMIC_KINDS
    generated_size: int | None = None  # None: as many as the real training pairs
    hard_fraction: float = 65 / 375  # Table 4: the paper's 65k hardest of 375k
    hard_train_fraction: float = 55 / 65  # of which 55k train, 10k test
    eval_batch_size: int = 64
    # one run of every arm per seed: the network's initial weights, its batch order and the
    # unfiltered arm's draw; the tables give mean and std over them
    seeds: tuple[int, ...] = (0, 1, 2)
    # the config's global seed: what must stay fixed across runs (the real subsets, the hardest-pairs split)
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "real_percents", tuple(float(p) for p in self.real_percents))
        object.__setattr__(self, "seismic", tuple(self.seismic))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if (not self.seeds or len(set(self.seeds)) != len(self.seeds)
                or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds)):
            raise ValueError(f"{KEY}.seeds must be a non-empty list of distinct integers >= 0, got {list(self.seeds)}")
        for name in TRAINING_SECTIONS:
            if "seed" in getattr(self, name):
                raise ValueError(f"{KEY}.{name}.seed: InversionNet's seeds are {KEY}.seeds (one run per seed); "
                                 "remove it")
        if not all(0 < p < 100 for p in self.real_percents):
            raise ValueError(f"{KEY}.real_percents must lie in (0, 100), got {list(self.real_percents)}")
        unknown = sorted(set(self.seismic) - set(SEISMIC_KINDS))
        if unknown or not self.seismic:
            raise ValueError(f"{KEY}.seismic must be a non-empty list of {SEISMIC_KINDS}, got {list(self.seismic)}")
        for name in ("hard_fraction", "hard_train_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{KEY}.{name} must lie in (0, 1), got {getattr(self, name)!r}")
        if self.generated_size is not None and self.generated_size < 1:
            raise ValueError(f"{KEY}.generated_size must be null or at least 1, got {self.generated_size!r}")

    @classmethod
    def from_dict(cls, values: dict) -> ExperimentSettings:
        return cls(**only_known(values, cls, KEY))


@dataclass(frozen=True)
class Arm:
    name: str
    real_percent: float | None  # 100 for all real pairs, None for none
    variant: str | None = None
    seismic: str | None = None
    finetune: bool = False
    draw: str | None = None  # the filter arms': "accepted" or "unfiltered" (FILTER_DRAWS)

    @property
    def table(self) -> str:
        if self.draw:
            return "table_filter"
        if self.finetune:
            return "table4"
        partial = self.real_percent is not None and self.real_percent < 100
        return "table3" if partial else "table2"

    @property
    def train_data(self) -> str:
        """In words, for the tables."""
        generated = f"generated {self.variant} ({self.seismic} seismic)" if self.variant else None
        if self.draw == "accepted":
            return f"{generated}, those the physics filter accepted"
        if self.draw == "unfiltered":
            return f"{generated}, as many as the filter accepted, drawn without it"
        if self.finetune:
            return "`real` fine-tuned on real" + (f" + hardest {generated}" if generated else "")
        real = None
        if self.real_percent is not None:
            real = "real" if self.real_percent == 100 else f"{self.real_percent:g} % real"
        return " + ".join(part for part in (generated, real) if part)


def mae_interval(row: dict) -> tuple[float, float]:
    """(mean - std, mean + std) of a table row's test MAE over its seeds (numbers or the CSV's text)."""
    mean, std = float(row["mae_mean"]), float(row["mae_std"])
    return mean - std, mean + std


def _percent_name(percent: float) -> str:
    return f"{percent:g}pct"


def _generated(text: str, name: str) -> tuple[str, str]:
    variant, _, seismic = text.rpartition("-")
    if not variant or seismic not in SEISMIC_KINDS:
        raise ValueError(f"InversionNet arm {name!r}: {text!r} is not <variant>-<seismic> with seismic one of "
                         f"{SEISMIC_KINDS}")
    return variant, seismic


def parse_arm(name: str) -> Arm:
    """The Arm an {arm} wildcard names (see the module docstring); ValueError naming it otherwise."""
    for draw in FILTER_DRAWS:  # generated pairs alone, never mixed with real ones
        if name.startswith("gen-") and name.endswith(f"-{draw}"):
            return Arm(name, None, *_generated(name[len("gen-"):-len(draw) - 1], name), draw=draw)
    if name.startswith("finetune-"):
        rest = name[len("finetune-"):]
        if rest == "real":
            return Arm(name, 100.0, finetune=True)
        return Arm(name, 100.0, *_generated(rest, name), finetune=True)  # real + the hardest generated
    real = variant = seismic = None
    for part in name.split("+"):
        if part == "real" and real is None:
            real = 100.0
        elif part.startswith("real-") and part.endswith("pct") and real is None:
            try:
                real = float(part[len("real-"):-len("pct")])
            except ValueError:
                raise ValueError(f"InversionNet arm {name!r}: {part!r} is not real-<percent>pct") from None
        elif part.startswith("gen-") and variant is None:
            variant, seismic = _generated(part[len("gen-"):], name)
        else:
            raise ValueError(f"unknown InversionNet arm {name!r}: parts are real, real-<p>pct, gen-<variant>-<seismic>;"
                             f" or alone gen-<variant>-<seismic>-<draw>, draw one of {FILTER_DRAWS}")
    return Arm(name, real, variant, seismic)


def arm_names(variants, settings: ExperimentSettings) -> dict[str, list[str]]:
    """Every arm of every table (TABLES), for the configured variants, seismic kinds and percents."""
    generated = [f"gen-{v}-{s}" for v in variants for s in settings.seismic]
    percents = [_percent_name(p) for p in settings.real_percents]
    return {
        "table2": ["real", *generated],
        "table3": [f"real-{p}" for p in percents] + [f"{g}+real-{p}" for g in generated for p in percents],
        "table4": ["finetune-real", *[f"finetune-{g[4:]}" for g in generated]],
        "table_filter": [f"{g}-{draw}" for g in generated for draw in FILTER_DRAWS],
    }
