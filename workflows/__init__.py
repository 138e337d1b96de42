from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from workflows.deal import DealWorkflow

# Our models and rules are deterministic: pass them through the sandbox rather
# than re-importing them per run.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("dealflow")
)

__all__ = ["DealWorkflow", "WORKFLOW_RUNNER"]
