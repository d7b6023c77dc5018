"""Every route of the HTTP API, against one real node."""

from __future__ import annotations

import pytest
from conftest import Client, job, wait_until

PREFIXES = ["", "/v1"]


@pytest.mark.parametrize("prefix", PREFIXES)
class TestNodeRoutes:
    def test_info_names_the_node_and_its_raft_state(self, client, prefix):
        info = client.get(prefix + "/").json
        assert info["name"] == "n1"
        assert info["server"] is True
        assert info["leader"] == "n1"
        assert info["raft"]["state"] == "leader"
        assert info["raft"]["last_applied"] >= 1
        assert isinstance(info["job_count"], int)
        assert info["version"]

    def test_health_answers_200(self, client, prefix):
        response = client.get(prefix + "/health")
        assert response.status == 200
        assert response.json["status"] == "ok"

    def test_members_lists_this_node_as_leader(self, client, prefix):
        (member,) = client.get(prefix + "/members").json
        assert member["name"] == "n1"
        assert member["role"] == "leader"
        assert member["status"] == "alive"
        assert member["http_addr"].endswith(client.base.rsplit(":", 1)[1])

    def test_leader_has_the_shape_of_a_member(self, client, prefix):
        leader = client.get(prefix + "/leader").json
        assert leader == client.get(prefix + "/members").json[0]


@pytest.mark.parametrize("prefix", PREFIXES)
class TestJobRoutes:
    def test_create_returns_201_with_the_stored_job(self, client, prefix):
        name = f"create{prefix.replace('/', '-')}"
        response = client.post(prefix + "/jobs", job(name, owner="ops"))
        assert response.status == 201, response
        assert response.headers["Content-Type"].startswith("application/json")
        body = response.json
        assert body["name"] == name
        assert body["owner"] == "ops"
        assert body["success_count"] == 0
        assert body["status"] == ""
        assert client.get(f"{prefix}/jobs/{name}").json == body

    def test_put_on_the_collection_replaces_a_job(self, client, prefix):
        name = f"replace{prefix.replace('/', '-')}"
        assert client.put(prefix + "/jobs/", job(name, owner="a")).status == 201
        assert client.put(prefix + "/jobs", job(name, owner="b")).status == 201
        assert client.get(f"{prefix}/jobs/{name}").json["owner"] == "b"

    def test_put_with_a_body_on_a_job_creates_it(self, client, prefix):
        name = f"putname{prefix.replace('/', '-')}"
        body = job(name)
        del body["name"]
        response = client.put(f"{prefix}/jobs/{name}", body)
        assert response.status == 201, response
        assert response.json["name"] == name

    def test_job_singular_is_accepted(self, client, prefix):
        name = f"singular{prefix.replace('/', '-')}"
        client.post(prefix + "/jobs", job(name))
        assert client.get(f"{prefix}/job/{name}").json["name"] == name

    def test_get_of_a_missing_job_is_404(self, client, prefix):
        response = client.get(f"{prefix}/jobs/nosuchjob")
        assert response.status == 404
        assert response.json == {"error": "job nosuchjob not found"}

    def test_delete_returns_the_job_and_removes_its_executions(self, client, prefix):
        name = f"delete{prefix.replace('/', '-')}"
        client.post(prefix + "/jobs", job(name))
        client.post(f"{prefix}/jobs/{name}/run")
        wait_until(lambda: client.finished(name))
        response = client.delete(f"{prefix}/jobs/{name}")
        assert response.status == 200
        assert response.json["name"] == name
        assert client.get(f"{prefix}/jobs/{name}").status == 404
        assert client.get(f"{prefix}/jobs/{name}/executions").status == 404
        assert client.delete(f"{prefix}/jobs/{name}").status == 404

    def test_run_now_answers_202_and_runs(self, client, prefix):
        name = f"runnow{prefix.replace('/', '-')}"
        client.post(prefix + "/jobs", job(name, command="echo ran"))
        for method in ("post_run", "post", "put"):
            if method == "post_run":
                response = client.post(f"{prefix}/jobs/{name}/run")
            elif method == "post":
                response = client.post(f"{prefix}/jobs/{name}")
            else:
                response = client.put(f"{prefix}/jobs/{name}")
            assert response.status == 202, response
            assert response.json["name"] == name
        runs = wait_until(
            lambda: len(client.finished(name)) == 3 and client.finished(name)
        )
        assert {r["trigger"] for r in runs} == {"manual"}
        assert all(r["output"] == "ran\n" for r in runs)

    def test_run_of_a_missing_job_is_404(self, client, prefix):
        assert client.post(f"{prefix}/jobs/ghost/run").status == 404
        assert client.post(f"{prefix}/jobs/ghost").status == 404

    def test_toggle_flips_disabled(self, client, prefix):
        name = f"toggle{prefix.replace('/', '-')}"
        client.post(prefix + "/jobs", job(name))
        first = client.post(f"{prefix}/jobs/{name}/toggle")
        assert first.status == 200
        assert first.json["disabled"] is True
        assert client.post(f"{prefix}/jobs/{name}/toggle").json["disabled"] is False
        assert client.post(f"{prefix}/jobs/ghost/toggle").status == 404

    def test_executions_newest_first_with_limit(self, client, prefix):
        name = f"execs{prefix.replace('/', '-')}"
        client.post(prefix + "/jobs", job(name, command="echo $DCRON_EXECUTION_ID"))
        for _ in range(3):
            client.post(f"{prefix}/jobs/{name}/run")
        wait_until(lambda: len(client.finished(name)) == 3)
        runs = client.get(f"{prefix}/jobs/{name}/executions").json
        assert [r["id"] for r in runs] == sorted((r["id"] for r in runs), reverse=True)
        assert all(r["output"] == r["id"] + "\n" for r in runs)
        limited = client.get(f"{prefix}/jobs/{name}/executions?limit=2").json
        assert [r["id"] for r in limited] == [r["id"] for r in runs[:2]]
        same = client.get(f"{prefix}/executions/{name}").json
        assert [r["id"] for r in same] == [r["id"] for r in runs]

    def test_execution_fields_and_one_execution(self, client, prefix):
        name = f"oneexec{prefix.replace('/', '-')}"
        client.post(prefix + "/jobs", job(name, command="printf abcdef; exit 3"))
        client.post(f"{prefix}/jobs/{name}/run")
        (run,) = wait_until(lambda: client.finished(name))
        assert set(run) >= {
            "id",
            "job_name",
            "scheduled_at",
            "started_at",
            "finished_at",
            "success",
            "exit_code",
            "output",
            "output_truncated",
            "node_name",
            "attempt",
            "trigger",
        }
        assert run["exit_code"] == 3
        assert run["success"] is False
        assert run["node_name"] == "n1"
        assert run["attempt"] == 1
        assert run["started_at"].endswith("Z")
        one = client.get(f"{prefix}/jobs/{name}/executions/{run['id']}")
        assert one.json == run
        tail = client.get(f"{prefix}/jobs/{name}/executions?output_size_limit=2").json
        assert tail[0]["output"] == "ef"
        assert tail[0]["output_truncated"] is True
        missing = client.get(f"{prefix}/jobs/{name}/executions/nope")
        assert missing.status == 404

    def test_clear_executions_resets_history_and_counters(self, client, prefix):
        name = f"clear{prefix.replace('/', '-')}"
        client.post(prefix + "/jobs", job(name))
        client.post(f"{prefix}/jobs/{name}/run")
        wait_until(lambda: client.get(f"/jobs/{name}").json["success_count"] == 1)
        response = client.delete(f"{prefix}/jobs/{name}/executions")
        assert response.status == 200
        assert response.json["success_count"] == 0
        assert response.json["last_success"] is None
        assert client.executions(name) == []


@pytest.fixture(scope="module")
def listed_jobs(node):
    client = node.client
    for i, (team, owner) in enumerate(
        [("red", "zed"), ("red", "amy"), ("blue", "bob"), ("blue", "cat")]
    ):
        body = job(
            f"list-{team}-{i}", owner=owner, metadata={"team": team, "tier": str(i % 2)}
        )
        assert client.post("/jobs", body).status == 201
    client.post("/jobs/list-blue-3/toggle")


@pytest.mark.usefixtures("listed_jobs")
class TestJobList:
    def names(self, client: Client, query: str) -> list[str]:
        response = client.get("/jobs?" + query)
        assert response.status == 200, response
        return [j["name"] for j in response.json if j["name"].startswith("list-")]

    def test_metadata_filters_are_anded(self, client):
        assert self.names(client, "metadata[team]=red") == ["list-red-0", "list-red-1"]
        both = self.names(client, "metadata[team]=red&metadata[tier]=1")
        assert both == ["list-red-1"]

    def test_q_matches_a_substring_of_the_name(self, client):
        assert self.names(client, "q=BLUE") == ["list-blue-2", "list-blue-3"]

    def test_disabled_and_status_filters(self, client):
        assert self.names(client, "disabled=true") == ["list-blue-3"]
        assert "list-blue-3" not in self.names(client, "disabled=false")
        assert self.names(client, "q=list-&status=success") == []

    def test_sort_order_and_paging_with_total(self, client):
        names = self.names(client, "q=list-&_sort=owner&_order=DESC")
        assert names == ["list-red-0", "list-blue-3", "list-blue-2", "list-red-1"]
        response = client.get("/jobs?q=list-&_sort=owner&_start=1&_end=3")
        assert response.headers["X-Total-Count"] == "4"
        assert [j["owner"] for j in response.json] == ["bob", "cat"]

    def test_bad_list_parameters_name_the_parameter(self, client):
        assert client.get("/jobs?_sort=bogus").json["error"].startswith("_sort:")
        assert client.get("/jobs?_order=up").json["error"].startswith("_order:")
        assert client.get("/jobs?_start=x").json["error"].startswith("_start:")
        assert client.get("/jobs?disabled=maybe").status == 400


class TestJobFields:
    def test_command_and_executor_config_command_round_trip(self, client):
        seed = client.post("/jobs", job("seedform", command="echo a")).json
        assert seed["command"] == "echo a"
        assert seed["executor_config"]["command"] == "echo a"
        dkron = client.post(
            "/jobs",
            {
                "name": "dkronform",
                "schedule": "@manually",
                "executor": "shell",
                "executor_config": {
                    "command": "echo b",
                    "shell": "true",
                    "timeout": "5s",
                },
            },
        ).json
        assert dkron["command"] == "echo b"
        assert dkron["executor_config"] == {
            "command": "echo b",
            "shell": True,
            "timeout": "5s",
        }
        assert client.put("/jobs", dkron).json["command"] == "echo b"

    def test_server_fields_cannot_be_set_by_a_client(self, client):
        body = job(
            "servfields",
            success_count=99,
            error_count=7,
            status="success",
            next="2030-01-01T00:00:00Z",
            dependent_jobs=["x"],
            last_success="2020-01-01T00:00:00Z",
        )
        stored = client.post("/jobs", body).json
        assert stored["success_count"] == 0
        assert stored["error_count"] == 0
        assert stored["status"] == ""
        assert stored["next"] is None
        assert stored["dependent_jobs"] == []
        assert stored["last_success"] is None

    def test_unknown_fields_are_ignored(self, client):
        response = client.post("/jobs", job("unknownfields", flavour="mint"))
        assert response.status == 201
        assert "flavour" not in response.json

    def test_next_is_the_true_next_fire_time_in_utc(self, client):
        body = job("nextjob", schedule="0 0 9 * * *", timezone="Asia/Tokyo")
        stored = client.post("/jobs", body).json
        assert stored["next"].endswith("T00:00:00Z")
        assert client.post("/jobs/nextjob/toggle").json["next"] is None

    def test_processors_and_metadata_are_stored(self, client):
        body = job("procs", processors={"log": {"forward": True}}, tags={"a": "b"})
        stored = client.post("/jobs", body).json
        assert stored["processors"] == {"log": {"forward": True}}
        assert stored["tags"] == {"a": "b"}

    def test_dependent_jobs_lists_children(self, client):
        client.post("/jobs", job("deps-parent"))
        client.post("/jobs", job("deps-child", schedule="", parent_job="deps-parent"))
        assert client.get("/jobs/deps-parent").json["dependent_jobs"] == ["deps-child"]


def test_unknown_route_is_a_json_404(client):
    response = client.get("/nothing/here")
    assert response.status == 404
    assert "error" in response.json


def test_wrong_method_is_a_json_405(client):
    response = client.request("PATCH", "/jobs")
    assert response.status == 405
    assert response.json == {"error": "method not allowed"}


def listed(client: Client, query: str = "") -> dict[str, dict]:
    """The jobs GET /jobs answers, by name."""
    response = client.get("/jobs?" + query)
    assert response.status == 200, response
    return {j["name"]: j for j in response.json}


def without_next(job_json: dict) -> dict:
    return {key: value for key, value in job_json.items() if key != "next"}


class TestJobListFreshness:
    """The list answers from JSON kept per job; it must never show a stale job."""

    def test_every_listed_job_equals_its_own_get(self, client):
        client.post("/jobs", job("fresh-parent", schedule="@every 1h", owner="o"))
        client.post("/jobs", job("fresh-child", schedule="", parent_job="fresh-parent"))

        def same() -> bool:
            jobs_ = listed(client)
            singles = {name: client.get(f"/jobs/{name}").json for name in jobs_}
            return all(
                without_next(jobs_[name]) == without_next(single)
                for name, single in singles.items()
            )

        wait_until(same)
        parent = listed(client, "q=fresh-parent")["fresh-parent"]
        assert parent["dependent_jobs"] == ["fresh-child"]
        assert list(parent) == list(client.get("/jobs/fresh-parent").json)

    @pytest.mark.parametrize("prefix", PREFIXES)
    def test_the_list_keeps_its_headers_and_paging(self, client, prefix):
        for i in range(3):
            client.post("/jobs", job(f"fresh-page-{i}"))
        response = client.get(prefix + "/jobs?q=fresh-page-&_start=1&_end=5")
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert response.headers["X-Total-Count"] == "3"
        assert response.headers["Access-Control-Expose-Headers"] == "X-Total-Count"
        assert [j["name"] for j in response.json] == ["fresh-page-1", "fresh-page-2"]
        assert client.get(prefix + "/jobs?q=fresh-page-&_start=3").json == []

    def test_a_run_shows_in_the_list(self, client):
        client.post("/jobs", job("fresh-run", command="exit 1"))
        before = listed(client, "q=fresh-run")["fresh-run"]
        assert (before["error_count"], before["status"]) == (0, "")

        client.post("/jobs/fresh-run/run")

        def failed() -> dict | None:
            found = listed(client, "q=fresh-run")["fresh-run"]
            return found if found["status"] == "failed" else None

        after = wait_until(failed)
        assert after["error_count"] == 1
        assert after["last_error"] is not None
        assert self.names(client, "status=failed&q=fresh-run") == ["fresh-run"]
        assert self.names(client, "_sort=error_count&_order=DESC&q=fresh-")[0] == (
            "fresh-run"
        )

    def test_next_advances_after_its_slot_passes(self, client):
        client.post("/jobs", job("fresh-every", schedule="@every 1s"))
        try:
            first = listed(client, "q=fresh-every")["fresh-every"]["next"]
            assert first is not None
            wait_until(
                lambda: listed(client, "q=fresh-every")["fresh-every"]["next"] > first
            )
        finally:
            client.delete("/jobs/fresh-every")

    def test_a_deleted_job_vanishes(self, client):
        client.post("/jobs", job("fresh-gone"))
        assert "fresh-gone" in listed(client, "q=fresh-gone")
        assert client.delete("/jobs/fresh-gone").status == 200
        assert listed(client, "q=fresh-gone") == {}

    def test_a_replaced_job_shows_its_new_fields(self, client):
        client.post("/jobs", job("fresh-swap", owner="before", metadata={"v": "1"}))
        assert listed(client, "q=fresh-swap")["fresh-swap"]["owner"] == "before"
        client.put("/jobs", job("fresh-swap", owner="after", metadata={"v": "2"}))
        assert listed(client, "q=fresh-swap")["fresh-swap"]["owner"] == "after"
        assert self.names(client, "metadata[v]=2") == ["fresh-swap"]
        client.post("/jobs/fresh-swap/toggle")
        assert listed(client, "q=fresh-swap")["fresh-swap"]["disabled"] is True

    @staticmethod
    def names(client: Client, query: str) -> list[str]:
        return list(listed(client, query))
