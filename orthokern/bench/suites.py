"""Benchmark suites: the shapes, dtypes and spectra each suite covers.

The ResNet shape lists are written out here, derived by hand from the architecture (torchvision is not needed
to run the suite); ``orthokern.bench.resnet`` builds the model and a test checks the two agree.
A gradient of a conv weight (out, in, kh, kw) is orthogonalised as the (out, in*kh*kw) matrix.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, Sequence

import torch

# (out, in*k*k): number of layers with that gradient shape, in first-appearance order.
RESNET50_SHAPES: dict[tuple[int, int], int] = {
    (64, 147): 1,  # stem 7x7, 3 -> 64
    # layer1: bottleneck width 64, 3 blocks (+1 downsample)
    (64, 64): 1, (64, 576): 3, (256, 64): 4, (64, 256): 2,
    # layer2: width 128, 4 blocks
    (128, 256): 1, (128, 1152): 4, (512, 128): 4, (512, 256): 1, (128, 512): 3,
    # layer3: width 256, 6 blocks
    (256, 512): 1, (256, 2304): 6, (1024, 256): 6, (1024, 512): 1, (256, 1024): 5,
    # layer4: width 512, 3 blocks
    (512, 1024): 1, (512, 4608): 3, (2048, 512): 3, (2048, 1024): 1, (512, 2048): 2,
    (1000, 2048): 1,  # fc
}
RESNET18_SHAPES: dict[tuple[int, int], int] = {
    (64, 147): 1,
    (64, 576): 4,
    (128, 576): 1, (128, 1152): 3, (128, 64): 1,
    (256, 1152): 1, (256, 2304): 3, (256, 128): 1,
    (512, 2304): 1, (512, 4608): 3, (512, 256): 1,
    (1000, 512): 1,
}
TALL_SHAPES = ((256, 576, 64), (1024, 256, 32), (64, 1152, 128), (8, 4608, 512))
SQUARE_SHAPES = ((1, 1024, 1024), (1, 4096, 4096), (1, 4096, 11008))

POLAR_SUITES = ("resnet50", "resnet18", "tall", "square")
SUITES = POLAR_SUITES + ("all", "custom", "train")

# Spectra: orthokern.testing's synthetic ones plus "real" (actual ResNet gradients, ResNet suites only: see
# orthokern.bench.gradients). ``--spectra all`` runs every one.
REAL = "real"
ALL_SPECTRA = ("well", "decaying", "decay2", "rank_deficient", "gaussian", REAL)
DEFAULT_SPECTRA = ("decaying", "rank_deficient", REAL)
QUICK_SPECTRA = ("decaying",)

# --quick (and pytest bench/ on a CPU): full shape -> reduced shape, chosen by hand so that the reduced set
# keeps what decides the method (aspect ratio, n small vs large, tall vs wide) at CPU-friendly sizes.
QUICK = {
    "resnet50": {(3, 64, 576): (3, 64, 576), (3, 2048, 512): (3, 512, 128), (1, 1000, 2048): (1, 125, 256)},
    "resnet18": {(1, 1000, 512): (1, 250, 64)},
    "tall": {(256, 576, 64): (4, 576, 64), (1024, 256, 32): (8, 256, 32), (64, 1152, 128): (2, 1152, 128)},
    "square": {(1, 1024, 1024): (1, 256, 256), (1, 4096, 11008): (1, 128, 344)},
}


@dataclasses.dataclass(frozen=True)
class Case:
    suite: str
    batch: int
    m: int
    n: int
    dtype: torch.dtype
    spectrum: str
    # Full-size shape this case was reduced from (None when run at full size).
    full: Optional[tuple[int, int, int]] = None

    @property
    def shape(self) -> str:
        return f"{self.batch}x{self.m}x{self.n}"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).replace("torch.", "")

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.shape}/{self.dtype_name}/{self.spectrum}"


DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"--dtype: unknown dtype {name!r} (use one of {sorted(set(DTYPES))})") from None


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """'2x64x16,32x48' -> [(2, 64, 16), (1, 32, 48)] (batch defaults to 1)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            dims = tuple(int(d) for d in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"--shapes: {item!r} is not BxMxN or MxN") from None
        if len(dims) == 2:
            dims = (1,) + dims
        if len(dims) != 3 or min(dims) < 1:
            raise ValueError(f"--shapes: {item!r} is not BxMxN or MxN with positive sizes")
        out.append(dims)
    if not out:
        raise ValueError("--shapes: no shape given")
    return out


def suite_shapes(suite: str, quick: bool) -> list[tuple[tuple[int, int, int], Optional[tuple[int, int, int]]]]:
    """[((batch, m, n), full shape it was reduced from or None), ...] of a polar suite."""
    if suite not in POLAR_SUITES:
        raise ValueError(f"suite must be one of {POLAR_SUITES}, got {suite!r}")
    if quick:
        return [(red, full if red != full else None) for full, red in QUICK[suite].items()]
    if suite == "resnet50":
        return [((c, m, n), None) for (m, n), c in RESNET50_SHAPES.items()]
    if suite == "resnet18":
        return [((c, m, n), None) for (m, n), c in RESNET18_SHAPES.items()]
    return [(shp, None) for shp in (TALL_SHAPES if suite == "tall" else SQUARE_SHAPES)]


def suite_dtypes(suite: str) -> tuple[torch.dtype, ...]:
    # The square/transformer shapes in float32 and bfloat16 (bfloat16 training); gradients elsewhere are float32.
    return (torch.float32, torch.bfloat16) if suite == "square" else (torch.float32,)


def make_cases(
    suites: Sequence[str],
    *,
    quick: bool,
    dtypes: Optional[Sequence[torch.dtype]] = None,
    spectra: Optional[Sequence[str]] = None,
    shapes: Optional[Sequence[tuple[int, int, int]]] = None,
) -> list[Case]:
    """The cases of the named suites; ``shapes`` replaces the shape lists (the ``custom`` suite)."""
    spectra = tuple(spectra) if spectra else (QUICK_SPECTRA if quick else DEFAULT_SPECTRA)
    cases: list[Case] = []
    seen = set()
    for suite in suites:
        if suite == "custom":
            if not shapes:
                raise ValueError("suite 'custom' needs --shapes")
            suite_list = [(tuple(shp), None) for shp in shapes]
        else:
            suite_list = suite_shapes(suite, quick)
        for shp, full in suite_list:
            for dtype in dtypes or suite_dtypes(suite):
                for spec in spectra:
                    if spec == REAL:
                        # Real gradients exist only at the layers' own (full) shapes of a ResNet.
                        if suite not in ("resnet50", "resnet18"):
                            continue
                        case = Case(suite, *(full or shp), dtype=dtype, spectrum=spec)
                    else:
                        case = Case(suite, *shp, dtype=dtype, spectrum=spec, full=full)
                    if case.key not in seen:
                        seen.add(case.key)
                        cases.append(case)
    return cases


def expand_suites(names: Iterable[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        if name not in SUITES:
            raise ValueError(f"--suite must be one of {SUITES}, got {name!r}")
        for s in POLAR_SUITES if name == "all" else (name,):
            if s not in out:
                out.append(s)
    return out

