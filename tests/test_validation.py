"""Every client mistake gets a 4xx JSON error naming the field, and writes nothing."""

from __future__ import annotations

import urllib.parse

import pytest
from conftest import job

LONG_NAME = "x" * 129

# (case, body, status, error prefix)
BAD_BODIES = [
    ("name missing", {"schedule": "@daily", "command": "true"}, 400, "name: required"),
    ("name empty", job(""), 400, "name: required"),
    ("name not a string", job(5), 400, "name: must be a string"),
    ("name with a space", job("a b"), 400, "name: use at most 128"),
    ("name with a slash", job("a/b"), 400, "name: use at most 128"),
    ("name too long", job(LONG_NAME), 400, "name: use at most 128"),
    (
        "schedule missing",
        {"name": "v-nosched", "command": "true"},
        400,
        "schedule: required",
    ),
    (
        "schedule not a string",
        job("v-s1", schedule=5),
        400,
        "schedule: must be a string",
    ),
    ("schedule unparseable", job("v-s2", schedule="every day"), 400, "schedule:"),
    ("cron field out of range", job("v-s3", schedule="61 * * * *"), 400, "schedule:"),
    ("cron that never fires", job("v-s4", schedule="0 0 30 2 *"), 400, "schedule:"),
    (
        "every below a second",
        job("v-s5", schedule="@every 500ms"),
        400,
        "schedule: @every interval must be at least 1s",
    ),
    ("every without a unit", job("v-s6", schedule="@every 5"), 400, "schedule:"),
    (
        "at in the past",
        job("v-s7", schedule="@at 2001-01-01T00:00:00Z"),
        400,
        "schedule: @at time is in the past",
    ),
    ("at unparseable", job("v-s8", schedule="@at tomorrow"), 400, "schedule:"),
    ("unknown descriptor", job("v-s9", schedule="@fortnightly"), 400, "schedule:"),
    ("unknown time zone", job("v-tz", timezone="Mars/Olympus"), 400, "timezone:"),
    ("time zone not a string", job("v-tz2", timezone=3), 400, "timezone:"),
    (
        "unknown concurrency",
        job("v-c", concurrency="sometimes"),
        400,
        "concurrency: must be one of allow, forbid, replace",
    ),
    ("unknown executor", job("v-e", executor="docker"), 400, "executor:"),
    (
        "command missing",
        {"name": "v-cmd", "schedule": "@daily"},
        400,
        "command: required",
    ),
    (
        "command not a string",
        job("v-cmd2", command=["ls"]),
        400,
        "command: must be a string",
    ),
    (
        "two different commands",
        job("v-cmd3", command="a", executor_config={"command": "b"}),
        400,
        "command: differs from executor_config.command",
    ),
    (
        "executor_config not an object",
        job("v-ec", executor_config="x"),
        400,
        "executor_config: must be an object",
    ),
    (
        "timeout unparseable",
        job("v-t1", executor_config={"timeout": "5 parsecs"}),
        400,
        "executor_config.timeout:",
    ),
    (
        "timeout negative",
        job("v-t2", executor_config={"timeout": -1}),
        400,
        "executor_config.timeout:",
    ),
    (
        "timeout a boolean",
        job("v-t3", executor_config={"timeout": True}),
        400,
        "executor_config.timeout:",
    ),
    (
        "env not a map",
        job("v-env", executor_config={"env": ["A=1"]}),
        400,
        "executor_config.env:",
    ),
    (
        "shell not a boolean",
        job("v-sh", executor_config={"shell": "maybe"}),
        400,
        "executor_config.shell:",
    ),
    (
        "disabled not a boolean",
        job("v-d", disabled="yes"),
        400,
        "disabled: must be true or false",
    ),
    ("ephemeral not a boolean", job("v-eph", ephemeral=1), 400, "ephemeral:"),
    ("tags not an object", job("v-tags", tags=["a"]), 400, "tags: must be an object"),
    (
        "metadata value not a string",
        job("v-md", metadata={"a": 1}),
        400,
        "metadata.a: must be a string",
    ),
    (
        "retries not an integer",
        job("v-r1", retries="3"),
        400,
        "retries: must be an integer",
    ),
    ("retries negative", job("v-r2", retries=-1), 400, "retries: must be between"),
    ("retries a boolean", job("v-r3", retries=True), 400, "retries:"),
    ("owner not a string", job("v-o", owner=5), 400, "owner: must be a string"),
    ("expires_at unparseable", job("v-x", expires_at="soon"), 400, "expires_at:"),
    (
        "parent that does not exist",
        job("v-p1", parent_job="nobody"),
        400,
        "parent_job: no job named nobody",
    ),
    (
        "parent is the job itself",
        job("v-p2", parent_job="v-p2"),
        400,
        "parent_job: a job cannot be its own parent",
    ),
    ("parent not a name", job("v-p3", parent_job=7), 400, "parent_job:"),
    ("body a list", [job("v-list")], 400, "body: must be a json object"),
    ("body a string", "v-str", 400, "body: must be a json object"),
]


def count(client) -> int:
    return client.get("/").json["job_count"]


@pytest.mark.parametrize(
    "body,status,prefix",
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_bad_job_is_refused_and_nothing_written(client, body, status, prefix):
    before = count(client)
    response = client.post("/jobs", body)
    assert response.status == status, response
    assert response.json["error"].startswith(prefix), response.json
    assert list(response.json) == ["error"]
    assert count(client) == before
    if isinstance(body, dict) and isinstance(body.get("name"), str) and body["name"]:
        path = "/jobs/" + urllib.parse.quote(body["name"], safe="")
        assert client.get(path).status == 404


def test_unparseable_json_is_400(client):
    before = count(client)
    response = client.post("/jobs", raw=b'{"name": "x",')
    assert response.status == 400
    assert response.json["error"].startswith("body: not valid json")
    assert count(client) == before


def test_empty_body_is_400(client):
    response = client.post("/jobs", raw=b"")
    assert response.status == 400
    assert response.json["error"].startswith("body:")


def test_body_over_one_mebibyte_is_413(client):
    before = count(client)
    body = job("huge", displayname="x" * (1024 * 1024 + 1))
    response = client.post("/jobs", body)
    assert response.status == 413
    assert response.json["error"].startswith("body: larger than")
    assert count(client) == before
    assert client.get("/jobs/huge").status == 404


def test_a_parent_chain_that_would_form_a_cycle_is_refused(client):
    assert client.post("/jobs", job("cyc-a")).status == 201
    assert client.post("/jobs", job("cyc-b", parent_job="cyc-a")).status == 201
    assert client.post("/jobs", job("cyc-c", parent_job="cyc-b")).status == 201
    response = client.put("/jobs", job("cyc-a", parent_job="cyc-c"))
    assert response.status == 400
    assert response.json == {"error": "parent_job: would form a cycle"}
    assert client.get("/jobs/cyc-a").json["parent_job"] is None


def test_deleting_a_job_others_depend_on_is_409(client):
    client.post("/jobs", job("dep-root"))
    client.post("/jobs", job("dep-leaf", parent_job="dep-root"))
    response = client.delete("/jobs/dep-root")
    assert response.status == 409
    assert response.json == {"error": "name: job dep-root has dependents: dep-leaf"}
    assert client.get("/jobs/dep-root").status == 200


def test_put_whose_body_names_another_job_is_400(client):
    response = client.put("/jobs/one-name", job("other-name"))
    assert response.status == 400
    assert response.json["error"] == "name: does not match the job in the path"
    assert client.get("/jobs/other-name").status == 404


def test_bad_execution_parameters_name_the_parameter(client):
    client.post("/jobs", job("paramjob"))
    response = client.get("/jobs/paramjob/executions?limit=0")
    assert response.json == {"error": "limit: must be at least 1"}
    response = client.get("/jobs/paramjob/executions?output_size_limit=x")
    assert response.json == {"error": "output_size_limit: must be an integer"}


def test_a_replaced_job_keeps_its_old_form_when_the_new_one_is_bad(client):
    client.post("/jobs", job("keepform", owner="first"))
    response = client.put("/jobs", job("keepform", owner="second", retries=-5))
    assert response.status == 400
    assert client.get("/jobs/keepform").json["owner"] == "first"
