"""The ``calm-np`` options: the parser, and from parsed options to settings.

Option values are checked while parsing (one-line usage errors); the
settings of a run are a preset's (:mod:`calm_np.evaluation`) overridden by
what the command line says.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import zipfile
from pathlib import Path

from . import __version__, _cli_network, _folder, datasets, evaluation
from ._checks import INITS
from ._estimator import ConvolutionalMixture
from ._network import ConvolutionalMixtureNetwork
from ._pool import n_threads as _n_threads
from .evaluation import DATA_DIR_DATASETS, DATASETS, PRESETS
from .preprocessing import PREPROCESSORS

PROG = "calm-np"
DEFAULT_OUT = "calm-np-output"
BACKENDS = ("numpy", "torch", "cupy")
DTYPES = ("float32", "float64")


class UserError(Exception):
    """A mistake the user can fix; reported as one line, no traceback."""


# ---------------------------------------------------------------------------
# option parsing
# ---------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage is one ``--help`` away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}"
            ) from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int>={low}"
    return parse


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _positive_float(text):
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _size(low):
    """``5`` or ``5x3`` (also ``5,3``): an int or an (h, w) pair."""

    def parse(text):
        parts = text.lower().replace(",", "x").split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer or HxW (e.g. 5 or 5x3), got {text!r}"
            ) from None
        if len(values) not in (1, 2):
            raise argparse.ArgumentTypeError(
                f"expected an integer or HxW (e.g. 5 or 5x3), got {text!r}"
            )
        if min(values) < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text!r}")
        return values[0] if len(values) == 1 else tuple(values)

    parse.__name__ = "size"
    return parse


def _pooling(text):
    """``3``, ``2x3`` or a pyramid ``2+3`` (each grid ``G`` or ``GHxGW``):
    the grid, or a tuple of (gh, gw) grids whose features are concatenated."""
    parts = text.split("+")
    if "" in parts:
        raise argparse.ArgumentTypeError(
            f"expected a grid G or GHxGW, or grids joined by + (e.g. 2+3), got {text!r}"
        )
    grids = [_size(1)(part) for part in parts]
    if len(grids) == 1:
        return grids[0]
    return tuple(g if isinstance(g, tuple) else (g, g) for g in grids)


def _batch_size(text):
    if text.lower() in ("none", "all"):
        return "all"
    return _int_at_least(1)(text)


def _estimator_param_names():
    return set(ConvolutionalMixture().get_params())


def _choices(name, fallback):
    """Allowed values of an estimator option, read from calm_np itself."""
    from . import _checks, _estimator, _init

    table = {
        "method": getattr(_checks, "METHODS", fallback),
        "features": getattr(_estimator, "FEATURES", fallback),
        "init": getattr(_init, "INITS", fallback),
        "latent": getattr(_checks, "LATENTS", fallback),
    }
    return tuple(table.get(name, fallback))


# the estimator's boolean parameters, as --flag / --no-flag
_FLAGS = {
    "--learn-weights": "learn the mixture weights (off: uniform weights)",
    "--learn-variance": "learn a shared pixel variance σ² (off: σ² = 1, the "
    "paper's model)",
    "--whiten": "normalise and ZCA-whiten every patch inside the model "
    "(latent patch only)",
}


def _preset_keys():
    """Estimator parameters that some preset sets, for some data set."""
    keys = set()
    for name in PRESETS:
        for dataset in DATASETS:
            keys |= set(evaluation.get_preset(name, dataset).estimator)
    return keys


def _shown(name, value):
    """An estimator default as the command line spells it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if name == "batch_size" and value is None:
        return "automatic (about 8 MB of maps per batch)"
    if name == "random_state" and value is None:
        return "none (fresh randomness on every run)"
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)


def _add_defaults(group):
    """End each estimator option's help with its default: the estimator's
    own where no preset sets the option, else the preset's (listed at the
    end of ``--help``) and the estimator's where the preset leaves it."""
    defaults = ConvolutionalMixture().get_params()
    by_preset = _preset_keys()
    for action in group._group_actions:
        name = action.dest
        if name not in defaults or name in ("warm_start", "init"):
            continue  # they name files or methods; their help says it
        own = _shown(name, defaults[name])
        tail = (
            f"default: the --preset's, else {own}"
            if name in by_preset
            else f"default: {own} (no preset sets it)"
        )
        action.help = f"{action.help}; {tail}" if action.help else tail


def _add_estimator_options(p):
    g = p.add_argument_group(
        "model (ConvolutionalMixture parameters; an option not given takes the "
        "--preset's value for the --dataset, listed at the end of this help)"
    )
    g.add_argument("--n-kernels", type=_int_at_least(1), metavar="K")
    g.add_argument("--kernel-size", type=_size(1), metavar="S|HxW")
    g.add_argument("--padding", type=_size(0), metavar="P|PHxPW")
    g.add_argument("--reg-kernels", type=_non_negative_float, metavar="LAMBDA")
    for flag, text in _FLAGS.items():
        if flag[2:].replace("-", "_") in _estimator_param_names():
            g.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
    inits = _choices("init", INITS)
    g.add_argument(
        "--init",
        metavar="|".join(inits) + "|MODEL.npz",
        help="initial kernels: a method, or the kernels of a saved model "
        "(default: the --preset's, else kmeans++)",
    )
    g.add_argument("--n-init", type=_int_at_least(1), metavar="N")
    g.add_argument("--max-iter", type=_int_at_least(0), metavar="N")
    g.add_argument("--tol", type=_non_negative_float)
    g.add_argument(
        "--batch-size",
        type=_batch_size,
        metavar="N|all",
        help="images per minibatch (the statistics are exact either way; all: "
        "automatic)",
    )
    g.add_argument("--method", choices=_choices("method", ("auto", "im2col", "fft")))
    g.add_argument(
        "--warm-start",
        metavar="MODEL.npz",
        help="continue EM from a saved model (its kernels, weights and shapes)",
    )
    g.add_argument(
        "--random-state",
        type=_int_at_least(0),
        metavar="SEED",
        help="seed of initialisation and re-seeding",
    )
    g.add_argument(
        "--features",
        choices=_choices("features", ("log_joint", "log_posterior", "posterior")),
    )
    g.add_argument(
        "--pooling",
        type=_pooling,
        metavar="G|GHxGW|G+G..",
        help="grid of pooling cells, or a pyramid of grids (e.g. 2+3)",
    )
    if "latent" in _estimator_param_names():
        g.add_argument("--latent", choices=_choices("latent", ("image", "patch")))
    _add_defaults(g)


def _add_data_options(p, labelled):
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=DATASETS if not labelled else DATASETS[:-1],
        default="digits",
        help="default: digits (scikit-learn's bundled 8x8 handwritten digits); "
        "folder: your own images in --data-dir ("
        + (
            "DIR/train/<class>/ and DIR/test/<class>/"
            if labelled
            else "any folder of images, or of one sub-folder per class"
        )
        + ")",
    )
    g.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the dataset's files; only for "
        + ", ".join(DATA_DIR_DATASETS)
        + f" (fashion-mnist: default {datasets.FASHION_MNIST_DIR}; mnist, stl10 "
        "and folder: required)",
    )
    g.add_argument(
        "--image-size",
        type=_size(1),
        metavar="S|HxW",
        help="--dataset folder: resize every image to HxW (default: the files' "
        "size, which must then be the same for all)",
    )
    g.add_argument(
        "--image-mode",
        choices=tuple(_folder.IMAGE_MODES),
        help="--dataset folder: L (grayscale), RGB or RGBA (default: L when "
        "every file is grayscale, else RGB)",
    )
    g.add_argument(
        "--limit",
        type=_int_at_least(1),
        metavar="N",
        help="use only the first N training (and N test) images",
    )
    g.add_argument(
        "--fit-limit",
        type=_int_at_least(1),
        metavar="N",
        help="learn the kernels from the first N training images only (the "
        "features and the probe still use all of them)",
    )
    g.add_argument(
        "--preprocess",
        choices=PREPROCESSORS,
        help="local: local contrast normalization over a window of the kernel "
        "size; standardize: one mean and scale for all pixels; per-image: each "
        "image and channel to zero mean, unit variance; zca: dataset-level ZCA "
        "whitening of whole images; none: pixel values scaled to [0, 1]",
    )
    g.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="best",
        help="named settings for the unset options: best (measured, the "
        "default), best1152 (half its kernels, about half the time), best256 "
        "(at most 256 features), paper (the CALM paper's setup), network "
        "(two stacked layers) or stack (best with a second layer: the best "
        "stack measured, about twice the time)",
    )


def _add_run_options(p):
    g = p.add_argument_group("run")
    g.add_argument(
        "--backend", choices=BACKENDS, default="numpy", help="default: numpy"
    )
    g.add_argument(
        "--device",
        metavar="DEV",
        help="torch device (default: cuda when available, else cpu)",
    )
    g.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="default: float32"
    )
    g.add_argument(
        "--out",
        metavar="DIR",
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT})",
    )
    g.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines or bars"
    )


def presets_epilog(datasets_shown):
    """Every preset's settings for every data set: the defaults of the
    options a run does not give (``--help`` ends with it)."""
    lines = [
        "presets (what --preset sets for each --dataset; options given on the "
        "command line replace these; evaluation.make_estimator(PRESET, DATASET) "
        "builds the same model in Python):"
    ]
    for name in PRESETS:
        for dataset in datasets_shown:
            p = evaluation.get_preset(name, dataset)
            lines.append(f"  {name} / {dataset}: {p.summary()}")
    return "\n".join(lines)


def build_parser():
    parser = _Parser(
        prog=PROG,
        description="Learn convolution kernels by EM (convolutional Gaussian "
        "mixtures), look at them, and measure their features.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    fit = sub.add_parser(
        "fit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=presets_epilog(DATASETS),
        help="learn kernels; write model.npz, figures and summary.json",
        description="Learn kernels by EM and write model.npz, kernels.png, "
        "log_likelihood.png and summary.json into --out.",
    )
    _add_data_options(fit, labelled=False)
    _add_estimator_options(fit)
    _cli_network.add_options(fit, _int_at_least)
    _add_run_options(fit)

    ev = sub.add_parser(
        "evaluate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=presets_epilog(DATASETS[:-1]),
        help="fit (or load) a model and report a linear-probe accuracy",
        description="Fit a model (or load one with --model), extract pooled "
        "features of the training and test images, fit a multinomial logistic "
        "regression on the standardized training features and report the test "
        "accuracy. Writes what fit writes, with the accuracy in summary.json.",
    )
    _add_data_options(ev, labelled=True)
    _add_estimator_options(ev)
    _cli_network.add_options(ev, _int_at_least)
    _add_run_options(ev)
    g = ev.add_argument_group("evaluation")
    g.add_argument(
        "--model",
        metavar="MODEL.npz",
        help="evaluate a saved model instead of fitting one (--features, "
        "--pooling, --batch-size and --method still apply)",
    )
    g.add_argument(
        "--C",
        type=_positive_float,
        dest="C",
        help="inverse regularization of the logistic regression (default: the "
        "preset's, else 1)",
    )

    show = sub.add_parser(
        "show",
        help="draw the kernel grid of a saved model",
        description="Draw the kernels of a saved model as a grid (PNG).",
    )
    show.add_argument("model", metavar="MODEL.npz")
    show.add_argument(
        "--out", metavar="PNG", help="default: MODEL_kernels.png next to the model"
    )
    return parser


# ---------------------------------------------------------------------------
# settings
# ---------------------------------------------------------------------------


def _resolve_settings(args):
    """Estimator parameters and the pipeline: preset, then explicit options.

    The preset is ``evaluation.get_preset`` (what ``make_estimator`` builds
    in Python); options given on the command line replace its values.
    """
    preset = evaluation.get_preset(args.preset, args.dataset)
    extras = dict(
        preprocess=args.preprocess or preset.preprocess,
        fit_limit=args.fit_limit or preset.fit_limit,
        C=getattr(args, "C", None) or preset.C,
        network=_cli_network.settings(args, preset.network),
    )
    params = dict(preset.estimator)
    params.update(_explicit_params(args))
    return params, extras


def check_settings(args, params, network):
    """The estimator's (or network's) parameter checks, run before any data
    is read: a bad combination (``--padding`` beyond ``--kernel-size - 1``)
    costs a second, not a data load; the error names the options (and says
    which value came from the preset)."""
    import re

    model = _cli_network.build(params, network)
    try:
        model._check_params()
    except (TypeError, ValueError) as exc:
        given = _explicit_params(args)
        names = [n for n in sorted(params) if re.search(rf"\b{n}=", str(exc))]
        flags = ", ".join(
            "--" + n.replace("_", "-") + ("" if n in given else " (--preset's)")
            for n in names
        )
        raise UserError(f"{flags}: {exc}" if flags else str(exc)) from exc


def _explicit_params(args):
    """Estimator parameters given on the command line."""
    params = {}
    internal = {"callback", "verbose", "warm_start", "init"}  # handled apart
    for name in _estimator_param_names() - internal:
        value = getattr(args, name, None)
        if value is not None:
            params[name] = None if value == "all" else value
    return params


# ---------------------------------------------------------------------------
# paths: every file read or written, checked before any work
# ---------------------------------------------------------------------------

OUTPUTS = dict(
    model="model.npz",
    kernels_png="kernels.png",
    log_likelihood_png="log_likelihood.png",
    summary="summary.json",
)
"""What ``fit`` and ``evaluate`` write into ``--out``."""

MODEL_OPTIONS = ("init", "warm_start", "model")


def check_paths(args):
    """Resolve and check every path the run reads or writes; write nothing.

    Runs before any data is loaded or model fitted, so that a bad ``--out``
    or model file costs a second, not a fit. Model files must be readable
    files, ``--data-dir`` a folder, every file to write must not be a folder
    and must be creatable (its first existing ancestor a writable folder).
    ``CALM_NP_NUM_THREADS``, read by the engines mid-run, is checked too.

    Returns
    -------
    paths : dict of str to Path
        ``show``: ``png``; ``fit``/``evaluate``: :data:`OUTPUTS` in ``--out``.
    """
    try:
        _n_threads()  # the engines' own check of CALM_NP_NUM_THREADS
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.command == "show":
        model = _readable(args.model, "MODEL")
        name = model.with_suffix("").name + "_kernels.png"
        png = model.with_name(name) if args.out is None else Path(args.out)
        if png.is_dir():  # an existing folder: write inside it
            png = png / name
        _check_writable(png, "--out")
        return dict(png=png)
    inits = _choices("init", INITS)
    if args.init is not None and args.init not in inits:
        if not args.init.endswith(".npz"):
            raise UserError(
                f"--init {args.init!r} is neither an init method "
                f"({', '.join(inits)}) nor a model file (.npz)"
            )
    for option in MODEL_OPTIONS:
        path = getattr(args, option, None)
        if path is not None and not (option == "init" and path in inits):
            _readable(path, "--" + option.replace("_", "-"))
    _check_data_dir(args)
    if args.out == "":
        raise UserError(
            f"--out is empty; give the output folder (default: {DEFAULT_OUT})"
        )
    out = Path(args.out).expanduser()
    _check_folder(out, "--out")
    paths = {key: out / name for key, name in OUTPUTS.items()}
    for path in paths.values():
        _check_writable(path, "--out")
    return paths


def probe_folder(folder, flag):
    """Create ``folder`` and write (then remove) a small file in it, so that a
    folder where nothing can be written (``/proc``, ``/sys``, a read-only
    mount, a full disk) is refused before the fit, naming ``flag``.

    Returns the folders it created, deepest first (:func:`remove_created`
    removes them again if the run fails)."""
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    created, missing = [], folder
    while not missing.exists() and missing != missing.parent:
        created.append(missing)
        missing = missing.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".calm_np-probe-{os.getpid()}"
        with open(probe, "wb") as fh:
            fh.write(b"calm_np write probe\n")
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        remove_created(created)
        raise UserError(
            f"{flag} {folder}: cannot write there ({exc.strerror or exc}); choose "
            f"another {flag}"
        ) from None
    return created


def remove_created(folders):
    """Remove the folders :func:`probe_folder` made, if still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _check_data_dir(args):
    name, folder = args.dataset, args.data_dir
    if folder is not None and name not in DATA_DIR_DATASETS:
        raise UserError(
            f"--data-dir is not read by --dataset {name} (bundled, no files); "
            "drop --data-dir, or name the data set it holds: --dataset "
            + "|".join(DATA_DIR_DATASETS)
        )
    for option in ("image_size", "image_mode"):
        if getattr(args, option, None) is not None and name != "folder":
            flag = "--" + option.replace("_", "-")
            raise UserError(
                f"{flag} resizes or converts the image files of --dataset folder; "
                f"--dataset {name} has none"
            )
    if folder is not None and not Path(folder).expanduser().is_dir():
        raise UserError(f"--data-dir {folder} is not a folder; give the data's folder")
    if name in ("mnist", "stl10", "folder") and folder is None:
        what = {
            "mnist": "the four MNIST IDX files",
            "stl10": "stl10_binary",
            "folder": "your images: DIR/train/<class>/ and DIR/test/<class>/ for "
            "evaluate, any folder of images for fit",
        }[name]
        raise UserError(f"--dataset {name} needs --data-dir DIR (the folder of {what})")
    if name == "folder" and args.command == "evaluate":
        root = Path(folder).expanduser()
        missing = [s for s in ("train", "test") if not (root / s).is_dir()]
        if missing:
            raise UserError(
                f"--data-dir {folder} has no {' or '.join(s + '/' for s in missing)}"
                " folder; evaluate reads DIR/train/<class>/ and DIR/test/<class>/ "
                "(fit reads any folder)"
            )


# what each data set and step needs beyond the core dependencies, and the
# extra that installs it
_NEEDS = dict(
    sklearn=("scikit-learn", "examples"),
    matplotlib=("matplotlib", "examples"),
    PIL=("Pillow", "images"),
)


def check_extras(args):
    """Refuse, before any work, a run whose optional dependencies are
    missing; the message gives the ``pip install`` line."""
    import importlib.util

    wanted = ["matplotlib"]  # the figures
    if args.command != "show":
        if args.dataset in ("digits", "sample-images"):
            wanted.append("sklearn")
        if args.dataset in ("folder", "sample-images"):
            wanted.append("PIL")
    for module in wanted:
        if importlib.util.find_spec(module) is None:
            package, extra = _NEEDS[module]
            what = (
                "draws its figures"
                if module == "matplotlib"
                else f"reads --dataset {args.dataset}"
            )
            raise UserError(
                f"calm-np {args.command} {what} with {package}, which is not "
                f'installed; install it with: pip install "calm_np[{extra}]" (or '
                f'pip install ".[{extra}]" in a clone)'
            )


def _readable(path, flag):
    """A model file to read: it exists, is a file, and may be read."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"{flag} model file {path} does not exist")
    if not p.is_file():
        raise UserError(f"{flag} {path} is a folder, not a model file (.npz)")
    if not os.access(p, os.R_OK):
        raise UserError(f"{flag} {path} cannot be read (no permission); chmod u+r it")
    return p


def _check_writable(path, flag):
    """A file to write: not a folder; overwritable, or its folder creatable
    (a model saved over a file in a read-only folder is written in place)."""
    if path.is_dir():
        raise UserError(
            f"{flag}: {path} is a folder, but a file is written there; remove it "
            f"or choose another {flag}"
        )
    if path.exists():
        if not os.access(path, os.W_OK):
            raise UserError(
                f"{flag}: cannot overwrite {path} (no write permission); choose "
                f"another {flag}"
            )
        return
    _check_folder(path.parent, flag)


def _check_folder(folder, flag):
    """A folder to write into: it, or its first existing ancestor, writable."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{flag} {folder}: {existing} is a file, not a folder; choose another "
            f"{flag}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} {folder}: no permission to write in {existing}; choose "
            f"another {flag}"
        )


# what parsing a damaged or foreign model file may raise (ValueError: also
# JSON and Unicode errors)
_LOAD_ERRORS = (
    ValueError,
    TypeError,
    OSError,
    LookupError,
    AttributeError,
    EOFError,
    zipfile.BadZipFile,
)


def load_model(path, flag, networks=False):
    """A saved model, or a :class:`UserError` naming the option and the file.

    A damaged or foreign file may fail in many ways while it is parsed (the
    estimator's ``load`` says what is wrong); all of them are user errors.
    With ``networks`` a saved :class:`ConvolutionalMixtureNetwork` is read too.
    """
    try:
        return ConvolutionalMixture.load(path)
    except _LOAD_ERRORS as exc:
        with contextlib.suppress(*_LOAD_ERRORS):
            network = ConvolutionalMixtureNetwork.load(path)
            if networks:
                return network
            raise UserError(
                f"{flag} {path} is a {len(network.layers_)}-layer network (calm-np "
                f"fit --layers); {flag} takes a single-layer model"
            ) from None
        text = " ".join((str(exc) or type(exc).__name__).split())
        if isinstance(exc, KeyError):
            text = f"its header lacks {text}"
        where = f"{flag}: " if str(path) in text else f"{flag} {path}: "
        raise UserError(f"{where}{text} (give a model written by calm-np fit)") from exc


def _as_pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)
