"""The design of a study as the statistics see it: visits and baseline, arms and the
control arm, disease strata, and the groups of a cross-sectional study."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ._common import ALL, StatsOptions, strata

#: Arm names taken as the control when the plan does not name one.
CONTROL_NAMES = ("placebo", "control", "vehicle", "standard of care", "soc")


@dataclass(frozen=True)
class Design:
    """What is compared with what.

    Attributes
    ----------
    baseline
        Baseline visit; ``None`` for a cross-sectional (single-visit) study.
    visits
        Visits in study order (baseline first).
    arms
        Treatment arms (sorted) when the study has two or more, else empty (single arm).
    control
        The control arm (arm differences are each other arm minus it).
    group_col, reference
        Cross-sectional studies: the grouping column (``arm`` or ``disease``) and the
        reference group every other group is compared with.
    diseases
        Disease strata analysed besides the pooled ``all``.
    notes
        Choices made without the plan (e.g. which arm is the control).
    """

    baseline: str | None
    visits: tuple[str, ...]
    arms: tuple[str, ...] = ()
    control: str | None = None
    group_col: str | None = None
    reference: str | None = None
    diseases: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def repeated(self) -> bool:
        return self.baseline is not None

    @property
    def active(self) -> list[str]:
        """Arms compared with the control."""
        return [a for a in self.arms if a != self.control]

    @property
    def arm_labels(self) -> list[str]:
        """Within-arm labels of the ``arm`` column (``all`` for a single-arm study)."""
        return list(self.arms) or [ALL]

    def difference_label(self, arm: str) -> str:
        return f"{arm} vs {self.control}"

    @property
    def strata(self) -> list[str]:
        return [ALL, *self.diseases]


def _pick(values: list[str], wanted: str | None, kind: str, notes: list[str]) -> str:
    if wanted in values:
        return wanted
    named = [v for v in values if v.strip().lower() in CONTROL_NAMES]
    pick = named[0] if named else values[0]
    notes.append(f"{kind} not named in the analysis plan: '{pick}' used")
    return pick


def study_design(samples: pd.DataFrame, baseline: str | None, visits: list[str],
                 options: StatsOptions, control_arm: str | None = None,
                 reference_group: str | None = None) -> Design:
    """The :class:`Design` of the kept samples (columns patient_id, disease, arm, visit)."""
    notes: list[str] = []
    arm_values = sorted(set(samples["arm"].astype(str)) - {"", "nan", "None"})
    arms = tuple(arm_values) if len(arm_values) >= 2 else ()
    control = _pick(arm_values, control_arm, "control arm", notes) if arms else None
    diseases = tuple(s for s in strata(samples["disease"], options.per_disease) if s != ALL)
    group_col = reference = None
    if baseline is None:
        if arms:
            group_col, reference = "arm", (reference_group if reference_group in arms else control)
        else:
            groups = sorted(set(samples["disease"].astype(str)) - {"", "nan", "None"})
            if len(groups) >= 2:
                group_col = "disease"
                reference = _pick(groups, reference_group, "reference group", notes)
        diseases = () if group_col == "disease" else diseases
    return Design(baseline=baseline, visits=tuple(visits), arms=arms, control=control,
                  group_col=group_col, reference=reference, diseases=diseases,
                  notes=tuple(notes))
