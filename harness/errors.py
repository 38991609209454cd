"""The root of every error the harness raises on purpose, and the one "operation failed" type.

Why one root: a user's test or tool can tell "the harness reports a problem" (a bad recipe, a
QEMU that would not start, a guest that disagrees with the model) from a bug, with one
`except HarnessError`. Every layer's error derives from it:

- `harness.model.errors.ModelError` (an OperationFailed: the model predicts a failure)
- `harness.images.errors.ImageBuildError`
- `harness.machine.errors.MachineError` and its QmpError, WaitTimeout (ReadTimeout),
  MigrationRefused; `harness.guest.agent_client.AgentError` (the agent answered ok: false)
- `harness.backend.system.RealFailure` (an OperationFailed on the real system)
- `harness.scenario.system.StepFailure` (an OperationFailed, the scenario layer's contract),
  `harness.scenario.schema.ScenarioError` (a scenario file is invalid) and
  `harness.scenario.runner.ScenarioFailure`, which is also an AssertionError so that pytest
  reports a disagreement as a test failure, not as an error in the harness;
  `harness.scenario.vm.OperationError` (an OperationFailed the model and the real system agree
  on) and `OperationBlocks` (the Python API's "this call would block").

`NotApplicable` (this system cannot do what a step asks, e.g. reload a built-in driver) makes
the plugin skip the test with its message as the reason.

The guest agent (`harness/guest/agent/hil_agent.py`) runs inside the guest with only the
standard library; its errors travel as replies and become AgentError on the host.

Errors are told apart by type and attributes, never by their text.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Something the harness detected and explains; the message says what and what to do."""


class NotApplicable(HarnessError):
    """This system cannot do what the test asks (a built-in driver cannot be reloaded): the
    plugin reports the test as skipped with this message as the reason."""


class OperationFailed(HarnessError):
    """An operation on the device failed the way the device reports failures.

    ``text`` is what the system under test says: QEMU's error message (``A port already exists
    at id 3``) or an errno name from the guest kernel or the host socket (``EBUSY``). The model
    raises the same texts for the failures it predicts, so a scenario's ``expect_error`` and a
    comparison of model and real system both work on ``text``; ``detail`` is context for people.
    """

    def __init__(self, text: str, detail: str = "") -> None:
        self.text = text
        self.detail = detail
        shown = f"{text} ({detail})" if detail and detail != text else text
        super().__init__(shown)
