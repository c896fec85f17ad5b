"""How `metapt bench` prints its figures: the headline table, the study's variants, the growth with
the number of sources."""

from __future__ import annotations

from typing import Any


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key.endswith("_bytes"):
        return f"{value / 2**20:.1f} MiB"
    if key.endswith("flops_per_s"):
        return f"{value / 1e9:.1f} GFLOP/s"
    if key.endswith("tokens_per_s"):
        return f"{value:,.0f} tok/s"
    if key in ("selection_share", "mfu") or "agreement" in key or key.endswith("share"):
        return f"{100 * value:.1f}%"
    if key.endswith("ratio"):
        return f"{value:.2f}x"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


ROWS = (
    ("selection_share", "selection share of episode time"),
    ("engine_tokens_per_s", "engine training throughput"),
    ("plain_tokens_per_s", "plain PyTorch loop throughput"),
    ("throughput_ratio", "engine / plain throughput"),
    ("first_order_agreement", "first-order picks exact's task"),
    ("utility_spearman", "Spearman(first-order, exact)"),
    ("shared_agreement", "shared (agnostic) picks exact's task"),
    ("shared_spearman", "Spearman(shared, exact)"),
    ("resampled_agreement", "first-order, other target batches, picks exact's"),
    ("resampled_spearman", "Spearman(first-order other targets, exact)"),
    ("reference_sure_share", "episodes where the reference is sure"),
    ("reference_agreement", "the spec's choices agree with a sure reference"),
    ("engine_agreement_sure", "same, the engine's choices (with exploration)"),
    ("reference_self_agreement", "ceiling: a second reference agrees"),
    ("selection_peak_bytes", "peak memory, the spec's selection"),
    ("train_peak_bytes", "peak memory, plain training step"),
    ("memory_ratio", "selection / training peak"),
    ("sources_memory_ratio", "largest selection / training peak over --sources"),
    ("memory_extra_ratio", "same, above the memory held before"),
    ("train_flops_per_s", "training FLOP/s (estimate / time)"),
    ("matmul_flops_per_s", "matrix product FLOP/s"),
    ("mfu", "model FLOPs utilisation"),
)


def table(result: dict[str, Any]) -> Any:
    """The figures as rich tables (the CLI prints them): the headline figures, the variants, the
    growth with the number of sources."""
    from rich.console import Group

    parts = [_main(result)]
    if result.get("variants"):
        parts.append(_variants(result))
    if result.get("sources"):
        parts.append(_sources(result))
    if result.get("ghost"):
        parts.append(_ghost(result))
    return Group(*parts)


def _main(result: dict[str, Any]) -> Any:
    from rich.table import Table

    title = (
        f"metapt bench: {result['utility']} utility, {result['episodes']} episodes "
        f"(select every {result['select_every']}), {result['device']}, {result['threads']} threads"
    )
    out = Table(title=title, title_justify="left")
    for name, justify in (("figure", "left"), ("value", "right"), ("target", "left"), ("met", "left")):
        out.add_column(name, justify=justify, overflow="fold")
    for key, label in ROWS:
        if key not in result:
            continue
        target = result["targets"].get(key, {})
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: ""}[target.get("met")]
        out.add_row(label, _fmt(key, result[key]), target.get("target", ""), met)
    for name, seconds in result["selection_call_seconds"].items():
        out.add_row(f"utilities, {name.replace('_', ' ')}", f"{seconds:.3f} s / selection", "", "")
    out.add_row("training step", f"{result['train_step_seconds']:.3f} s", "", "")
    if result.get("memory_reason"):
        out.add_row("memory", result["memory_reason"], "", "")
    return out


VARIANT_COLUMNS = (  # the settings columns are in --json (estimator, policy, M, probe, params, ...)
    ("name", "variant"),
    ("selections", "sel."),
    ("selection_seconds", "s/sel"),
    ("selection_share", "share"),
    ("agreement_sure", "agree"),
    ("estimate_agreement_sure", "est."),
    ("policy_agreement_sure", "mean"),
    ("agreement_all", "all"),
    ("memory_ratio", "mem"),
    ("memory_extra_ratio", "extra"),
)


def _variants(result: dict[str, Any]) -> Any:
    from rich.table import Table

    sure = _fmt("reference_sure_share", result.get("reference_sure_share"))
    title = (
        f"variants on the same weights; reference: exact, {result.get('reference_batches')} x "
        f"{result.get('reference_batches')} batches, sure in {sure} of {result.get('reference_episodes')} "
        "episodes. sel.: selections made in them (select_every k > 1: the warm-up's, then every k-th "
        "episode's, held in between); agree: the variant's choices are the sure reference's leader; est.: its estimate's "
        "argmax is; mean: the bandit's mean leader is (greedy: est.); all: choices over every episode; "
        "mem, extra: peak memory / a training step's, in all and above what was held"
    )
    out = Table(title=title, title_justify="left")
    for key, label in VARIANT_COLUMNS:
        out.add_column(label, justify="left" if key == "name" else "right", overflow="fold")
    for row in result["variants"]:
        out.add_row(*(_cell(key, row.get(key)) for key, _ in VARIANT_COLUMNS))
    return out


def _sources(result: dict[str, Any]) -> Any:
    from rich.table import Table

    out = Table(
        title="growth with the number of sources (the spec's selection; extra: above what was held)",
        title_justify="left",
    )
    keys = (
        ("sources", "sources"),
        ("selection_seconds", "s/sel"),
        ("train_seconds", "s/train"),
        ("selection_share", "share"),
        ("selection_peak_bytes", "sel peak"),
        ("train_peak_bytes", "step peak"),
        ("memory_ratio", "ratio"),
        ("selection_extra_bytes", "sel extra"),
        ("train_extra_bytes", "step extra"),
    )
    for _, label in keys:
        out.add_column(label, justify="right", overflow="fold")
    for row in result["sources"]:
        out.add_row(*(_cell(key, row.get(key)) for key, _ in keys))
    return out


def _cell(key: str, value: Any) -> str:
    if key in ("selection_seconds", "train_seconds"):
        return "n/a" if value is None else f"{value:.3f}"
    if key == "name":
        return str(value)
    return _fmt(key, value)


def _ghost(result: dict[str, Any]) -> Any:
    from rich.table import Table

    out = Table(
        title="ghost inner products of two batches' encoder linear-layer gradients vs materialised ones "
        "(break-even: tokens per batch below which the factors are smaller)",
        title_justify="left",
    )
    for label in ("batch", "tokens", "factors", "gradients", "ghost s/pair", "dot s/pair", "rel. error"):
        out.add_column(label, justify="right", overflow="fold")
    for row in result["ghost"]:
        out.add_row(
            str(row["batch_size"]),
            str(row["ghost_tokens"]),
            _fmt("ghost_factor_bytes", row["ghost_factor_bytes"]),
            _fmt("ghost_gradient_bytes", row["ghost_gradient_bytes"]),
            f"{row['ghost_pair_seconds']:.4f}",
            f"{row['materialised_pair_seconds']:.4f}",
            f"{row['ghost_max_error']:.1e}",
        )
    return out
