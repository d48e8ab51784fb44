"""Memorization checks against measured memorization: small DDPMs trained on a planted MNIST set.

    nice -n 15 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_memorization.py [--out DIR] [--quick]

1. Plant, from real MNIST (``../shared/data/mnist``; models/demo/planted.py), ``--replicas`` groups of each kind:
   exact copies (x5, x10, x20, x50), near copies (x20), a word trigger (x25); unique digits and a held-out set.
2. Train (or load from DIR, keyed by config + data) a text-conditional and an unconditional pixel-space DDPM
   (models/score/training).
3. Ground truth, measured: generate per prompt (CFG) or unconditionally, and call an item memorized when at
   least one generation meets Carlini et al.'s criterion (arXiv:2301.13188; models/score/memorized.py).
4. Conditional, per prompt: Wen (arXiv:2407.21720, Sec. 3.1: the text-conditional noise magnitude, averaged over
   the first k DDIM steps, k swept), Jeon (arXiv:2412.04140, Sec. 4) and p-Laplace (arXiv:2505.08246: the flux
   at exponent p in {1, 2}, swept over t, the mean or max over the item's points) at generated samples and at
   the training images. Unconditional, per group: p-Laplace at the group's training images (same sweep), SIDE
   (arXiv:2410.02467) AMS / UMS per band at lambda in {0, 1, 2, 5} at equal N_G with paired bootstrap intervals.
5. Choosing from a sweep: items are split in two halves (seeded, stratified by the ground truth); each family's
   setting is chosen on the "select" half and reported on the "report" half, beside the whole-set table.
6. Cost per prompt / group in model evaluations (load-independent) and seconds (with the load average).

Writes DIR/results.json and prints the tables.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

T_SWEEP = (10, 50, 100, 200, 400)
P_SWEEP = (1.0, 2.0)
AGGREGATES = {"mean": np.mean, "max": np.max}
WEN_K = (1, 3, 5, 10, 15, 20, 25)
WEN_WINDOWS = ((5, 15), (10, 20), (10, 25), (15, 25), (20, 25))
"""Wen's magnitude over steps [a, b) of the 25 (1-based a + 1 .. b): later in sampling a caption that names the
digit has settled the class, a memorized one still pulls to one image (the hypothesis the windows test)."""


def auc_tpr(pos, neg) -> dict:
    from models.score.plaplace import roc_auc, tpr_at_fpr

    if len(pos) == 0 or len(neg) == 0:
        return {"auc": None, "tpr@1%fpr": None, "n_pos": len(pos), "n_neg": len(neg)}
    return {"auc": round(roc_auc(np.asarray(pos), np.asarray(neg)), 4),
            "tpr@1%fpr": round(tpr_at_fpr(np.asarray(pos), np.asarray(neg), 0.01), 4),
            "n_pos": len(pos), "n_neg": len(neg)}


def planted_data(out: str, resolution: int, n_unique: int, replicas: int, caption_style: str):
    from models.demo.mnist import load_mnist
    from models.demo.planted import PlantedSpec, build_planted_set, groups_of, read_truth
    from models.score.training.data import images_from_shards
    from pipelines.common import shared_data_file

    mnist = shared_data_file("mnist")
    if mnist is None:
        raise SystemExit("needs ../shared/data/mnist (or $DUPMINE_SHARED_DATA/mnist)")
    spec = PlantedSpec(exact_copies=(5, 10, 20, 50), near_copies=20, trigger_copies=25, n_unique=n_unique,
                       n_heldout=max(40, n_unique // 4), replicas=replicas, caption_style=caption_style)
    ps = build_planted_set(load_mnist(mnist), os.path.join(out, f"planted-{replicas}-{caption_style}"), spec)
    data = images_from_shards(ps.train, resolution, 1)
    truth = read_truth(ps.truth)
    group_ids, names = groups_of(truth, data.keys)
    return ps, data, truth, group_ids, names


def train_models(data, out: str, resolution: int, steps: int, which=(True, False)):
    from models.score.training.config import TrainConfig
    from models.score.training.trainer import train

    models = {}
    for conditional in which:
        # clip_sample off: measured on this set's 16 px model (same weights, x50 prompt, 16 generations): with
        # DDIM's x0 clip 9 memorized at CFG 1 and 0 at CFG 3 or 7.5; without it 11, 11 and 9 (unique prompts 0).
        cfg = TrainConfig(resolution=resolution, channels=1, conditional=conditional, steps=steps, batch_size=32,
                          block_out_channels=(16, 32), clip_sample=False, seed=0)
        m = train(data, cfg, os.path.join(out, "cond" if conditional else "uncond"))
        print(f"model {'cond' if conditional else 'uncond'}: {m.spec} steps {m.steps} "
              f"{'cached' if m.cached else f'{m.seconds:.0f} s'} loss {m.final_loss:.4f} "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        models[conditional] = m
    return models


def timed(fn):
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def plaplace_sweep(row: dict, name: str, target, cond, key: str, x0: np.ndarray, cfg, base_evals: int = 0,
                   base_sec: float = 0.0) -> None:
    """p-Laplace at points x0 (B, d) over T_SWEEP x P_SWEEP, aggregated by the mean and the max over the B points.

    One set of evaluations per t serves every p (:func:`models.score.plaplace.noise_flux_statistics`); the
    directions come from the stage's own stream (``item_rng(cfg, key, check + ":directions")``).
    """
    from models.score.checks import item_rng
    from models.score.plaplace import noise_flux_statistics

    for t in T_SWEEP:
        rng = item_rng(cfg, key, name + ":directions")
        per_p, sec = timed(lambda: noise_flux_statistics(target, x0, int(t), cfg.n_dirs, rng, cond=cond, ps=P_SWEEP))
        for p, (mean, _) in per_p.items():
            for agg, fn in AGGREGATES.items():
                c = f"{name}:p{p:g}:{agg}@t{t}"
                row["stats"][c] = float(fn(mean))
                row["cost"][c] = (base_evals + len(x0) * cfg.n_dirs, base_sec + sec)


def conditional_bench(target, data, truth, cfg, n_gt: int, n_unique_prompts: int, group_ids, seed: int) -> dict:
    """Per prompt: ground truth by generation, then every check; AUC tables."""
    import torch

    from models.score.checks import item_rng, jeon_check, plaplace_samples
    from models.score.memorized import match_generations
    from models.score.wen import wen_metric

    rng = np.random.default_rng(seed)
    train_rows = {r["key"]: r for r in truth if r["split"] == "train"}
    by_group: dict = {}
    for j, k in enumerate(data.keys):
        by_group.setdefault(train_rows[k]["group"], []).append(j)
    prompts = []  # (prompt, kind, training rows)
    for name, rows in by_group.items():
        if name != "unique":
            prompts.append((data.captions[rows[0]], name, rows[:8]))
    unique = by_group["unique"]
    for j in rng.permutation(len(unique))[:n_unique_prompts]:
        prompts.append((data.captions[unique[j]], "unique", [unique[j]]))
    held = [r for r in truth if r["split"] == "heldout"]
    prompts += [(r["caption"], "heldout", []) for r in held[: max(1, n_unique_prompts // 2)]]
    rows = []
    for i, (prompt, kind, trows) in enumerate(prompts):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        res, gt_sec = timed(lambda: target.generate([prompt], n_per_prompt=n_gt, steps=cfg.steps,
                                                    guidance_scale=cfg.guidance_scale, generator=gen))
        m = match_generations(res.images[..., :1], data.images, group_ids)
        row = {"prompt": prompt, "kind": kind, "n_memorized": int(m.memorized.sum()), "stats": {}, "cost": {},
               "ground_truth_cost": (n_gt * cfg.steps * 2, gt_sec)}
        wen, sec = timed(lambda: wen_metric(target, [prompt], None, n=cfg.wen_n, steps_used=max(WEN_K),
                                            rng=item_rng(cfg, prompt, "wen"), num_inference_steps=cfg.steps,
                                            guidance_scale=cfg.guidance_scale))
        for k in WEN_K:  # Wen Sec. 3.1: the magnitude averaged over the first k steps (k = 1 is the stage default)
            row["stats"][f"wen@k{k}"] = float(wen.per_step[0, :, :k].mean())
            row["cost"][f"wen@k{k}"] = (2 * cfg.wen_n * k, sec * k / max(WEN_K))
        for a, b in WEN_WINDOWS:  # the same magnitude over a later window only (steps before a are sampled too)
            row["stats"][f"wen@w{a}-{b}"] = float(wen.per_step[0, :, a:b].mean())
            row["cost"][f"wen@w{a}-{b}"] = (2 * cfg.wen_n * b, sec * b / max(WEN_K))
        r, sec = timed(lambda: jeon_check(target, prompt, None, prompt, cfg))
        row["stats"]["jeon"], row["cost"]["jeon"] = r.statistic, (r.cost_evals, sec)
        (x0, evals), sec = timed(lambda: plaplace_samples(target, prompt, prompt, cfg))
        plaplace_sweep(row, "plaplace", target, prompt, prompt, x0, cfg, evals, sec)
        if trows:
            xt = np.asarray(target.encode_images(data.images[trows]), np.float64)
            plaplace_sweep(row, "plaplace-train", target, prompt, prompt, xt, cfg)
        rows.append(row)
        print(f"  cond {i + 1}/{len(prompts)} {kind:12s} memorized {row['n_memorized']}/{n_gt} "
              f"wen@k1 {row['stats']['wen@k1']:.3f} jeon {row['stats']['jeon']:.3g} "
              f"pl-gen p1 t{T_SWEEP[0]} {row['stats'][f'plaplace:p1:mean@t{T_SWEEP[0]}']:.3f}", flush=True)
    return {"rows": rows, **tables(rows, seed)}


def split_halves(rows: list, seed: int) -> np.ndarray:
    """(len(rows),) bool, True = the "select" half: a seeded split stratified by the ground truth."""
    rng = np.random.default_rng([seed, 7])
    sel = np.zeros(len(rows), bool)
    for label in (True, False):
        idx = np.flatnonzero(np.array([(r["n_memorized"] > 0) == label for r in rows], bool))
        sel[rng.permutation(idx)[: (len(idx) + 1) // 2]] = True
    return sel


def auc_table(rows: list) -> dict:
    checks = sorted({c for r in rows for c in r["stats"]})
    table = {}
    for c in checks:
        pos = [r["stats"][c] for r in rows if c in r["stats"] and r["n_memorized"] > 0]
        neg = [r["stats"][c] for r in rows if c in r["stats"] and r["n_memorized"] == 0]
        ev = [r["cost"][c][0] for r in rows if c in r["cost"]]
        sec = [r["cost"][c][1] for r in rows if c in r["cost"]]
        table[c] = auc_tpr(pos, neg) | {"evals_per_item": round(float(np.mean(ev)), 1),
                                        "seconds_per_item": round(float(np.mean(sec)), 4)}
    return table


def family(check: str) -> str:
    """The sweep a check name belongs to: ``wen``, ``plaplace``, ``plaplace-train``, ``side``, ``jeon``."""
    return check.split("@")[0].split(":")[0]


def tables(rows: list, seed: int) -> dict:
    """Whole-set table, the two halves' tables, and per family the setting chosen on "select" scored on "report".

    Chosen = highest AUC on the select half, ties broken by TPR@1%FPR, then by the sweep's order.
    """
    sel = split_halves(rows, seed)
    select = auc_table([r for r, s in zip(rows, sel) if s])
    report = auc_table([r for r, s in zip(rows, sel) if not s])
    chosen = {}
    for fam in sorted({family(c) for c in select}):
        cands = [c for c in select if family(c) == fam and select[c]["auc"] is not None]
        if cands:
            best = max(cands, key=lambda c: (select[c]["auc"], select[c]["tpr@1%fpr"]))
            chosen[fam] = {"check": best, "select": select[best], "report": report.get(best)}
    return {"table": auc_table(rows), "select": select, "report": report, "chosen": chosen,
            "by_kind": by_kind(rows)}


def by_kind(rows: list) -> dict:
    """Per planted kind (exact:x50, near:x20, word, unique, heldout): items, memorized share, median of each
    check's statistic (replica tags dropped), to read *why* a check does or does not separate."""
    kinds: dict = {}
    for r in rows:
        kinds.setdefault(r["kind"].split("#")[0] if not r["kind"].startswith("word:") else "word", []).append(r)
    checks = sorted({c for r in rows for c in r["stats"] if ":" not in c or ":p1:" in c})
    return {k: {"items": len(v), "memorized": sum(r["n_memorized"] > 0 for r in v),
                **{c: round(float(np.median([r["stats"][c] for r in v if c in r["stats"]])), 5)
                   for c in checks if any(c in r["stats"] for r in v)}} for k, v in kinds.items()}


def joint_choice(parts: list) -> dict:
    """One p-Laplace setting (p, aggregate, t) for every place it runs: the highest mean select-half AUC over the
    p-Laplace families of ``parts`` (generated samples, training images, unconditional groups), with its report-half
    AUCs. This is how ScoreConfig's defaults are chosen."""
    scores: dict = {}
    for part in parts:
        for c, v in part["select"].items():
            if family(c).startswith("plaplace") and v["auc"] is not None:
                setting = c.split(":", 1)[1]
                scores.setdefault(setting, []).append(v["auc"])
    n = max(len(v) for v in scores.values())
    best = max((k for k, v in scores.items() if len(v) == n), key=lambda k: np.mean(scores[k]))
    return {"setting": best, "select_mean_auc": round(float(np.mean(scores[best])), 4),
            "report": {f"{i}:{c}": part["report"].get(c) for i, part in enumerate(parts)
                       for c in part["report"] if c.endswith(":" + best)}}


def unconditional_bench(target, data, truth, group_ids, cfg, n_gt: int, n_unique_items: int, side_ng: int,
                        lambdas, n_boot: int, seed: int, side_k: int = 20) -> dict:
    """Per group: ground truth from unconditional generations; p-Laplace at the group's images; SIDE."""
    import torch

    from models.score.bands import pixel_l2_bands
    from models.score.extraction_metrics import ams_ums_full, normalized_l2_distance
    from models.score.memorized import match_generations
    from models.score.side import SideConfig, build_side_stage, run_side

    rng = np.random.default_rng(seed)
    res = target.generate(n_gt, steps=cfg.steps, generator=torch.Generator().manual_seed(seed))
    m = match_generations(res.images[..., :1], data.images, group_ids)
    hits = np.bincount(m.group[m.memorized], minlength=int(group_ids.max()) + 1)
    train_rows = {r["key"]: r for r in truth if r["split"] == "train"}
    items: dict = {}
    for j, k in enumerate(data.keys):
        items.setdefault(int(group_ids[j]), {"kind": train_rows[k]["group"], "rows": []})["rows"].append(j)
    planted = [g for g, it in items.items() if it["kind"] != "unique"]
    uniq = [g for g, it in items.items() if it["kind"] == "unique"]
    chosen = planted + [uniq[i] for i in rng.permutation(len(uniq))[:n_unique_items]]
    x_train = np.asarray(target.encode_images(data.images), np.float64)
    rows = []
    for g in chosen:
        it = items[g]
        row = {"group": g, "kind": it["kind"], "size": len(it["rows"]), "n_memorized": int(hits[g]), "stats": {},
               "cost": {}}
        plaplace_sweep(row, "plaplace-train", target, None, f"g{g}", x_train[it["rows"][:8]], cfg)
        rows.append(row)
    bands = pixel_l2_bands()
    side_cfg = SideConfig(n_syn=side_ng, k=side_k, tau=0.5, n_g=side_ng, steps=cfg.steps, hidden=(128, 128),
                          time_dim=32, train_steps=600, batch_size=64, lr=1e-3, bands=bands, seed=seed)
    stage, sec_stage = timed(lambda: build_side_stage(target, side_cfg))
    side = {"K_prime": stage.condition.k_kept, "N_G": side_ng, "part1_seconds": round(sec_stage, 1),
            "part1_evals": stage.eps_evals, "by_lambda": {}}
    top = next(b for b in bands.bands if b.name == "high")
    n_src = int(group_ids.max()) + 1
    onehot = np.zeros((len(group_ids), n_src), bool)
    onehot[np.arange(len(group_ids)), group_ids] = True
    draws = [rng.integers(0, side_ng, side_ng) for _ in range(n_boot)]  # shared by every lambda: paired
    covered: dict = {}
    for lam in lambdas:
        c = dataclasses.replace(side_cfg, lambda_=float(lam))
        result, sec = timed(lambda: run_side(target, None, x_train, c, stage=stage))
        d = normalized_l2_distance(result.generations, x_train)
        full = ams_ums_full(result.generations, x_train, bands, n_g=side_ng)
        entry = {"seconds": round(sec, 1), "extraction_evals": result.cost.eps_evals_extraction,
                 "classifier_grad_evals": result.cost.classifier_grad_evals}
        for b in bands.bands:
            src = (b.contains(d).astype(np.int32) @ onehot.astype(np.int32)) > 0  # (N_G, sources) in band
            covered[(lam, b.name)] = boot = np.array([src[i].any(0).sum() / side_ng for i in draws])
            entry[b.name] = {"ams": round(full[b.name]["ams"], 4), "ums_rows": round(full[b.name]["ums"], 4),
                             "ums": round(float(src.any(0).sum()) / side_ng, 4),
                             "ums_95ci": [round(float(np.quantile(boot, q)), 4) for q in (0.025, 0.975)]}
            # top-1 flavour: each generation counts only its nearest training image's group (ums <= full ums)
            top1 = np.where(b.contains(result.match_value), group_ids[result.match_idx], -1)
            covered[(lam, b.name, "top1")] = boot1 = np.array([np.unique(top1[i][top1[i] >= 0]).size / side_ng
                                                                for i in draws])
            entry[b.name] |= {"ums_top1": round(np.unique(top1[top1 >= 0]).size / side_ng, 4),
                              "ums_top1_95ci": [round(float(np.quantile(boot1, q)), 4) for q in (0.025, 0.975)]}
            if lam != lambdas[0]:
                for key, flavour in (((lam, b.name), "ums"), ((lam, b.name, "top1"), "ums_top1")):
                    diff = covered[key] - covered[(lambdas[0],) + key[1:]]
                    entry[b.name][f"{flavour}_minus_baseline_95ci"] = [round(float(np.quantile(diff, q)), 4)
                                                                       for q in (0.025, 0.975)]
        hit_rows = result.match_idx[top.contains(result.match_value)]
        per_group = np.bincount(group_ids[hit_rows], minlength=n_src)
        for row in rows:
            row["stats"][f"side@lambda{lam:g}"] = per_group[row["group"]] / side_ng
            row["cost"][f"side@lambda{lam:g}"] = ((result.cost.eps_evals_extraction + result.cost.classifier_grad_evals
                                                   + stage.eps_evals) / len(rows), (sec + sec_stage) / len(rows))
        side["by_lambda"][f"{lam:g}"] = entry
        print(f"  SIDE lambda {lam:g}: " + ", ".join(f"{b.name} AMS {entry[b.name]['ams']:.3f} UMS {entry[b.name]['ums']:.3f} "
                                                     f"{entry[b.name]['ums_95ci']}" for b in bands.bands), flush=True)
    return {"rows": rows, **tables(rows, seed), "side": side,
            "ground_truth": {"generations": n_gt, "memorized_generations": int(m.memorized.sum())}}


def print_table(title: str, table: dict, only=None) -> None:
    print(f"\n{title}")
    print(f"{'check':30s} {'AUC':>7s} {'TPR@1%':>7s} {'pos':>4s} {'neg':>4s} {'evals/item':>11s} {'s/item':>8s}")
    for c, v in table.items():
        if only is not None and not only(c):
            continue
        auc = "-" if v["auc"] is None else f"{v['auc']:.3f}"
        tpr = "-" if v["tpr@1%fpr"] is None else f"{v['tpr@1%fpr']:.3f}"
        print(f"{c:30s} {auc:>7s} {tpr:>7s} {v['n_pos']:>4d} {v['n_neg']:>4d} {v['evals_per_item']:>11.0f} "
              f"{v['seconds_per_item']:>8.3f}")


def print_sweep(title: str, part: dict, name: str) -> None:
    """AUC of the p-Laplace sweep, t down, (p, aggregate) across: whole set, select half / report half."""
    print(f"\n{title}: AUC all (select / report)")
    cols = [(p, a) for p in P_SWEEP for a in AGGREGATES]
    print(f"{'t':>5s} " + " ".join(f"{f'p{p:g} {a}':>22s}" for p, a in cols))
    for t in T_SWEEP:
        cells = []
        for p, a in cols:
            c = f"{name}:p{p:g}:{a}@t{t}"
            vals = [part[k].get(c, {}).get("auc") for k in ("table", "select", "report")]
            cells.append(" ".join("-" if v is None else f"{v:.3f}" for v in vals))
        print(f"{t:>5d} " + " ".join(f"{c:>22s}" for c in cells))


def print_chosen(title: str, part: dict) -> None:
    print(f"\n{title}: chosen on the select half -> scored on the report half")
    for fam, c in part["chosen"].items():
        rep = c["report"] or {}
        print(f"  {fam:15s} {c['check']:30s} select AUC {c['select']['auc']} TPR {c['select']['tpr@1%fpr']} -> "
              f"report AUC {rep.get('auc')} TPR {rep.get('tpr@1%fpr')} (pos {rep.get('n_pos')}, neg {rep.get('n_neg')})")


def main(argv=None) -> dict:
    import torch

    from models.score.checks import ScoreConfig
    from models.score.targets.loading import load_target

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "dupmine-bench-memorization"))
    ap.add_argument("--resolution", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=2000)
    ap.add_argument("--n-unique", type=int, default=300, help="unique training digits")
    ap.add_argument("--replicas", type=int, default=3, help="planted groups of each kind (positives per kind)")
    ap.add_argument("--caption-style", default="labelled", help="unique/held-out captions: labelled | unlabelled")
    ap.add_argument("--n-gt", type=int, default=16, help="generations per prompt for the ground truth")
    ap.add_argument("--prompts", type=int, default=60, help="unique prompts scored (plus half as many held-out)")
    ap.add_argument("--side-n-g", type=int, default=512)
    ap.add_argument("--side-k", type=int, default=20, help="SIDE's k-means clusters K of the N_G synthetic samples")
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--guidance", type=float, default=3.0, help="CFG scale of generations (ground truth and checks)")
    ap.add_argument("--only", choices=("cond", "uncond"), help="run one model's part only")
    ap.add_argument("--quick", action="store_true", help="8x8, fewer steps and items (a smoke run)")
    args = ap.parse_args(argv)
    if args.quick:
        args.resolution, args.train_steps, args.n_unique, args.prompts, args.side_n_g, args.n_gt = 8, 600, 60, 10, 128, 8
        args.replicas = min(args.replicas, 2)
    torch.set_num_threads(1)
    started = time.monotonic()
    ps, data, truth, group_ids, names = planted_data(args.out, args.resolution, args.n_unique, args.replicas,
                                                     args.caption_style)
    print(f"planted: {len(data.keys)} training images at {args.resolution}px, groups {ps.groups}", flush=True)
    which = {"cond": (True,), "uncond": (False,)}.get(args.only, (True, False))
    models = train_models(data, os.path.join(args.out, f"{args.replicas}-{args.caption_style}"), args.resolution,
                          args.train_steps, which)
    cfg = ScoreConfig(n_samples=8, steps=25, n_dirs=32, wen_n=4, jeon_n=4, guidance_scale=args.guidance)
    results = {"config": vars(args) | {"score": dataclasses.asdict(cfg)}, "planted": ps.groups,
               "train_seconds": {("cond" if c else "uncond"): m.seconds for c, m in models.items()}}
    if True in models:
        results["conditional"] = cond = conditional_bench(load_target(models[True].spec, device="cpu"), data, truth,
                                                          cfg, args.n_gt, args.prompts, group_ids, seed=0)
        print_table("conditional model, per prompt (memorized = >= 1 generation meets the Carlini criterion)",
                    cond["table"], only=lambda c: ":" not in c or (":p1:mean" in c))
        print_sweep("conditional, p-Laplace at generated samples", cond, "plaplace")
        print_sweep("conditional, p-Laplace at the training images", cond, "plaplace-train")
        print_chosen("conditional", cond)
    if False in models:
        results["unconditional"] = uncond = unconditional_bench(
            load_target(models[False].spec, device="cpu"), data, truth, group_ids, cfg, max(256, 32 * args.n_gt),
            args.prompts, args.side_n_g, (0, 1, 2, 5), args.boot, seed=0, side_k=args.side_k)
        print_table("unconditional model, per group", uncond["table"], only=lambda c: ":" not in c or ":p1:mean" in c)
        print_sweep("unconditional, p-Laplace at the group's training images", uncond, "plaplace-train")
        print_chosen("unconditional", uncond)
        print(f"\nSIDE (N_G {args.side_n_g}, K' {uncond['side']['K_prime']}): "
              + json.dumps(uncond["side"]["by_lambda"], indent=1))
    parts = [results[k] for k in ("conditional", "unconditional") if k in results]
    results["plaplace_joint_choice"] = joint = joint_choice(parts)
    print(f"\np-Laplace setting chosen jointly on the select half: {json.dumps(joint, indent=1)}")
    for name, part in (("conditional", results.get("conditional")), ("unconditional", results.get("unconditional"))):
        if part:
            print(f"\n{name}, median statistic per kind: {json.dumps(part['by_kind'], indent=1)}")
    results |= {"seconds": round(time.monotonic() - started, 1), "loadavg": os.getloadavg()}
    print(f"total {results['seconds']} s, load average {os.getloadavg()}")
    with open(os.path.join(args.out, f"results-{args.replicas}-{args.caption_style}-{args.only or 'all'}.json"),
              "w") as f:
        json.dump(results, f, indent=1, default=float)
    return results


if __name__ == "__main__":
    main()
