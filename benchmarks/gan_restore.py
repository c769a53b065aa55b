"""Image repair by GAN inversion against classical baselines, on MNIST test digits.

Takes the conditional and the unconditional DCGAN of the quality benchmark (``gan_quality.py``'s
``dcgan-conditional`` and ``dcgan-bce``: ``aigc gan train``'s default recipe on the bundled mnist5k
digits, ``--budget`` seconds each), reusing its runs under ``benchmarks/out/gan_quality/`` when
they were trained with these settings and training them there otherwise, then repairs ``--n`` digits of the MNIST **test** set (``../shared/data/mnist``,
never training data) six ways and scores each repair against the true digit:

- inpainting: the central 14x14 box, random 50% and 75% of the pixels missing; baselines
  ``skimage.restoration.inpaint_biharmonic`` and OpenCV ``cv2.inpaint`` (Telea and Navier-Stokes);
- super-resolution from 7x7 and 14x14 block means (area downsampling); baselines Pillow bicubic
  and Lanczos upsampling of the small image;
- denoising of Gaussian noise, sigma 0.3 on the [-1, 1] scale; baselines
  ``skimage.restoration.denoise_tv_chambolle`` and ``denoise_nl_means``, their strength chosen on
  50 other test digits.

Metrics: PSNR and SSIM (scikit-image, on [-1, 1], data range 2), the accuracy of the
``aigc gan eval`` evaluator (the LeNet trained on mnist5k) on the repaired digits, and time per
image. GAN inversion runs through ``aigc.gan.restore`` (the EMA generators); with ``--dgp-steps``
the three target tasks are also repaired with Deep Generative Prior fine-tuning.

The two GANs run in two single-threaded worker processes (``--jobs``); the baselines run first,
in this one. Writes ``benchmarks/out/gan_restore.json``, side-by-side pictures under ``docs/img/``
and the results section of ``docs/benchmarks-restore.md``. Needs the ``bench`` extra
(scikit-image, opencv-python-headless). Run it alone on the machine:
``flock /tmp/aigc-bench.lock python benchmarks/gan_restore.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import re
import time
from pathlib import Path

import numpy as np
import torch

import gan_quality
from _common import OUT_DIR, machine, write_json
from aigc.data.images import load_images, save_grid
from aigc.devices import bf16_supported
from aigc.gan import restore as R

ROOT = Path(__file__).resolve().parents[1]
MNIST_TEST = ROOT.parent / "shared" / "data" / "mnist"
OUT = OUT_DIR / "gan_restore"
DOC = ROOT / "docs" / "benchmarks-restore.md"
IMAGES = ROOT / "docs" / "img"
START, END = "<!-- results:start -->", "<!-- results:end -->"

GANS = {"conditional": "dcgan-conditional", "unconditional": "dcgan-bce"}  # name -> the quality benchmark's setup
TASKS = ("box14", "random50", "random75", "sr7", "sr14", "denoise")
TARGETS = ("box14", "random75", "sr7")  # the GAN must beat every baseline here on PSNR and accuracy
SIGMA = 0.3
TUNE = 50  # held-out test digits on which the denoisers' strength is chosen


# ------------------------------------------------------------------------------ the problems


def pick_digits(n: int, seed: int):
    """``n`` test digits (a seeded choice) and ``TUNE`` others: (images, labels), (tune images)."""
    test = load_images(str(MNIST_TEST))
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    chosen, tune = order[:n], order[n:n + TUNE]
    return test.images[chosen], test.labels[chosen], test.images[tune]


def degrade(task: str, truth: torch.Tensor, seed: int):
    """(degradation, what is seen) for a task on (N, 1, 28, 28) images in [-1, 1]."""
    n = truth.shape[0]
    if task == "box14":
        mask = R.Mask(R.box_mask(28, 7, 7, 14, 14))
    elif task in ("random50", "random75"):
        mask = R.Mask(R.random_mask(n, 28, int(task[-2:]) / 100, seed))
    elif task in ("sr7", "sr14"):
        down = R.Downsample(28 // int(task[2:]))
        return down, down.measure(truth)
    else:
        noise = torch.randn(truth.shape, generator=torch.Generator().manual_seed(seed))
        return R.Noise(), truth + SIGMA * noise
    return mask, mask.measure(truth)


# ------------------------------------------------------------------------------ baselines


def to_unit(x: np.ndarray) -> np.ndarray:
    return (x + 1) / 2  # [-1, 1] -> [0, 1]


def from_unit(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.clip(np.asarray(x, dtype=np.float32) * 2 - 1, -1, 1))


def inpaint_baselines() -> dict:
    import cv2
    from skimage.restoration import inpaint_biharmonic

    def opencv(flag):
        def run(image, missing):
            pixels = np.round(to_unit(image) * 255).astype(np.uint8)
            return cv2.inpaint(pixels, missing.astype(np.uint8) * 255, 3, flag) / 255.0
        return run

    return {"biharmonic (skimage)": lambda image, missing: inpaint_biharmonic(to_unit(image), missing),
            "Telea (cv2)": opencv(cv2.INPAINT_TELEA), "Navier-Stokes (cv2)": opencv(cv2.INPAINT_NS)}


def upscale_baselines(factor: int) -> dict:
    from PIL import Image

    def pillow(kind):
        def run(small):  # float pixels (mode F): no 8-bit rounding of the small image
            return np.asarray(Image.fromarray(to_unit(small).astype(np.float32)).resize((28, 28), kind))
        return run

    return {"bicubic (Pillow)": pillow(Image.BICUBIC), "Lanczos (Pillow)": pillow(Image.LANCZOS)}


def denoise_baselines(tune_truth: torch.Tensor, seed: int) -> tuple[dict, dict]:
    """TV (Chambolle) and non-local means, each at the strength that scores best on held-out digits."""
    from skimage.restoration import denoise_nl_means, denoise_tv_chambolle

    sigma = SIGMA / 2  # on [0, 1]

    def tv(weight):
        return lambda x: denoise_tv_chambolle(x, weight=weight)

    def nl_means(h):
        return lambda x: denoise_nl_means(x, h=h * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True)

    families = {"TV Chambolle (skimage)": (tv, (0.05, 0.1, 0.15, 0.2, 0.3)),
                "non-local means (skimage)": (nl_means, (0.6, 0.8, 1.0, 1.2))}
    _, noisy = degrade("denoise", tune_truth, seed + 1)  # other digits, other noise
    chosen, strengths = {}, {}
    for name, (make, grid) in families.items():
        strengths[name] = max(grid, key=lambda s, make=make: mean_psnr(make(s), tune_truth, noisy))
        chosen[name] = make(strengths[name])
    return chosen, strengths


def mean_psnr(denoiser, truth: torch.Tensor, noisy: torch.Tensor) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    return float(np.mean([peak_signal_noise_ratio(to_unit(t[0].numpy()), np.clip(denoiser(to_unit(x[0].numpy())), 0, 1),
                                                  data_range=1.0) for t, x in zip(truth, noisy)]))


def run_baselines(task: str, degradation, seen: torch.Tensor, tune_truth: torch.Tensor, seed: int) -> tuple[dict, dict]:
    """Each baseline's repairs (N, 1, 28, 28) in [-1, 1] and seconds per image."""
    notes, pixels = {}, seen[:, 0].numpy()  # (N, h, w)
    if task.startswith("sr"):
        methods = {k: (f, lambda i: (pixels[i],)) for k, f in upscale_baselines(degradation.factor).items()}
    elif task == "denoise":
        chosen, notes = denoise_baselines(tune_truth, seed)
        methods = {k: (f, lambda i: (to_unit(pixels[i]),)) for k, f in chosen.items()}
    else:
        missing = (~degradation.known.expand_as(seen))[:, 0].numpy()  # (N, 28, 28)
        methods = {k: (f, lambda i: (pixels[i], missing[i])) for k, f in inpaint_baselines().items()}
    results = {}
    for name, (method, inputs) in methods.items():
        start = time.perf_counter()
        repaired = torch.stack([from_unit(method(*inputs(i)))[None] for i in range(seen.shape[0])])
        results[name] = {"images": repaired, "seconds_per_image": (time.perf_counter() - start) / seen.shape[0]}
    return results, notes


# ------------------------------------------------------------------------------ the GANs (worker processes)


def quality_run(name: str, args) -> tuple[Path, dict]:
    """The quality benchmark's run of GAN ``name``, trained now unless it exists with this budget and seed."""
    run = gan_quality.OUT / gan_quality.run_name(GANS[name], args.seed)
    if not finished(run, args):
        gan_quality.train_for(GANS[name], args.seed, args.budget, None)
    config = json.loads((run / "config.json").read_text())
    steps = json.loads((run / "checkpoint.json").read_text())["step"]  # its last step (``finished``)
    return run, {"run": run.relative_to(ROOT).as_posix(), "steps": steps, "width": config["model"]["width"],
                 "time_budget": config["train"]["time_budget"]}


def finished(run: Path, args) -> bool:
    """Whether ``run`` was trained for --budget seconds with --seed and saved at its last step."""
    from aigc import runs
    from aigc.logging import read_metrics

    if not (run / "checkpoint.json").is_file():
        return False
    config = json.loads((run / "config.json").read_text())["train"]
    saved = json.loads((run / "checkpoint.json").read_text())["step"]
    logged = [m["step"] for m in read_metrics(run / runs.METRICS_FILE) if "d_loss" in m]
    return (config["time_budget"], config["steps"], config["seed"]) == (args.budget, None, args.seed) and \
        logged[-1:] == [saved]


def gan_worker(name: str, args, problems: dict) -> dict:
    """Train/reuse one GAN and repair every task with it; the repairs go to OUT/{name}-restored.pt."""
    torch.set_num_threads(1)
    from aigc.gan.loading import load_gan

    run, training = quality_run(name, args)
    gan = load_gan(run)
    settings = R.InversionSettings(steps=args.steps, restarts=args.restarts, average=args.average, seed=args.seed,
                                   amp=args.amp)
    chunk = max(1, args.batch // args.restarts)  # images per inversion batch
    repaired, seconds = {}, {}
    for task, (degradation, seen) in problems.items():
        start = time.perf_counter()
        parts = [invert_and_paste(gan, degradation.take(rows), seen[rows], settings,
                                   args.dgp_steps * (task in TARGETS), args)
                 for rows in torch.arange(seen.shape[0]).split(chunk)]
        for key in parts[0]:
            repaired[(task, key)] = torch.cat([p[key][0] for p in parts])
            seconds[(task, key)] = sum(p[key][1] for p in parts) / seen.shape[0]
        print(f"{name}: {task} done in {time.perf_counter() - start:.0f} s", flush=True)
    torch.save({"images": {f"{t}|{k}": v for (t, k), v in repaired.items()},
                "seconds": {f"{t}|{k}": v for (t, k), v in seconds.items()}}, OUT / f"{name}-restored.pt")
    return training


def invert_and_paste(gan, degradation, seen: torch.Tensor, settings, dgp_steps: int, args) -> dict:
    """{"inversion": (images, seconds)} and, with ``dgp_steps``, {"dgp": ...} from the same codes."""
    start = time.perf_counter()
    found = R.invert(gan.generator, gan.model_config, degradation, seen, settings)  # N * average rows
    mean = R.mean_of_starts(found, degradation, seen)
    out = {"inversion": (degradation.project(mean.generated, seen).clamp(-1, 1), time.perf_counter() - start)}
    if dgp_steps:
        start = time.perf_counter()
        tuned = R.finetune(gan.generator, degradation, seen, found,
                           dataclasses.replace(settings, finetune_steps=dgp_steps, finetune_lr=args.dgp_lr))
        mean = R.mean_of_starts(tuned, degradation, seen)
        out["dgp"] = (degradation.project(mean.generated, seen).clamp(-1, 1),
                      out["inversion"][1] + time.perf_counter() - start)
    return out


# ------------------------------------------------------------------------------ scoring


def score(repaired: torch.Tensor, truth: torch.Tensor, labels: torch.Tensor, evaluator) -> dict:
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    pairs = [(r[0].numpy().astype(np.float64), t[0].numpy().astype(np.float64)) for r, t in zip(repaired, truth)]
    _, logits = evaluator.features_and_logits(repaired)
    return {"psnr": float(np.mean([peak_signal_noise_ratio(t, r, data_range=2.0) for r, t in pairs])),
            "ssim": float(np.mean([structural_similarity(t, r, data_range=2.0) for r, t in pairs])),
            "accuracy": (logits.argmax(1) == labels).double().mean().item()}


def load_evaluator():
    from aigc.gan.evaluate import DEFAULT_RECIPE
    from aigc.metrics.evaluator import load_or_train_evaluator

    train = load_images("mnist5k")
    return load_or_train_evaluator(train.images, train.labels, train.num_classes, DEFAULT_RECIPE)


def picture(task: str, seen, truth, rows: dict, degradation) -> str:
    """Eight digits, one per row: input | each method | truth."""
    view = seen if not isinstance(degradation, R.Downsample) else \
        torch.nn.functional.interpolate(seen, size=(28, 28), mode="nearest")
    columns = [view[:8], *(images[:8] for images in rows.values()), truth[:8]]
    grid = torch.stack(columns, 1).flatten(0, 1)  # (8 * columns, 1, 28, 28), row by row
    path = IMAGES / f"gan-restore-{task}.png"
    save_grid(grid, path, nrow=len(columns))
    return str(path)


# ------------------------------------------------------------------------------ the report


def markdown(payload: dict) -> str:
    m, a = payload["machine"], payload["args"]
    flags = ", ".join(k for k, v in m["cpu_flags"].items() if v) or "none of " + ", ".join(m["cpu_flags"])
    train = payload["training"]
    lines = [f"Run {payload['date']} on {m['cpu']} ({m['cores']} cores; {flags}), {a['jobs']} worker process(es) "
             f"of 1 torch thread, {payload['total_minutes']:.1f} minutes in all. {a['n']} MNIST test digits "
             f"(seed {a['seed']}). GANs: the quality benchmark's `dcgan` runs, {a['budget']:.0f} s of training "
             "each on mnist5k (" + ", ".join(f"{k}: width {v['width']}, {v['steps']} steps, `{v['run']}`"
                                             for k, v in train.items()) + "). Inversion: "
             f"{a['steps']} Adam steps, {a['restarts']} restarts"
             + (f", each repair the mean of the {a['average']} best starts" if a.get("average", 1) > 1 else "")
             + f", search in {payload.get('search_dtype', 'float32')}"
             + ", known pixels/block means pasted back"
             + (f"; DGP: {a['dgp_steps']} fine-tuning steps per kept start on the target tasks" if a["dgp_steps"] else "")
             + f". Evaluator `{payload['evaluator_key']}`; its accuracy on the clean digits: "
             f"{payload['clean_accuracy']:.3f}. Denoiser strengths chosen on {TUNE} other test digits: "
             + ", ".join(f"{k} {v}" for k, v in payload["denoise_strengths"].items()) + ".", ""]
    for task, result in payload["results"].items():
        target = " (target)" if task in TARGETS else ""
        lines += [f"**{payload['titles'][task]}**{target}", "",
                  "| method | PSNR (dB) | SSIM | evaluator accuracy | ms / image |", "|---|---:|---:|---:|---:|"]
        for method, r in result["methods"].items():
            lines.append(f"| {method} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['accuracy']:.3f} | "
                         f"{1000 * r['seconds_per_image']:.1f} |")
        if task in TARGETS:
            lines += ["", "Targets (beat every baseline): " + target_text(result)]
        picture_path = Path(result["picture"]).relative_to(DOC.parent).as_posix()
        lines += ["", f"![{task}: input, methods in table order, truth]({picture_path})", ""]
    return "\n".join(lines)


def target_text(result: dict) -> str:
    """Which GAN rows beat every baseline on PSNR and on accuracy (also recorded in ``result``)."""
    methods = result["methods"]
    baselines = [k for k in methods if not k.startswith("GAN")]
    texts = []
    for gan in (k for k in methods if k.startswith("GAN")):
        met = {x: all(methods[gan][x] > methods[b][x] for b in baselines) for x in ("psnr", "accuracy")}
        result.setdefault("targets", {})[gan] = met
        texts.append(f"{gan}: " + ", ".join(f"{'PSNR' if x == 'psnr' else x} {'beaten' if ok else 'missed'}"
                                            for x, ok in met.items()))
    return "; ".join(texts) + "."


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else f"# Image repair by GAN inversion\n\n{START}\n{END}\n"
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    DOC.write_text(pattern.sub(lambda _: f"{START}\n{section}\n{END}", text))


TITLES = {"box14": "Inpainting: central 14x14 box missing", "random50": "Inpainting: random 50% of the pixels missing",
          "random75": "Inpainting: random 75% of the pixels missing", "sr7": "Super-resolution 7x7 -> 28x28",
          "sr14": "Super-resolution 14x14 -> 28x28", "denoise": f"Denoising: Gaussian noise, sigma {SIGMA} on [-1, 1]"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="test digits repaired per task (default: 500)")
    parser.add_argument("--budget", type=float, default=600,
                        help="training seconds per GAN, as in the quality benchmark (default: 600)")
    parser.add_argument("--steps", type=int, default=100, help="inversion steps (default: 100)")
    parser.add_argument("--restarts", type=int, default=16, help="inversion restarts per image (default: 16)")
    parser.add_argument("--average", type=int, default=4,
                        help="each repair is the mean of this many best starts, each fine-tuned by DGP (default: 4)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast in the code search where the CPU computes bf16 natively (default: on)")
    parser.add_argument("--dgp-steps", type=int, default=40,
                        help="Deep Generative Prior steps on the target tasks, 0 for none (default: 40)")
    parser.add_argument("--dgp-lr", type=float, default=R.InversionSettings.finetune_lr,
                        help=f"Deep Generative Prior learning rate (default: {R.InversionSettings.finetune_lr})")
    parser.add_argument("--batch", type=int, default=500, help="codes optimised at a time (default: 500)")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for the two GANs (default: 2)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the GANs' training, the masks, the noise")
    parser.add_argument("--pick-seed", type=int, default=0, help="seed of the choice of test digits (default: 0)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the doc's results from benchmarks/out/gan_restore.json; measure nothing")
    args = parser.parse_args()
    if args.report_only:
        write_doc(markdown(json.loads((OUT_DIR / "gan_restore.json").read_text())))
        return
    if not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").is_file():
        raise SystemExit(f"the benchmark needs the MNIST test set at {MNIST_TEST}")
    began = time.perf_counter()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    import os
    os.environ["XDG_CACHE_HOME"] = str(gan_quality.OUT / "cache")  # the quality benchmark's evaluator

    truth, labels, tune = pick_digits(args.n, args.pick_seed)
    problems = {task: degrade(task, truth, args.seed) for task in args.tasks}
    evaluator = load_evaluator()
    methods: dict[str, dict] = {}
    strengths: dict = {}
    for task, (degradation, seen) in problems.items():
        methods[task], notes = run_baselines(task, degradation, seen, tune, args.seed)
        strengths.update(notes)
        print(f"baselines: {task} done", flush=True)

    context = multiprocessing.get_context("spawn")
    with context.Pool(args.jobs) as pool:
        training = dict(zip(GANS, pool.starmap(gan_worker, [(name, args, problems) for name in GANS])))
    for name in GANS:
        saved = torch.load(OUT / f"{name}-restored.pt", weights_only=True)
        for key, images in saved["images"].items():
            task, variant = key.split("|")
            label = f"GAN {name}" + (" + DGP" if variant == "dgp" else "")
            methods[task][label] = {"images": images, "seconds_per_image": saved["seconds"][key]}

    results = {}
    for task, (degradation, seen) in problems.items():
        scored = {k: {**score(v["images"], truth, labels, evaluator), "seconds_per_image": v["seconds_per_image"]}
                  for k, v in methods[task].items()}
        shown = {k: v["images"] for k, v in methods[task].items()}
        results[task] = {"methods": scored, "picture": picture(task, seen, truth, shown, degradation)}
    payload = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args),
               "machine": machine(), "training": training, "evaluator_key": evaluator.key,
               "search_dtype": "bf16 autocast" if args.amp and bf16_supported(torch.device("cpu")) else "float32",
               "clean_accuracy": (evaluator.features_and_logits(truth)[1].argmax(1) == labels).double().mean().item(),
               "denoise_strengths": strengths, "titles": TITLES, "results": results,
               "total_minutes": (time.perf_counter() - began) / 60}
    section = markdown(payload)  # also records which targets were met
    write_json("gan_restore", payload)
    write_doc(section)
    print(section)
    print(f"wrote {DOC} in {payload['total_minutes']:.1f} minutes")


if __name__ == "__main__":
    main()
