"""The exploration as a pytest test (collected by harness.plugin.explore under --hil-explore).

A module of its own so that fixtures and parametrization work as for any test: the kernel
comes from ``hil_kernel``, the real system from ``hil_system_factory`` (qemu backend only).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest

from harness.images.builder import default_cache_dir
from harness.plugin.explore import SUMMARY_KEY
from harness.plugin.fixtures import model_mode_release, run_behaviour
from harness.plugin.kernels import kernel_id
from harness.scenario.explore import (
    EXPLORE_NAME,
    MODEL_OPTIONS,
    Exploration,
    Stats,
    model_coverage,
)
from harness.scenario.model_system import CANNOT_PLAY, model_system_factory, mutant_explains
from harness.scenario.mutants import planted
from harness.scenario.runner import RunnerOptions
from harness.scenario.system import RealSystem

try:
    import allure
except ImportError:  # allure is optional
    allure = None  # type: ignore[assignment]


def known_bug_triggers(config: pytest.Config) -> frozenset[tuple[str, str]]:
    """The steps that set off a known bug of the QEMU under test (qemu_versions.QEMU_BUGS):
    not explored, since a finding must replay and a QEMU race does not (said once)."""
    from harness.plugin.fixtures import announced_accel, qemu_version
    from harness.plugin.options import HilSettings
    from harness.plugin.qemu_versions import QEMU_BUGS, known_qemu_bug

    accel = announced_accel(config)
    version = qemu_version(HilSettings.from_config(config).qemu)
    found = set()
    for bug in QEMU_BUGS:
        if known_qemu_bug([bug.mark], version, accel.accel if accel else None):
            print(f"explore: {' '.join(bug.trigger)} is not explored here: {bug.evidence}")
            found.add(bug.trigger)
    return frozenset(found)


#: A planted mutant must shrink to at most this many steps (the issue's acceptance bound).
MUTANT_MAX_STEPS = 8


def test_explore(
    request: pytest.FixtureRequest, hil_kernel: str | None, hil_explore_mutant: str | None
) -> None:
    config = request.config
    backend = config.getoption("--hil-backend")
    label = kernel_id(hil_kernel) if hil_kernel else "default"
    factory: Callable[[], RealSystem] | None = None
    options = MODEL_OPTIONS
    left_out: frozenset[tuple[str, str]] = frozenset()
    if backend == "qemu":
        factory = request.getfixturevalue("hil_system_factory")
        image: Any = request.getfixturevalue("hil_image")
        behaviour = run_behaviour(config, str(image.kernel_version))
        options = RunnerOptions(settle_timeout=config.getoption("--hil-settle-timeout"))
        left_out = known_bug_triggers(config)
    else:
        release = None
        if hil_kernel is not None:
            release = model_mode_release(hil_kernel, config.getoption("--hil-image"))
        behaviour = run_behaviour(config, release)
        if hil_explore_mutant is not None:  # a correct model plays the real system
            factory = model_system_factory(EXPLORE_NAME, behaviour)
    if hil_explore_mutant:
        label += f"-mutant-{hil_explore_mutant}"
    exploration = Exploration(
        real_factory=factory,
        behaviour=behaviour,
        label=f"{backend}-{label}",
        seed=config.getoption("--hil-explore-seed"),
        seconds=config.getoption("--hil-explore"),
        max_examples=config.getoption("--hil-explore-examples"),
        out_dir=Path(config.getoption("--hil-explore-out")),
        exclude=CANNOT_PLAY if backend != "qemu" and factory is not None else frozenset(),
        left_out=left_out,
        database=default_cache_dir() / "explore-db" / f"{backend}-{label}",
        options=options,
        stop_at_finding=hil_explore_mutant is not None,
    )
    mutant = planted(hil_explore_mutant) if hil_explore_mutant else nullcontext()
    with mutant, model_coverage(exploration) as coverage:
        stats = exploration.run()
    stats.coverage = coverage.percent
    request.node.user_properties.append((SUMMARY_KEY, stats.summary()))
    print(stats.summary())
    _attach_findings(stats)
    if hil_explore_mutant:
        _judge_mutant(stats, hil_explore_mutant)
    elif stats.findings:
        pytest.fail(
            "\n\n".join(
                f"exploration found a disagreement, written to {finding.path} "
                f"(rerun: pytest {finding.path}):\n{finding.failure}"
                for finding in stats.findings
            ),
            pytrace=False,
        )


def _judge_mutant(stats: Stats, name: str) -> None:
    """A planted wrong rule must be found, and shrunk to a short scenario."""
    if not stats.findings:
        pytest.fail(f"mutant {name} was not found in {stats.seconds:.0f} s", pytrace=False)
    finding = stats.findings[0]
    if not mutant_explains(finding.path, name):
        pytest.fail(
            f"hunting mutant {name}, exploration found a genuine disagreement instead (the "
            f"planted rule does not explain it): triage {finding.path}:\n{finding.failure}",
            pytrace=False,
        )
    if finding.steps_shrunk > MUTANT_MAX_STEPS:
        pytest.fail(
            f"mutant {name} found but shrunk only to {finding.steps_shrunk} steps "
            f"(> {MUTANT_MAX_STEPS}): {finding.path}",
            pytrace=False,
        )


def _attach_findings(stats: Stats) -> None:
    if allure is None:
        return
    for finding in stats.findings:
        allure.attach(
            finding.path.read_text(),
            name=finding.path.name,
            attachment_type=allure.attachment_type.YAML,
        )
        allure.attach(finding.failure, name="diff", attachment_type=allure.attachment_type.TEXT)
    allure.attach(
        stats.summary(), name="exploration summary", attachment_type=allure.attachment_type.TEXT
    )
