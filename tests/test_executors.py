"""The table of step executors: every kind of the runbook model has one, and a kind added with
its model and its executor alone is run by the engine, journaled like any other."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from actions.local import LocalTransport
from bot.core.engine import Engine, Target
from bot.core.executors.base import REGISTRY, Call, StepExecutor, register
from bot.core.executors.table import FAMILIES, executor_for
from bot.core.lifecycle import Status, StepStatus
from bot.core.runbook import KINDS, STEP_MODELS, Phase, Runbook, StepBase
from bot.core.targets import TargetSettings
from bot.state.store import Store


def test_every_kind_of_the_runbook_model_has_an_executor() -> None:
    assert FAMILIES
    assert set(KINDS.values()) == set(STEP_MODELS)
    missing = [m.__name__ for m in STEP_MODELS if m not in REGISTRY]
    assert missing == []
    for model in STEP_MODELS:
        assert isinstance(REGISTRY[model], StepExecutor)


class EchoStep(StepBase):
    """A kind the runbook model does not have: says its text."""

    kind: Literal["echo"]
    text: str
    produces: ClassVar[tuple[str, ...]] = ("said",)


class EchoExecutor(StepExecutor):
    async def perform(self, call: Call, attempt: int | None) -> tuple[dict[str, Any], str]:
        assert isinstance(call.step, EchoStep)
        await call.host.artifact(call.inc, call.step, "log", call.step.text, attempt)
        return {"said": call.step.text}, call.step.text


async def test_a_kind_registered_here_is_run_by_the_engine(tmp_path: Path) -> None:
    register(EchoStep)(EchoExecutor)
    store = await Store.open(str(tmp_path / "state.db"))
    transport = LocalTransport(name="t1")
    settings = TargetSettings(name="t1", transport="local", workdir=str(tmp_path))
    step = EchoStep(id="echo", title="Echo", kind="echo", text="hello")
    phase = Phase.model_construct(id="work", title="Work", timeline="", shown_before=None, steps=[step])
    runbook = Runbook.model_construct(name="echo", version="1", description="", phases=[phase], compensation=None)
    engine = Engine(store, runbook, {"t1": Target(settings, transport)}, artifacts_dir=tmp_path / "art")
    try:
        assert isinstance(executor_for(step), EchoExecutor)
        inc = await store.create_incident(target="t1", runbook="echo")
        inc = await engine.run(inc.id)
        assert inc.status is Status.COMPLETED
        run = (await store.latest_runs(inc.id))["echo"]
        assert run.status is StepStatus.DONE and run.captures == {"said": "hello"}
        assert run.output_tail == "hello"
        [art] = await store.artifacts(inc.id)
        assert art.name == "echo.1.log" and art.bytes == len("hello")
    finally:
        REGISTRY.pop(EchoStep, None)
        await engine.aclose()
        await transport.close()
        await store.close()
