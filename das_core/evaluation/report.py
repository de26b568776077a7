"""What an evaluation writes: ``report.md``, ``snr_curves.png``, ``results.csv`` / ``per_class.csv`` and the summary."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

from das_core.evaluation.datasets import ESC50, FSD50K, URBANSOUND8K
from das_core.evaluation.prompts import UNKNOWN_SCENE_TEXT
from das_core.evaluation.protocol import Condition, Plan
from das_core.evaluation.scoring import BASELINES, METHODS, Evaluation
from das_core.evaluation.stores import ConditionData, StoreData
from das_core.scoring.prompts import CLEAN_TEMPLATE

DATASET_TITLES = {URBANSOUND8K: "UrbanSound8K", ESC50: "ESC-50", FSD50K: "FSD50K eval"}
METHOD_DESCRIPTIONS = {
    "zs_das_template": "plain zero-shot, DAS clean template ('{clean}'); DAS with lam = 0",
    "zs_laion_template": "plain zero-shot, LAION's template ('This is a sound of {{label}}.')",
    "das": "Drift-Augmented Scoring, lam chosen on the tuning split",
    "acevedo_zs_text": "Acevedo: text-anchor prototypes, text background profile (scene name)",
    "acevedo_zs_audio": "Acevedo: text-anchor prototypes, audio background profile (noise recordings)",
    "acevedo_tgap_text": "Acevedo: text-guided audio prototypes (unlabelled pool), text background profile",
    "acevedo_tgap_audio": "Acevedo: text-guided audio prototypes (unlabelled pool), audio background profile",
}
NEEDS = {
    "acevedo_zs_text": "the name of the background scene of every test clip (here: the TAU scene label of the "
                       "noise recording mixed into each window)",
    "acevedo_zs_audio": "recordings of the background noise (here: the encoded noise recordings of the scene "
                        "mixed into each window)",
    "acevedo_tgap_text": "a pool of unlabelled audio from the test domain (here: the other folds / the rest of the "
                         "eval set, in the same noise condition) and the background scene's name",
    "acevedo_tgap_audio": "a pool of unlabelled audio from the test domain and recordings of the background noise",
}
CHOICES = ("Choices made here: in the clean condition (and for a window whose mix was skipped because it has "
           "zero power) there is no background, so b = 0 and the Acevedo variants reduce to their prototypes; "
           f"noise of unknown scene is described as \"{UNKNOWN_SCENE_TEXT}\" (text) and by all noise recordings "
           "(audio); TGAP pools are the same condition's windows outside the clip's fold "
           "(UrbanSound8K, ESC-50) or outside the clip itself (FSD50K), never using labels; clip scores are the "
           "maximum over the clip's 10 s windows.")
METRIC_TITLES = {"accuracy": "Accuracy", "accuracy_fold_mean": "Accuracy, mean over folds", "mAP": "Macro mAP"}
RESULT_FIELDS = ("dataset", "method", "snr_db", "metric", "value", "lam", "split")
PER_CLASS_FIELDS = ("dataset", "method", "snr_db", "split", "class", "metric", "value", "n_clips")


@dataclass
class Outcome:
    """Everything a report shows: the plan, the scored evaluation, the stores it read and the counts."""

    plan: Plan
    evaluation: Evaluation
    conditions: Sequence[ConditionData]
    noise_store: StoreData
    counts: dict

    @property
    def condition_list(self) -> list[Condition]:
        """The conditions evaluated, in order."""
        return [d.condition for d in self.conditions]

    @property
    def random_weights(self) -> bool:
        """Whether the checkpoint has random weights (the numbers are then meaningless)."""
        return self.plan.checkpoint_info.get("weights") == "random"

    def value(self, method: str, cond: Condition, metric: str | None = None) -> float | None:
        """A test-split value of ``results.json`` (the main metric unless ``metric``)."""
        metric = metric or self.evaluation.main_metric
        for r in self.evaluation.records:
            if (r["method"], r["snr_db"], r["metric"], r["split"]) == (method, cond.snr_db, metric, "test"):
                return r["value"]
        return None


def percent(value: float | None) -> str:
    """A metric as a percentage with two decimals; "n/a" for none or NaN."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def records_csv(records: Sequence[dict], fields: Sequence[str]) -> bytes:
    """``records`` as CSV bytes with the columns ``fields`` (None written as an empty cell)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in fields})
    return buf.getvalue().encode()


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


# ---------------------------------------------------------------- report.md
def _setup_lines(outcome: Outcome) -> list[str]:
    p, ev = outcome.plan, outcome.evaluation
    c, ds = p.config, p.dataset
    title, n_cond = DATASET_TITLES[ds.name], len(outcome.conditions)
    return [
        f"- dataset: {title} at `{ds.root}`: {len(ds.clips)} clips"
        + (f" (--limit {c.limit} of {p.n_available})" if c.limit else "") + f", {len(ds.label_names)} classes",
        f"- tuning split: {p.split.describe(ds, True)} ({int(p.is_tune.sum())} clips); "
        f"test split: {p.split.describe(ds, False)} ({int((~p.is_tune).sum())} clips)"
        + (f"; {p.split.note}" if p.split.note else ""),
        f"- noise: `{p.noise.root}` ({p.noise.layout}), {len(p.noise.uris)} recordings, "
        f"{len({s for s in p.noise.scenes if s is not None})} scenes; seed {c.seed}",
        f"- checkpoint: `{c.checkpoint}` ({p.checkpoint_id[:19]}…, {p.checkpoint_info.get('architecture')})"
        + ("; **random weights: these numbers are meaningless**" if outcome.random_weights else ""),
        f"- encodings: {len(ds.clips)} clips x {n_cond} conditions + {len(p.noise.uris)} noise recordings = "
        f"{outcome.counts['encodings']} ({outcome.counts['windows']} windows of 10 s)",
        f"- DAS: λ = **{ev.lam:g}**, chosen on the tuning split from {{{', '.join(f'{x:g}' for x in ev.objective)}}} "
        f"by the {ev.main_metric} averaged over all {n_cond} conditions (one λ for every SNR; ties: smaller λ); "
        f"{len(p.phrases)} noise phrases; Acevedo τ = {c.tau:g}",
    ]


def _result_lines(outcome: Outcome) -> list[str]:
    ev, conds = outcome.evaluation, outcome.condition_list
    header = ["method"] + [cd.title for cd in conds]
    main = METRIC_TITLES[ev.main_metric]
    lines = [f"## {main} (%) on the test split", ""]
    lines += _table([[m] + [percent(outcome.value(m, cd)) for cd in conds] for m in METHODS], header)
    if not outcome.plan.dataset.multi_label:
        lines += ["", "## Accuracy (%) on the test split, mean over folds", ""]
        lines += _table([[m] + [percent(outcome.value(m, cd, "accuracy_fold_mean")) for cd in conds] for m in METHODS],
                        header)
    lines += ["", f"## DAS minus baseline ({main}, points)", ""]
    lines += _table([[f"das_minus_{b}"] + [f"{100 * outcome.value(f'das_minus_{b}', cd):+.2f}" for cd in conds]
                     for b in BASELINES], header)
    lines += ["", f"## λ sweep on the tuning split ({main}, %)", ""]
    rows = [[f"{lam:g}" + (" (chosen)" if lam == ev.lam else "")]
            + [percent(ev.sweep[lam][cd.name]) for cd in conds] + [percent(ev.objective[lam])] for lam in ev.sweep]
    return lines + _table(rows, ["λ"] + [cd.title for cd in conds] + ["mean"])


def _method_lines(outcome: Outcome) -> list[str]:
    lines = ["## Methods", ""]
    lines += [f"- `{m}`: {METHOD_DESCRIPTIONS[m].format(clean=CLEAN_TEMPLATE)}" for m in METHODS]
    lines += ["", "## What the Acevedo variants need that DAS does not", "",
              "DAS needs only the class names and a fixed list of generic noise phrases (text, encoded once). "
              "Each Acevedo variant needs, in addition:", ""]
    lines += [f"- `{m}`: {need}." for m, need in NEEDS.items()] + ["", CHOICES]
    excluded = outcome.evaluation.excluded_classes
    if excluded:
        lines += ["", "Classes without a positive clip in the test split are left out of the macro mAP: "
                  + ", ".join(f"{cd.title}: {excluded[cd.name]}" for cd in outcome.condition_list) + "."]
    return lines


def _failure_lines(outcome: Outcome) -> list[str]:
    failed = {d.condition.title: d.store.errors for d in outcome.conditions if d.store.errors}
    if outcome.noise_store.errors:
        failed["noise recordings"] = outcome.noise_store.errors
    if outcome.plan.noise.missing:
        failed["noise recordings listed in meta.csv but missing"] = {u: "missing" for u in outcome.plan.noise.missing}
    lines = ["## Clips and recordings that could not be decoded", ""]
    if not failed:
        return lines + ["None: every clip was decoded in every condition."]
    lines.append("They are left out of every method's metric in that condition.")
    for what, errs in failed.items():
        lines += ["", f"{what}: {len(errs)}", ""]
        lines += [f"- `{k}`: {v}" for k, v in sorted(errs.items())]
    return lines


def render_report(outcome: Outcome) -> str:
    """The text of ``report.md``: setup, results, methods, failures."""
    lines = [f"# das evaluate: {DATASET_TITLES[outcome.plan.dataset.name]}", ""]
    for part in (_setup_lines, _result_lines, _method_lines, _failure_lines):
        lines += part(outcome) + [""]
    return "\n".join(lines[:-1]) + "\n"


# ------------------------------------------------------------ snr_curves.png
def _positions(conds: Sequence[Condition]) -> dict[Condition, float]:
    """x position of each condition: its SNR; clean one step (at least 5 dB) above the highest SNR."""
    noisy = sorted(cd.snr_db for cd in conds if cd.snr_db is not None)
    step = (noisy[-1] - noisy[0]) / max(len(noisy) - 1, 1) if len(noisy) > 1 else 5.0
    clean_at = noisy[-1] + max(step, 5.0) if noisy else 0.0
    return {cd: (cd.snr_db if cd.snr_db is not None else clean_at) for cd in conds}


def render_plot(outcome: Outcome) -> bytes:
    """``snr_curves.png``: each method's test metric against the SNR (clean at the right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ev, position = outcome.evaluation, _positions(outcome.condition_list)
    ordered = sorted(position, key=position.get)
    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=120)
    markers = "os^vD<>"
    for i, m in enumerate(METHODS):
        # distinct line styles keep baselines with equal values visible on top of each other
        style = "-" if m == "das" or m.startswith("zs_") else ("--" if "_zs_" in m else ":")
        ax.plot([position[cd] for cd in ordered], [100 * outcome.value(m, cd) for cd in ordered],
                marker=markers[i % len(markers)], linestyle=style, linewidth=2.6 if m == "das" else 1.5,
                zorder=3 if m == "das" else 2, label=f"DAS (λ = {ev.lam:g})" if m == "das" else m)
    ax.set_xticks([position[cd] for cd in ordered], [cd.title for cd in ordered])
    ax.set_xlabel("SNR of the mixed noise (dB)")
    ax.set_ylabel(f"{'macro mAP' if ev.main_metric == 'mAP' else 'accuracy'} on the test split (%)")
    dataset = outcome.plan.dataset
    title = f"{DATASET_TITLES[dataset.name]}: {ev.main_metric} vs SNR ({len(dataset.clips)} clips"
    ax.set_title(title + (", random weights)" if outcome.random_weights else ")"))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------ console
def summary_text(outcome: Outcome, wall: float) -> str:
    """What ``das evaluate`` prints at the end: counts, λ and the main table."""
    plan, ev, counts, conds = outcome.plan, outcome.evaluation, outcome.counts, outcome.condition_list
    width = max(len(m) for m in METHODS)
    table = [f"    {'':<{width}}  " + "  ".join(f"{cd.title:>8}" for cd in conds)]
    table += [f"    {m:<{width}}  " + "  ".join(f"{percent(outcome.value(m, cd)):>8}" for cd in conds) for m in METHODS]
    errors = sum(len(d.store.errors) for d in outcome.conditions)
    weights = plan.checkpoint_info.get("weights")
    return (f"das evaluate: {plan.dataset.name} done in {wall:.1f} s\n"
            f"  encodings:  {counts['clips']} clips x {counts['conditions']} conditions + "
            f"{counts['noise_recordings']} noise = {counts['encodings']} ({counts['encoded_now']} windows encoded "
            f"by this run)\n"
            f"  lam:        {ev.lam:g} (chosen on the tuning split, {plan.split.describe(plan.dataset, True)})\n"
            f"  {ev.main_metric} on the test split (%):\n" + "\n".join(table) + "\n"
            f"  undecodable: {errors} clip-condition(s), {len(outcome.noise_store.errors)} noise recording(s)\n"
            f"  weights:    {weights}" + ("  (RANDOM: the numbers are meaningless)" if outcome.random_weights else "")
            + f"\n  output:     {plan.config.out} (report.md, results.json, results.csv, per_class.csv, "
              "snr_curves.png)")
