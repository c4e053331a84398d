"""Science benchmark: does the group level learn what is really there? (docs/science.md)

For each cohort (a hard demo cohort: realistic between-participant variability, a subtle offset
or a zero-mean pattern in two nuclei) the participant level runs once; then the group level runs
once per configuration on hard-linked views of those outputs, and once more with permuted labels.
One table row per cohort and configuration: the built-in ROI baseline's scan AUC, ResNet,
ResNetSWA and Q-Net scan AUCs with their bootstrap 95 % CIs, the planted nuclei's ranks in
``desc-attribution_regions.tsv`` and the relevance mass accuracy (share of the positive relevance
of the patients-minus-controls map inside the planted nuclei).

Usage::

    python benchmarks/science.py --root /scratch/science --participants 100 \\
        --cohorts offset-0.006 offset-0.012 gradient-0.03 --configs quantitative paper-quick

Participant-level outputs made elsewhere can be reused with ``--reuse NAME=BIDS_DIR:DERIVATIVES``
(for instance a cohort made with ``bids_qnet-demo``). ``--seeds 42 1 2`` runs the group level
with each ``--random-seed`` (other splits and initialisations of the same cohort);
``--no-attribution`` skips the maps when only the AUCs are wanted. Results go to
``benchmarks/results/science.json`` and are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from _common import RESULTS, machine

#: Cohorts: effect kind, size in ppm, planted nuclei, seed.
COHORTS = {
    "offset-0.006": ("offset", 0.006, ["Left_Caudate", "Right_Putamen"], 301),
    "offset-0.012": ("offset", 0.012, ["Left_Caudate", "Right_Putamen"], 101),
    "gradient-0.03": ("gradient", 0.03, ["Left_Putamen", "Right_Pallidum"], 202),
}

#: Group-level configurations: extra command-line options.
CONFIGS = {
    "quantitative": ["--preset", "quantitative"],
    "paper-quick": [
        "--preset",
        "paper",
        "--epochs",
        "6",
        "--qnet-epochs",
        "30",
        "--image-size",
        "64",
    ],
}

COMMON = ["--folds", "5", "--bootstrap-replicates", "1000", "--ig-steps", "32"]
#: The group level's default --random-seed (rows without a "seed" were run with it).
DEFAULT_SEED = 42
MODELS = ("ROI", "ResNet", "ResNetSWA", "QNet")


def run(command: list[str], log: Path) -> float:
    """Run a command, its output to ``log``; return the seconds it took (raise on failure)."""
    start = time.perf_counter()
    with log.open("w") as handle:
        code = subprocess.call(command, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed ({code}); see {log}")
    return time.perf_counter() - start


def make_cohort(name: str, root: Path, participants: int) -> tuple[Path, Path, list[str]]:
    """Make a cohort's BIDS dataset and run the participant level (skipped when done)."""
    kind, ppm, regions, seed = COHORTS[name]
    folder = root / name
    bids, derivatives = folder / "bids", folder / "derivatives"
    if not (bids / "participants.tsv").is_file():
        command = [str(Path(sys.executable).with_name("bids_qnet-demo")), str(bids)]
        command += ["--participants", str(participants), "--seed", str(seed), "--overwrite"]
        command += ["--variability", "realistic", "--effect-kind", kind]
        command += ["--effect-ppm", str(ppm), "--planted-regions", *regions]
        command += ["--truth-dir", str(folder / "truth")]
        run(command, root / f"{name}.demo.log")
    if not any(derivatives.glob("sub-*/anat/*_embeddings.npy")):
        command = [sys.executable, "-m", "bids_qnet.cli.run", str(bids), str(derivatives)]
        command += ["participant", "--registration-profile", "fast", "--template-resolution"]
        command += ["2", "--embedding-weights", "random", "--nprocs", str(os.cpu_count())]
        command += ["--omp-nthreads", "1", "-w", str(folder / "work")]
        seconds = run(command, root / f"{name}.participant.log")
        print(f"{name}: participant level {seconds:.0f} s", flush=True)
    return bids, derivatives, regions


def linked_view(source: Path, target: Path, skip_group: bool = True) -> Path:
    """Hard-link a folder's files into ``target`` (no group outputs): a private, free copy."""
    if target.exists():
        shutil.rmtree(target)
    group = {"models", "attribution", "figures", "logs", "group.html"}
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if skip_group and (relative.parts[0] in group or relative.name.startswith("desc-")):
            continue
        if "sourcedata" in relative.parts or path.is_dir():
            continue
        (target / relative.parent).mkdir(parents=True, exist_ok=True)
        os.link(path, target / relative)
    return target


def permuted_bids(bids: Path, target: Path, seed: int = 0) -> Path:
    """A view of ``bids`` whose ``participants.tsv`` has the groups shuffled (a new file)."""
    linked_view(bids, target, skip_group=False)
    table = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    groups = list(table["group"])
    random.Random(seed).shuffle(groups)
    table["group"] = groups
    (target / "participants.tsv").unlink()  # never write through the hard link
    table.to_csv(target / "participants.tsv", sep="\t", index=False)
    return target


def read_row(out: Path, planted: list[str]) -> dict:
    """Read a group run's scan AUCs with CIs, the planted nuclei's ranks and relevance mass."""
    row: dict = {}
    ci = pd.read_csv(out / "desc-bootstrap_ci.tsv", sep="\t")
    for model in MODELS:
        hit = ci[(ci["level"] == "scan") & (ci["model"] == model)]
        if len(hit):
            auc, low, high = hit.iloc[0][["auc", "ci_low", "ci_high"]]
            row[model] = {"auc": round(float(auc), 3), "ci": [round(low, 3), round(high, 3)]}
    regions = out / "desc-attribution_regions.tsv"
    if regions.is_file() and planted:
        table = pd.read_csv(regions, sep="\t")
        ranks = table.set_index("region")["rank"]
        row["planted_ranks"] = [int(ranks[r]) if r in ranks else None for r in planted]
        inside = table[table["region"].isin(planted)]["mass_contrast"].sum()
        row["relevance_mass"] = round(float(inside), 3)
    return row


def group(
    bids: Path, derivatives: Path, out: Path, config: str, log: Path, extra: tuple = ()
) -> dict:
    """Run the group level with one configuration on a view of the participant outputs."""
    linked_view(derivatives, out)
    command = [sys.executable, "-m", "bids_qnet.cli.run", str(bids), str(out), "group"]
    command += [*COMMON, *CONFIGS[config], "--embedding-weights", "random", *extra]
    command += ["-w", str(out.parent / f"{out.name}.work")]
    seconds = run(command, log)
    return {"seconds": round(seconds, 1)}


def main() -> None:  # noqa: D103
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="where cohorts and runs go")
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--cohorts", nargs="+", default=list(COHORTS), choices=list(COHORTS))
    parser.add_argument("--configs", nargs="+", default=["quantitative"], choices=list(CONFIGS))
    parser.add_argument("--reuse", nargs="*", default=[], metavar="NAME=BIDS:DERIVATIVES")
    parser.add_argument("--planted", nargs="*", default=[], metavar="NAME=REGION,REGION")
    parser.add_argument("--no-permuted", action="store_true", help="skip the permuted rows")
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[DEFAULT_SEED],
        help="group-level --random-seed values (splits and initialisation), one run each",
    )
    parser.add_argument(
        "--no-attribution", action="store_true", help="--attribution none (AUCs only, faster)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "science.json")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    cohorts = {}
    for spec in args.reuse:
        name, _, paths = spec.partition("=")
        bids, _, derivatives = paths.partition(":")
        cohorts[name] = (Path(bids), Path(derivatives), [])
    for spec in args.planted:
        name, _, regions = spec.partition("=")
        cohorts[name] = (*cohorts[name][:2], regions.split(","))
    for name in args.cohorts if not args.reuse else []:
        cohorts[name] = make_cohort(name, args.root, args.participants)
    results = json.loads(args.output.read_text()) if args.output.is_file() else {"rows": []}
    results["machine"] = machine()
    for name, (bids, derivatives, planted) in cohorts.items():
        for config in args.configs:
            variants = [("", bids)]
            if not args.no_permuted:
                variants.append(("permuted", permuted_bids(bids, args.root / f"{name}.permuted")))
            for (variant, labels_from), seed in itertools.product(variants, args.seeds):
                tag = f"{name}.{config}" + (f".{variant}" if variant else "")
                tag += f".seed{seed}" if seed != DEFAULT_SEED else ""
                out = args.root / "runs" / tag
                log = args.root / "runs" / f"{tag}.log"
                out.parent.mkdir(parents=True, exist_ok=True)
                row = {"cohort": name, "config": config, "labels": variant or "true", "seed": seed}
                extra = ["--random-seed", str(seed)]
                extra += ["--attribution", "none"] if args.no_attribution else []
                row.update(group(labels_from, derivatives, out, config, log, tuple(extra)))
                row.update(read_row(out, [] if variant else planted))
                print(json.dumps(row), flush=True)
                results["rows"] = [r for r in results["rows"] if _key(r) != _key(row)] + [row]
                args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results["rows"]))


def _key(row: dict) -> tuple:
    """What makes a result row: cohort, configuration, labels, group-level seed."""
    return row["cohort"], row["config"], row["labels"], row.get("seed", DEFAULT_SEED)


def markdown(rows: list[dict]) -> str:
    """Return the rows as the Markdown table of docs/science.md."""
    lines = [
        "| cohort | config | labels | seed | ROI | ResNet | ResNetSWA | Q-Net | planted ranks "
        "| mass |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = []
        for model in MODELS:
            m = r.get(model)
            cells.append(f"{m['auc']:.2f} [{m['ci'][0]:.2f}, {m['ci'][1]:.2f}]" if m else "-")
        ranks = ", ".join(str(x) for x in r.get("planted_ranks", [])) or "-"
        lines.append(
            f"| {r['cohort']} | {r['config']} | {r['labels']} | {r.get('seed', DEFAULT_SEED)} "
            f"| {' | '.join(cells)} | {ranks} "
            f"| {r.get('relevance_mass', '-')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
