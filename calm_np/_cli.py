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
import shutil
import signal
import sys
import time
import warnings
from pathlib import Path

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
    check_extras,
    check_paths,
    check_settings,
    load_model,
    probe_folder,
    remove_created,
)
from ._estimator import ConvolutionalMixture  # noqa: F401  (tests patch its fit)
from ._xp import to_numpy

__all__ = ["DEFAULT_OUT", "UserError", "build_parser", "main"]

# dataset-level ZCA decomposes a (pixels x pixels) covariance
ZCA_MAX_PIXELS = evaluation.ZCA_MAX_VALUES


def _load_data(args, labelled):
    """``(X_train, y_train, X_test, y_test)`` as host arrays (test may be None)."""
    name, folder, limit = args.dataset, args.data_dir, args.limit
    seed = args.random_state or 0  # sample-images: which crops; folder: order
    folder_args = {}
    if name == "folder":
        folder_args = dict(size=args.image_size, mode=args.image_mode)
    return evaluation.load_dataset(
        name, folder, limit=limit, test=labelled, seed=seed, **folder_args
    )


def _preprocess(mode, X_train, X_test, window, dtype):
    """``evaluation.preprocess``; whole-image ZCA only on small images."""
    pixels = math.prod(X_train.shape[1:])
    if mode == "zca" and pixels > ZCA_MAX_PIXELS:
        raise UserError(
            f"--preprocess zca whitens whole images, but these have {pixels} "
            f"values (at most {ZCA_MAX_PIXELS}); use --preprocess per-image"
        )
    return evaluation.preprocess(mode, X_train, X_test, window=window, dtype=dtype)


# estimator options that --model (a fitted model) cannot take: they would
# change the kernels, which a saved model already has
_READOUT_OPTIONS = ("features", "pooling", "method", "batch_size")


def _refuse_model_options(args, saved):
    """``evaluate --model M`` with an option that only a fit reads, set to a
    value unlike the model's: an error, not an option silently ignored."""
    if "model" not in saved:
        return
    from ._checks import check_params

    layer = _cli_network.layers_of(saved["model"])[0]
    fitted = check_params(layer.get_params())
    given = _explicit_params(args)
    ignored = []
    for name in sorted(set(given) - set(_READOUT_OPTIONS)):
        try:
            same = check_params({**layer.get_params(), name: given[name]})[name]
        except (TypeError, ValueError):
            same = None
        if same is None or same != fitted[name]:
            ignored.append(name)
    for option in ("init", "warm_start", "fit_limit", *_cli_network.OPTIONS):
        if getattr(args, option, None) is not None:
            ignored.append(option)
    if ignored:
        flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
        raise UserError(
            f"--model evaluates a fitted model, so {flags} would be ignored; drop "
            f"{'it' if len(ignored) == 1 else 'them'} (with --model only "
            + ", ".join("--" + o.replace("_", "-") for o in _READOUT_OPTIONS)
            + " apply, and options equal to the model's own), or fit a new model "
            "without --model"
        )


def _check_preset_fits(args, model, image_shape):
    """The model about to be fitted runs on these images, or a one-line
    reason naming the preset (before any EM)."""
    try:
        evaluation.check_model_fits(model, image_shape)
    except ValueError as exc:
        raise UserError(
            f"--preset {args.preset} cannot run on --dataset {args.dataset} "
            f"({_fmt_shape(image_shape[-2:])} images): {exc}"
        ) from None


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
        _check_preset_fits(args, model, X_train.shape[1:])
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
    """Write the model, figures and summary as one set.

    Everything is written into a hidden staging folder inside ``--out``
    first; only when all four files are complete are they renamed over the
    old ones, with Ctrl-C (SIGINT) held back for those few renames.  An
    interrupted or failed run leaves the previous set, never a new
    ``model.npz`` next to an old ``summary.json``.
    """
    import tempfile

    from . import plots

    out = paths["summary"].parent
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".calm_np-new-", dir=out))
    try:
        staged = {key: stage / p.name for key, p in paths.items()}
        model.save(staged["model"])
        plots.model_figures(  # a network's: its first layer's
            _cli_network.layers_of(model)[0],
            staged["kernels_png"],
            staged["log_likelihood_png"],
            data=summary["dataset"],
            n_fit=summary["n_fit"],
        )
        summary["files"] = {key: str(p) for key, p in paths.items()}
        staged["summary"].write_text(json.dumps(summary, indent=2) + "\n")
        with _sigint_held():
            for key, path in paths.items():
                os.replace(staged[key], path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log(f"wrote {', '.join(str(p) for p in paths.values())}")
    return paths


@contextlib.contextmanager
def _sigint_held():
    """Hold SIGINT back (delivered on exit) where the platform allows it."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        yield
        return
    old = mask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


def _run_fit(args, evaluate):
    log = _logger(args.quiet)
    check_extras(args)
    paths = check_paths(args)  # before anything is read, fitted or written
    created = probe_folder(paths["summary"].parent, "--out")
    try:
        return _fit_and_write(args, evaluate, paths, log)
    except BaseException:  # a failed run leaves no new empty --out behind
        remove_created(created)
        raise


def _fit_and_write(args, evaluate, paths, log):
    to_backend, device = _backend(args.backend, args.device, args.dtype)
    params, extras = _resolve_settings(args)
    preprocess, fit_limit = extras["preprocess"], extras["fit_limit"]
    saved = _load_saved(args)
    _refuse_model_options(args, saved)
    _cli_network.refuse_saved(extras["network"], saved)
    if not saved:  # a saved model's settings were checked when it was read
        check_settings(args, params, extras["network"])
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
    loaded = load_model(args.model, "MODEL", networks=True)
    print(describe_model(loaded, args.model))
    model = _cli_network.layers_of(loaded)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    k, c, kh, kw = model.kernels_.shape
    plots.kernel_grid(model.kernels_, path, title=f"{k} kernels {kh}x{kw}")
    print(path)  # the last line: the figure's path, for scripts
    return 0


def describe_model(model, path):
    """A text summary of a saved model: what ``calm-np show`` prints."""
    layers = _cli_network.layers_of(model)
    lines = [f"{path}: {_cli_network.describe(model)}"]
    for i, layer in enumerate(layers):
        head = f"layer {i + 1}: " if len(layers) > 1 else ""
        kernels = to_numpy(layer.kernels_)
        norms = (kernels.reshape(len(kernels), -1) ** 2).sum(1) ** 0.5
        weights = to_numpy(layer.weights_)
        lines += [
            f"  {head}kernels {tuple(kernels.shape)} {kernels.dtype} (n, c, h, w); "
            f"norms {norms.min():.3g}..{norms.max():.3g}; weights "
            f"{weights.min():.3g}..{weights.max():.3g}",
            f"  {head}objective {layer.lower_bound_:.4f} nats per image after "
            f"{layer.n_iter_} EM iterations (converged={layer.converged_}); "
            f"sigma^2 {getattr(layer, 'variance_', 1.0):.4g}",
            f"  {head}fitted on {layer.n_channels_in_}-channel images; padding "
            f"{_fmt_shape(layer.padding_)}; whitening "
            f"{'on' if getattr(layer, 'whitening_', None) is not None else 'off'}",
        ]
    params = _cli_network.json_params(model)
    lines.append(
        "  parameters: "
        + " ".join(f"{k}={v}" for k, v in params.items() if k != "layers")
    )
    summary = Path(path).with_name("summary.json")
    try:  # what calm-np fit/evaluate recorded next to the model
        record = json.loads(summary.read_text())
        if Path(record["files"]["model"]).name != Path(path).name:
            raise KeyError("files")
        line = (
            f"  data: {record['dataset']}"
            + (f" from {record['data_dir']}" if record.get("data_dir") else "")
            + f", {record['n_fit']} of {record['n_train']} training images of "
            f"{'x'.join(map(str, record['image_shape']))}, preprocess "
            f"{record['preprocess']}, preset {record['preset']}"
        )
        if "evaluation" in record:
            line += f"; test accuracy {record['evaluation']['accuracy']:.4f}"
        lines.append(line + f" ({summary})")
    except (OSError, ValueError, KeyError, TypeError):
        lines.append("  data: not recorded (no summary.json of this model beside it)")
    return "\n".join(lines)


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
