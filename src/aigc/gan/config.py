"""Configs of the GAN commands (no torch import: ``aigc --help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass

from aigc.config import DEVICE_CHOICES, option, require
from aigc.errors import UserError
from aigc.training.options import RunOptions

MODELS = ("mlp", "dcgan")
LOSS_NAMES = ("bce", "hinge", "wgan-gp")
LR_SCHEDULES = ("constant", "cosine")
DCGAN_START_SIZES = (7, 4)  # DCGAN's first feature map; each stage doubles it up to the image size
MAX_SAMPLES = 1_000_000  # `gan sample` and `gan eval` generate every image before writing or scoring
AUGMENT_POLICIES = ("translation", "cutout")  # DiffAugment's transforms that suit any image (aigc.gan.augment)
MIN_EVAL_SAMPLES = 4  # precision/recall with k = 3 nearest neighbours need k + 1 points per set


def parse_augment(text: str) -> tuple[str, ...]:
    """--augment: 'none' -> (); 'translation,cutout' -> ('translation', 'cutout')."""
    if text == "none":
        return ()
    names = tuple(name.strip() for name in text.split(","))
    if any(name not in AUGMENT_POLICIES for name in names) or len(set(names)) != len(names):
        raise UserError(f"--augment {text!r}: give none or a comma-separated subset of {', '.join(AUGMENT_POLICIES)}")
    return names


def dcgan_supports(image_size: int) -> bool:
    """Whether DCGAN builds ``image_size``: 7 or 4 times a power of two, at least twice the start."""
    for start in DCGAN_START_SIZES:
        ratio = image_size // start
        if image_size % start == 0 and ratio >= 2 and ratio & (ratio - 1) == 0:
            return True
    return False


def dcgan_sizes_text(limit: int = 256) -> str:
    return ", ".join(str(s) for s in range(1, limit + 1) if dcgan_supports(s)) + ", ..."


@dataclass
class GanTrainConfig(RunOptions):
    data: str = option("mnist5k", "mnist5k (bundled), stacked-mnist5k (three of its digits as RGB: "
                      "1,000 modes), a folder of IDX files, or a folder with one sub-folder per class")
    model: str = option("dcgan", "generator/discriminator architecture", choices=MODELS)
    conditional: bool = option(False, "class-conditional model (one-hot label in G, projection in D)")
    loss: str = option("bce", "adversarial loss", choices=LOSS_NAMES)
    spectral_norm: bool = option(False, "spectral normalisation on the discriminator's layers")
    minibatch_std: bool = option(False, "the discriminator sees each batch's feature spread, so it can punish a "
                                 "collapsed generator (Karras et al. 2018)")
    pack: int = option(1, "PacGAN: the discriminator judges packs of N samples, real or fake, stacked as channels "
                       "(Lin et al. 2018), so it sees when a generator's samples look alike; unconditional "
                       "models; 1 turns it off")
    self_condition: int | None = option(None, "self-conditioned GAN (Liu et al. 2020): condition G and D on N "
                                        "k-means clusters of the training images, so the generator must cover every "
                                        "cluster; with --conditional, N clusters within each class (class splitting, "
                                        "Grinblat et al. 2017); default: 100 clusters in all for dcgan without "
                                        "--pack (10 per class of 10), fewer where a cluster would average under 50 "
                                        "images; 0 turns it off")
    augment: str = option("none", "DiffAugment policy for every image D sees, real and fake (Zhao et al. 2020): "
                          "none, translation, cutout or translation,cutout")
    augment_p: float | None = option(None, "probability that --augment transforms an image D sees; default 1 "
                                     "(every image, as DiffAugment), or 0 at the start of --ada-target")
    ada_target: float | None = option(None, "adaptive augmentation (ADA, Karras et al. 2020): every 4 D updates, "
                                      "raise --augment-p while E[sign D(real)] is above this target (D too sure "
                                      "of the real images), lower it while below; the paper's target is 0.6")
    r1_gamma: float = option(0.0, "R1 penalty gamma/2 E||grad D(x)||^2 on real images (Mescheder et al. 2018); "
                             "0 turns it off")
    r1_every: int = option(16, "lazy R1: apply it every N discriminator updates, scaled by N (Karras et al. 2020)")
    steps: int | None = option(None, "generator updates to train for (default 2000 unless --epochs is given)")
    epochs: int | None = option(None, "passes over the data instead of --steps")
    batch_size: int = option(64, "images per batch")
    lr: float | None = option(None, "Adam learning rate (the generator's, and the discriminator's unless --lr-d); "
                              "default 1.6e-3 for a self-conditioned dcgan (the dcgan default), else 2e-4")
    lr_d: float | None = option(None, "the discriminator's Adam learning rate (default --lr; two time-scale "
                                "updates, Heusel et al. 2017)")
    lr_schedule: str = option("constant", "constant, or cosine: both learning rates decay to 0 over the run's steps "
                              "or its --time-budget, whichever ends it", choices=LR_SCHEDULES)
    beta1: float = option(0.5, "Adam beta1")
    beta2: float = option(0.999, "Adam beta2")
    n_critic: int | None = option(None, "discriminator updates per generator update (default: 5 for wgan-gp, else 1)")
    gp_weight: float = option(10.0, "gradient-penalty weight for wgan-gp")
    z_dim: int = option(100, "noise dimension")
    width: int | None = option(None, "hidden units (mlp, default 256) or base channels (dcgan, default 64)")
    image_size: int | None = option(None, "resize images to this size (default: the data's own size)")
    channels: int | None = option(None, "1 (grey) or 3 (RGB) (default: the data's own)")
    ema_decay: float | None = option(None, "EMA decay of the generator weights used for sampling; default 0.99 for a "
                                     "self-conditioned dcgan (the dcgan default), else 0.999; 0 turns EMA off")
    temperature: float | None = option(None, "the noise temperature the run samples at unless told otherwise "
                                       "(`gan sample`, `gan eval`, `aigc serve`), and that its guide is fitted to; "
                                       "default for a self-conditioned dcgan (the dcgan default) 1.2, or 1.1 with "
                                       "--conditional; else 1")
    amp: bool | None = option(None, "bf16 autocast where the hardware computes bf16 natively; default on, except for "
                              "the mlp model, whose small products run faster in fp32")
    guide: bool = option(True, "at the end, fit the run's guide (as `aigc gan guide` does, with no more steps than "
                         "the GAN had; --time-budget then trains the GAN for 85%% of it, 70%% with two stages, and "
                         "the guide has the rest), so that `gan sample`, `gan eval` and `aigc serve` draw each image as "
                         "the pick of 16 candidates (16 x 4 with two stages); --no-guide skips it")
    guide_stages: int | None = option(None, "guides fitted one on top of the other at the end, as `aigc gan guide "
                                      "--stages` does; default 2 for a conditional self-conditioned dcgan (the "
                                      "dcgan default), else 1", minimum=1, maximum=3)
    log_every: int = option(50, "steps between metric lines")
    sample_every: int = option(500, "steps between sample grids in samples/")
    save_every: int = option(500, "steps between checkpoints")

    def validate(self) -> None:
        self.validate_run()
        require(not (self.steps is not None and self.epochs is not None), "give --steps or --epochs, not both")
        for name in ("steps", "epochs", "n_critic", "width", "image_size"):
            value = getattr(self, name)
            require(value is None or value > 0, f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("batch_size", "z_dim", "log_every", "sample_every", "save_every", "r1_every"):
            require(getattr(self, name) > 0, f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        require(self.lr is None or self.lr > 0, f"--lr must be positive, got {self.lr}")
        require(self.lr_d is None or self.lr_d > 0, f"--lr-d must be positive, got {self.lr_d}")
        require(self.r1_gamma >= 0, f"--r1-gamma must be non-negative, got {self.r1_gamma}")
        require(self.pack > 0, f"--pack must be positive, got {self.pack}")
        require(self.pack == 1 or not self.conditional,
                "--pack needs an unconditional model: a pack of samples has no single label (drop --conditional)")
        require(self.self_condition is None or self.self_condition >= 0,
                f"--self-condition must be non-negative, got {self.self_condition}")
        require(not (self.self_condition and self.pack > 1),
                "--pack needs a model without labels: a pack of samples has no single cluster (drop --self-condition)")
        require(self.batch_size % self.pack == 0,
                f"--batch-size ({self.batch_size}) must be a multiple of --pack ({self.pack})")
        policy = parse_augment(self.augment)
        require(self.augment_p is None or 0 <= self.augment_p <= 1,
                f"--augment-p must be in [0, 1], got {self.augment_p}")
        require(self.ada_target is None or -1 < self.ada_target < 1,
                f"--ada-target must be in (-1, 1), the range of E[sign D(real)], got {self.ada_target}")
        require(bool(policy) or (self.augment_p is None and self.ada_target is None),
                "--augment-p and --ada-target need an --augment policy (e.g. --augment translation)")
        require(self.ema_decay is None or 0 <= self.ema_decay < 1, f"--ema-decay must be in [0, 1), got {self.ema_decay}")
        require(self.temperature is None or self.temperature > 0,
                f"--temperature must be positive, got {self.temperature}")
        require(self.channels in (None, 1, 3), f"--channels must be 1 or 3, got {self.channels}")
        require(self.gp_weight >= 0, f"--gp-weight must be non-negative, got {self.gp_weight}")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1,
                f"--beta1 and --beta2 must be in [0, 1), got {self.beta1} and {self.beta2}")
        require(self.model != "dcgan" or self.image_size is None or dcgan_supports(self.image_size),
                f"--image-size {self.image_size}: dcgan builds only {dcgan_sizes_text()} (7 or 4 times a power of "
                "two); use one of these or --model mlp")


GUIDED_HELP = ("draw each image as the pick of K candidates by importance resampling with the run's guide "
               "(`aigc gan train` fits one, or `aigc gan guide`); K generator passes per image; default 16 where "
               "the run has a guide fitted to this generator and --temperature, else 1; 1 = plain sampling")
MAX_GUIDED = 1024
GUIDE_STAGES_HELP = ("resample through the first N stages of the run's guide (`aigc gan train --guide-stages` or "
                     "`aigc gan guide --stages` fits them; a later stage needs --guided as the guide was fitted, "
                     "16 by default): 1 costs K generator passes per image, 2 K x 4; default: every stage it has")

TEMPERATURE_HELP = ("scale of the noise, z ~ N(0, T^2): above 1 more varied samples, below 1 more typical ones "
                    "(a self-conditioned model's clusters keep their shares); default: the run's own, which "
                    "`aigc gan train --temperature` set (1 for runs saved before it existed)")


@dataclass
class GanSampleConfig:
    run: str | None = option(None, "run directory written by `aigc gan train` (required)")
    n: int = option(64, "number of samples")
    out: str = option("grid.png", "output file (.png grid, or .npz with --format npz)")
    label: int | None = option(None, "class to draw (conditional models; default: all classes in turn)")
    seed: int = option(0, "random seed for the noise")
    temperature: float | None = option(None, TEMPERATURE_HELP)
    format: str = option("png", "png grid or npz array (uint8, N x H x W x C, with labels)", choices=("png", "npz"))
    guided: int | None = option(None, GUIDED_HELP, minimum=1, maximum=MAX_GUIDED)
    guide_stages: int | None = option(None, GUIDE_STAGES_HELP, minimum=1)
    ema: bool = option(True, "use the EMA generator when the run has one")
    device: str = option("auto", "where to run", choices=DEVICE_CHOICES)

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        require(0 < self.n <= MAX_SAMPLES, f"--n must be in [1, {MAX_SAMPLES}], got {self.n}")
        require(self.label is None or self.label >= 0, f"--label must be a class number (0, 1, ...), got {self.label}")
        require(self.temperature is None or self.temperature > 0,
                f"--temperature must be positive, got {self.temperature}")


@dataclass
class GanEvalConfig:
    run: str | None = option(None, "run directory written by `aigc gan train` (required)")
    ref: str = option("mnist5k", "real images to compare with: mnist5k (bundled; what `aigc gan train` learns from "
                      "unless told otherwise, so memorising looks perfect) or a held-out IDX/image folder such as the MNIST test set")
    n: int = option(10000, "number of samples to generate (in batches of --batch-size)")
    json: str | None = option(None, "where to write every metric as JSON (default: RUN/eval.json); "
                              "judge.png goes beside it")
    batch_size: int = option(1000, "images generated and scored at a time")
    seed: int = option(0, "random seed for the noise, the reference split and the judge")
    temperature: float | None = option(None, TEMPERATURE_HELP)
    guided: int | None = option(None, GUIDED_HELP, minimum=1, maximum=MAX_GUIDED)
    guide_stages: int | None = option(None, GUIDE_STAGES_HELP, minimum=1)
    ema: bool = option(True, "use the EMA generator when the run has one")
    device: str = option("auto", "where to run the generator", choices=DEVICE_CHOICES)

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        # Precision/recall compare each point with its k = 3 nearest neighbours in its own set, so a
        # set needs at least k + 1 points (and C2ST trains on half of them).
        require(MIN_EVAL_SAMPLES <= self.n <= MAX_SAMPLES,
                f"--n must be in [{MIN_EVAL_SAMPLES}, {MAX_SAMPLES}], got {self.n}: precision/recall (k=3) compare "
                "each sample with its 3 nearest neighbours")
        require(self.batch_size > 0, f"--batch-size must be positive, got {self.batch_size}")
        require(self.temperature is None or self.temperature > 0,
                f"--temperature must be positive, got {self.temperature}")


MAX_RESTARTS = 4096  # starts per image, optimised together: memory grows with them
MAX_STEPS = 1_000_000


def parse_box(text: str) -> tuple[int, int, int, int]:
    """'x,y,w,h' (pixels: the top-left corner from the left and the top, then width and height)."""
    parts = text.split(",")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--box {text!r}: give x,y,w,h as four whole numbers of pixels, e.g. 7,7,14,14")
    x, y, w, h = (int(p) for p in parts)
    if w == 0 or h == 0:
        raise UserError(f"--box {text!r}: the width and height must be positive")
    return x, y, w, h


@dataclass
class GanRestoreConfig:
    run: str | None = option(None, "run directory written by `aigc gan train` (required)")
    image: str | None = option(None, "the damaged image (PNG/JPEG) of the run's image size, or of the small size "
                               "with --upscale; a wrong size is an error (never resized)")
    images: str | None = option(None, "a folder of damaged images to repair as one batch, instead of --image")
    mask: str | None = option(None, "inpaint: a mask image of the same size, white (>= 128) where pixels are missing")
    box: str | None = option(None, "inpaint the box x,y,w,h (pixels; x, y its top-left corner)")
    upscale: int | None = option(None, "super-resolve: the input is the image's FACTOR x FACTOR block means; "
                                 "FACTOR must divide the run's image size")
    denoise: bool = option(False, "denoise: fit the whole noisy image")
    out: str | None = option(None, "the repaired PNG (with --image; OUT-compare.png beside it shows input | "
                             "repaired) or a new folder (with --images; compare/ inside) (required)")
    steps: int = option(300, "Adam steps on the latent codes", minimum=1, maximum=MAX_STEPS)
    restarts: int = option(8, "random starts per image, optimised together; the best fit is kept (see --average)",
                           minimum=1, maximum=MAX_RESTARTS)
    average: int = option(1, "output the mean of this many best starts (at most --restarts): closer to the truth on "
                               "average (higher PSNR) but blurrier than the best start alone",
                          minimum=1, maximum=MAX_RESTARTS)
    lr: float = option(0.05, "Adam learning rate of the codes (cosine-decayed)", minimum=0)
    finetune_generator: bool = option(False, "then fine-tune a copy of the generator's weights around the code found, "
                                      "per image (Deep Generative Prior, Pan et al. 2020)")
    finetune_steps: int = option(100, "steps of --finetune-generator", minimum=1, maximum=MAX_STEPS)
    label: int | None = option(None, "the class to restore as (conditional runs; default: searched with the code)")
    paste: bool = option(True, "paste what is known back into the output: a mask's known pixels (bit for bit), "
                         "the small image's block means; --no-paste keeps the generator's own image")
    seed: int = option(0, "random seed of the starting codes")
    ema: bool = option(True, "use the EMA generator when the run has one")
    amp: bool = option(True, "bf16 autocast in the search for the codes where the hardware supports it (the best "
                             "start is then chosen, and --finetune-generator runs, in float32)")
    device: str = option("auto", "where to run", choices=DEVICE_CHOICES)

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        require((self.image is None) != (self.images is None), "give --image FILE or --images FOLDER (one of them)")
        repairs = [self.mask is not None, self.box is not None, self.upscale is not None, self.denoise]
        require(sum(repairs) == 1, "choose one repair: --mask FILE, --box x,y,w,h, --upscale FACTOR or --denoise")
        require(self.out is not None, "--out is required (a PNG file, or a new folder with --images)")
        require(self.upscale is None or self.upscale >= 2, f"--upscale must be 2 or more, got {self.upscale}")
        require(self.lr > 0, f"--lr must be positive, got {self.lr}")
        require(self.average <= self.restarts,
                f"--average {self.average} needs at least as many --restarts (got {self.restarts})")
        require(self.label is None or self.label >= 0, f"--label must be a class number (0, 1, ...), got {self.label}")
        if self.box is not None:
            parse_box(self.box)


@dataclass
class GanGuideConfig:
    run: str | None = option(None, "run directory written by `aigc gan train` (required); the guide is saved in it "
                             "as guide.safetensors, replacing an older one")
    steps: int = option(3000, "Adam steps of the guide, on batches of 64 real and 64 generated images; the guide of "
                        "the lowest held-out loss is kept", minimum=1, maximum=MAX_STEPS)
    samples_per_real: int = option(4, "generated images to learn from per training image", minimum=1, maximum=64)
    temperature: float | None = option(None, "the noise temperature of the samples the guide learns from; --guided "
                                       "sampling must use the same one (default: the run's own, which `aigc gan "
                                       "train --temperature` set)")
    seed: int = option(0, "random seed of the samples, the held-out split and the guide's weights")
    ema: bool = option(True, "fit the guide to the EMA generator when the run has one (as sampling uses)")
    stages: int = option(1, "guides to fit one on top of the other: each later one learns to tell the training "
                         "images from the guided samples of those below it, and sampling resamples through all "
                         "of them (2: 16 x 4 = 64 generator passes per image)", minimum=1, maximum=3)
    stage_candidates: int = option(4, "candidates per image of each stage after the first", minimum=2, maximum=64)
    device: str = option("auto", "where to run", choices=DEVICE_CHOICES)

    def validate(self) -> None:
        require(self.run is not None, "--run RUN is required")
        require(self.temperature is None or self.temperature > 0,
                f"--temperature must be positive, got {self.temperature}")
