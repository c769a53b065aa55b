"""Judging a GAN run: ``aigc gan eval``.

1. The evaluator (a LeNet, :mod:`aigc.metrics.evaluator`) is trained on the run's own
   training data, or taken from the cache.
2. The reference set (``--ref``) is split, by a seeded shuffle, into two disjoint halves A
   and B. Generated samples are compared with B; so is A, which gives the *real-data floor*:
   what a perfect generator would score with the same evaluator and the same sample sizes.
3. ``--n`` samples are generated and scored in batches (only features are kept, plus the
   first ``m = min(n, |A|, |B|)`` images for the judge). Samples are rounded to 8 bits like any
   saved image, so the judge cannot tell them from real digits by float precision alone.
4. Set-against-set metrics (FID, KID, C2ST, precision/recall, density/coverage, intra-class FID)
   use ``m`` images on each side, for the model and the floor alike (density/coverage, k = 5, are
   null when m <= 5); class histograms and label accuracy use all ``n`` samples.
5. Intra-class FID compares class c of the candidates (the class asked for; for the floor, half
   A's true labels) with half B's images of class c. It is null for unconditional runs, for a
   reference whose classes do not match the model's, and when some class has under 2 images.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from aigc import runs
from aigc.config import checked
from aigc.data.images import BUNDLED, ImageData, load_images, save_grid
from aigc.devices import resolve_device
from aigc.errors import UserError
from aigc.gan.config import GanEvalConfig
from aigc.gan.models import GanModelConfig
from aigc.gan.generation import draw_noise, images_from_noise, quantize
from aigc.gan.guide import candidates_per_image, guided
from aigc.gan.loading import load_gan, load_training_data
from aigc.metrics.evaluator import Evaluator, EvaluatorRecipe, load_or_train_evaluator
from aigc.metrics.image import (C2STResult, c2st, density_coverage, frechet_distance, intra_class_fid,
                                kernel_distance, label_accuracy, mode_coverage, precision_recall)
from aigc.outputs import output_file

DEFAULT_RECIPE = EvaluatorRecipe()
JUDGE_STEPS = 1500  # Adam steps of the C2ST judge on batches of 64 (about 19 passes over 2 x 2,500 images)
JUDGE_TILES = 36  # judge.png: this many most-fake samples beside as many most-real ones
DENSITY_K = 5  # density/coverage balls reach the 5th nearest real point, so they need m > 5 (--n may be 4)


def _check_matches_model(data: ImageData, model_cfg: GanModelConfig, what: str) -> None:
    if (data.channels, data.image_size) != (model_cfg.channels, model_cfg.image_size):
        raise UserError(f"{what} has {data.channels}-channel {data.image_size}x{data.image_size} images but the "
                        f"model makes {model_cfg.channels}-channel {model_cfg.image_size}x{model_cfg.image_size} ones")


def load_reference(spec: str, model_cfg: GanModelConfig) -> ImageData:
    """The ``--ref`` images, as they are on disk: a size or channel mismatch is an error, not a resize."""
    if spec not in BUNDLED and not Path(spec).expanduser().exists():
        raise UserError(f"--ref {spec}: no such file or folder (use mnist5k, an IDX folder or an image folder)")
    reference = load_images(spec)
    _check_matches_model(reference, model_cfg, f"--ref {spec}")
    if len(reference) < 8:
        raise UserError(f"--ref {spec} holds {len(reference)} images; at least 8 are needed to split it in two")
    return reference


def split_reference(reference: ImageData, seed: int) -> tuple[ImageData, ImageData]:
    """Two disjoint random halves of the reference set."""
    order = torch.randperm(len(reference), generator=torch.Generator().manual_seed(seed))
    halves = order[:len(order) // 2], order[len(order) // 2:]
    return tuple(ImageData(reference.images[i], reference.labels[i], reference.class_names, reference.source)
                 for i in halves)


def scored_reference(half: ImageData, evaluator: Evaluator, by_class: bool) -> dict:
    """The reference half that :func:`compare` takes: its images, evaluator features and predicted classes,
    and its labels when intra-class FID is to be computed (``by_class``)."""
    features, logits = evaluator.features_and_logits(half.images)
    return {"images": half.images, "features": features, "predicted": logits.argmax(1),
            "labels": half.labels if by_class else None, "num_classes": evaluator.num_classes}


def generate_and_score(generator: torch.nn.Module, model_cfg: GanModelConfig, evaluator: Evaluator, n: int,
                       keep: int, cfg: GanEvalConfig) -> dict[str, torch.Tensor | None]:
    """Generate ``n`` samples batch by batch, keeping their features (n, F), predicted classes (n,),
    requested labels (n,) or None, and the first ``keep`` images (keep, C, H, W)."""
    # Conditional samples cycle through the classes, so every batch (and the first ``keep``) is balanced.
    labels = torch.arange(n) % model_cfg.num_classes if model_cfg.conditional else None
    # One noise stream for every batch, apart from the seed's other uses: --batch-size changes no image.
    noise = draw_noise(model_cfg, n, cfg.seed * 1_000_003, cfg.temperature)
    features, predicted, kept = [], [], []
    for start in range(0, n, cfg.batch_size):
        batch_labels = None if labels is None else labels[start:start + cfg.batch_size]
        images = quantize(images_from_noise(generator, noise[start:start + cfg.batch_size], batch_labels,
                                            cfg.batch_size))
        batch_features, logits = evaluator.features_and_logits(images)
        features.append(batch_features)
        predicted.append(logits.argmax(1))
        if start < keep:
            kept.append(images[:keep - start])
    return {"features": torch.cat(features), "predicted": torch.cat(predicted), "labels": labels,
            "images": torch.cat(kept)}


def compare(images: torch.Tensor, features: torch.Tensor, predicted: torch.Tensor, labels: torch.Tensor | None,
            reference: dict, m: int, seed: int, judge_steps: int) -> tuple[dict, C2STResult]:
    """Every set-level metric of one candidate set against the reference half B.

    ``images``/``features``/``labels`` hold at least ``m`` rows; ``predicted`` holds every candidate's
    class; ``labels`` (the class each candidate stands for) and ``reference["labels"]`` are None when
    there is no intra-class FID to compute."""
    real_features = reference["features"][:m]
    judged = c2st(reference["images"][:m], images[:m], steps=judge_steps, seed=seed)
    precision, recall = precision_recall(real_features, features[:m])
    kid, kid_std = kernel_distance(real_features, features[:m], seed=seed)
    density, coverage = density_coverage(real_features, features[:m], k=DENSITY_K) if m > DENSITY_K else (None, None)
    classes = mode_coverage(predicted, reference["predicted"], reference["num_classes"])
    per_class = intra_fids(features, labels, reference, m)
    metrics = {
        "fid": frechet_distance(real_features, features[:m]),
        "kid": kid, "kid_std": kid_std,
        "c2st_accuracy": judged.accuracy, "c2st_low": judged.low, "c2st_high": judged.high,
        "precision": precision, "recall": recall, "density": density, "coverage": coverage,
        "classes_covered": classes.classes_covered, "kl": classes.kl, "class_histogram": classes.histogram,
        "intra_fid": None if per_class is None else sum(per_class) / len(per_class),
        "intra_fid_per_class": per_class,
    }
    return metrics, judged


def intra_fids(features: torch.Tensor, labels: torch.Tensor | None, reference: dict, m: int) -> list[float] | None:
    """The FID of each class: the first ``m`` candidates (features (m, F), labels (m,)) of class c
    against half B's first ``m`` images of class c. None without labels on both sides, or when a
    class has fewer than 2 images on either side."""
    if labels is None or reference["labels"] is None:
        return None
    real_labels, fake_labels, num_classes = reference["labels"][:m], labels[:m], reference["num_classes"]
    smallest = min(int(torch.bincount(side, minlength=num_classes).min()) for side in (real_labels, fake_labels))
    if smallest < 2:
        return None
    return intra_class_fid(reference["features"][:m], real_labels, features[:m], fake_labels, num_classes)


def evaluate_run(cfg: GanEvalConfig, recipe: EvaluatorRecipe | None = None, judge_steps: int | None = None) -> dict:
    """Score a GAN run against ``--ref`` and the real-data floor; write JSON and judge.png; return
    the results. ``recipe`` and ``judge_steps`` (the evaluator's training and the C2ST judge's steps)
    default to the command's."""
    checked(cfg)
    recipe, judge_steps = recipe or DEFAULT_RECIPE, judge_steps or JUDGE_STEPS
    json_path, judge_path = output_paths(cfg)
    device = resolve_device(cfg.device)
    loaded = load_gan(cfg.run, cfg.ema, device)
    model_cfg, run_config = loaded.model_config, loaded.run_config
    cfg = dataclasses.replace(cfg, temperature=loaded.temperature(cfg.temperature))
    k = candidates_per_image(loaded, cfg.guided, cfg.ema, cfg.temperature)
    generator = guided(loaded, k, cfg.ema, cfg.temperature, cfg.seed, cfg.guide_stages)
    reference = load_reference(cfg.ref, model_cfg)
    training = load_training_data(run_config, model_cfg, cfg.run)

    evaluator = load_or_train_evaluator(training.images, training.labels, training.num_classes, recipe)
    half_a, half_b = split_reference(reference, cfg.seed)
    m = min(cfg.n, len(half_a), len(half_b))
    features_a, logits_a = evaluator.features_and_logits(half_a.images)
    same_classes = reference.num_classes == evaluator.num_classes
    by_class = model_cfg.conditional and same_classes  # intra-class FID: labels on both sides mean the same
    ref_b = scored_reference(half_b, evaluator, by_class)

    samples = generate_and_score(generator, model_cfg, evaluator, cfg.n, m, cfg)
    model, judged = compare(samples["images"], samples["features"], samples["predicted"], samples["labels"],
                            ref_b, m, cfg.seed, judge_steps)
    floor, _ = compare(half_a.images, features_a, logits_a.argmax(1), half_a.labels if by_class else None,
                       ref_b, m, cfg.seed, judge_steps)
    model["label_accuracy"] = None if samples["labels"] is None else \
        label_accuracy(samples["predicted"], samples["labels"])
    floor["label_accuracy"] = label_accuracy(logits_a.argmax(1), half_a.labels) if same_classes else None

    result = {
        "run": str(cfg.run), "ref": cfg.ref, "ref_source": reference.source, "seed": cfg.seed, "ema": cfg.ema,
        "temperature": cfg.temperature, "guided": k,
        "generator_passes_per_image": getattr(generator, "passes_per_image", 1), "n_samples": cfg.n, "n_compared": m,
        "conditional": model_cfg.conditional,
        "evaluator": {"key": evaluator.key, "trained_on": training.source}, "judge_steps": judge_steps,
        "model": model, "real_floor": floor,
    }
    runs.save_json(json_path, result)
    save_judge_grid(samples["images"], judged, judge_path)
    print(format_table(result))
    print(f"wrote {json_path} and {judge_path} (left: samples the judge finds most fake; right: most real)")
    return result


def output_paths(cfg: GanEvalConfig) -> tuple[Path, Path]:
    """Where the results go (--json, default RUN/eval.json, and judge.png beside it), checked before any
    work: the run's own eval.json and judge.png may be rewritten, no other file of a run."""
    runs.read_run_config(cfg.run, "gan")  # a missing or wrong run is reported as such, not as a bad --json
    own = (Path(cfg.run) / "eval.json", Path(cfg.run) / "judge.png")
    json_path = output_file(cfg.json or own[0], "--json", allowed=own)
    judge_path = output_file(json_path.parent / "judge.png", "--json (judge.png beside it)", allowed=own)
    return json_path, judge_path


def save_judge_grid(images: torch.Tensor, judged: C2STResult, path: Path) -> None:
    """The held-out samples the judge finds most fake (left block) and most real (right block)."""
    order = judged.fake_indices[judged.fake_realness.argsort()]  # most fake first
    count = min(JUDGE_TILES, len(order) // 2)
    side = max(1, math.isqrt(count))
    count = side * side
    fake, real = images[order[:count]], images[order.flip(0)[:count]]
    gap = torch.ones(1, *images.shape[1:])  # a white tile between the blocks
    rows = [torch.cat([fake[r * side:(r + 1) * side], gap, real[r * side:(r + 1) * side]]) for r in range(side)]
    save_grid(torch.cat(rows), path, nrow=2 * side + 1)


def format_table(result: dict) -> str:
    model, floor = result["model"], result["real_floor"]

    def c2st_text(m: dict) -> str:
        return f"{m['c2st_accuracy']:.3f} [{m['c2st_low']:.3f}, {m['c2st_high']:.3f}]"

    def share_text(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    def kid_text(m: dict) -> str:
        return f"{m['kid']:.4f} ± {m['kid_std']:.4f}"

    rows = [("FID (evaluator features)", f"{model['fid']:.3f}", f"{floor['fid']:.3f}"),
            ("KID ± std over subsets", kid_text(model), kid_text(floor)),
            ("C2ST accuracy [95%]", c2st_text(model), c2st_text(floor)),
            ("precision (k=3)", f"{model['precision']:.3f}", f"{floor['precision']:.3f}"),
            ("recall (k=3)", f"{model['recall']:.3f}", f"{floor['recall']:.3f}"),
            ("density (k=5)", share_text(model["density"]), share_text(floor["density"])),
            ("coverage (k=5)", share_text(model["coverage"]), share_text(floor["coverage"])),
            ("classes covered (>=1%)", str(model["classes_covered"]), str(floor["classes_covered"])),
            ("KL(samples || ref)", f"{model['kl']:.4f}", f"{floor['kl']:.4f}")]
    if model["label_accuracy"] is not None and floor["label_accuracy"] is not None:
        rows.append(("label accuracy", f"{model['label_accuracy']:.3f}", f"{floor['label_accuracy']:.3f}"))
    if model["intra_fid"] is not None and floor["intra_fid"] is not None:
        rows.append(("intra-class FID", f"{model['intra_fid']:.3f}", f"{floor['intra_fid']:.3f}"))
    header = (f"{result['run']}: {result['n_samples']} samples ({result['n_compared']} per set-level metric) "
              f"vs {result['ref']}, evaluator {result['evaluator']['key']}"
              + (f", noise temperature {result['temperature']:g}" if result['temperature'] != 1.0 else "")
              + (f", guided ({result['generator_passes_per_image']} generator passes per image)"
                 if result["guided"] > 1 else ""))
    lines = [header, f"{'metric':<26}{'model':>24}{'real floor':>24}"]
    lines += [f"{name:<26}{a:>24}{b:>24}" for name, a, b in rows]
    return "\n".join(lines)
