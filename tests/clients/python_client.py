"""Drives durable's management API with Durable Functions' own Python client.

Usage: python_client.py <host-url> <key>

The client (PyPI `azure-functions-durable`, pinned to 1.7.0 by install.sh) is built the
way the Functions host builds it: from the binding JSON (taskHubName, creationUrls,
managementUrls, rpcBaseUrl, ...), with rpcBaseUrl pointing at the management API. It has
no option for extra headers, so the one thing added here is the `x-functions-key`
header, on the shared aiohttp session its HTTP helpers use (a documented module global,
`azure.durable_functions.models.utils.http_utils._client_session`).

Every call the client offers runs once with an assertion on its result; each step has a
timeout, so a hang fails instead of stalling. Exits non-zero when a step fails.
"""

import asyncio
import json
import sys
import traceback
from datetime import datetime, timedelta, timezone

import aiohttp
import azure.durable_functions as df
import azure.functions as func
from azure.durable_functions import EntityId, OrchestrationRuntimeStatus as S
from azure.durable_functions.models.utils import http_utils

URL, KEY = sys.argv[1].rstrip("/"), sys.argv[2]
BASE = f"{URL}/runtime/webhooks/durabletask"
STEP_TIMEOUT = 30

BINDINGS = {
    "taskHubName": "TestHub",
    "creationUrls": {
        "createNewInstancePostUri": f"{BASE}/orchestrators/{{functionName}}[/{{instanceId}}]",
        "createAndWaitOnNewInstancePostUri": f"{BASE}/orchestrators/{{functionName}}[/{{instanceId}}]"
        "?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}",
    },
    "managementUrls": {
        "id": "INSTANCEID",
        "statusQueryGetUri": f"{BASE}/instances/INSTANCEID",
        "sendEventPostUri": f"{BASE}/instances/INSTANCEID/raiseEvent/{{eventName}}",
        "terminatePostUri": f"{BASE}/instances/INSTANCEID/terminate?reason={{text}}",
        "rewindPostUri": f"{BASE}/instances/INSTANCEID/rewind?reason={{text}}",
        "purgeHistoryDeleteUri": f"{BASE}/instances/INSTANCEID",
        "restartPostUri": f"{BASE}/instances/INSTANCEID/restart",
        "suspendPostUri": f"{BASE}/instances/INSTANCEID/suspend?reason={{text}}",
        "resumePostUri": f"{BASE}/instances/INSTANCEID/resume?reason={{text}}",
    },
    "baseUrl": BASE,
    "requiredQueryStringParameters": "",
    "rpcBaseUrl": f"{BASE}/",
}


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


async def status_when(client, instance_id, done, what):
    """Polls the status until `done(status)` holds, up to STEP_TIMEOUT seconds."""
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT
    while True:
        st = await client.get_status(instance_id, show_input=True)
        if st and done(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{instance_id}: never {what}; last status {st.to_json() if st else None}")
        await asyncio.sleep(0.05)


async def finished(client, instance_id):
    return await status_when(
        client,
        instance_id,
        lambda s: s.runtime_status in (S.Completed, S.Failed, S.Terminated),
        "finished",
    )


async def start_hello(client):
    instance_id = await client.start_new("hello_cities", client_input=["Paris", "Rome"])
    st = await finished(client, instance_id)
    expect(st.runtime_status == S.Completed, f"completed: {st.to_json()}")
    expect(st.output == ["Hello Paris!", "Hello Rome!"], f"output: {st.output}")
    expect(st.input_ == ["Paris", "Rome"], f"input as sent: {st.input_}")
    return instance_id


async def status_with_history_and_input(client):
    instance_id = await client.start_new("hello_cities", "py-history", ["Oslo"])
    expect(instance_id == "py-history", instance_id)
    await finished(client, instance_id)
    st = await client.get_status(
        instance_id, show_history=True, show_history_output=True, show_input=True
    )
    expect(st.name == "hello_cities" and st.instance_id == instance_id, st.to_json())
    expect(st.input_ == ["Oslo"], f"input: {st.input_}")
    expect(isinstance(st.created_time, datetime), st.created_time)
    events = getattr(st, "historyEvents", None)
    expect(isinstance(events, list), f"historyEvents: {events}")
    kinds = [e["EventType"] for e in events]
    expect(kinds == ["ExecutionStarted", "TaskCompleted", "ExecutionCompleted"], kinds)
    expect(events[1]["Result"] == "Hello Oslo!", events[1])
    st = await client.get_status(instance_id)
    expect(st.runtime_status == S.Completed and st.output == ["Hello Oslo!"], st.to_json())
    missing = await client.get_status("py-no-such-instance")
    expect(not missing, "an unknown instance has no status")


async def mistyped_input_is_refused(client):
    try:
        await client.start_new("hello_cities", "py-mistyped", {"cities": 5})
    except Exception as e:  # the client raises the answer's ExceptionMessage
        expect("Vec<String>" in str(e) and "hello_cities" in str(e), str(e))
    else:
        raise AssertionError("a map for a list of cities was accepted")
    missing = await client.get_status("py-mistyped")
    expect(not missing, "nothing was stored")


async def status_all_and_by(client):
    done = await start_hello(client)
    waiting = await client.start_new("approval", "py-waiting", {"document": "status-by"})
    await status_when(client, waiting, lambda s: s.runtime_status == S.Running, "running")
    every = await client.get_status_all()
    ids = {s.instance_id for s in every}
    expect({done, waiting} <= ids, f"{done}, {waiting} in {ids}")
    completed = await client.get_status_by(runtime_status=[S.Completed])
    expect(completed and all(s.runtime_status == S.Completed for s in completed), completed)
    expect(done in {s.instance_id for s in completed}, "the completed one is listed")
    expect(waiting not in {s.instance_id for s in completed}, "the running one is not")
    now = datetime.now(timezone.utc)
    recent = await client.get_status_by(
        created_time_from=now - timedelta(hours=1),
        created_time_to=now + timedelta(hours=1),
        runtime_status=[S.Running, S.Completed],
    )
    expect({done, waiting} <= {s.instance_id for s in recent}, "time window and statuses")
    future = await client.get_status_by(created_time_from=now + timedelta(hours=1))
    expect(future == [], f"nothing created in the future: {future}")
    prefixed = await client.get_status_by(instance_id_prefix="py-wait")
    expect([s.instance_id for s in prefixed] == [waiting], prefixed)
    await client.terminate(waiting, "done with it")


async def raise_event(client):
    instance_id = await client.start_new("approval", "py-approval", {"document": "budget"})
    await status_when(client, instance_id, lambda s: s.runtime_status == S.Running, "running")
    # A badly shaped decision is rejected by the orchestration, which keeps waiting.
    await client.raise_event(instance_id, "Approval", {"approved": "yes"})
    st = await status_when(
        client, instance_id, lambda s: (s.custom_status or {}).get("rejected") == 1, "rejected"
    )
    expect(st.runtime_status == S.Running, st.to_json())
    await client.raise_event(instance_id, "Approval", {"approved": True})
    st = await finished(client, instance_id)
    expect(st.output == "budget: approved", st.to_json())
    try:
        await client.raise_event(instance_id, "Approval", {"approved": True})
    except Exception as e:
        expect("gone" in str(e), str(e))
    else:
        raise AssertionError("an event for a finished instance was accepted")


async def terminate_suspend_resume(client):
    instance_id = await client.start_new("approval", "py-suspend", {"document": "holiday"})
    await status_when(client, instance_id, lambda s: s.runtime_status == S.Running, "running")
    await client.suspend(instance_id, "for a while")
    await status_when(client, instance_id, lambda s: s.runtime_status == S.Suspended, "suspended")
    await client.resume(instance_id, "carry on")
    await status_when(client, instance_id, lambda s: s.runtime_status == S.Running, "resumed")
    await client.terminate(instance_id, "no longer needed")
    st = await status_when(
        client, instance_id, lambda s: s.runtime_status == S.Terminated, "terminated"
    )
    expect(st.output == "no longer needed", f"the reason: {st.output}")


async def rewind(client):
    instance_id = await client.start_new("flaky", "py-flaky", 21)
    st = await finished(client, instance_id)
    expect(st.runtime_status == S.Failed, st.to_json())
    await client.rewind(instance_id, "try again")
    st = await status_when(client, instance_id, lambda s: s.runtime_status == S.Completed, "rewound")
    expect(st.output == 42, st.to_json())


async def restart(client):
    original = await client.start_new("hello_cities", "py-restart", ["Lima"])
    await finished(client, original)
    answer = await client.restart(original)
    new_id = answer["id"] if isinstance(answer, dict) else answer
    expect(new_id != original, f"a new instance id: {answer}")
    st = await finished(client, new_id)
    expect(st.output == ["Hello Lima!"] and st.input_ == ["Lima"], st.to_json())
    answer = await client.restart(original, restart_with_new_instance_id=False)
    same = answer["id"] if isinstance(answer, dict) else answer
    expect(same == original, f"the same id: {answer}")
    st = await finished(client, original)
    expect(st.output == ["Hello Lima!"], st.to_json())


async def purge(client):
    one = await client.start_new("hello_cities", "py-purge-1", ["Bern"])
    await finished(client, one)
    result = await client.purge_instance_history(one)
    expect(result.instances_deleted == 1, result.instances_deleted)
    expect(not await client.get_status(one), "purged")
    result = await client.purge_instance_history(one)
    expect(result.instances_deleted == 0, "a second purge finds nothing")
    doomed = await client.start_new("approval", "py-purge-2", {"document": "doomed"})
    await status_when(client, doomed, lambda s: s.runtime_status == S.Running, "running")
    await client.terminate(doomed, "to be purged")
    await status_when(client, doomed, lambda s: s.runtime_status == S.Terminated, "terminated")
    result = await client.purge_instance_history_by(
        created_time_from=datetime.now(timezone.utc) - timedelta(hours=1),
        runtime_status=[S.Terminated],
    )
    expect(result.instances_deleted >= 1, result.instances_deleted)
    expect(not await client.get_status(doomed), "purged by filter")
    left = await client.get_status_by(runtime_status=[S.Terminated])
    expect(left == [], f"no terminated instance is left: {left}")


async def wait_or_check_status(client):
    request = func.HttpRequest(method="POST", url=f"{URL}/api/start", body=b"")
    done = await client.start_new("hello_cities", client_input=["Rome"])
    resp = await client.wait_for_completion_or_create_check_status_response(
        request, done, timeout_in_milliseconds=20000, retry_interval_in_milliseconds=100
    )
    expect(resp.status_code == 200, resp.status_code)
    expect(json.loads(resp.get_body()) == ["Hello Rome!"], resp.get_body())
    waiting = await client.start_new("approval", "py-wait-check", {"document": "slow"})
    resp = await client.wait_for_completion_or_create_check_status_response(
        request, waiting, timeout_in_milliseconds=300, retry_interval_in_milliseconds=100
    )
    expect(resp.status_code == 202, resp.status_code)
    links = json.loads(resp.get_body())
    expect(links["id"] == waiting, links)
    # The management URLs it hands out work against the API.
    session = await http_utils._get_session()
    async with session.get(links["statusQueryGetUri"]) as r:
        expect(r.status == 202, r.status)
        expect((await r.json())["instanceId"] == waiting, "the status URL names the instance")
    await client.terminate(waiting, "done")


async def entities(client):
    counter = EntityId("counter", "py")
    await client.signal_entity(counter, "add", 5)
    await client.signal_entity(counter, "add", 37)
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT
    while True:
        state = await client.read_entity_state(counter)
        if state.entity_exists and state.entity_state == {"value": 42}:
            break
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"counter never reached 42: {state.entity_state}")
        await asyncio.sleep(0.05)
    try:
        await client.signal_entity(counter, "add", "five")
    except Exception as e:
        expect("400" in str(e), str(e))
    else:
        raise AssertionError("a string for an i64 was accepted")
    await client.signal_entity(counter, "reset")
    missing = await client.read_entity_state(EntityId("counter", "py-nobody"))
    expect(not missing.entity_exists and missing.entity_state is None, "no such entity")


async def main():
    # The one change to the client: its shared session sends the key.
    http_utils._client_session = aiohttp.ClientSession(
        headers={"x-functions-key": KEY}, timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT)
    )
    client = df.DurableOrchestrationClient(json.dumps(BINDINGS))
    steps = [
        start_hello,
        status_with_history_and_input,
        mistyped_input_is_refused,
        status_all_and_by,
        raise_event,
        terminate_suspend_resume,
        rewind,
        restart,
        purge,
        wait_or_check_status,
        entities,
    ]
    passed = failed = 0
    for step in steps:
        try:
            await asyncio.wait_for(step(client), timeout=STEP_TIMEOUT * 2)
            passed += 1
            print(f"ok   python {step.__name__}", flush=True)
        except BaseException as e:  # a timeout is a failure too
            failed += 1
            print(f"FAIL python {step.__name__}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
    await http_utils._client_session.close()
    print(f"python client: {passed} passed, {failed} failed", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(1 if asyncio.run(main()) else 0)
