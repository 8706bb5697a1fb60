"""The command line's stacked layers: ``--layers``, ``--layer2-kernels``, ...

``calm-np fit/evaluate --layers 2`` (or ``--preset network``) fits a
:class:`~calm_np.ConvolutionalMixtureNetwork`: layer 1 is the estimator the
other options describe; layers 2.. have ``--layer2-kernels`` kernels of
``--layer2-kernel-size`` on layer 1's maps average-pooled by ``--pool-size``,
with layer 1's latent, readout, pooling grid, iterations and seed.  What the
summary, the figures and the log line need from a model (one layer or a
network) is here, so that ``_cli`` treats both alike.
"""

from __future__ import annotations

from ._network import ConvolutionalMixtureNetwork
from .evaluation import build_model

# network settings: command-line option names, and the preset keys they read
OPTIONS = ("layers", "layer2_kernels", "layer2_kernel_size", "pool_size")
DEFAULTS = dict(layers=1, layer2_kernels=128, layer2_kernel_size=3, pool_size=2)


HELP = dict(
    layers=("N", "layers in the stack (default: 1, or the preset's)"),
    layer2_kernels=("K", "kernels of each layer above the first (default: 128)"),
    layer2_kernel_size=("S", "their kernel side (default: 3)"),
    pool_size=("P", "average pooling of the maps between layers (default: 2)"),
)


# where layer 2's input is kept during the fit (ConvolutionalMixtureNetwork's
# cache): "auto" unless the preset or --cache says otherwise
CACHE_CHOICES = ("auto", "memory", "disk", "none")
CACHE_DEFAULT = "auto"


def add_options(p, int_at_least):
    g = p.add_argument_group(
        "network (stacked layers, ConvolutionalMixtureNetwork; default: one layer)"
    )
    for name, (metavar, text) in HELP.items():
        flag = "--" + name.replace("_", "-")
        g.add_argument(flag, type=int_at_least(1), metavar=metavar, help=text)
    g.add_argument(
        "--cache",
        choices=CACHE_CHOICES,
        help="where the maps layer 2 is fitted on are kept: computed once into "
        "memory, a temporary memmap on disk, memory up to 2 GiB else disk "
        "(auto, the default), or recomputed on every EM pass (none)",
    )


def settings(args, preset_network):
    """The network settings: the command line, then the preset's
    (``Preset.network``, or None), then defaults."""
    preset = dict(preset_network or {})
    out = {k: v for k, v in preset.items() if k not in OPTIONS}  # layer2_pooling
    for name in OPTIONS:
        value = getattr(args, name, None)
        out[name] = value if value is not None else preset.get(name, DEFAULTS[name])
    cache = getattr(args, "cache", None) or out.get("cache") or CACHE_DEFAULT
    out["cache"] = None if cache == "none" else cache
    return out


def build(params, network):
    """A ``ConvolutionalMixture`` (one layer) or a network of ``layers``
    (``evaluation.build_model``, what ``make_estimator`` builds)."""
    return build_model(params, network)


def refuse_saved(network, saved):
    """A network is always fitted anew: refuse the options that read a model."""
    if network["layers"] > 1 and saved:
        raise ValueError(
            "--layers > 1 fits a new network: --model, --init MODEL.npz and "
            "--warm-start read one-layer models; drop them or use --layers 1"
        )


def layers_of(model):
    """The fitted layers of a model: itself, or a network's ``layers_``."""
    return getattr(model, "layers_", [model])


def set_layer_params(model, **params):
    """Set estimator parameters on every layer (fitted and unfitted)."""
    if isinstance(model, ConvolutionalMixtureNetwork):
        for layer in [*model.layers, *getattr(model, "layers_", [])]:
            layer.set_params(**params)
    else:
        model.set_params(**params)
    return model


def describe(model):
    """``64 kernels of 7x7`` or ``2 layers: 64 kernels of 7x7, 128 of 3x3``."""

    def shape(layer):
        size = layer.kernel_size
        size = (size, size) if isinstance(size, int) else size
        return "x".join(str(int(s)) for s in size)

    if not isinstance(model, ConvolutionalMixtureNetwork):
        return f"{model.n_kernels} kernels of {shape(model)}"
    parts = [f"{layer.n_kernels} of {shape(layer)}" for layer in model.layers]
    return f"{len(parts)} layers of kernels: " + ", ".join(parts)


def fit_summary(model):
    """Iterations, convergence and objectives for summary.json (per layer
    for a network: lists, bottom first)."""
    layers = layers_of(model)
    fields = dict(
        n_iter=[int(m.n_iter_) for m in layers],
        converged=[bool(m.converged_) for m in layers],
        final_objective=[m.lower_bound_ for m in layers],
        objective_per_iteration=[list(m.lower_bounds_) for m in layers],
    )
    if isinstance(model, ConvolutionalMixtureNetwork):
        return fields
    return {key: value[0] for key, value in fields.items()}


def fit_line(model, seconds):
    """The log line after a fit."""
    its = "+".join(str(m.n_iter_) for m in layers_of(model))
    objective = ", ".join(f"{m.lower_bound_:.4f}" for m in layers_of(model))
    converged = all(m.converged_ for m in layers_of(model))
    return (
        f"{its} EM iterations in {seconds:.1f} s, objective {objective} nats per "
        f"image, converged={converged}"
    )


def json_params(model):
    """The model's parameters as JSON values (a network: each layer's)."""

    def value(v):
        if hasattr(v, "shape"):
            return f"array of shape {tuple(v.shape)}"
        return list(v) if isinstance(v, tuple) else v

    skip = ("callback", "verbose", "layers")
    params = {k: value(v) for k, v in model.get_params().items() if k not in skip}
    if isinstance(model, ConvolutionalMixtureNetwork):
        params["layers"] = [json_params(layer) for layer in layers_of(model)]
    return params
