"""campp evaluate: the paper's faithfulness metrics and RISE's deletion/insertion over many images.

Runs on the same stages and engines as ``classify`` (:mod:`campp_cli.run.stages`),
with a command that scores each batch instead of drawing it.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from ..cam.methods import title
from ..draw import geometry, panels
from ..draw.figures import render
from ..models.devices import default_eval_batch, versions
from ..run.options import Options, Result
from ..run.stages import Command, ExplainedRow, result_of
from ..settings import DEFAULT_ALPHA
from . import boxes as boxes_
from .classify import with_card

if TYPE_CHECKING:  # the command is unpickled where rows are written: torch is imported where the model runs
    import torch

    from ..cam.explain import Explanation
    from ..models.loading import Classifier

DEFAULT_STEPS = 16
ROAD_NOISE_WORDS = "Gaussian, standard deviation 0.01 in the model's normalised input units, on the imputed pixels"


class EvaluateCommand(Command):
    """Scores every method's map of every image; writes nothing (but a --report's images: ``cards``)."""

    def __init__(self, steps: int = DEFAULT_STEPS, eval_batch: int | None = None,
                 boxes: dict | None = None, deltas=boxes_.DEFAULT_DELTAS, input_size: int = 224,
                 resize: str = "crop", cards: bool = False, caption: str = "",
                 alpha: float = DEFAULT_ALPHA, road=None, sanity: bool = False, score: str = "logit",
                 activation: str = "softmax"):
        self.cards = self.draws = cards  # the report's figures are the only ones evaluate draws
        self.caption = caption
        self.alpha = alpha
        self.steps = steps
        self.eval_batch = eval_batch  # None: default_eval_batch(device)
        self.boxes = boxes  # {file stem: boxes.Annotation} from --boxes, or None
        self.deltas = tuple(deltas)
        self.input_size = input_size
        self.resize = resize  # how the model's square is framed, for the boxes
        self.road = road  # metrics.RoadSettings, or None: no ROAD
        self.sanity = sanity  # also the model-randomisation sanity check (commands.sanity)
        self.score = score  # what the gradient methods differentiate, in the sanity check's passes too
        self.activation = activation  # "sigmoid": a multi-label model's probabilities, in every metric

    def additions(self, clf: Classifier, rgb01: torch.Tensor, expl: Explanation, ranked=None) -> list:
        """Each image's scores of every method (``ranked``, under ``-l topK``: of each class explained, in rank
        order: ``"ranked"``) and its sanity check."""
        from . import metrics

        per_rank = []
        for e in ranked or [expl]:
            y = e.probs[np.arange(len(e.classes)), e.classes]  # from the explaining pass
            per_rank.append(metrics.score_all(clf.module, clf.preprocessing, rgb01, e.maps, e.classes, self.steps,
                                              y, self.eval_batch or default_eval_batch(rgb01.device),
                                              road=self.road, activation=self.activation))
        checked = self.sanity_check(clf, rgb01, expl) if self.sanity else [None] * len(expl.classes)
        return [{"scores": {m: s[i] for m, s in per_rank[0].items()}, "sanity": checked[i],
                 "ranked": [{m: s[i] for m, s in scored.items()} for scored in per_rank] if ranked else None}
                for i in range(len(expl.classes))]

    def sanity_check(self, clf: Classifier, rgb01: torch.Tensor, expl: Explanation) -> list[dict]:
        """Each image's similarities of its maps to the intact model's, step by step (commands.sanity)."""
        from ..cam.guided import guided_backprop
        from . import sanity

        guided = guided_backprop(clf.module, rgb01, expl.classes, clf.preprocessing, score=self.score,
                                 activation=self.activation)
        intact = sanity.flat_maps(expl.maps, guided, rgb01.shape[-1])
        return sanity.check(clf, rgb01, intact, expl.classes, list(expl.maps), expl.settings or {},
                            score=self.score, activation=self.activation)

    def finish(self, row: ExplainedRow, categories: list[str]) -> Result:
        result = result_of(row, categories, [])
        result.extra["scores"] = row.added["scores"]
        if row.added["sanity"] is not None:
            result.extra["sanity"] = row.added["sanity"]
        if self.road is not None:
            result.extra["road_fractions"] = self.road.fractions
        if self.boxes is not None:
            result.extra["boxes"] = self.localise(row, categories, row.class_index, row.maps)
        ranked = row.added.get("ranked")
        if ranked:  # -l topK: each class explained, scored on its own (the first is also scores and boxes)
            result.targets = [(c, categories[c], float(row.probs[c])) for c, _ in row.targets]
            result.extra["ranked"] = [
                {"scores": scores, **({"boxes": self.localise(row, categories, c, maps)} if self.boxes else {})}
                for (c, maps), scores in zip(row.targets, ranked)]
        if self.cards:
            figures = render(row, categories, caption=self.caption, alpha=self.alpha, ranked=bool(ranked))
            result = with_card(result, row, figures, True, bool(ranked))
        return result

    def localise(self, row: ExplainedRow, categories: list[str], class_index: int, maps: dict) -> dict:
        """{"status": ...} and, for an image with a box of ``class_index``, each method's scores of ``maps``."""
        annotation = self.boxes.get(Path(str(row.job.source)).stem)
        if annotation is None:
            return {"status": "no annotation"}
        if annotation.problem is not None:
            return {"status": "bad annotation"}
        mine = [b for b in annotation.boxes if boxes_.class_of(b.name, categories) == class_index]
        if not mine:
            return {"status": "no box of the class"}
        width, height = boxes_.image_size(row.job.source)
        size = self.input_size
        framed = [f for f in (boxes_.to_input_frame(b, width, height, size, self.resize)
                                   for b in mine) if f is not None]
        if not framed:
            return {"status": "boxes outside the crop"}
        return {"status": "boxed", "scores": {m: boxes_.score(geometry.upsample(cam, size), framed, self.deltas)
                                               for m, cam in maps.items()}}


def explained(results: list[Result]) -> list[tuple[Result, int | None, dict, dict]]:
    """Every explained class of the scored images: ``(result, rank, scores, boxes)``; under ``-l topK`` each
    image's classes in rank order (rank 1, 2...), else its one class (rank None)."""
    out = []
    for r in results:
        if "ranked" in r.extra:
            out += [(r, k, u["scores"], u.get("boxes", {})) for k, u in enumerate(r.extra["ranked"], 1)]
        elif "scores" in r.extra:
            out.append((r, None, r.extra["scores"], r.extra.get("boxes", {})))
    return out


def summarise(results: list[Result], methods, resamples: int = 2000) -> dict:
    """{method: n, metrics and 95 % intervals} over the explained classes of the images that were scored."""
    from . import metrics

    scored = [scores for _, _, scores, _ in explained(results)]
    return {m: metrics.summarise([s[m] for s in scored], resamples) for m in methods}


def localisation(results: list[Result], methods, deltas, resamples: int = 2000) -> tuple[dict, dict]:
    """({method: Loc per delta, pointing game, energy pointing game, n_boxed, with 95 % intervals},
    {status: images}) over the images evaluated against boxes."""
    from . import metrics

    counts: dict[str, int] = {}
    units = explained(results)
    for _, _, _, located in units:
        status = located.get("status")
        if status is not None:
            counts[status] = counts.get(status, 0) + 1
    boxed = [located["scores"] for _, _, _, located in units if located.get("status") == "boxed"]
    out = {}
    for m in methods:
        entry: dict = {"n_boxed": len(boxed), "loc": {}, "loc_ci95": {}}
        for d in deltas:
            key = boxes_.key(d)
            values = np.array([b[m]["loc"][key] for b in boxed])
            entry["loc"][key], entry["loc_ci95"][key] = metrics.with_interval(values, resamples=resamples)
        for name, field_ in (("pointing_game", "pointing_hit"), ("energy_pointing_game", "energy")):
            values = np.array([float(b[m][field_]) for b in boxed])
            entry[name], entry[f"{name}_ci95"] = metrics.with_interval(values, resamples=resamples)
        out[m] = entry
    return out, counts


def format_localisation(summary: dict) -> str:
    """The localisation table: Loc per delta, pointing game, energy pointing game, with intervals."""
    def cell(v, ci):
        return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"

    first = next(iter(summary.values()))
    deltas = list(first["loc"])
    header = ["method", "n boxed"] + [f"Loc (delta {d})" for d in deltas] + ["Pointing game", "Energy PG"]
    rows = [header]
    for m, s in summary.items():
        rows.append([title(m), str(s["n_boxed"])] + [cell(s["loc"][d], s["loc_ci95"][d]) for d in deltas]
                    + [cell(s["pointing_game"], s["pointing_game_ci95"]),
                       cell(s["energy_pointing_game"], s["energy_pointing_game_ci95"])])
    return _table(rows)


def win_matrix(results: list[Result], methods) -> dict[str, dict[str, float]]:
    """Win % of every method against every other, over the images that were scored."""
    from . import metrics

    scored = [scores for _, _, scores, _ in explained(results)]
    return metrics.win_percent({m: [s[m].drop for s in scored] for m in methods})


def document(results: list[Result], clf: Classifier, options: Options, steps: int, failed: int,
           command: "EvaluateCommand | None" = None) -> dict:
    """The --json document."""

    from . import metrics

    road = command.road if command is not None else None

    document = {
        "methods": summarise(results, options.methods),
        "win_percent": win_matrix(results, options.methods),
        "model": clf.arch,
        "layer": clf.layer,
        "settings": options.settings,
        "label": options.label,
        **({"activation": "sigmoid", "threshold": options.threshold} if options.activation == "sigmoid" else {}),
        "steps": steps,
        "forward_passes_per_image": metrics.passes_per_image(len(options.methods), steps,
                                                             len(road.fractions) if road else 0) * (options.top or 1),
        "deletion_baseline": "black (0 in RGB [0,1])",
        "insertion_baseline": f"Gaussian blur, kernel {metrics.BLUR_KERNEL}, sigma {metrics.BLUR_SIGMA} at 224 px",
        "complexity": "Gini sparseness (Chalasani et al. 2020) and entropy in nats (Bhatt et al. 2020) of each map "
                      "at the model's input resolution",
        "images": sum(1 for r in results if "scores" in r.extra),
        "explained_classes": len(explained(results)),
        "failed": failed,
        "weights": clf.weights_source,
        "versions": versions(),
    }
    if command is not None and command.sanity:
        from . import sanity

        names = [name for name, _ in sanity.steps(clf.module)]
        document["sanity"] = {
            **sanity.summarise([r.extra["sanity"] for r in results if "sanity" in r.extra], names),
            "measures": list(sanity.MEASURES), "seed": sanity.SEED,
            "passes_per_image": 2 * len(sanity.MODES) * len(names),
            "method": "Adebayo et al. 2018: cascading (logits down) and independent re-initialisation, "
                      "each step one layer with a weight matrix or kernel and the parameter layers after it"}
    if road is not None:
        document["road"] = {"fractions": list(road.fractions), "noise": ROAD_NOISE_WORDS,
                            "imputation": "noisy linear: 8 neighbours, weights 1/6 and 1/12 (Rong et al. 2022)"}
    if command is not None and command.boxes is not None:
        located, counts = localisation(results, options.methods, command.deltas)
        for m, entry in located.items():
            document["methods"][m].update(entry)
        document["boxes"] = {"annotations": len(command.boxes), "deltas": list(command.deltas),
                             "pointing_tolerance_px": boxes_.POINTING_TOLERANCE, "images": counts}
    return document


def _table(rows: list, rule: bool = True) -> str:
    """Rows of cells as aligned columns; ``rule``: a line of dashes under the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if rule:
        lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_table(summary: dict) -> str:
    """The stdout table: one row per method, values with their 95 % intervals."""
    def cell(stats, key, pct):
        lo, hi = stats[f"{key}_ci95"]
        fmt = "{:.2f}" if pct else "{:.3f}"
        return f"{fmt.format(stats[key])} [{fmt.format(lo)}, {fmt.format(hi)}]"

    header = ("method", "n", "Average Drop %", "Increase in Conf. %", "Deletion AUC (low=good)",
              "Insertion AUC (high=good)")
    rows = [header]
    for m, s in summary.items():
        rows.append((title(m), str(s["n"]), cell(s, "average_drop", True),
                     cell(s, "increase_in_confidence", True), cell(s, "deletion_auc", False),
                     cell(s, "insertion_auc", False)))
    return _table(rows) + "\n(95 % bootstrap intervals over images in brackets)"


def format_complexity(summary: dict) -> str:
    """Sparseness and complexity, and ROAD where it ran: one row per method, with 95 % intervals."""
    def cell(stats, key, digits=3):
        lo, hi = stats[f"{key}_ci95"]
        return f"{stats[key]:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    road = all("road_morf" in s for s in summary.values())
    header = ["method", "Gini sparseness (high=sparse)", "Entropy (low=simple)"]
    header += ["ROAD MoRF (low=good)", "ROAD LeRF (high=good)"] if road else []
    rows = [header]
    for m, s in summary.items():
        rows.append([title(m), cell(s, "sparseness_gini"), cell(s, "complexity_entropy", 2)]
                    + ([cell(s, "road_morf"), cell(s, "road_lerf")] if road else []))
    return _table(rows)


def format_sanity(sanity: dict) -> str:
    """The sanity check's table: each map's Spearman rank correlation (of absolute values) with the intact
    model's, after the top layer, half the layers and every layer are randomised (cascading), and its mean
    over the layers randomised one at a time (independent)."""
    names = sanity["steps"]
    if not names or "cascade" not in sanity:
        return ""
    marks = sorted({0, (len(names) - 1) // 2, len(names) - 1})
    header = ["map (Spearman |r| with the intact model's)"] + [
        f"cascade to {names[k]} ({k + 1}/{len(names)})" for k in marks] + ["independent, mean"]
    rows = [header]
    for name, measures in sanity["cascade"].items():
        curve = measures["spearman_abs"]
        alone = [v for v in sanity["independent"][name]["spearman_abs"]["mean"] if v == v]
        rows.append([_map_title(name)] + [f"{curve['mean'][k]:.3f} [{curve['ci95'][k][0]:.3f}, "
                                          f"{curve['ci95'][k][1]:.3f}]" for k in marks]
                    + [f"{np.mean(alone):.3f}" if alone else "-"])
    return _table(rows)


def _map_title(name: str) -> str:
    if name == "guided_backprop":
        return "Guided backpropagation"
    if name.startswith("guided_"):
        return f"Guided {title(name[len('guided_'):])}"
    return title(name)


def format_wins(wins: dict[str, dict[str, float]]) -> str:
    """The Win % matrix: row X, column Z = % of images where X's drop in confidence is lower than Z's."""
    methods = list(wins)
    if len(methods) < 2:
        return ""
    head = ["Win % (row beats column)"] + [title(m) for m in methods]
    rows = [head] + [[title(x)] + ["-" if x == z else f"{wins[x][z]:.1f}" for z in methods] for x in methods]
    return _table(rows, rule=False)


def csv_bytes(results: list[Result], deltas=None) -> bytes:
    """One row per image and method; with boxes (``deltas`` given), the localisation scores too (empty
    where the image had no box of its explained class, and ``boxes`` saying why)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    header = ["input", "method", "class", "name", "probability", "explanation_probability",
              "drop_percent", "increase", "deletion_auc", "insertion_auc", "gini", "entropy", "road_morf",
              "road_lerf"]
    if deltas is not None:
        header += ["boxes"] + [f"loc_{boxes_.key(d)}" for d in deltas] + ["pointing_hit", "energy_pointing"]
    units = explained(results)
    ranked = any(rank is not None for _, rank, _, _ in units)
    writer.writerow(header + (["rank"] if ranked else []))
    for r, rank, scores, located in units:
        c, name = (r.targets[rank - 1][:2]) if rank is not None else (r.class_index, r.class_name)
        for m, s in scores.items():
            row = [r.input, m, c, name, f"{s.y:.6f}", f"{s.o:.6f}",
                   f"{s.drop:.4f}", int(s.o > s.y), f"{s.deletion_auc:.6f}", f"{s.insertion_auc:.6f}",
                   f"{s.gini:.6f}", f"{s.entropy:.6f}"]
            row += [f"{np.mean(s.morf):.6f}", f"{np.mean(s.lerf):.6f}"] if s.morf is not None else ["", ""]
            if deltas is not None:
                b = located.get("scores", {}).get(m)
                row += [located.get("status", "")]
                row += ([f"{b['loc'][boxes_.key(d)]:.6f}" for d in deltas] + [int(b["pointing_hit"]),
                        f"{b['energy']:.6f}"]) if b else [""] * (len(deltas) + 2)
            writer.writerow(row + ([rank] if ranked else []))
    return buf.getvalue().encode("utf-8")


#: Curve colours, one per method in the order of the run (Tableau 10).
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def plot_png(results: list[Result], width: int = 1000, height: int = 420) -> bytes:
    """Mean deletion and insertion curves of every method, side by side, as a PNG; below them ROAD's MoRF and
    LeRF curves, where it ran (``height`` is each row's)."""
    scored = [scores for _, _, scores, _ in explained(results)]
    methods = list(scored[0]) if scored else []
    road = bool(scored) and all(s[m].morf is not None for s in scored for m in methods)
    charts = [("deletion", "Deletion (lower is better)", "fraction of pixels removed"),
              ("insertion", "Insertion (higher is better)", "fraction of pixels inserted")]
    if road:
        charts += [("morf", "ROAD, most relevant first (lower is better)", "fraction of pixels removed"),
                   ("lerf", "ROAD, least relevant first (higher is better)", "fraction of pixels removed")]
    fractions = _road_fractions(results) if road else None
    sanity = sanity_curves(results)
    if sanity is not None:
        charts += [("sanity spearman_abs", "Sanity, cascading: Spearman |r| with the intact maps",
                    "layers randomised, logits first"),
                   ("sanity ssim", "Sanity, cascading: SSIM with the intact maps", "layers randomised, logits first")]
    canvas = Image.new("RGB", (width, height * (len(charts) // 2)), "white")
    draw = ImageDraw.Draw(canvas)
    font = panels.font(14)
    panel_w = width // 2
    for p, (kind, heading, axis) in enumerate(charts):
        x0, y0 = p % 2 * panel_w + 60, p // 2 * height + 40
        x1, y1 = (p % 2 + 1) * panel_w - 20, (p // 2 + 1) * height - 50
        draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
        draw.text((x0, y0 - 28), heading, fill=(0, 0, 0), font=font)
        for t in (0.0, 0.5, 1.0):
            ty = y1 - t * (y1 - y0)
            draw.text((x0 - 32, ty - 8), f"{t:.1f}", fill=(0, 0, 0), font=font)
            tx = x0 + t * (x1 - x0)
            draw.text((tx - 10, y1 + 6), f"{t:.1f}", fill=(0, 0, 0), font=font)
        draw.text(((x0 + x1) // 2 - 90, y1 + 26), axis, fill=(0, 0, 0), font=font)
        if kind.startswith("sanity"):
            measure = kind.split()[1]
            for k, (name, curves) in enumerate(sanity.items()):
                colour = PALETTE[k % len(PALETTE)]
                curve = np.nan_to_num(curves[measure])
                xs = np.linspace(0, 1, len(curve)) if len(curve) > 1 else np.zeros(1)
                draw.line([(x0 + x * (x1 - x0), y1 - np.clip(y, 0, 1) * (y1 - y0)) for x, y in zip(xs, curve)],
                          fill=colour, width=3)
                draw.text((x1 - 230, y0 + 10 + 18 * k), _map_title(name), fill=colour, font=font)
            continue
        for k, m in enumerate(methods):
            colour = PALETTE[k % len(PALETTE)]
            curve = np.mean([getattr(s[m], kind) for s in scored], axis=0)
            xs = fractions if kind in ("morf", "lerf") else np.linspace(0, 1, len(curve))
            pts = [(x0 + x * (x1 - x0), y1 - np.clip(y, 0, 1) * (y1 - y0)) for x, y in zip(xs, curve)]
            draw.line(pts, fill=colour, width=3)
            if len(pts) == 1:  # one fraction: a point
                draw.ellipse([pts[0][0] - 4, pts[0][1] - 4, pts[0][0] + 4, pts[0][1] + 4], fill=colour)
            if kind in ("morf", "lerf"):
                label = f"{title(m)}  mean {float(np.mean(curve)):.3f}"
            else:
                label = f"{title(m)}  AUC {float(np.mean([getattr(s[m], f'{kind}_auc') for s in scored])):.3f}"
            draw.text((x1 - 190, y0 + 10 + 18 * k), label, fill=colour, font=font)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def sanity_curves(results: list[Result]) -> dict | None:
    """{map: {measure: the mean over images at each cascading step}}, or None without --sanity."""
    checked = [r.extra["sanity"]["cascade"] for r in results if "sanity" in r.extra]
    if not checked:
        return None
    return {name: {measure: np.nanmean([c[name][measure] for c in checked], axis=0) for measure in measures}
            for name, measures in checked[0].items()}


def _road_fractions(results: list[Result]) -> list[float]:
    """ROAD's fractions, as the results were scored at (each curve has one point per fraction)."""
    return list(next(r.extra["road_fractions"] for r in results if "road_fractions" in r.extra))


def json_bytes(document: dict) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")
