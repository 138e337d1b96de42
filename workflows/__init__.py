from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from workflows.deal import DealWorkflow

# Our models and rules are deterministic, and python-stdnum loads its tables
# lazily: pass them through the sandbox rather than re-importing them per run.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("dealflow", "stdnum")
)

__all__ = ["DealWorkflow", "WORKFLOW_RUNNER"]
