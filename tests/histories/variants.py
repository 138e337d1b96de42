"""Two versions of one change to DealWorkflow, for the replay gate's own test.

The change: every new deal first sends a "welcome" notification (one more
activity before the first stage is recorded). Registered under the real name
"DealWorkflow", as a deploy of the change would be.

* `UnpatchedWelcome` just adds the activity: deals already running were
  recorded without it, so their histories no longer replay — the gate fails.
* `PatchedWelcome` guards it with `workflow.patched`: replaying an old history
  takes the old path, new deals take the new one — the gate passes.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from dealflow.models import DealStatus, NotificationInput, Stage, StartDealInput

from workflows.deal import DealWorkflow

PATCH_ID = "welcome-notice"


async def _welcome(inp: StartDealInput) -> None:
    await workflow.execute_activity(
        "notify",
        NotificationInput(
            key=f"{inp.deal_id}:welcome",
            deal_id=inp.deal_id,
            kind="info",
            stage=Stage.CONTRACT,
            message="welcome: your deal has started",
        ),
        start_to_close_timeout=timedelta(seconds=10),
    )


@workflow.defn(name="DealWorkflow")
class UnpatchedWelcome(DealWorkflow):
    @workflow.run
    async def run(self, inp: StartDealInput) -> DealStatus:
        if inp.state is None:
            await _welcome(inp)
        return await super().run(inp)


@workflow.defn(name="DealWorkflow")
class PatchedWelcome(DealWorkflow):
    @workflow.run
    async def run(self, inp: StartDealInput) -> DealStatus:
        if inp.state is None and workflow.patched(PATCH_ID):
            await _welcome(inp)
        return await super().run(inp)
