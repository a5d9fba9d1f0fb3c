"""``shrink``: load → analyze → score → allocate → rewrite → verify → save, with a report.

The Python API mirrors the CLI::

    import graphprune
    result = graphprune.shrink("model.onnx", ratio=0.5)
    print(result.summary())
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphprune.allocation import Allocation, AllocationOptions, allocate
from graphprune.analysis import Analysis, analyze
from graphprune.cost import count
from graphprune.errors import UsageError, VerificationError
from graphprune.graph import GraphView
from graphprune.groups import Group
from graphprune.importance import ImportanceOptions, ImportanceResult, score_groups
from graphprune.inputs import load_inputs, random_inputs
from graphprune.model_io import LoadedModel, load_model, save_model_atomic
from graphprune.passes.base import PassResult, PruneContext, run_pipeline
from graphprune.passes.pipeline import pruning_pipeline
from graphprune.plan import PruningPlan
from graphprune.rules import AnalysisOptions, Space
from graphprune.tensors import ScratchWriter, has_external
from graphprune.verify import VerifyResult, compare, consumer_zeroing, masked_reference


@dataclass
class ShrinkResult:
    model: onnx.ModelProto
    plan: PruningPlan
    analysis: Analysis
    allocation: Allocation
    passes: list[PassResult]
    verify: VerifyResult | None
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    phases: dict[str, float]
    output: Path | None = None
    warnings: list[str] = field(default_factory=list)
    # keeps the scratch file of rewritten external weights alive while ``model`` refers to it
    scratch: ScratchWriter | None = field(default=None, repr=False)
    obspa: Any = None  # graphprune.obspa_rewrite.ObspaReport with method="obspa"
    sensitivity: Any = None  # graphprune.sensitivity.SensitivityReport with sensitivity=True
    earlier: list[ShrinkResult] = field(default_factory=list, repr=False)  # passes before this one

    def after_stage(self, first: ShrinkResult) -> ShrinkResult:
        """This pass's result as the second of two: sizes before are the first pass's, its phases,
        warnings and proof are kept (``earlier``, which also keeps its scratch file alive)."""
        self.earlier = [*first.earlier, first]
        self.params_before, self.macs_before = first.params_before, first.macs_before
        self.phases = {**{f"heads {k}": v for k, v in first.phases.items()},
                       **{f"head-dim {k}": v for k, v in self.phases.items()}}
        self.warnings = list(dict.fromkeys([*first.warnings, *self.warnings]))
        return self

    @property
    def groups_pruned(self) -> int:
        return sum(1 for d in self.allocation.decisions.values() if d.removed > 0)

    def report(self) -> dict[str, Any]:
        a = self.analysis
        return {
            "output": str(self.output) if self.output else None,
            "params": {"before": self.params_before, "after": self.params_after,
                       "ratio": self.params_after / self.params_before if self.params_before else 1.0},
            "macs": {"before": self.macs_before, "after": self.macs_after,
                     "ratio": self.macs_after / self.macs_before if self.macs_before else 1.0},
            "groups": {
                "total": len(a.groups),
                "pruned": self.groups_pruned,
                "prunable": len(a.prunable),
                "frozen": sum(1 for g in a.groups if g.frozen),
                "lossy": sum(1 for g in a.groups if g.lossy and not g.frozen),
            },
            "decisions": [
                {"group": d.group_id, "units_before": d.units_before, "units_after": d.units_after,
                 "skipped": d.skipped}
                for d in self.allocation.decisions.values()
            ],
            "verify": None if self.verify is None else {
                "passed": self.verify.passed, "exact": self.verify.exact,
                "max_abs_diff": self.verify.max_abs_diff, "rel_diff": self.verify.rel_diff,
            },
            "passes": [{"name": p.name, "modified": p.modified, "details": p.details[:50]} for p in self.passes],
            "seconds": {k: round(v, 4) for k, v in self.phases.items()},
            "warnings": self.warnings,
            **({"method": "obspa", "obspa": self.obspa.as_dict()} if self.obspa is not None else {}),
            **({"sensitivity": self.sensitivity.as_dict()} if self.sensitivity is not None else {}),
            **({"earlier_passes": [{"decisions": e.report()["decisions"], "verify": e.report()["verify"]}
                                   for e in self.earlier]} if self.earlier else {}),
        }

    def summary(self) -> str:
        r = self.report()
        lines = [
            f"params {r['params']['before']:,} -> {r['params']['after']:,} ({100 * r['params']['ratio']:.1f}%)",
            f"MACs   {r['macs']['before']:,} -> {r['macs']['after']:,} ({100 * r['macs']['ratio']:.1f}%)",
            f"groups pruned {r['groups']['pruned']} of {r['groups']['prunable']} prunable "
            f"({r['groups']['frozen']} frozen, {r['groups']['lossy']} lossy)",
            *(f"verify (heads pass, {e.groups_pruned} groups pruned) "
              + (e.verify.summary() if e.verify else "skipped (--no-verify)") for e in self.earlier),
            "verify " + (self.verify.summary() if self.verify else "skipped (--no-verify)"),
            "time   " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.phases.items()),
        ]
        if self.obspa is not None:
            lines.append(self.obspa.summary())
        if self.sensitivity is not None:
            lines.append(self.sensitivity.summary())
        return "\n".join(lines)


def _report_phase(progress: Callable[[str], None] | None, phase: str) -> None:
    if progress is not None:
        progress(phase)


def default_output(path: Path) -> Path:
    return path.with_name(path.stem + ".pruned.onnx")


def shrink(
    source: str | os.PathLike[str] | onnx.ModelProto,
    *,
    ratio: float = 0.0,
    criterion: str = "l2",
    reduction: str = "mean",
    normalizer: str = "mean",
    global_ranking: bool = False,
    max_ratio: float = 0.9,
    target_macs: float | None = None,
    target_params: float | None = None,
    round_to: int = 1,
    ignore: tuple[str, ...] = (),
    ratio_for: tuple[tuple[str, float], ...] = (),
    allow_lossy: bool = False,
    heads: float | None = None,
    head_dim: float | None = None,
    split: str = "heads",
    verify: bool = True,
    inputs: str | os.PathLike[str] | None = None,
    calib: str | os.PathLike[str] | None = None,
    seed: int = 0,
    output: str | os.PathLike[str] | None = None,
    write: bool = True,
    plan_path: str | os.PathLike[str] | None = None,
    method: str = "magnitude",
    stats: str | None = None,
    samples: int | None = None,
    propagate: bool | None = None,
    sensitivity: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ShrinkResult:
    """Prune ``source`` and (unless ``write=False``) save it; see the CLI's ``shrink --help``.

    ``method="obspa"`` scores groups and rewrites the consumers' weights with OBSPA
    (:mod:`graphprune.obspa`); ``stats`` picks where its statistics come from (default: the data-free
    image prior, or ``calib`` when ``calib`` is given), ``samples`` how many inputs it uses,
    ``propagate`` whether consumers are refitted on the pruned model's inputs (None: when affordable).
    ``sensitivity=True`` measures each group's damage to the outputs and ranks globally by it
    (:mod:`graphprune.sensitivity`; kind ratios such as ``heads`` then hold per kind, in total).
    """
    phases: dict[str, float] = {}
    obspa_opts = _obspa_options(method, stats, calib, samples, seed, inputs, propagate)
    kind_ratios: list[tuple[str, float]] = []
    src_path = None if isinstance(source, onnx.ModelProto) else Path(source)
    out_path = None
    if write:
        if src_path is None and output is None:
            raise UsageError("give an output path when shrinking an in-memory model")
        out_path = Path(output) if output is not None else default_output(src_path)  # type: ignore[arg-type]
        _check_output(out_path, src_path)
    if heads is not None and head_dim is not None:  # two passes: whole heads, then dims of the heads left
        if target_macs is not None or target_params is not None or plan_path is not None:
            raise UsageError("with both --heads and --head-dim (two passes) give ratios, not a target or --plan; "
                             "or run --heads first and --head-dim on its output")
        common: dict[str, Any] = dict(
            criterion=criterion, reduction=reduction, normalizer=normalizer, global_ranking=global_ranking,
            max_ratio=max_ratio, round_to=round_to, ignore=ignore, allow_lossy=allow_lossy, verify=verify,
            inputs=inputs, calib=calib, seed=seed, method=method, stats=stats, samples=samples,
            propagate=propagate, sensitivity=sensitivity, progress=progress)
        first = shrink(source, ratio=ratio, ratio_for=ratio_for, heads=heads, write=False, **common)
        second = shrink(first.model, head_dim=head_dim, write=write, output=out_path, **common)
        return second.after_stage(first)
    if heads is not None:
        kind_ratios.append(("heads", heads))
        split = "heads"
    if head_dim is not None:
        kind_ratios.append(("head-dim", head_dim))
        split = "head-dim"
    alloc_opts = AllocationOptions(
        ratio=ratio, max_ratio=max_ratio, target_macs=target_macs,
        target_params=target_params, round_to=round_to, ignore=tuple(ignore), ratio_for=tuple(ratio_for),
        allow_lossy=allow_lossy, kind_ratios=tuple(kind_ratios), global_ranking=global_ranking or sensitivity,
    )
    imp_opts = ImportanceOptions(criterion=criterion, reduction=reduction, normalizer=normalizer, seed=seed)

    t = time.perf_counter()
    _report_phase(progress, "load")
    loaded = load_model(source)
    phases["load"] = time.perf_counter() - t

    t = time.perf_counter()
    _report_phase(progress, "analyze")
    analysis = analyze(loaded, AnalysisOptions(split_preference=split))  # type: ignore[arg-type]
    phases["analyze"] = time.perf_counter() - t

    t = time.perf_counter()
    _report_phase(progress, "score")
    scoring = None
    if obspa_opts is not None:
        from graphprune.obspa import obspa_scores

        scoring = obspa_scores(analysis, alloc_opts, obspa_opts)
        scores = ImportanceResult(scores=scoring.scores, raw=scoring.scores,
                                  criterion=dict.fromkeys(scoring.scores, "obspa"), warnings=list(scoring.warnings))
    else:
        feeds = _calibration(analysis.view, criterion, calib, seed)
        scores = score_groups(analysis, imp_opts, feeds=feeds)
    phases["score"] = time.perf_counter() - t
    sens_report = None
    if sensitivity:
        t = time.perf_counter()
        _report_phase(progress, "sensitivity")
        scores.scores, sens_report = _sensitivity(analysis, scores.scores, alloc_opts, scoring, calib, inputs,
                                                  seed, progress)
        phases["sensitivity"] = time.perf_counter() - t

    t = time.perf_counter()
    _report_phase(progress, "rewrite")
    allocation = allocate(analysis, scores.scores, alloc_opts)
    plan = PruningPlan.from_units(analysis, allocation.kept)
    plan.model_sha256 = loaded.sha256
    plan.meta = {"criterion": criterion, "ratio": allocation.ratio, "global": global_ranking,
                 "round_to": round_to, "split": split}
    work, work_view, obspa_report = loaded, analysis.view, None
    if scoring is not None:  # OBSPA: refit the consumers, then slice and prove against the updated model
        from graphprune.obspa_rewrite import rewrite

        plan.meta.update(criterion="obspa", method="obspa", stats=scoring.options.stats)
        updated, obspa_report = rewrite(loaded.model, analysis.view, scoring, plan, analysis.cost.macs)
        work = LoadedModel(model=updated, path=loaded.path, sha256=loaded.sha256,
                           original_opset=loaded.original_opset, warnings=list(loaded.warnings),
                           external_files=list(loaded.external_files))
        work_view = GraphView(updated)
    scratch = new_scratch(work)
    pruned, pass_results = apply_plan_to_model(work, work_view, plan.keep, scratch)
    phases["rewrite"] = time.perf_counter() - t

    verify_result = None
    if verify:
        t = time.perf_counter()
        _report_phase(progress, "verify")
        verify_result = prove(work.model, pruned, analysis, plan, inputs, seed, scratch=scratch)
        phases["verify"] = time.perf_counter() - t
        if not verify_result.passed:
            raise VerificationError(f"pruned model does not match the masked reference: {verify_result.summary()}")

    after = count(GraphView(pruned))
    if any(analysis.groups[gid].kind == "head-dim" for gid in allocation.kept):
        loaded.warnings.extend(attention_scale_notes(analysis.view))
    result = ShrinkResult(
        model=pruned, plan=plan, analysis=analysis, allocation=allocation, passes=pass_results,
        verify=verify_result, params_before=analysis.cost.params, params_after=after.params,
        macs_before=analysis.cost.macs, macs_after=after.macs, phases=phases,
        warnings=list(loaded.warnings) + scores.warnings + allocation.warnings,
        scratch=scratch, obspa=obspa_report, sensitivity=sens_report,
    )
    if write and out_path is not None:
        t = time.perf_counter()
        _report_phase(progress, "save")
        save_model_atomic(pruned, out_path, source=src_path, external_data=True if loaded.external_files else None)
        if plan_path is not None:
            plan.save(plan_path, analysis.view.is_constant)
        phases["save"] = time.perf_counter() - t
        result.output = out_path
    return result


def _obspa_options(method: str, stats: str | None, calib: Any, samples: int | None, seed: int,
                   inputs: Any, propagate: bool | None = None) -> Any:
    if method not in ("magnitude", "obspa"):
        raise UsageError(f"unknown method '{method}'; choose magnitude or obspa")
    if method == "magnitude":
        if stats is not None or samples is not None or propagate is not None:
            raise UsageError("--stats, --samples and --propagate apply to --method obspa only")
        return None
    from graphprune.obspa import DEFAULT_STATS, ObspaOptions

    return ObspaOptions(stats=stats or ("calib" if calib is not None else DEFAULT_STATS),
                        calib=None if calib is None else str(calib), samples=samples, seed=seed,
                        inputs=None if inputs is None else str(inputs), propagate=propagate)


def _sensitivity(analysis: Analysis, scores: dict[int, np.ndarray], alloc_opts: AllocationOptions, scoring: Any,
                 calib: Any, inputs: Any, seed: int, progress: Callable[[str], None] | None
                 ) -> tuple[dict[int, np.ndarray], Any]:
    """Scores recalibrated by measured output damage (see :mod:`graphprune.sensitivity`)."""
    from graphprune.obspa import prior_feeds
    from graphprune.priors import split_feeds
    from graphprune.sensitivity import (
        MaskTrial,
        ObspaTrial,
        SensitivityOptions,
        calibrated_scores,
        measure,
        reach_units,
    )

    opts = SensitivityOptions()
    spaces = masking_spaces(analysis)
    trial: Any = MaskTrial(analysis, spaces) if scoring is None else ObspaTrial(analysis, spaces, scoring)
    if scoring is not None and scoring.feeds:
        feeds, what = scoring.feeds, f"the OBSPA --stats {scoring.options.stats} inputs"
    elif calib is not None:
        feeds, what = list(split_feeds(load_inputs(calib, analysis.view))), "calibration data"
    else:
        like = load_inputs(inputs, analysis.view) if inputs is not None else None
        feeds, prior = prior_feeds(analysis, opts.samples, seed, like)
        what = f"data-free prior: {prior.describe()}"
    # each group cut alone from the dense model; cutting it in context (the others at the uniform
    # allocation) measured worse on the MNIST CNNs and ViT and no better on MiniLM
    report = measure(analysis, scores, reach_units(analysis, alloc_opts, opts.reach), feeds, trial, opts,
                     inputs=what, progress=progress)
    per = "macs" if alloc_opts.target is not None and alloc_opts.target[0] in ("macs", "latency") else "params"
    return calibrated_scores(analysis, scores, report, per), report


def _check_output(out: Path, src: Path | None) -> None:
    from graphprune.fileio import check_output_dir

    if src is not None and out.resolve() == src.resolve():
        raise UsageError(f"output path {out} is the input file; choose another path with -o")
    check_output_dir(out)


def _calibration(view: GraphView, criterion: str, calib: Any, seed: int) -> list[dict[str, np.ndarray]]:
    if criterion != "activation":
        return []
    if calib is not None:
        return [load_inputs(calib, view)]
    return [random_inputs(view, batch=4, seed=seed + k) for k in range(4)]


def new_scratch(loaded: LoadedModel) -> ScratchWriter | None:
    """A scratch file for rewritten external weights (removed when the process no longer needs it)."""
    if not has_external(loaded.model):
        return None
    directory = Path(tempfile.mkdtemp(prefix="graphprune-"))
    scratch = ScratchWriter(directory)
    weakref.finalize(scratch, shutil.rmtree, directory, True)
    return scratch


def apply_plan_to_model(
    loaded: LoadedModel, view: GraphView, keep: dict[Space, np.ndarray], scratch: ScratchWriter | None = None
) -> tuple[onnx.ModelProto, list[PassResult]]:
    model = onnx.ModelProto()
    model.CopyFrom(loaded.model)
    ctx = PruneContext(model, view, keep, scratch)
    results = run_pipeline(pruning_pipeline(), ctx)
    return ctx.model, results


def attention_scale_notes(view: GraphView) -> list[str]:
    """Say which attention scales stay as exported when head dims are pruned (they are constants baked
    into the graph, e.g. 1/sqrt(d) of the original d; keeping them is what the proof checks)."""
    notes = []
    for i, n in enumerate(view.nodes):
        if n.op_type != "MatMul" or view.is_constant(n.input[0]) or view.is_constant(n.input[1]):
            continue
        for ci in view.consumers.get(n.output[0], []):
            c = view.nodes[ci]
            if c.op_type in ("Div", "Mul") and len(c.input) == 2:
                v = view.small_constant(c.input[1])
                if v is not None and v.size == 1:
                    s = float(v.ravel()[0])
                    eff = s if c.op_type == "Mul" else 1.0 / s
                    d = round(1.0 / eff**2) if eff else 0
                    notes.append(f"attention scale {eff:.4g} after '{view.node_names[i]}' (1/sqrt({d})) kept as "
                                 "exported: pruned heads keep the original scaling")
    return notes


def masking_spaces(analysis: Analysis) -> set[Space]:
    """Weight axes to zero for the masked reference: every consumer ("in") axis; where channels are
    contracted without a weight of the group consuming them (two activations meeting, as in the q·k
    product of attention head dims, or a weight computed from a constant such as a tied embedding's
    Transpose), the producers' weights and biases are zeroed too, making the removed channels exactly
    zero."""
    out: set[Space] = set()
    for g in analysis.groups:
        ins = [p.space for p in g.params if p.role == "in"]
        producers = [p.space for p in g.params if p.role in ("out", "const")]
        out.update(ins)
        if not ins or g.kind == "head-dim" or _contracted_unweighted(analysis.view, g):
            out.update(producers)
    return out


_CONTRACTIONS = ("MatMul", "Gemm")


def _contracted_unweighted(view: GraphView, g: Group) -> bool:
    """Whether a MatMul/Gemm contracts one of ``g``'s axes without being one of its weight consumers."""
    weighted = {p.node for p in g.params if p.role == "in"}
    for s in g.spaces:
        if s.virtual:
            continue
        for ci in view.consumers.get(s.tensor, []):
            node = view.nodes[ci]
            if node.op_type not in _CONTRACTIONS or ci in weighted:
                continue
            rank = view.rank(s.tensor) or 0
            for k, name in enumerate(node.input[:2]):
                if name != s.tensor:
                    continue
                if node.op_type == "MatMul":
                    axis = rank - 1 if k == 0 else rank - 2
                else:
                    trans = view.attr(ci, "transA" if k == 0 else "transB", 0)
                    axis = (0 if trans else 1) if k == 0 else (1 if trans else 0)
                if s.axis == axis:
                    return True
    return False


def prove(
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    analysis: Analysis,
    plan: PruningPlan,
    inputs: str | os.PathLike[str] | None,
    seed: int,
    scratch: ScratchWriter | None = None,
) -> VerifyResult:
    """Compare the pruned model with the masked reference on batch 1 and batch 4 inputs.  Lossy cuts
    get the exact reference of :mod:`graphprune.lossy_reference` where it applies, else the comparison
    is reported as approximate (and cannot fail)."""
    spaces = masking_spaces(analysis)
    pruned_ids = {int(rec["id"]) for rec in plan.groups}
    lossy = {g.id for g in analysis.groups if g.lossy and g.id in pruned_ids}
    rewrite = None
    note = ""
    if lossy:
        from graphprune.lossy_reference import plan_rewrite

        rewrite = plan_rewrite(analysis, plan.keep, plan.sizes, lossy)
        if rewrite.blocker is None:
            spaces |= {p.space for g in analysis.groups if g.id in lossy for p in g.params
                       if p.role in ("out", "const")}
            note = "lossy cuts: statistics over the kept channels"
        else:
            note = f"no exact reference: {rewrite.blocker}"
    ref = masked_reference(original, consumer_zeroing(plan.keep, plan.sizes, spaces), scratch)
    if rewrite is not None and rewrite.blocker is None:
        from graphprune.lossy_reference import apply_rewrite

        ref = apply_rewrite(ref, analysis.view, rewrite)
    if inputs is not None:
        feeds = [load_inputs(inputs, analysis.view)]
    else:
        feeds = [random_inputs(analysis.view, batch=b, seed=seed + b) for b in (1, 4)]
    result = compare(pruned, ref, feeds, exact=not lossy or (rewrite is not None and rewrite.blocker is None))
    result.note = note
    return result


@dataclass
class ApplyResult:
    model: onnx.ModelProto
    output: Path | None
    verify: VerifyResult | None
    passes: list[PassResult]

    def summary(self) -> str:
        changed = sum(1 for p in self.passes if p.modified)
        return (f"{changed} passes changed the graph; verify "
                + (self.verify.summary() if self.verify else "skipped"))


def apply_plan(
    source: str | os.PathLike[str],
    plan: str | os.PathLike[str] | PruningPlan,
    *,
    output: str | os.PathLike[str] | None = None,
    verify: bool = True,
    force: bool = False,
    write: bool = True,
) -> ApplyResult:
    """Apply a saved plan to the model it was made for (hash and shapes are checked)."""
    src = Path(source)
    plan_obj = plan if isinstance(plan, PruningPlan) else PruningPlan.load(plan)
    out_path = Path(output) if output is not None else default_output(src)
    if write:
        _check_output(out_path, src)
    if plan_obj.meta.get("method") == "obspa":
        raise UsageError("this plan was made with --method obspa, which also rewrites weights; apply-plan only "
                         "slices and cannot reproduce that model: run shrink --method obspa again")
    loaded = load_model(src)
    if plan_obj.model_sha256 and loaded.sha256 != plan_obj.model_sha256 and not force:
        raise UsageError(
            f"{src} is not the model this plan was made for (sha256 {str(loaded.sha256)[:12]}… vs "
            f"{plan_obj.model_sha256[:12]}…); use --force to apply anyway"
        )
    analysis = analyze(loaded, AnalysisOptions(split_preference=plan_obj.meta.get("split", "heads")))
    view = analysis.view
    for s, size in plan_obj.sizes.items():
        if s.virtual:
            continue
        actual = view.static_dim(s.tensor, s.axis)
        if actual != size:
            raise UsageError(
                f"plan does not fit {src}: tensor '{s.tensor}' axis {s.axis} has size {actual}, plan expects {size}"
            )
    scratch = new_scratch(loaded)
    pruned, passes = apply_plan_to_model(loaded, view, plan_obj.keep, scratch)
    verify_result = None
    if verify:
        verify_result = prove(loaded.model, pruned, analysis, plan_obj, None, 0, scratch=scratch)
        if not verify_result.passed:
            raise VerificationError(f"plan result does not match the masked reference: {verify_result.summary()}")
    if write:
        save_model_atomic(pruned, out_path, source=src, external_data=True if loaded.external_files else None)
    return ApplyResult(pruned, out_path if write else None, verify_result, passes)
