"""Semantic checks of the analysis plan (``analysis:`` of study.yaml) against the study,
registered in :data:`immunomon.pipeline.checks.CHECKS`: every problem one line naming
study.yaml and the line of the offending key.

Parameter names known before the run come from each panel's gating template; panels gated
otherwise (Gating-ML, FlowJo) or not gated are not checked here — a name they do not
produce is reported by the run as ``not estimable``.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .plan import CLUSTER_METHODS, SUPERVISED_METHODS


def template_parameters(template) -> set[str]:
    """Every parameter string a gating template reports (see
    :func:`immunomon.gating.statistics.parameter_table`)."""
    spec = template.parameters
    parents = {p.name: p.parent for p in template.populations}
    names = set()
    for pop, parent in parents.items():
        for den in ([parent] if parent else []) + list(spec.percent_of.get(pop, [])):
            names.add(f"{pop} % of {den}")
    names |= {f"{pop} count/uL" for pop in spec.count_per_ul}
    names |= {f"{pop} {m}+ %" for pop, ms in spec.positive.items() for m in ms}
    names |= {f"{m} median in {pop}" for pop, ms in spec.median.items() for m in ms}
    names |= {f"{m} gMFI in {pop}" for pop, ms in spec.gmfi.items() for m in ms}
    names |= {f"{a}/{b} ratio" for a, b in spec.ratios}
    return names - set(spec.exclude)


def _yaml_lines(path: Path) -> dict[tuple, int]:
    """(key path) -> 1-based line of every key of study.yaml ({} when unreadable)."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[tuple, int] = {}

    def walk(n, at):
        out[at] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                walk(v, at + (k.value,))
                out[at + (k.value,)] = k.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, at + (i,))

    if node is not None:
        walk(node, ())
    return out


def _known_parameters(study) -> dict[str, set[str] | None]:
    """Panel -> the parameter names its template reports (None: not known before the run)."""
    from immunomon.errors import UserError
    from immunomon.gating.template import GatingTemplate
    from immunomon.io.study import BUILTIN_TEMPLATES

    out = {}
    for name, panel in study.config.panels.items():
        g = panel.gating
        if g is None or not g.template:
            out[name] = None
            continue
        source = g.template if g.template in BUILTIN_TEMPLATES else study.root / g.template
        try:
            out[name] = template_parameters(GatingTemplate.load(source))
        except UserError:
            out[name] = None  # the gating checks report a broken template
    return out


def check_plan(study) -> list[str]:
    """Problems of ``study.config.analysis`` against the study (empty when fine)."""
    plan = study.config.analysis
    if plan is None:
        return []
    path = Path(study.root) / "study.yaml"
    lines = _yaml_lines(path)
    problems: list[str] = []

    def say(loc: tuple, msg: str) -> None:
        key = ("analysis",) + loc
        while key and key not in lines:
            key = key[:-1]
        at = f", line {lines[key]}" if key in lines else ""
        problems.append(f"{path}{at}: analysis.{'.'.join(map(str, loc))}: {msg}")

    cfg, s = study.config, study.samples
    visit_names = [v.name for v in cfg.visits]
    kept = s[(~s["control"].astype(bool)) & (s["excluded_reason"] == "")] if len(s) else s
    arms_all = sorted(set(s["arm"]) - {""}) if "arm" in s else []
    arms = sorted(set(kept["arm"]) - {""}) if "arm" in kept else []
    diseases = sorted(set(kept["disease"]) - {""}) if "disease" in kept else []
    for a in arms_all:
        if a not in arms:
            line = int(s.index[s["arm"] == a][0]) + 2
            problems.append(f"{Path(study.root) / 'samples.csv'}, line {line}, column 'arm': arm "
                            f"'{a}' has no patient (only bridge controls or excluded samples)")
    if plan.control_arm is not None:
        if plan.control_arm not in arms_all:
            say(("control_arm",), f"'{plan.control_arm}' is not an arm of samples.csv "
                                  f"(arms: {', '.join(arms_all) or 'none'})")
        elif plan.control_arm not in arms:
            say(("control_arm",), f"arm '{plan.control_arm}' has no patient")
    groups = arms if len(arms) >= 2 else diseases
    if plan.reference_group is not None and plan.reference_group not in groups:
        say(("reference_group",), f"'{plan.reference_group}' is not a group with patients "
                                  f"(groups: {', '.join(groups) or 'none'})")
    known = _known_parameters(study)

    def check_parameter(loc, name, panel):
        panels = [panel] if panel in known else list(known)
        sets = [known[p] for p in panels]
        if not sets or any(x is None for x in sets):
            return
        if not any(name in x for x in sets):
            where = f"panel '{panel}'" if panel in known else "the panels' gating templates"
            say(loc, f"unknown parameter '{name}' (not reported by {where})")

    endpoints = [(("primary", i), e) for i, e in enumerate(plan.primary)]
    if plan.key_secondary is not None:
        endpoints += [(("key_secondary", "endpoints", i), e)
                      for i, e in enumerate(plan.key_secondary.endpoints)]
    for loc, e in endpoints:
        if bool(e.parameter) == bool(e.cluster):
            say(loc, "give a parameter or a cluster (one of them)")
        if e.marker and not e.cluster:
            say(loc + ("marker",), "a marker end point needs a cluster")
        if e.panel is not None and e.panel not in cfg.panels:
            say(loc + ("panel",), f"unknown panel '{e.panel}' (study.yaml declares "
                                  f"{', '.join(cfg.panels)})")
        if e.parameter:
            check_parameter(loc + ("parameter",), e.parameter, e.panel)
        if e.marker:
            pans = [cfg.panels[e.panel]] if e.panel in cfg.panels else list(cfg.panels.values())
            markers = {c.marker for p in pans for c in p.channels.values()} | \
                {f.marker for p in pans for f in p.features.values()}
            if e.marker not in markers:
                say(loc + ("marker",), f"'{e.marker}' is not a marker of the panel(s)")
        for j, v in enumerate(e.visits):
            if v not in visit_names:
                say(loc + ("visits", j), f"unknown visit '{v}' (study.yaml declares "
                                         f"{', '.join(visit_names)})")
            elif v == cfg.baseline and e.comparison != "group_difference":
                say(loc + ("visits", j), f"'{v}' is the baseline: a change from baseline is "
                                         f"tested at a later visit")
        if e.comparison in ("change_from_baseline", "arm_difference") and cfg.baseline is None:
            say(loc + ("comparison",), f"{e.comparison} needs a baseline visit (a single-visit "
                                       f"study compares groups: group_difference)")
        if e.comparison == "arm_difference":
            if len(arms) < 2:
                say(loc + ("comparison",), "arm_difference needs two or more arms in "
                                           "samples.csv (column 'arm')")
            elif plan.control_arm is None:
                say(loc + ("comparison",), "arm_difference needs analysis.control_arm")
        if e.comparison == "group_difference" and plan.reference_group is None and not (
                len(arms) >= 2 and plan.control_arm):
            say(loc + ("comparison",), "group_difference needs analysis.reference_group")
        if e.method is not None:
            table = "stats_supervised" if e.parameter else ("stats_ds" if e.marker else "stats_da")
            allowed = (SUPERVISED_METHODS[e.comparison] if table == "stats_supervised"
                       else CLUSTER_METHODS[table])
            if e.method not in allowed:
                say(loc + ("method",), f"'{e.method}' is not a method of {e.comparison} "
                                       f"{'parameters' if e.parameter else 'clusters'} "
                                       f"({', '.join(allowed)})")
    sel = plan.selectivity
    if sel is not None:
        for key in ("targets", "off_targets"):
            for j, name in enumerate(getattr(sel, key)):
                check_parameter(("selectivity", key, j), name, None)
        lo, hi = sel.margins
        if not (0 < lo < 1 < hi):
            say(("selectivity", "margins"), f"[{lo:g}, {hi:g}] must enclose 1 on the "
                                            f"fold-change scale (0 < low < 1 < high)")
    return problems
