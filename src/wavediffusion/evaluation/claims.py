"""The paper's claims, each tested on this run's own result tables: results/claims.csv
(rule `claims`), one row per claim and variant, so a user sees at a glance what the run
reproduced.

Columns: claim, variant, criterion (what is tested), measured, paper, held, note. `held`
is computed here from the tables, never typed in: "yes", "no", or "not testable at this
scale" where the run's numbers cannot decide (an ordering whose neighbours lie within two
standard errors of each other; a ratio within two standard errors of its limit; FIDs of
unequal sample counts; a claim about the diffusion model's samples while its validation
loss was still falling), with the reason in `note`.
"""

from __future__ import annotations

from .arms import REFERENCE, mae_interval, parse_arm
from .memorisation import MAX_FRACTION_BELOW, memorised

COLUMNS = ("claim", "variant", "criterion", "measured", "paper", "held", "note")
YES, NO, UNDECIDED = "yes", "no", "not testable at this scale"

# the paper's numbers (Table 5, Fig. 5, Table 1)
PAPER_TABLE5 = {"train_reconstruction": 0.0016, "diffusion_ddpm": 0.0038, "interpolation": 0.0065,
                "random_gaussian": 0.0082}
PAPER_FID = {("1vq", "velocity"): (260.33, 14207.0), ("1vq", "seismic"): (5.67, 871.0),
             ("2vq", "velocity"): (665.75, 14207.0), ("2vq", "seismic"): (20.94, 871.0)}
TABLE5_RATIO = 1.5  # random latents' deviation over diffusion samples' (the paper: 2.2)
TRAJECTORY_RATIO = 2.0  # reverse trajectory's end over the forward trajectory's start (the paper: ~1.25)
INVERSION_RATIO = 1.25  # Stage 1's D_v(E(s)) test MAE over InversionNet's, trained for the same GPU time
# A validation curve has flattened when the best value of its last third improves on the
# best before it by less than this fraction; a model still improving faster is not judged.
PLATEAU = 0.02


def row(claim: str, variant: str, criterion: str, measured: str, paper: str, held: str, note: str = "") -> dict:
    return {"claim": claim, "variant": variant, "criterion": criterion, "measured": measured, "paper": paper,
            "held": held, "note": note}


def table5_stats(rows: list[dict]) -> dict[str, tuple[float, float, int]]:
    """(mean, std, n) per Table-5 row; interpolation is the weight-0.5 row (the paper's midpoint)."""
    stats = {}
    for r in rows:
        name = r["latents"]
        if name == "interpolation" and r["weight"] and abs(float(r["weight"]) - 0.5) > 1e-9:
            continue
        stats[name] = (float(r["deviation_mean"]), float(r["deviation_std"]), int(r["n"]))
    return stats


def ordering_claim(variant: str, stats: dict) -> dict:
    """Table 5's ordering: reconstructions < diffusion (DDPM) < interpolations < random latents."""
    names = list(PAPER_TABLE5)
    missing = [name for name in names if name not in stats]
    criterion = " < ".join(names)
    paper = " < ".join(f"{PAPER_TABLE5[name]:g}" for name in names)
    if missing:
        return row("table5_ordering", variant, criterion, "", paper, UNDECIDED, f"no rows {missing}")
    measured = " < ".join(f"{stats[name][0]:.4g}" for name in names)
    verdicts, notes = [], []
    for low, high in zip(names, names[1:]):
        (m_low, s_low, n_low), (m_high, s_high, n_high) = stats[low], stats[high]
        standard_error = (s_low**2 / n_low + s_high**2 / n_high) ** 0.5
        if abs(m_high - m_low) <= 2 * standard_error:
            verdicts.append(UNDECIDED)
            notes.append(f"{low} and {high} within two standard errors ({m_low:.4g} vs {m_high:.4g})")
        else:
            verdicts.append(YES if m_high > m_low else NO)
    held = NO if NO in verdicts else UNDECIDED if UNDECIDED in verdicts else YES
    return row("table5_ordering", variant, criterion, measured, paper, held, "; ".join(notes))


def ratio_claim(claim: str, variant: str, criterion: str, ratio: float, limit: float, at_least: bool, paper: str,
                note: str = "", standard_error: float = 0.0) -> dict:
    """ratio >= limit (at_least) or <= limit; undecided where the limit lies within two
    standard errors of the ratio."""
    measured = f"{ratio:.3g} ± {standard_error:.2g}" if standard_error else f"{ratio:.3g}"
    if abs(ratio - limit) <= 2 * standard_error:
        return row(claim, variant, criterion, measured, paper, UNDECIDED,
                   "; ".join(filter(None, [note, f"the limit {limit:g} lies within two standard errors"])))
    held = YES if (ratio >= limit if at_least else ratio <= limit) else NO
    return row(claim, variant, criterion, measured, paper, held, note)


def ratio_of_means(top: tuple[float, float, int], bottom: tuple[float, float, int]) -> tuple[float, float]:
    """(ratio, its standard error by the delta method) of two sample means given as (mean, std, n)."""
    (m_top, s_top, n_top), (m_bottom, s_bottom, n_bottom) = top, bottom
    ratio = m_top / m_bottom
    return ratio, abs(ratio) * ((s_top / m_top) ** 2 / n_top + (s_bottom / m_bottom) ** 2 / n_bottom) ** 0.5


def trajectory_claims(variant: str, table5: list[dict], deviation: list[dict]) -> list[dict]:
    """Table 5's ordering and ratio, and Fig. 5's end against its start, from the rows of
    diffusion-trajectory's table5.csv and deviation.csv."""
    stats = table5_stats(table5)
    claims = [ordering_claim(variant, stats)]
    if "random_gaussian" in stats and "diffusion_ddpm" in stats:
        ratio, standard_error = ratio_of_means(stats["random_gaussian"], stats["diffusion_ddpm"])
        claims.append(ratio_claim("table5_ratio", variant,
                                  f"deviation of random latents / diffusion samples >= {TABLE5_RATIO:g}", ratio,
                                  TABLE5_RATIO, True, "2.2 (0.0082 / 0.0038)", standard_error=standard_error))
    clean = {r["direction"]: (float(r["mean"]), float(r["std"]), int(r["n"]))
             for r in deviation if int(r["step"]) == -1}
    ratio, standard_error = ratio_of_means(clean["backward"], clean["forward"])
    claims.append(ratio_claim("fig5_end_vs_start", variant,
                              f"reverse trajectory's end / forward trajectory's start <= {TRAJECTORY_RATIO:g}",
                              ratio, TRAJECTORY_RATIO, False, "~1.25 (0.002 / 0.0016)",
                              f"end {clean['backward'][0]:.4g}, start {clean['forward'][0]:.4g}",
                              standard_error=standard_error))
    return claims


def convergence_problem(stage2_record: dict) -> str:
    """Why claims about Stage 2's samples cannot be judged yet ("" when they can): its
    validation loss had not flattened (train.json's `validation`, runs.validation_trend)."""
    trend = stage2_record.get("validation")
    if trend is None:
        return "Stage 2 validated fewer than three times, so whether it converged is unknown"
    if trend["improvement_last_third"] >= PLATEAU:
        return (f"Stage 2 had not converged: its {trend['metric']} improved {trend['improvement_last_third']:.1%} "
                f"over the last third of training (a plateau: < {PLATEAU:.0%})")
    return ""


def pending_convergence(claims: list[dict], problem: str) -> list[dict]:
    """The claims, each "not testable" with `problem` and its would-be verdict in the note, if
    there is a problem."""
    if not problem:
        return claims
    return [{**claim, "held": UNDECIDED,
             "note": "; ".join(filter(None, [problem, f"as measured: {claim['held']}", claim["note"]]))}
            for claim in claims]


def fid_claims(fid: list[dict]) -> list[dict]:
    """Per variant and modality: the diffusion samples' FID below the Stage-1 random latents'
    (`fid`: fid_table.csv's rows)."""
    by_key = {(r["variant"], r["source"], r["modality"]): r for r in fid}
    claims = []
    for (variant, source, modality), diffusion in by_key.items():
        baseline = by_key.get((variant, "stage1-random-latents", modality))
        if source != "diffusion" or baseline is None:
            continue
        paper = PAPER_FID.get((variant, modality))
        paper_text = f"{paper[0]:g} < {paper[1]:g}" if paper else ""
        measured = f"{float(diffusion['fid']):.2f} < {float(baseline['fid']):.2f}"
        criterion = f"{modality} FID: diffusion samples < Stage-1 random latents"
        n_diffusion, n_baseline = int(diffusion["n_generated"]), int(baseline["n_generated"])
        if n_diffusion != n_baseline:  # FID's small-sample bias differs with the count
            claims.append(row("fid_diffusion_vs_random", variant, criterion, measured, paper_text, UNDECIDED,
                              f"unequal sample counts ({n_diffusion} vs {n_baseline}): set fid.num_generated "
                              "equal to fid.num_baseline"))
            continue
        held = YES if float(diffusion["fid"]) < float(baseline["fid"]) else NO
        claims.append(row("fid_diffusion_vs_random", variant, criterion, measured, paper_text, held,
                          f"{n_diffusion} samples each"))
    return claims


def inversion_claim(variant: str, stage1_metrics: list[dict], table2: list[dict], stage1_record: dict,
                    inversion_records: list[dict]) -> dict:
    """Stage 1's velocity decoder as an inversion model against InversionNet on real data, for
    the same GPU time (the records' training seconds). InversionNet's MAE is Table 2's mean
    over the seeds of `real`, whose standard error (std / sqrt(seeds)) makes the ratio's: a
    limit within two of them is not testable. A verdict stands only where the times cannot
    have decided it: "yes" when every run of InversionNet had at least Stage 1's time or
    stopped at its plateau (early stopping: more time would not have helped it), "no" when
    every one had at most Stage 1's; otherwise the claim is not testable, and the note says
    why. The records are the train.json of Stage 1 and of each seed's `real` run."""
    stage1 = next((r for r in stage1_metrics if r["variant"] == variant and r["family"] == "all"), None)
    real = next((r for r in table2 if r["arm"] == "real" and r["family"] == "all"), None)
    criterion = f"test MAE of D_v(E(s)) / InversionNet's <= {INVERSION_RATIO:g}, same GPU time"
    if stage1 is None or real is None:
        return row("stage1_inversion", variant, criterion, "", "", UNDECIDED,
                   f"no 'all' row of {variant} in Stage 1's metrics" if stage1 is None
                   else "no 'all' row of the arm 'real' in Table 2")
    seconds_stage1 = float(stage1_record["seconds"])
    seconds = [float(record["seconds"]) for record in inversion_records]
    mean, seeds = float(real["mae_mean"]), int(real["n_seeds"])
    ratio = float(stage1["mae"]) / mean
    standard_error = ratio * float(real["mae_std"]) / seeds**0.5 / mean if seeds > 1 else 0.0
    times = f"{seconds[0]:.0f} s" if len(seconds) == 1 else f"{min(seconds):.0f}-{max(seconds):.0f} s"
    claim = ratio_claim("stage1_inversion", variant, criterion, ratio, INVERSION_RATIO, False, "",
                        f"MAE {float(stage1['mae']):.4g} (Stage 1, n={stage1['n']}, {seconds_stage1:.0f} s of "
                        f"training) vs {mean:.4g} (InversionNet on the real training data, mean of {seeds} "
                        f"seed(s), n={real['n']}, {times})", standard_error=standard_error)
    plateaued = [record.get("stop_reason") == "early_stop" for record in inversion_records]
    if any(plateaued):
        claim["note"] += f"; {sum(plateaued)} of {len(plateaued)} InversionNet run(s) stopped at their plateau"
    shorter = claim["held"] == YES and any(s < seconds_stage1 and not done for s, done in zip(seconds, plateaued))
    longer = claim["held"] == NO and max(seconds) > seconds_stage1
    if shorter or longer:
        claim["held"] = UNDECIDED
        claim["note"] += ("; InversionNet trained for less time than Stage 1, and longer it might win by more"
                          if shorter else "; InversionNet trained for more time than Stage 1")
    return claim


def memorisation_claim(variant: str, memorisation: list[dict]) -> dict:
    """No memorisation, from the rows of the variant's memorisation.csv."""
    rows = {r["set"]: r for r in memorisation}
    fraction = float(rows["generated"]["fraction_below_held_out_p01"])
    held = NO if memorised(list(rows.values())) else YES
    return row("no_memorisation", variant,
               f"generated latents closer to the training set than the nearest 1 % of held-out ones <= "
               f"{MAX_FRACTION_BELOW:.0%}", f"{fraction:.1%}", "", held,
               f"median distance {float(rows['generated']['distance_median']):.4g} (generated) vs "
               f"{float(rows['held_out']['distance_median']):.4g} (held out), n={rows['generated']['n']}")


def interval_claim(claim: str, variant: str, criterion: str, better: dict, worse: dict, note: str) -> dict:
    """`better`'s test MAE below `worse`'s, two InversionNet table rows (TABLE_COLUMNS: mean and
    std over seeds): "yes" when their intervals mean ± std lie apart in that order, "no" when
    apart the other way, not testable when they overlap or either has fewer than two seeds
    (the tables' own `mae_vs_real` rule, here between any two arms)."""
    seeds = min(int(better["n_seeds"] or 0), int(worse["n_seeds"] or 0))
    if seeds < 2:
        measured = (f"{float(better['mae_mean']):.4g} < {float(worse['mae_mean']):.4g}"
                    if better["mae_mean"] != "" and worse["mae_mean"] != "" else "")
        return row(claim, variant, criterion, measured, "", UNDECIDED,
                   f"{seeds} seed(s): mean ± std needs at least two per arm; {note}")
    measured = " < ".join(f"{float(r['mae_mean']):.4g} ± {float(r['mae_std']):.2g}" for r in (better, worse))
    (better_low, better_high), (worse_low, worse_high) = mae_interval(better), mae_interval(worse)
    if better_high < worse_low:
        held = YES
    elif worse_high < better_low:
        held = NO
    else:
        return row(claim, variant, criterion, measured, "", UNDECIDED, f"intervals (mean ± std) overlap; {note}")
    return row(claim, variant, criterion, measured, "", held, note)


def _all_rows(table: list[dict]) -> dict[str, dict]:
    """An InversionNet table's arms over the whole test split ("all"), by name; not its
    reference rows (the mean-map predictor, `real`)."""
    return {r["arm"]: r for r in table if r["family"] == "all" and r["mae_vs_real"] != REFERENCE}


def augmentation_claims(table3: list[dict], table4: list[dict]) -> list[dict]:
    """The paper's InversionNet experiments, on the real test split, each per variant and seismic
    kind: generated pairs added to a small real set beat that real set alone (Table 3, per real
    fraction), and fine-tuning on real plus the hardest generated pairs beats fine-tuning on real
    alone (Table 4)."""
    claims = []
    rows = _all_rows(table3)
    for name, mixed in rows.items():
        arm = parse_arm(name)
        alone = rows.get(f"real-{arm.real_percent:g}pct")
        if arm.variant is None or alone is None:
            continue
        percent = f"{arm.real_percent:g} % real"
        claims.append(interval_claim(
            "table3_generated_plus_real", arm.variant,
            f"test MAE: generated ({arm.seismic} seismic) + {percent} < {percent} alone",
            mixed, alone, f"{mixed['n_train']} vs {alone['n_train']} training pairs"))
    rows = _all_rows(table4)
    baseline = rows.get("finetune-real")
    for name, hard in rows.items():
        arm = parse_arm(name)
        if arm.variant is None or baseline is None:
            continue
        claims.append(interval_claim(
            "table4_finetune_hardest", arm.variant,
            f"test MAE: `real` fine-tuned on real + the hardest generated ({arm.seismic} seismic) < on real alone",
            hard, baseline, f"{hard['n_train']} vs {baseline['n_train']} fine-tuning pairs"))
    return claims


def joint_vs_separate_claims(table8: list[dict]) -> list[dict]:
    """Table 8, per variant: pairs the joint model makes fit the wave equation better than pairs
    of independently generated velocity and seismic (table8.csv's pde_deviation rows), by more
    than two standard errors of the difference; not testable within them."""
    claims = []
    for r in table8:
        if r["quantity"] != "pde_deviation":
            continue
        joint, separate, n = float(r["joint"]), float(r["separate"]), int(r["n"])
        error = ((float(r["joint_std"]) ** 2 + float(r["separate_std"]) ** 2) / n) ** 0.5
        criterion = "PDE deviation: joint pairs < independently generated velocity and seismic, paired"
        measured = f"{joint:.4g} < {separate:.4g}"
        note = (f"{n} pairs each; standard error of the difference {error:.2g}; the data's own "
                f"{float(r['data_floor']):.3g}, chance {float(r['chance']):.3g}")
        if abs(separate - joint) <= 2 * error:
            claims.append(row("table8_joint_vs_separate", r["variant"], criterion, measured, "", UNDECIDED,
                              f"within two standard errors; {note}"))
        else:
            claims.append(row("table8_joint_vs_separate", r["variant"], criterion, measured, "",
                              YES if joint < separate else NO, note))
    return claims


def claims_table(variants: list[str], table5: list[list[dict]], deviation: list[list[dict]],
                 memorisation: list[list[dict]], stage1_records: list[dict], stage2_records: list[dict],
                 fid: list[dict], stage1_metrics: list[dict], table2: list[dict],
                 inversion_records: list[dict], table3: list[dict], table4: list[dict],
                 table8: list[dict]) -> list[dict]:
    """The rows of results/claims.csv (COLUMNS) from the result tables' rows and the training
    records (per-variant lists in `variants` order; inversion_records: `real`'s, one per
    seed; table8 empty when Table 8 is off). The claims about the diffusion samples (Table 5,
    Fig. 5, FID, and what generated pairs do for InversionNet and against separate models)
    wait for Stage 2's convergence; the memorisation check does not: copying shows at any
    stage of training."""
    rows, problems = [], {}
    for variant, variant_table5, variant_deviation, variant_memorisation, stage1_record, stage2_record in zip(
            variants, table5, deviation, memorisation, stage1_records, stage2_records, strict=True):
        problems[variant] = convergence_problem(stage2_record)
        rows += pending_convergence(trajectory_claims(variant, variant_table5, variant_deviation), problems[variant])
        rows.append(inversion_claim(variant, stage1_metrics, table2, stage1_record, inversion_records))
        rows.append(memorisation_claim(variant, variant_memorisation))
    for claim in [*fid_claims(fid), *augmentation_claims(table3, table4), *joint_vs_separate_claims(table8)]:
        rows += pending_convergence([claim], problems.get(claim["variant"], ""))
    return rows
