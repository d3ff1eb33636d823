"""Tables and plots of docs/benchmarks.md from benchmarks/results/*.json.

    python benchmarks/report.py      # prints the Markdown tables; writes docs/img/bench_*.png
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS, IMG = ROOT / "benchmarks" / "results", ROOT / "docs" / "img"


def load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def fmt(v, digits=1) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{digits}f}"


def calibration_error(run: dict) -> float:
    """|log| of the spread of error / uncertainty (0 when calibrated)."""
    z = run.get("localization", {}).get("error_over_uncertainty_std")
    return abs(np.log(z)) if z else np.inf


def accuracy_table(acc: dict, pic: dict | None) -> list[str]:
    rows = ["| density (/um²) | method | JAC % | RMSE nm | E | precision % | recall % | s/frame | peak RAM GB |",
            "|---|---|---|---|---|---|---|---|---|"]
    for d in ("0.5", "3"):
        for key, label in (("phi", "phi alone (`--samples 0`)"), ("pipeline", "diffusion mean (default)")):
            r = acc[d][key]
            e = r["evaluate"]
            rows.append(f"| {d} | {label} | {fmt(e['jaccard'])} | {fmt(e['rmse'])} | **{fmt(e['efficiency'])}** | "
                        f"{fmt(e['precision'])} | {fmt(e['recall'])} | {fmt(r['seconds_per_frame'], 3)} | "
                        f"{fmt(r['peak_rss_gb'], 2)} |")
        for box, p in (pic or {}).get(d, {}).items():
            e = p["evaluate"]
            rows.append(f"| {d} | Picasso gaussmle, {box.replace('box', 'box ')}, ng {p['ng']} | {fmt(e['jaccard'])} | "
                        f"{fmt(e['rmse'])} | {fmt(e['efficiency'])} | {fmt(e['precision'])} | {fmt(e['recall'])} "
                        "| – | – |")
    rows.append(f"\nCRLB for these settings: {acc['crlb_nm']:.2f} nm per axis "
                f"({acc['crlb_nm'] * np.sqrt(2):.2f} nm lateral, the quantity RMSE measures).")
    return rows


def uncertainty_table(acc: dict) -> list[str]:
    rows = ["| density | Spearman(std, \\|err\\|) | AUSE | coverage ±2 std | std(err/σ) raw | std(err/σ) calibrated | "
            "median σ nm | FP removed, 10% most uncertain | FP removed, 10% least detected |",
            "|---|---|---|---|---|---|---|---|---|"]
    for d in ("0.5", "3"):
        r = acc[d]["pipeline"]
        px, lo = r["pixels"], r["localization"]
        z, raw = lo.get("error_over_uncertainty_std"), lo.get("error_over_raw_uncertainty_std")
        rows.append(f"| {d} | {fmt(px['spearman'], 2)} | {fmt(px['ause'], 3)} | {fmt(100 * px['coverage_2std'])} % | "
                    f"{fmt(raw, 2)} | **{fmt(z, 2)}** | {fmt(lo.get('median_uncertainty_nm'))} | "
                    f"{fmt(lo.get('fp_removed_by_uncertainty_10pct'))} % (of {lo['fp']}) | "
                    f"{fmt(lo.get('fp_removed_by_detection_10pct'))} % |")
    return rows


def plots(acc: dict) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for d, ax in zip(("0.5", "3"), axes):
        sp = acc[d]["pipeline"]["sparsification"]
        ax.plot(sp["fraction"], sp["model"], label="remove highest std")
        ax.plot(sp["fraction"], sp["oracle"], "--", label="oracle (remove highest error)")
        ax.set(title=f"sparsification, {d} emitters/um²", xlabel="fraction of pixels removed",
               ylabel="mean |error| (relative)")
        ax.legend()
    fig.savefig(IMG / "bench_sparsification.png", dpi=80)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for d, ax in zip(("0.5", "3"), axes):
        c = acc[d]["pipeline"]["curves"]
        for key, label in (("precision_by_uncertainty", "drop most uncertain"),
                           ("precision_by_detection", "drop least detected")):
            if key in c:
                ax.plot(100 * np.array(c["dropped"]), c[key], marker="o", ms=3, label=label)
        ax.set(title=f"filtering, {d} emitters/um²", xlabel="localizations dropped (%)", ylabel="precision of kept (%)")
        ax.legend()
    fig.savefig(IMG / "bench_filtering.png", dpi=80)
    plt.close(fig)


def schedule_table(study: dict) -> tuple[list[str], dict]:
    rows = ["| variant | options | frames | E (0.5) | E (3) | std(err/σ) (0.5) | std(err/σ) (3) | s/frame | frames/s "
            "| peak RAM GB |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    runs = {r["name"]: {d: next(x for x in study[d] if x["name"] == r["name"]) for d in ("0.5", "3")}
            for r in study["0.5"]}
    for name, by_d in runs.items():
        e = [by_d[d]["evaluate"]["efficiency"] for d in ("0.5", "3")]
        z = [by_d[d]["localization"].get("error_over_uncertainty_std") for d in ("0.5", "3")]
        t = np.mean([by_d[d]["seconds_per_frame"] for d in ("0.5", "3")])
        m = max(by_d[d]["peak_rss_gb"] for d in ("0.5", "3"))
        frames = by_d["0.5"].get("frames", study["frames"])
        options = " ".join(by_d["0.5"]["options"]) or "(defaults)"
        rows.append(f"| {name} | `{options}` | {frames} | {fmt(e[0])} | {fmt(e[1])} | "
                    f"{fmt(z[0], 2)} | {fmt(z[1], 2)} | {fmt(t, 2)} | {fmt(1 / t)} | {fmt(m, 2)} |")
    return rows, {n: r for n, r in runs.items() if "frames" not in r["0.5"]}


def choose_default(runs: dict) -> str:
    """The cheapest variant within 1 point of the best mean E and 5% of the best calibration (variants
    run on the full study movies; phi alone, without samples, is not a candidate)."""
    cands = {n: r for n, r in runs.items() if not n.startswith("phi")}
    e = {n: np.mean([r[d]["evaluate"]["efficiency"] for d in r]) for n, r in cands.items()}
    c = {n: np.mean([calibration_error(r[d]) for d in r]) for n, r in cands.items()}
    ok = [n for n in cands if e[n] >= max(e.values()) - 1 and c[n] <= min(c.values()) + 0.05]
    return min(ok, key=lambda n: np.mean([cands[n][d]["seconds_per_frame"] for d in cands[n]])) if ok else "none"


def main() -> None:
    acc, pic, study, ft = load("accuracy"), load("picasso"), load("schedule"), load("finetune")
    if acc:
        print("\n".join(accuracy_table(acc, pic)), "\n")
        print("\n".join(uncertainty_table(acc)), "\n")
        plots(acc)
    if study:
        rows, runs = schedule_table(study)
        print("\n".join(rows), "\n")
        print("chosen by the rule:", choose_default(runs))
    if ft:
        print(json.dumps(ft, indent=1))


if __name__ == "__main__":
    main()
