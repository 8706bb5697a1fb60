"""The ``calm-np`` command line: fit, evaluate and show convolutional mixtures.

    calm-np fit       [--dataset NAME] [options]   learn kernels, write figures
    calm-np evaluate  [--dataset NAME] [options]   ... and a linear-probe accuracy
    calm-np show      MODEL.npz [--out PNG]        the kernel grid of a saved model

``fit`` writes into ``--out`` (default ``calm-np-output``): ``model.npz``,
``kernels.png``, ``log_likelihood.png`` and ``summary.json``. ``evaluate``
adds a linear probe's accuracy (``evaluation.linear_probe``) to the summary.

Errors a user can make (a missing data folder, a bad option value, no GPU for
``--backend cupy``) end with one line on stderr and a non-zero exit status;
``CALM_NP_DEBUG=1`` shows the traceback instead.

matplotlib and scikit-learn load when needed: ``pip install "calm_np[examples]"``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import sys
import time
import warnings

from . import __version__, _cli_network, evaluation
from ._cli_options import (
    DEFAULT_OUT,
    MODEL_OPTIONS,
    PROG,
    UserError,
    _as_pair,
    _explicit_params,
    _resolve_settings,
    build_parser,
    check_paths,
    load_model,
)
from ._estimator import ConvolutionalMixture  # noqa: F401  (tests patch its fit)
from ._xp import to_numpy

__all__ = ["DEFAULT_OUT", "UserError", "build_parser", "main"]

# dataset-level ZCA decomposes a (pixels x pixels) covariance
ZCA_MAX_PIXELS = 4096


def _load_data(args, labelled):
    """``(X_train, y_train, X_test, y_test)`` as host arrays (test may be None)."""
    name, folder, limit = args.dataset, args.data_dir, args.limit
    seed = args.random_state or 0  # sample-images: which crops
    return evaluation.load_dataset(name, folder, limit=limit, test=labelled, seed=seed)


def _preprocess(mode, X_train, X_test, window, dtype):
    """``evaluation.preprocess``; whole-image ZCA only on small images."""
    pixels = math.prod(X_train.shape[1:])
    if mode == "zca" and pixels > ZCA_MAX_PIXELS:
        raise UserError(
            f"--preprocess zca whitens whole images, but these have {pixels} "
            f"values (at most {ZCA_MAX_PIXELS}); use --preprocess per-image"
        )
    return evaluation.preprocess(mode, X_train, X_test, window=window, dtype=dtype)


def _backend(name, device, dtype):
    """``(to_backend, device_name)``: ``evaluation.array_mover``, one-line errors."""
    try:
        return evaluation.array_mover(name, device, dtype)
    except (ValueError, ImportError) as exc:
        flags = f"--backend {name}" + (f" --device {device}" if device else "")
        raise UserError(f"{flags}: {exc}") from None


def _load_saved(args):
    """The models that ``--init``, ``--warm-start`` and ``--model`` name."""
    saved = {}
    for option in MODEL_OPTIONS:
        path = getattr(args, option, None)
        if path is not None and (option != "init" or path.endswith(".npz")):
            flag = "--" + option.replace("_", "-")
            saved[option] = load_model(path, flag, networks=option == "model")
    return saved


def _on_backend(model, to_backend):
    for layer in _cli_network.layers_of(model):  # a network: each layer
        layer.kernels_ = to_backend(to_numpy(layer.kernels_))
        layer.weights_ = to_backend(to_numpy(layer.weights_))
    return model


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


def _fit(args, params, network, X_train, to_backend, saved, log):
    times, last = [], [time.perf_counter()]

    def record(_model):
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    init, shape = args.init, {}
    if "init" in saved:
        kernels = saved["init"].kernels_
        init = to_backend(to_numpy(kernels))
        # the init model's shape, unless given (networks refuse --init MODEL)
        inferred = dict(n_kernels=int(kernels.shape[0]), kernel_size=kernels.shape[2:])
        given = _explicit_params(args)
        shape = {k: v for k, v in inferred.items() if k not in given}
    if "warm_start" in saved:
        # the saved model's settings, then what the command line says
        model = saved["warm_start"]
        explicit = _explicit_params(args)
        for name in ("n_kernels", "kernel_size", "padding"):
            fitted = getattr(model, name)
            if name in explicit and _as_pair(explicit[name]) != _as_pair(fitted):
                raise UserError(
                    f"--warm-start model has {name} {fitted!r}, but "
                    f"--{name.replace('_', '-')} asks for {explicit[name]!r}; drop "
                    "the option or start a new model"
                )
        _on_backend(model, to_backend).set_params(**explicit, warm_start=True)
    else:
        model = _cli_network.build(params, network)
    if init is not None:
        model = _cli_network.set_layer_params(model, init=init, **shape)
    verbose = _progress_verbosity(args.quiet)
    _cli_network.set_layer_params(model, callback=record, verbose=verbose)
    log(
        f"fitting {_cli_network.describe(model)} on "
        f"{X_train.shape[0]} images of {_fmt_shape(X_train.shape[1:])}"
    )
    start = time.perf_counter()
    last[0] = start
    # the estimator reports progress on stdout; stdout is for results here
    with contextlib.redirect_stdout(sys.stderr):
        model.fit(X_train)
    seconds = time.perf_counter() - start
    _cli_network.set_layer_params(model, callback=None, verbose=0)
    return model, seconds, times


def _fmt_shape(shape):
    """``(5, 3)`` or ``5`` (a square) as ``5x3`` or ``5x5``."""
    return "x".join(str(int(s)) for s in _as_pair(shape))


def _machine():
    return dict(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        python=platform.python_version(),
    )


def _write_outputs(paths, model, summary, log):
    from . import plots

    paths["summary"].parent.mkdir(parents=True, exist_ok=True)
    model.save(paths["model"])
    plots.model_figures(  # a network's: its first layer's
        _cli_network.layers_of(model)[0],
        paths["kernels_png"],
        paths["log_likelihood_png"],
        data=summary["dataset"],
        n_fit=summary["n_fit"],
    )
    summary["files"] = {key: str(p) for key, p in paths.items()}
    paths["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    log(f"wrote {', '.join(str(p) for p in paths.values())}")
    return paths


def _run_fit(args, evaluate):
    log = _logger(args.quiet)
    paths = check_paths(args)  # before anything is read, fitted or written
    to_backend, device = _backend(args.backend, args.device, args.dtype)
    params, extras = _resolve_settings(args)
    preprocess, fit_limit = extras["preprocess"], extras["fit_limit"]
    saved = _load_saved(args)
    _cli_network.refuse_saved(extras["network"], saved)
    clock = _Clock()
    X_train, y_train, X_test, y_test = _load_data(args, labelled=evaluate)
    clock.lap("load")
    window = _as_pair(params.get("kernel_size", 5))
    for option in ("model", "warm_start"):
        if option in saved:  # normalize as for the saved model's kernels
            window = tuple(_cli_network.layers_of(saved[option])[0].kernel_size_)
    X_train, X_test = _preprocess(preprocess, X_train, X_test, window, args.dtype)
    log(f"{args.dataset}: {X_train.shape[0]} training images, preprocess {preprocess}")
    X_train_b = to_backend(X_train)
    clock.lap("preprocess")
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
    if "model" in saved:
        model = _loaded(args, params, saved["model"], to_backend, X_train.shape[1])
        summary.update(model_loaded_from=str(args.model), fit_seconds=0.0)
    else:
        model, seconds, times = _fit(
            args, params, extras["network"], X_train_b[:n_fit], to_backend, saved, log
        )
        summary.update(
            fit_seconds=round(seconds, 3),
            seconds_per_iteration=[round(t, 4) for t in times],
            **_cli_network.fit_summary(model),
        )
        log(_cli_network.fit_line(model, seconds))
    clock.lap("fit")
    summary["params"] = _cli_network.json_params(model)
    if evaluate:
        data = (X_train_b, y_train, to_backend(X_test), y_test)
        summary["evaluation"] = _evaluate(args, model, data, clock, extras["C"])
    summary["seconds"] = clock.summary()
    _write_outputs(paths, model, summary, log)
    _report(args, model, summary, paths["model"], clock)
    return 0


def _loaded(args, params, model, to_backend, n_channels):
    """The ``--model`` model on the backend, with the options that still apply."""
    model = _on_backend(model, to_backend)
    overrides = {
        k: params[k]
        for k in ("features", "pooling", "method", "batch_size")
        if getattr(args, k, None) is not None
    }
    _cli_network.set_layer_params(model, **overrides)
    n_in = _cli_network.layers_of(model)[0].n_channels_in_
    if n_in != n_channels:
        raise UserError(
            f"--model {args.model} was fitted on {n_in}-channel "
            f"images but {args.dataset} has {n_channels}"
        )
    return model


def _evaluate(args, model, data, clock, C):
    """Features of the training and test images, the probe: the summary's part."""
    X_train, y_train, X_test, y_test = data
    batch = model.batch_size or 1000
    bars = not args.quiet and _bars_wanted()
    F_train = evaluation.extract_features(model, X_train, batch, progress=bars)
    F_test = evaluation.extract_features(model, X_test, batch, progress=bars)
    clock.lap("features")
    accuracy = evaluation.linear_probe(F_train, y_train, F_test, y_test, C=C)
    clock.lap("probe")
    return dict(
        accuracy=accuracy,
        n_train=int(F_train.shape[0]),
        n_test=int(F_test.shape[0]),
        n_features=int(F_train.shape[1]),
        probe=evaluation.PROBE,
        C=C,
        feature_seconds=clock.seconds["features"],
        probe_seconds=clock.seconds["probe"],
    )


def _report(args, model, summary, model_path, clock):
    """The one result line on stdout."""
    if "evaluation" in summary:
        e = summary["evaluation"]
        print(
            f"test accuracy {e['accuracy']:.4f} ({e['n_test']} {args.dataset} test "
            f"images, {e['n_features']} features, linear probe on {e['n_train']} "
            f"training images); {clock.line()}"
        )
    else:
        top = _cli_network.layers_of(model)[-1]  # a network's top layer
        print(
            f"objective {top.lower_bound_:.4f} nats per image after "
            f"{top.n_iter_} iterations; model in {model_path}; {clock.line()}"
        )


class _Clock:
    """Seconds by step (load, preprocess, fit, features, probe)."""

    def __init__(self):
        self.seconds, self._last = {}, time.perf_counter()

    def lap(self, step):
        now = time.perf_counter()
        self.seconds[step] = round(now - self._last, 3)
        self._last = now

    def summary(self):
        return dict(self.seconds, total=round(sum(self.seconds.values()), 3))

    def line(self):
        steps = ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items())
        return f"{self.summary()['total']:.1f} s ({steps})"


def _run_show(args):
    from . import plots

    path = check_paths(args)["png"]
    model = _cli_network.layers_of(load_model(args.model, "MODEL", networks=True))[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    k, c, kh, kw = model.kernels_.shape
    plots.kernel_grid(model.kernels_, path, title=f"{k} kernels {kh}x{kw}")
    print(path)
    return 0


def _logger(quiet):
    def log(message):
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    return log


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
