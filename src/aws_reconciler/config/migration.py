"""From the amazon provider's executors to ours: which of their settings become which of ours.

Pure: reads a :class:`~.sources.RawConfig` (airflow.cfg and the environment) and returns what to
set, what has no equivalent and why, and where both are set and disagree. ``aws-reconciler config
migrate`` prints it; start-up warns when provider settings are present and ours are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .sources import RawConfig, config_section, env_var_name

PROVIDER_ECS = "aws_ecs_executor"
PROVIDER_BATCH = "aws_batch_executor"
CORE, ECS, BATCH = "aws_reconciler", "aws_reconciler_ecs", "aws_reconciler_batch"

#: (provider section, provider option) -> (our section, our option); the same meaning and format.
MAPPED: dict[tuple[str, str], tuple[str, str]] = {
    **{
        (PROVIDER_ECS, option): (ECS, option)
        for option in (
            "region_name",
            "assign_public_ip",
            "cluster",
            "capacity_provider_strategy",
            "container_name",
            "launch_type",
            "platform_version",
            "security_groups",
            "subnets",
            "task_definition",
            "run_task_kwargs",
        )
    },
    (PROVIDER_ECS, "max_run_task_attempts"): (ECS, "max_launch_attempts"),
    # The scheduler's and API server's calls (task logs); the reconciler keeps the boto3 chain.
    (PROVIDER_ECS, "conn_id"): (ECS, "aws_conn_id"),
    (PROVIDER_BATCH, "conn_id"): (BATCH, "aws_conn_id"),
    (PROVIDER_ECS, "check_health_on_startup"): (CORE, "check_health_on_startup"),
    **{
        (PROVIDER_BATCH, option): (BATCH, option)
        for option in ("region_name", "job_queue", "job_definition", "submit_job_kwargs", "max_submit_job_attempts")
    },
    (PROVIDER_BATCH, "check_health_on_startup"): (CORE, "check_health_on_startup"),
}

#: Provider options with no equivalent, and what to do instead.
NOT_MAPPED: dict[tuple[str, str], str] = {
    (PROVIDER_BATCH, "job_name"): (
        "the reconciler names every submit attempt af-<id>-<attempt>: the name is how it finds a job again after "
        "a crash (Batch has no client token)"
    ),
}


@dataclass(frozen=True)
class Setting:
    """One option to set, and the provider option it comes from."""

    section: str
    option: str
    value: str
    source: str


@dataclass(frozen=True)
class MigrationPlan:
    """What ``config migrate`` found."""

    settings: list[Setting] = field(default_factory=list)
    #: Provider options with no equivalent: (where it was set, why).
    dropped: list[tuple[str, str]] = field(default_factory=list)
    #: Options set on both sides with different values: the text of each.
    conflicts: list[str] = field(default_factory=list)
    #: Provider options this release does not know (a newer provider, or a typo).
    unknown: list[str] = field(default_factory=list)
    #: The Airflow team whose settings these are (the provider's team-scoped ones map to ours).
    team: str | None = None

    @property
    def empty(self) -> bool:
        """No provider setting was found."""
        return not (self.settings or self.dropped or self.unknown)


def plan_migration(raw: RawConfig) -> MigrationPlan:
    """Every provider setting in ``raw``, mapped to ours where one exists (``raw`` scoped to a team:
    that team's provider settings, mapped to that team's own of ours)."""
    plan = MigrationPlan(team=raw.team)
    for section in (PROVIDER_ECS, PROVIDER_BATCH):
        for option, found in sorted(raw.options(section).items()):
            if not found.value.strip():
                continue  # `airflow config` writes unset provider options as "option = "
            where = f"[{config_section(section, raw.team)}] {option} (from {found.origin})"
            if (section, option) in NOT_MAPPED:
                plan.dropped.append((where, NOT_MAPPED[(section, option)]))
                continue
            if (section, option) not in MAPPED:
                plan.unknown.append(where)
                continue
            ours_section, ours_option = MAPPED[(section, option)]
            ours = raw.get(ours_section, ours_option)
            if ours is not None and ours.value.strip() and ours.value.strip() != found.value.strip():
                plan.conflicts.append(
                    f"[{config_section(ours_section, raw.team)}] {ours_option} = {ours.value!r} (from {ours.origin}) "
                    f"but {where} = "
                    f"{found.value!r}: ours wins"
                )
            if any(s.section == ours_section and s.option == ours_option for s in plan.settings):
                continue  # check_health_on_startup from both provider sections: one setting
            plan.settings.append(Setting(ours_section, ours_option, found.value.strip(), where))
    return plan


def provider_warnings(raw: RawConfig) -> list[str]:
    """A start-up warning when the provider's executors are configured and ours are not."""
    plan = plan_migration(raw)
    warnings = list(plan.conflicts)
    ours_set = any(found.value.strip() for section in (ECS, BATCH) for found in raw.options(section).values())
    if not plan.empty and not ours_set:
        warnings.append(
            f"settings of the amazon provider's executors are present ([{PROVIDER_ECS}] / [{PROVIDER_BATCH}]) but "
            f"none of ours: run `aws-reconciler config migrate` to print the equivalent [{ECS}] / [{BATCH}] settings"
        )
    return warnings


def render_cfg(plan: MigrationPlan) -> str:
    """The settings as airflow.cfg sections, each line commented with its source."""
    lines: list[str] = []
    for section in (CORE, ECS, BATCH):
        rows = [s for s in plan.settings if s.section == section]
        if rows:
            header = f"[{config_section(section, plan.team)}]"
            lines += ["", header] if lines else [header]
            lines += [f"# from {s.source}\n{s.option} = {s.value}" for s in rows]
    return "\n".join(lines) + ("\n" if lines else "")


def render_env(plan: MigrationPlan) -> str:
    """The settings as environment variables (``export`` lines, shell-quoted)."""
    import shlex

    return "".join(
        f"export {env_var_name(s.section, s.option, plan.team)}={shlex.quote(s.value)}\n" for s in plan.settings
    )
