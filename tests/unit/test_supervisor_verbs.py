"""One list of verbs: the request models, the supervisor's handlers, the metrics labels and `alexserve job` agree."""

from __future__ import annotations

import json

import pytest

from alexserve.cli import job as job_cli
from alexserve.supervisor.control_messages import REQUEST_BY_VERB, REQUESTS, VERBS, validate_request, verb_of
from alexserve.supervisor.metrics import CONTROL_VERBS, INVALID_VERB
from alexserve.supervisor.service import ServerOptions, Supervisor
from alexserve.supervisor.verbs import ControlVerbs


@pytest.fixture
def supervisor(tmp_path):
    """A supervisor that is never started: no sockets, no processes; requests are handed over directly."""
    sup = Supervisor(ServerOptions(state_dir=tmp_path / "state"))
    yield sup
    sup.close()


def ask(sup: Supervisor, tree: dict) -> dict:
    return json.loads(sup.verbs.handle_request([json.dumps(tree).encode()]))


def test_verbs_are_derived_from_the_request_models():
    assert VERBS == tuple(verb_of(model) for model in REQUESTS)
    assert len(set(VERBS)) == len(VERBS)
    assert all(REQUEST_BY_VERB[verb] is model for verb, model in zip(VERBS, REQUESTS))


def test_every_verb_has_exactly_one_handler(supervisor):
    assert list(supervisor.verbs.handlers) == list(VERBS)
    methods = {name.removeprefix("verb_") for name in dir(ControlVerbs) if name.startswith("verb_")}
    assert methods == set(VERBS), "a verb_ method without a request model (or the reverse)"


def test_metrics_label_every_verb_and_the_invalid_ones():
    assert CONTROL_VERBS == (*VERBS, INVALID_VERB)


def test_job_command_has_one_subcommand_per_verb():
    parser = job_cli.build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "subcommand"]
    assert set(subparsers.choices) == {verb.replace("_", "-") for verb in VERBS}


@pytest.mark.parametrize(
    "argv, fields",
    [
        (["list"], {"verb": "list"}),
        (["ping"], {"verb": "ping"}),
        (["status", "job-3"], {"verb": "status", "job_id": "job-3"}),
        (["checkpoint-now", "job-3"], {"verb": "checkpoint_now", "job_id": "job-3"}),
        (["logs", "job-3", "-n", "7"], {"verb": "logs", "job_id": "job-3", "lines": 7}),
        (["logs", "job-3"], {"verb": "logs", "job_id": "job-3", "lines": 50}),
    ],
)
def test_job_arguments_become_a_valid_request(argv, fields):
    args = job_cli.parse_args(argv)
    tree = {"verb": args.verb, **job_cli.request_fields(args)}
    assert tree == fields
    assert validate_request(tree).verb == args.verb


def test_submit_reads_the_spec_and_applies_overrides_before_sending(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\nmax_restarts: 1\nconfig: {train: {batch_size: 8}}\n")
    args = job_cli.parse_args(["submit", str(spec), "--set", "config.train.max_steps=5"])
    fields = job_cli.request_fields(args)
    assert fields["origin"] == str(spec)
    assert fields["spec"]["config"]["train"] == {"batch_size": 8, "max_steps": 5}
    validate_request({"verb": "submit", **fields})


def test_invalid_spec_is_refused_locally_with_exit_2(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("max_restarts: -1\nconfig: {train: {batch_size: 0}}\n")
    assert job_cli.main(["submit", str(spec), "--supervisor", "tcp://127.0.0.1:9", "--timeout", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "max_restarts" in err and "config.train.batch_size" in err and "nothing submitted" in err


def test_requests_in_process(supervisor):
    assert ask(supervisor, {"verb": "list"}) == {"ok": True, "result": {"jobs": []}}
    ping = ask(supervisor, {"verb": "ping"})["result"]
    assert ping["status"] == "ok" and ping["jobs"]["queued"] == 0
    reply = ask(supervisor, {"verb": "status", "job_id": "job-9"})
    assert not reply["ok"] and "no job 'job-9'" in reply["error"]
    reply = ask(supervisor, {"verb": "dance"})
    assert not reply["ok"] and "unknown verb 'dance'" in reply["error"]
    sample = supervisor.metrics.registry.get_sample_value
    assert sample("alexserve_control_requests_total", {"verb": "list", "outcome": "ok"}) == 1
    assert sample("alexserve_control_requests_total", {"verb": "status", "outcome": "error"}) == 1
    assert sample("alexserve_control_requests_total", {"verb": INVALID_VERB, "outcome": "error"}) == 1
