"""Parity: do bucketed outputs equal the model's outputs at the exact, unpadded shape?"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ParityError

__all__ = ["OutputParity", "ParityReport", "check_parity"]


@dataclass
class OutputParity:
    """Worst-case error of one output over every sample.

    ``max_abs`` is max |bucketed - reference|. ``max_rel`` is that error divided by the
    reference's largest magnitude in the same sample (a normwise relative error, which
    stays meaningful where single reference values are near zero).
    """

    name: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    samples: int = 0


@dataclass
class ParityReport:
    atol: float
    outputs: dict[str, OutputParity] = field(default_factory=dict)
    backend: str = ""

    @property
    def ok(self) -> bool:
        return all(o.max_abs <= self.atol for o in self.outputs.values())

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise ParityError(str(self))

    def __str__(self) -> str:
        lines = [f"parity [{self.backend}] atol={self.atol:g}: {'OK' if self.ok else 'FAILED'}"]
        lines.append(f"  {'output':<24}{'samples':>8}{'max_abs':>12}{'max_rel':>12}")
        for o in self.outputs.values():
            flag = "" if o.max_abs <= self.atol else "  <-- over atol"
            lines.append(f"  {o.name:<24}{o.samples:>8}{o.max_abs:>12.3e}{o.max_rel:>12.3e}{flag}")
        return "\n".join(lines)


def check_parity(
    bucketed: Any,
    samples: Iterable[Mapping[str, Any]],
    *,
    atol: float = 1e-4,
) -> ParityReport:
    """Run each sample through ``bucketed`` and through eager at its exact shape; compare.

    ``bucketed`` is a compiled :class:`~bucketwise.BucketedModel`; each sample is one
    call's inputs. Outputs that are not arrays (hook outputs) are skipped. Returns a
    report; call ``raise_if_failed()`` to turn a failure into :class:`ParityError`.
    """
    report = ParityReport(atol=atol, backend=bucketed.backend.name)
    for sample in samples:
        got = bucketed.run(sample)
        want = bucketed.reference(sample)
        for name, ref in want.items():
            if not isinstance(ref, np.ndarray):
                continue
            out = np.asarray(_numpy(got[name]), dtype=np.float64)
            ref64 = ref.astype(np.float64)
            if out.shape != ref64.shape:
                raise ParityError(
                    f"output {name!r}: bucketed shape {out.shape} != reference shape {ref64.shape}; "
                    "the output spec does not crop this output back to the input's size"
                )
            entry = report.outputs.setdefault(name, OutputParity(name))
            err = float(np.max(np.abs(out - ref64))) if out.size else 0.0
            scale = float(np.max(np.abs(ref64))) if ref64.size else 0.0
            entry.max_abs = max(entry.max_abs, err)
            entry.max_rel = max(entry.max_rel, err / scale if scale else 0.0)
            entry.samples += 1
    return report


def _numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value
