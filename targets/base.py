"""The one Target interface, and the data that flows through it.

Polygraphy-style split of build from run: :meth:`Target.build` turns an ONNX model into an
:class:`Engine` (an optimised ONNX / ``.ort`` file, a TensorRT engine), :meth:`Target.profile` times one
or more engines and returns a :class:`~graphprune.targets.report.ProfileReport`.  Where the work runs is an
:class:`~graphprune.targets.executor.Executor` (this machine, or a device over ssh); the target never
imports its heavy library itself: the runner does, on the machine that does the work.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from graphprune.targets.executor import Executor
    from graphprune.targets.report import ProfileReport

Shapes = dict[str, list[int]]


@dataclass
class OrtOptions:
    """ONNX Runtime session settings (``None`` leaves ORT's default)."""

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    graph_opt_level: str = "all"  # disable | basic | extended | all
    spinning: bool | None = None
    xnnpack: str = "auto"  # auto (use when the build has it) | on | off


@dataclass
class TrtOptions:
    """TensorRT builder settings."""

    precision: str = "fp32"  # fp32 | fp16 | int8 | bf16
    workspace_bytes: int | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    timing_cache: Path | None = None
    compute_capabilities: list[str] = field(default_factory=list)  # TensorRT-RTX AOT: SM75, SM86, ...
    strongly_typed: bool = False  # TensorRT 10: opt in; 11 and RTX: always


@dataclass
class TargetOptions:
    """What build and profile share: shapes, library settings, where to run."""

    shapes: Shapes = field(default_factory=dict)  # opt shapes (also min/max unless given)
    min_shapes: Shapes = field(default_factory=dict)
    max_shapes: Shapes = field(default_factory=dict)
    ort: OrtOptions = field(default_factory=OrtOptions)
    trt: TrtOptions = field(default_factory=TrtOptions)
    executor: Executor | None = None  # None: this machine


@dataclass
class ProfileOptions:
    """Timing settings (trtexec-like: warm up by time, then count and duration, whichever is longer)."""

    warmup_s: float = 0.2
    iterations: int = 10
    duration_s: float = 1.0
    max_iterations: int = 1_000_000
    inputs_npz: Path | None = None
    seed: int = 0
    per_node: bool = False
    per_node_iterations: int = 10
    cv_warn: float = 0.10


@dataclass
class Engine:
    """A built artifact ready to run: ``path`` on this machine, ``remote`` on the device that built it."""

    target: str
    path: Path | None
    kind: str  # onnx | ort | trt-engine
    sha256: str | None = None
    source: Path | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    remote: dict[str, str] = field(default_factory=dict)  # executor location -> path there

    @property
    def name(self) -> str:
        p = self.path or self.source
        return p.name if p is not None else "engine"


class Target(abc.ABC):
    """One backend.  Subclasses set the class variables and implement build/profile."""

    name: ClassVar[str]
    summary: ClassVar[str]
    engine_suffix: ClassVar[str]

    @abc.abstractmethod
    def available(self, executor: Executor | None = None) -> tuple[bool, str]:
        """Whether this target can work on ``executor`` (default: here), and why not."""

    @abc.abstractmethod
    def build(self, model: Path, output: Path | None, options: TargetOptions) -> Engine:
        """Build ``model`` into an engine written at ``output`` (a default path beside the model if None)."""

    @abc.abstractmethod
    def load(self, path: Path, options: TargetOptions, workdir: Path | None = None) -> Engine:
        """Turn a profile argument (an ONNX model or a built engine) into an Engine; targets that must
        build first (TensorRT) build into ``workdir``, which the caller owns."""

    @abc.abstractmethod
    def profile(self, engines: Sequence[Engine], options: TargetOptions, timing: ProfileOptions) -> ProfileReport:
        """Time ``engines`` (two or more: interleaved A, B, A, B rounds) and report."""

    def default_output(self, model: Path) -> Path:
        return model.with_name(f"{model.stem}.{self.name}{self.engine_suffix}")
