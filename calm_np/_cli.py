"""The ``calm-np`` command line: fit, evaluate and show convolutional mixtures.

    calm-np fit       [--dataset NAME] [options]   learn kernels, write figures
    calm-np evaluate  [--dataset NAME] [options]   ... and a linear-probe accuracy
    calm-np show      MODEL.npz [--out PNG]        the kernel grid of a saved model

``fit`` writes into ``--out`` (default ``calm-np-output``): ``model.npz``,
``kernels.png``, ``log_likelihood.png`` and ``summary.json``. ``evaluate``
adds the accuracy of a multinomial logistic regression on standardized
features to the same summary.

Errors a user can make (a missing data folder, a bad option value, no GPU for
``--backend cupy``) end with one line on stderr and a non-zero exit status;
``CALM_NP_DEBUG=1`` shows the traceback instead.

matplotlib (figures) and scikit-learn (bundled data, the linear probe) are
imported when needed: ``pip install "calm_np[examples]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import __version__, datasets, evaluation
from ._estimator import ConvolutionalMixture
from ._xp import to_numpy
from .evaluation import DATASETS, PRESETS
from .preprocessing import PREPROCESSORS as PREPROCESS

__all__ = ["main"]

PROG = "calm-np"
DEFAULT_OUT = "calm-np-output"
BACKENDS = ("numpy", "torch", "cupy")
DTYPES = ("float32", "float64")
# dataset-level ZCA decomposes a (pixels x pixels) covariance
ZCA_MAX_PIXELS = 4096

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


def _add_estimator_options(p):
    g = p.add_argument_group(
        "model (ConvolutionalMixture parameters; unset ones come from --preset)"
    )
    g.add_argument("--n-kernels", type=_int_at_least(1), metavar="K")
    g.add_argument("--kernel-size", type=_size(1), metavar="S|HxW")
    g.add_argument("--padding", type=_size(0), metavar="P|PHxPW")
    g.add_argument("--reg-kernels", type=_non_negative_float, metavar="LAMBDA")
    g.add_argument(
        "--learn-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="learn the mixture weights (default: uniform)",
    )
    inits = _choices("init", ("kmeans++", "random_patches", "random"))
    g.add_argument(
        "--init",
        metavar="|".join(inits) + "|MODEL.npz",
        help="initial kernels: a method, or the kernels of a saved model",
    )
    g.add_argument("--n-init", type=_int_at_least(1), metavar="N")
    g.add_argument("--max-iter", type=_int_at_least(0), metavar="N")
    g.add_argument("--tol", type=_non_negative_float)
    g.add_argument(
        "--batch-size",
        type=_batch_size,
        metavar="N|all",
        help="images per minibatch (the statistics are exact either way)",
    )
    g.add_argument("--method", choices=_choices("method", ("auto", "im2col", "fft")))
    g.add_argument(
        "--warm-start",
        metavar="MODEL.npz",
        help="continue EM from a saved model (its kernels, weights and shapes)",
    )
    g.add_argument(
        "--random-state", type=_int_at_least(0), metavar="SEED", help="default: 0"
    )
    g.add_argument(
        "--features",
        choices=_choices("features", ("log_joint", "log_posterior", "posterior")),
    )
    g.add_argument("--pooling", type=_size(1), metavar="G|GHxGW")
    if "latent" in _estimator_param_names():
        g.add_argument("--latent", choices=_choices("latent", ("image", "patch")))


def _add_data_options(p, labelled):
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        choices=DATASETS if not labelled else DATASETS[:-1],
        default="digits",
        help="default: digits (scikit-learn's bundled 8x8 handwritten digits)",
    )
    g.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the dataset's files (fashion-mnist: default "
        f"{datasets.FASHION_MNIST_DIR})",
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
        choices=PREPROCESS,
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
        "default) or paper (the CALM paper's setup)",
    )


def _add_run_options(p):
    g = p.add_argument_group("run")
    g.add_argument("--backend", choices=BACKENDS, default="numpy")
    g.add_argument(
        "--device",
        metavar="DEV",
        help="torch device (default: cuda when available, else cpu)",
    )
    g.add_argument("--dtype", choices=DTYPES, default="float32")
    g.add_argument(
        "--out",
        metavar="DIR",
        default=DEFAULT_OUT,
        help=f"output folder (default: {DEFAULT_OUT})",
    )
    g.add_argument(
        "-q", "--quiet", action="store_true", help="no progress lines or bars"
    )


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
        help="learn kernels; write model.npz, figures and summary.json",
        description="Learn kernels by EM and write model.npz, kernels.png, "
        "log_likelihood.png and summary.json into --out.",
    )
    _add_data_options(fit, labelled=False)
    _add_estimator_options(fit)
    _add_run_options(fit)

    ev = sub.add_parser(
        "evaluate",
        help="fit (or load) a model and report a linear-probe accuracy",
        description="Fit a model (or load one with --model), extract pooled "
        "features of the training and test images, fit a multinomial logistic "
        "regression on the standardized training features and report the test "
        "accuracy. Writes what fit writes, with the accuracy in summary.json.",
    )
    _add_data_options(ev, labelled=True)
    _add_estimator_options(ev)
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
        default=1.0,
        dest="C",
        help="inverse regularization of the logistic regression (default: 1)",
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
# data
# ---------------------------------------------------------------------------


def _load_data(args, labelled):
    """``(X_train, y_train, X_test, y_test)`` as host arrays (test may be None)."""
    name, folder, limit = args.dataset, args.data_dir, args.limit
    if folder is not None and not Path(folder).expanduser().is_dir():
        raise UserError(f"--data-dir {folder} is not a folder")
    if name in ("mnist", "stl10") and folder is None:
        what = "the four MNIST IDX files" if name == "mnist" else "stl10_binary"
        raise UserError(f"--dataset {name} needs --data-dir DIR (the folder of {what})")
    X_tr, y_tr, X_te, y_te = evaluation.load_dataset(
        name, folder, limit=limit, test=labelled, seed=args.random_state or 0
    )
    return X_tr, y_tr, X_te, y_te


def _preprocess(mode, X_train, X_test, window):
    """``evaluation.preprocess``; whole-image ZCA only on small images."""
    pixels = math.prod(X_train.shape[1:])
    if mode == "zca" and pixels > ZCA_MAX_PIXELS:
        raise UserError(
            f"--preprocess zca whitens whole images, but these have {pixels} "
            f"values (at most {ZCA_MAX_PIXELS}); use --preprocess per-image"
        )
    return evaluation.preprocess(mode, X_train, X_test, window=window)


# ---------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------


def _backend(name, device, dtype):
    """``(to_backend, device_name)``: ``evaluation.array_mover``, one-line errors."""
    try:
        return evaluation.array_mover(name, device, dtype)
    except (ValueError, ImportError) as exc:
        flags = f"--backend {name}" + (f" --device {device}" if device else "")
        raise UserError(f"{flags}: {exc}") from None


# ---------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------


def _resolve_settings(args):
    """Estimator parameters and preprocessing: preset, then explicit options."""
    preset = evaluation.preset(args.preset, args.dataset)
    extras = dict(
        preprocess=args.preprocess or preset.pop("preprocess"),
        fit_limit=args.fit_limit or preset.pop("fit_limit", None),
    )
    names = _estimator_param_names()
    params = {"random_state": 0, **{k: v for k, v in preset.items() if k in names}}
    params.update(_explicit_params(args))
    return params, extras


def _explicit_params(args):
    """Estimator parameters given on the command line."""
    params = {}
    internal = {"callback", "verbose", "warm_start", "init"}  # handled apart
    for name in _estimator_param_names() - internal:
        value = getattr(args, name, None)
        if value is not None:
            params[name] = None if value == "all" else value
    return params


def _check_files(args):
    """Model-file options, checked before any data is read."""
    inits = _choices("init", ("kmeans++", "random_patches", "random"))
    if args.init is not None and args.init not in inits:
        if not args.init.endswith(".npz"):
            raise UserError(
                f"--init {args.init!r} is neither an init method "
                f"({', '.join(inits)}) nor a model file (.npz)"
            )
        if not Path(args.init).is_file():
            raise UserError(f"--init model file {args.init} does not exist")
    for option in ("warm_start", "model"):
        path = getattr(args, option, None)
        if path is not None and not Path(path).is_file():
            flag = "--" + option.replace("_", "-")
            raise UserError(f"{flag} model file {path} does not exist")


def _init_value(args, to_backend):
    if args.init is None:
        return None
    if args.init in _choices("init", ("kmeans++", "random_patches", "random")):
        return args.init
    if not args.init.endswith(".npz"):
        raise UserError(
            f"--init {args.init!r} is neither an init method "
            f"({', '.join(_choices('init', ()))}) nor a model file (.npz)"
        )
    return to_backend(to_numpy(_load_model(args.init).kernels_))


def _load_model(path):
    if not Path(path).is_file():
        raise UserError(f"model file {path} does not exist")
    return ConvolutionalMixture.load(path)


def _progress_verbosity(quiet):
    """Estimator ``verbose``: lines per iteration, plus a bar on a terminal."""
    if quiet:
        return 0
    if not _bars_wanted():
        return 1  # one line per EM iteration
    return 2  # ... and a progress bar over the images of each pass


def _bars_wanted():
    """Progress bars only on a terminal (a log file would fill with them)."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return sys.stderr.isatty()


def _fit(args, params, X_train, to_backend, log):
    times, last = [], [time.perf_counter()]

    def record(_model):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    init = _init_value(args, to_backend)
    if args.warm_start is not None:
        # the saved model's settings, then what the command line says
        model = _load_model(args.warm_start)
        explicit = _explicit_params(args)
        for name in ("n_kernels", "kernel_size", "padding"):
            fitted = getattr(model, name)
            if name in explicit and _as_pair(explicit[name]) != _as_pair(fitted):
                raise UserError(
                    f"--warm-start model has {name} {fitted!r}, but "
                    f"--{name.replace('_', '-')} asks for {explicit[name]!r}; drop "
                    "the option or start a new model"
                )
        model.kernels_ = to_backend(to_numpy(model.kernels_))
        model.weights_ = to_backend(to_numpy(model.weights_))
        model.set_params(**explicit, warm_start=True)
    else:
        model = ConvolutionalMixture(**params)
    if init is not None:
        model.set_params(init=init)
    model.set_params(callback=record, verbose=_progress_verbosity(args.quiet))
    log(
        f"fitting {model.n_kernels} kernels of {_fmt_pair(model.kernel_size)} on "
        f"{X_train.shape[0]} images of {_fmt_shape(X_train.shape[1:])}"
    )
    start = time.perf_counter()
    last[0] = start
    # the estimator reports progress on stdout; stdout is for results here
    with contextlib.redirect_stdout(sys.stderr):
        model.fit(X_train)
    seconds = time.perf_counter() - start
    model.set_params(callback=None, verbose=0)
    return model, seconds, times


def _as_pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _fmt_pair(v):
    h, w = _as_pair(v)
    return f"{h}x{w}"


def _fmt_shape(shape):
    return "x".join(str(int(s)) for s in shape)


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------


def _machine():
    return dict(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
    )


def _json_params(model):
    out = {}
    for name, value in model.get_params().items():
        if name in ("callback", "verbose"):
            continue
        if hasattr(value, "shape"):
            value = f"array of shape {tuple(value.shape)}"
        elif isinstance(value, tuple):
            value = list(value)
        out[name] = value
    return out


def _out_dir(path, create):
    """The output folder; created only once there is something to write."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {path} exists and is not a folder")
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot create --out folder {path}: {exc.strerror}"
            ) from None
    return out


def _write_outputs(out, model, summary, log):
    from . import _plots

    _out_dir(out, create=True)
    paths = dict(
        model=out / "model.npz",
        kernels_png=out / "kernels.png",
        log_likelihood_png=out / "log_likelihood.png",
        summary=out / "summary.json",
    )
    model.save(paths["model"])
    k, c, kh, kw = model.kernels_.shape
    order = np.argsort(-np.asarray(to_numpy(model.weights_)), kind="stable")
    _plots.kernel_grid(
        model.kernels_,
        paths["kernels_png"],
        title=f"{k} kernels {kh}x{kw}, {summary['dataset']}",
        order=order if model.learn_weights else None,
    )
    _plots.objective_curve(
        model.lower_bounds_,
        paths["log_likelihood_png"],
        title=f"EM on {summary['dataset']} ({summary['n_fit']} images)",
        ylabel=_objective_label(model),
    )
    summary["files"] = {key: str(p) for key, p in paths.items()}
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {', '.join(str(p) for p in paths.values())}")
    return paths


def _objective_label(model):
    if getattr(model, "latent", "image") == "patch":
        return "pseudo-log-likelihood per image (nats)"
    if model.reg_kernels:
        return "penalised log-likelihood per image (nats)"
    return "mean log-likelihood per image (nats)"


def _run_fit(args, evaluate):
    log = _logger(args.quiet)
    out = _out_dir(args.out, create=False)
    to_backend, device = _backend(args.backend, args.device, args.dtype)
    params, extras = _resolve_settings(args)
    preprocess, fit_limit = extras["preprocess"], extras["fit_limit"]
    model_path = getattr(args, "model", None)
    _check_files(args)
    X_train, y_train, X_test, y_test = _load_data(args, labelled=evaluate)
    window = _as_pair(params.get("kernel_size", 5))
    for saved in (model_path, args.warm_start):
        if saved is not None:  # normalize as for the saved model's kernels
            window = tuple(_load_model(saved).kernel_size_)
    X_train, X_test = _preprocess(preprocess, X_train, X_test, window)
    log(f"{args.dataset}: {X_train.shape[0]} training images, preprocess {preprocess}")
    X_train_b = to_backend(X_train)
    n_fit = X_train.shape[0] if fit_limit is None else min(fit_limit, len(X_train))
    summary = dict(
        command=[PROG, *sys.argv[1:]] if sys.argv else [PROG],
        calm_np_version=__version__,
        dataset=args.dataset,
        data_dir=args.data_dir,
        n_train=int(X_train.shape[0]),
        n_fit=int(n_fit),
        image_shape=[int(s) for s in X_train.shape[1:]],
        preprocess=preprocess,
        preset=args.preset,
        backend=args.backend,
        device=device,
        dtype=args.dtype,
        machine=_machine(),
    )
    if model_path is not None:
        model = _load_model(model_path)
        overrides = {
            k: params[k]
            for k in ("features", "pooling", "method", "batch_size")
            if getattr(args, k, None) is not None
        }
        model.set_params(**overrides)
        model.kernels_ = to_backend(to_numpy(model.kernels_))
        model.weights_ = to_backend(to_numpy(model.weights_))
        summary.update(model_loaded_from=str(model_path), fit_seconds=0.0)
        if model.n_channels_in_ != X_train.shape[1]:
            raise UserError(
                f"{model_path} was fitted on {model.n_channels_in_}-channel images "
                f"but {args.dataset} has {X_train.shape[1]}"
            )
    else:
        model, seconds, times = _fit(args, params, X_train_b[:n_fit], to_backend, log)
        summary.update(
            fit_seconds=round(seconds, 3),
            seconds_per_iteration=[round(t, 4) for t in times],
            n_iter=int(model.n_iter_),
            converged=bool(model.converged_),
            final_objective=model.lower_bound_,
            objective_per_iteration=list(model.lower_bounds_),
        )
        log(
            f"{model.n_iter_} EM iterations in {seconds:.1f} s, objective "
            f"{model.lower_bound_:.4f} nats per image, converged={model.converged_}"
        )
    summary["params"] = _json_params(model)
    if evaluate:
        batch = model.batch_size or 1000
        t0 = time.perf_counter()
        bars = not args.quiet and _bars_wanted()
        F_train = evaluation.extract_features(model, X_train_b, batch, progress=bars)
        F_test = evaluation.extract_features(
            model, to_backend(X_test), batch, progress=bars
        )
        t1 = time.perf_counter()
        accuracy = evaluation.linear_probe(F_train, y_train, F_test, y_test, C=args.C)
        t2 = time.perf_counter()
        summary["evaluation"] = dict(
            accuracy=accuracy,
            n_train=int(F_train.shape[0]),
            n_test=int(F_test.shape[0]),
            n_features=int(F_train.shape[1]),
            probe="StandardScaler + multinomial LogisticRegression",
            C=args.C,
            feature_seconds=round(t1 - t0, 3),
            probe_seconds=round(t2 - t1, 3),
            total_seconds=round(summary["fit_seconds"] + t2 - t0, 3),
        )
    _write_outputs(out, model, summary, log)
    if evaluate:
        e = summary["evaluation"]
        print(
            f"test accuracy {e['accuracy']:.4f} ({e['n_test']} {args.dataset} test "
            f"images, {e['n_features']} features, linear probe on {e['n_train']} "
            f"training images; {e['total_seconds']:.1f} s)"
        )
    else:
        print(
            f"objective {model.lower_bound_:.4f} nats per image after "
            f"{model.n_iter_} iterations; model in {out / 'model.npz'}"
        )
    return 0


def _run_show(args):
    from . import _plots

    model = _load_model(args.model)
    path = Path(args.out) if args.out else Path(args.model).with_suffix("")
    if not args.out:
        path = path.with_name(path.name + "_kernels.png")
    if not path.parent.is_dir():
        raise UserError(f"--out {path}: folder {path.parent} does not exist")
    k, c, kh, kw = model.kernels_.shape
    _plots.kernel_grid(model.kernels_, path, title=f"{k} kernels {kh}x{kw}")
    print(path)
    return 0


def _logger(quiet):
    def log(message):
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def _one_line(exc):
    text = str(exc) or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing {text}"
    return " ".join(text.split())


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {_one_line(message)}", file=sys.stderr, flush=True)


def main(argv=None):
    """Run the ``calm-np`` command line; returns the exit status.

    Parameters
    ----------
    argv : list of str or None, default=None
        Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success, 1 for an error in the run (bad data, missing files,
        no GPU), 2 for a bad command line, 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error
        return exc.code if isinstance(exc.code, int) else 2
    debug = os.environ.get("CALM_NP_DEBUG", "") not in ("", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _show_warning
        try:
            if args.command == "show":
                return _run_show(args)
            return _run_fit(args, evaluate=args.command == "evaluate")
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return 130
        except (UserError, OSError, ValueError, TypeError, ImportError) as exc:
            if debug:
                raise
            print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 1
        except MemoryError:
            if debug:
                raise
            print(
                f"{PROG} {args.command}: error: out of memory; use --limit N, a "
                "smaller --batch-size, or --dtype float32",
                file=sys.stderr,
            )
            return 1
