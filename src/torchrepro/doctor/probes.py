"""The probe ops of `torchrepro doctor`: the kernels whose repeatability depends on the device.

A `Probe` builds its inputs once (from a generator seeded by its name, on the CPU, then
moved to the device) and returns a step: a function that runs the op forward, and
backward where it has one, and returns the output and the input gradients. The doctor runs
the step several times per determinism level and compares the results bit for bit.

Shapes are those of real training (a ResNet stage, a BERT-base attention block, a
segmentation head); `quick` shrinks them so every probe runs in milliseconds on a CPU.

A probe of your own (``torchrepro doctor --probe module:function``, the function returning
probes):

Examples:
    >>> import torch
    >>> def square(device, quick):
    ...     x = torch.arange(4.0, device=device)
    ...     return lambda: [x * x]
    >>> Probe("square", ("mul",), square).build(torch.device("cpu"), True)()
    [tensor([0., 1., 4., 9.])]
"""

from __future__ import annotations

import contextlib
import dataclasses
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from torchrepro._specs import load_function
from torchrepro.errors import DoctorError

__all__ = ["PROBES", "Probe", "Step", "Unavailable", "load_probes", "select_probes"]

Step = Callable[[], Sequence[torch.Tensor]]


class Unavailable(Exception):  # noqa: N818 - a signal, not an error: the probe is skipped
    """Raised by a probe's `build` when its op does not exist on this device or build."""


@dataclasses.dataclass(frozen=True)
class Probe:
    """One probe op.

    Attributes:
        name: what the tables call it, e.g. "index_add_".
        ops: names of the ATen ops it stands for (a prefix matches, "convolution" matches
            "convolution_backward"), to tell which probes matter for a traced model.
        build: `(device, quick) -> step`; raises `Unavailable` when the op cannot run here.
        dtype: the floating dtype of the model ops it stands for; None for any.
    """

    name: str
    ops: tuple[str, ...]
    build: Callable[[torch.device, bool], Step]
    dtype: torch.dtype | None = None

    def matches(self, traced: Iterable[tuple[str, str | None]]) -> bool:
        """Whether any traced (ATen op name, dtype name) pair is one this probe stands for."""
        dtype = None if self.dtype is None else str(self.dtype).removeprefix("torch.")
        return any(
            name.startswith(self.ops) and (dtype is None or seen in (dtype, None))
            for name, seen in traced
        )


def _generator(name: str) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()))


def _normal(g: torch.Generator, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=g).to(device)


def _index(g: torch.Generator, high: int, size: int, device: torch.device) -> torch.Tensor:
    # Far more entries than targets: many collide, which is where atomics reorder sums.
    return torch.randint(0, high, (size,), generator=g).to(device)


def _differentiated(
    op: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], g: torch.Generator
) -> Step:
    """A step running `op` on fresh leaves of `inputs` and back from a fixed output gradient."""
    sample = op(*inputs)
    grad_out = torch.randn(sample.shape, generator=g).to(sample.device, sample.dtype)

    def step() -> list[torch.Tensor]:
        leaves = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        out = op(*leaves)
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        grads = torch.autograd.grad(out, wanted, grad_out)
        return [out.detach(), *grads]

    return step


def _forward(op: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor]) -> Step:
    return lambda: [op(*inputs)]


def _scale(quick: bool, full: int, small: int) -> int:
    return small if quick else full


def _matmul(dtype: torch.dtype, tf32: bool) -> Callable[[torch.device, bool], Step]:
    def build(device: torch.device, quick: bool) -> Step:
        if tf32 and device.type != "cuda":
            raise Unavailable("TF32 exists on CUDA only")
        n = _scale(quick, 2048, 256)
        g = _generator(f"matmul-{dtype}-{tf32}")
        a, b = (_normal(g, (n, n), device).to(dtype) for _ in range(2))
        inner = _differentiated(torch.matmul, (a, b), g)

        def step() -> Sequence[torch.Tensor]:
            with _tf32(tf32):
                return inner()

        return step

    return build


@contextlib.contextmanager
def _tf32(on: bool) -> Iterator[None]:
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _conv2d(device: torch.device, quick: bool) -> Step:
    n, c, hw = (4, 32, 28) if quick else (32, 64, 56)
    g = _generator("conv2d")
    x, w = _normal(g, (n, c, hw, hw), device), _normal(g, (c, c, 3, 3), device) * 0.1
    return _differentiated(lambda x, w: F.conv2d(x, w, padding=1), (x, w), g)


def _batch_norm(device: torch.device, quick: bool) -> Step:
    n, c, hw = (4, 32, 28) if quick else (32, 64, 56)
    g = _generator("batch_norm")
    x, weight, bias = (
        _normal(g, (n, c, hw, hw), device),
        _normal(g, (c,), device),
        _normal(g, (c,), device),
    )

    def op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, None, None, weight, bias, training=True)

    return _differentiated(op, (x, weight, bias), g)


def _index_add(device: torch.device, quick: bool) -> Step:
    rows, entries, width = (1000, 10_000, 16) if quick else (10_000, 200_000, 64)
    g = _generator("index_add_")
    index = _index(g, rows, entries, device)
    src = _normal(g, (entries, width), device)
    return _differentiated(
        lambda s: torch.zeros(rows, width, device=device).index_add_(0, index, s), (src,), g
    )


def _scatter_add(device: torch.device, quick: bool) -> Step:
    rows, entries, width = (1000, 10_000, 16) if quick else (10_000, 200_000, 64)
    g = _generator("scatter_add_")
    index = _index(g, rows, entries, device).unsqueeze(1).expand(entries, width)
    src = _normal(g, (entries, width), device)
    return _differentiated(
        lambda s: torch.zeros(rows, width, device=device).scatter_add_(0, index, s), (src,), g
    )


def _scatter_reduce(reduce: str) -> Callable[[torch.device, bool], Step]:
    def build(device: torch.device, quick: bool) -> Step:
        rows, entries = (1000, 10_000) if quick else (10_000, 400_000)
        g = _generator(f"scatter_reduce-{reduce}")
        index = _index(g, rows, entries, device)
        src = 1 + 0.01 * _normal(g, (entries,), device)
        return _forward(
            lambda s: torch.ones(rows, device=device).scatter_reduce(0, index, s, reduce), (src,)
        )

    return build


def _embedding(device: torch.device, quick: bool) -> Step:
    vocab, dim, tokens = (1000, 64, (8, 64)) if quick else (30_522, 768, (32, 512))
    g = _generator("embedding")
    ids = torch.randint(0, vocab // 10, tokens, generator=g).to(device)  # frequent tokens
    weight = _normal(g, (vocab, dim), device)
    return _differentiated(lambda w: F.embedding(ids, w), (weight,), g)


def _interpolate(mode: str) -> Callable[[torch.device, bool], Step]:
    def build(device: torch.device, quick: bool) -> Step:
        n, c, hw = (2, 8, 32) if quick else (16, 64, 64)
        g = _generator(f"interpolate-{mode}")
        x = _normal(g, (n, c, hw, hw), device)
        return _differentiated(
            lambda x: F.interpolate(x, scale_factor=2, mode=mode, align_corners=False), (x,), g
        )

    return build


def _pooling(
    name: str, op: Callable[[torch.Tensor], torch.Tensor], full: Sequence[int], small: Sequence[int]
) -> Callable[[torch.device, bool], Step]:
    def build(device: torch.device, quick: bool) -> Step:
        g = _generator(name)
        return _differentiated(op, (_normal(g, small if quick else full, device),), g)

    return build


def _cumsum(device: torch.device, quick: bool) -> Step:
    g = _generator("cumsum")
    x = _normal(g, (64, 1024) if quick else (1024, 8192), device)
    return _differentiated(lambda x: torch.cumsum(x, 1), (x,), g)


def _nll_loss_2d(device: torch.device, quick: bool) -> Step:
    n, classes, hw = (2, 5, 32) if quick else (16, 21, 128)
    g = _generator("nll_loss_2d")
    logits = _normal(g, (n, classes, hw, hw), device)
    target = torch.randint(0, classes, (n, hw, hw), generator=g).to(device)
    return _differentiated(lambda x: F.nll_loss(F.log_softmax(x, 1), target), (logits,), g)


def _ctc_loss(device: torch.device, quick: bool) -> Step:
    steps, batch, classes, length = (30, 4, 10, 10) if quick else (200, 32, 40, 60)
    g = _generator("ctc_loss")
    logits = _normal(g, (steps, batch, classes), device)
    targets = torch.randint(1, classes, (batch, length), generator=g).to(device)
    input_lengths = torch.full((batch,), steps, dtype=torch.long, device=device)
    target_lengths = torch.full((batch,), length, dtype=torch.long, device=device)

    def op(x: torch.Tensor) -> torch.Tensor:
        return F.ctc_loss(F.log_softmax(x, 2), targets, input_lengths, target_lengths)

    return _differentiated(op, (logits,), g)


def _bincount(device: torch.device, quick: bool) -> Step:
    size = 10_000 if quick else 4_000_000
    g = _generator("bincount")
    values = torch.randint(0, 1000, (size,), generator=g).to(device)
    weights = _normal(g, (size,), device)
    return _forward(lambda v, w: torch.bincount(v, w, minlength=1000), (values, weights))


def _histc(device: torch.device, quick: bool) -> Step:
    g = _generator("histc")
    x = _normal(g, (10_000 if quick else 4_000_000,), device)
    return _forward(lambda x: torch.histc(x, bins=100, min=-4, max=4), (x,))


_SDPA = {
    "math": "MATH",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
}


def _sdpa(backend: str) -> Callable[[torch.device, bool], Step]:
    def build(device: torch.device, quick: bool) -> Step:
        from torch.nn import attention

        kind = getattr(attention.SDPBackend, _SDPA[backend], None)
        if kind is None:
            raise Unavailable(f"this torch has no {backend} attention backend")
        batch, heads, length, dim = (2, 4, 64, 32) if quick else (16, 12, 512, 64)
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        g = _generator(f"sdpa-{backend}")
        q, k, v = (_normal(g, (batch, heads, length, dim), device).to(dtype) for _ in range(3))

        def op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            with attention.sdpa_kernel(kind):
                return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0)

        try:
            return _differentiated(op, (q, k, v), g)
        except RuntimeError as error:  # "No available kernel": not on this device or dtype
            raise Unavailable(f"{backend} attention does not run here") from error

    return build


def _grid_sample(device: torch.device, quick: bool) -> Step:
    n, c, hw = (2, 8, 32) if quick else (16, 32, 64)
    g = _generator("grid_sample")
    x = _normal(g, (n, c, hw, hw), device)
    grid = (torch.rand((n, hw, hw, 2), generator=g) * 2 - 1).to(device)

    def op(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid, mode="bilinear", align_corners=False)

    return _differentiated(op, (x, grid), g)


PROBES: tuple[Probe, ...] = (
    Probe("matmul fp32", ("mm", "addmm", "bmm"), _matmul(torch.float32, False), torch.float32),
    Probe("matmul tf32", ("mm", "addmm", "bmm"), _matmul(torch.float32, True), torch.float32),
    Probe("matmul bf16", ("mm", "addmm", "bmm"), _matmul(torch.bfloat16, False), torch.bfloat16),
    Probe("conv2d", ("convolution", "cudnn_convolution"), _conv2d),
    Probe(
        "batch_norm", ("native_batch_norm", "_native_batch_norm", "cudnn_batch_norm"), _batch_norm
    ),
    Probe("index_add_", ("index_add",), _index_add),
    Probe("scatter_add_", ("scatter_add",), _scatter_add),
    Probe("scatter_reduce sum", ("scatter_reduce",), _scatter_reduce("sum")),
    Probe("scatter_reduce prod", ("scatter_reduce",), _scatter_reduce("prod")),
    Probe("embedding", ("embedding",), _embedding),
    Probe("interpolate bilinear", ("upsample_bilinear2d",), _interpolate("bilinear")),
    Probe("interpolate bicubic", ("upsample_bicubic2d",), _interpolate("bicubic")),
    Probe(
        "adaptive_avg_pool2d",
        ("_adaptive_avg_pool2d", "adaptive_avg_pool2d"),
        _pooling(
            "adaptive_avg_pool2d",
            lambda x: F.adaptive_avg_pool2d(x, 5),
            (32, 256, 14, 14),
            (2, 16, 14, 14),
        ),
    ),
    Probe(
        "avg_pool2d",
        ("avg_pool2d",),
        _pooling(
            "avg_pool2d",
            lambda x: F.avg_pool2d(x, 3, 2, 1),
            (32, 64, 56, 56),
            (2, 16, 28, 28),
        ),
    ),
    Probe(
        "avg_pool3d",
        ("avg_pool3d",),
        _pooling(
            "avg_pool3d",
            lambda x: F.avg_pool3d(x, 3, 2, 1),
            (8, 32, 16, 32, 32),
            (2, 4, 8, 16, 16),
        ),
    ),
    Probe(
        "max_pool2d",
        ("max_pool2d",),
        _pooling(
            "max_pool2d",
            lambda x: F.max_pool2d(x, 3, 2, 1),
            (32, 64, 112, 112),
            (2, 16, 28, 28),
        ),
    ),
    Probe(
        "reflection_pad2d",
        ("reflection_pad2d",),
        _pooling(
            "reflection_pad2d",
            lambda x: F.pad(x, (3, 3, 3, 3), mode="reflect"),
            (16, 64, 56, 56),
            (2, 8, 28, 28),
        ),
    ),
    Probe("cumsum", ("cumsum",), _cumsum),
    Probe("nll_loss 2d", ("nll_loss2d",), _nll_loss_2d),
    Probe("ctc_loss", ("_ctc_loss", "ctc_loss"), _ctc_loss),
    Probe("bincount", ("bincount",), _bincount),
    Probe("histc", ("histc",), _histc),
    *(
        Probe(f"sdpa {backend}", ("_scaled_dot_product", "scaled_dot_product"), _sdpa(backend))
        for backend in _SDPA
    ),
    Probe("grid_sample", ("grid_sampler",), _grid_sample),
)


def load_probes(spec: str) -> list[Probe]:
    """The probes a `module:function` returns (a list of `Probe`), for ``--probe``.

    Raises:
        DoctorError: the spec is malformed, does not import, or returns no probes.
    """
    factory = load_function(
        spec, DoctorError, "probe", "a list of torchrepro.doctor.Probe", "myprobes:probes"
    )
    found = list(factory())
    if not found or not all(isinstance(p, Probe) for p in found):
        raise DoctorError(
            f"{spec} must return a non-empty list of torchrepro.doctor.Probe; got {found!r:.80}."
        )
    return found


def select_probes(names: Sequence[str] = (), specs: Sequence[str] = ()) -> list[Probe]:
    """The built-in probes and those of each `module:function` spec, all of them, or only
    those named in `names` (``--only``).

    Raises:
        DoctorError: a name is not a probe's, or two probes share one.

    Examples:
        >>> [p.name for p in select_probes(["cumsum", "histc"])]
        ['cumsum', 'histc']
    """
    found = [*PROBES, *(p for spec in specs for p in load_probes(spec))]
    by_name = {p.name: p for p in found}
    if len(by_name) != len(found):
        raise DoctorError(
            "two probes share a name; got "
            f"{sorted({p.name for p in found if [q.name for q in found].count(p.name) > 1})}. "
            "Give each probe of your own a name of its own."
        )
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DoctorError(
            f"no probe is called {', '.join(map(repr, unknown))}; expected one of "
            f"{', '.join(by_name)}."
        )
    return [by_name[n] for n in names] if names else found
