"""The train job kind in job files: schema-checked, defaults filled in, errors naming the field."""
import pytest

from lepton_accel.scheduler.catalog import load_catalog
from lepton_accel.scheduler.jobs import JobError, parse_workload
from lepton_accel.scheduler.placement import place

CAT = load_catalog(use_env=False)


def _job(**train):
    doc = {"name": "t", "train": {"model": "seed_cnn", "epochs": 2, "batch_size": 64, **train}}
    return parse_workload(doc)[0]


def test_a_train_job_parses_with_its_defaults():
    job = _job(workers=2, checkpoint_every={"steps": 10})
    assert job.kind == "train" and job.spec is None and job.suite is None
    t = job.train
    assert (t["workers"], t["checkpoint_every"], t["data"], t["optimizer"], t["layers"]) == \
        (2, {"steps": 10}, "digits", "adam", "lepton")
    assert _job(workers="auto").train["workers"] == "auto"
    assert _job().train["checkpoint_every"] == {"epochs": 1}


def test_an_entry_point_replaces_model_and_data():
    job = parse_workload({"train": {"entry": "mypkg.models:build", "epochs": 1, "batch_size": 8}, "estimate_s": 30})[0]
    assert job.train["entry"] == "mypkg.models:build" and "data" not in job.train
    assert job.name == "train-mypkg.models:build"


@pytest.mark.parametrize("train, field", [
    ({"epochs": 0}, "train.epochs"),
    ({"epochs": "two"}, "train.epochs"),
    ({"batch_size": -1}, "train.batch_size"),
    ({"workers": 0}, "train.workers"),
    ({"workers": "many"}, "train.workers"),
    ({"optimizer": "lbfgs"}, "train.optimizer"),
    ({"lr": 0}, "train.lr"),
    ({"checkpoint_every": {"minutes": 3}}, "train.checkpoint_every.minutes"),
    ({"checkpoint_every": {"steps": 0}}, "train.checkpoint_every.steps"),
    ({"checkpoint_every": {"steps": 5, "epochs": 1}}, "train.checkpoint_every"),
    ({"model": "resnet"}, "train.model"),
    ({"entry": "not an entry"}, "train.entry"),
    ({"bogus": 1}, "train.bogus"),
    ({"batch_size": 1, "workers": 2}, "train.batch_size"),
])
def test_bad_train_fields_are_named(train, field):
    doc = {"jobs": [{"train": {"model": "seed_cnn", "epochs": 2, "batch_size": 64, **train}}]}
    with pytest.raises(JobError) as exc:
        parse_workload(doc)
    assert str(exc.value).startswith(f"jobs[0].{field}:"), str(exc.value)


def test_model_and_entry_are_exclusive_and_one_is_needed():
    with pytest.raises(JobError, match=r"^train\.model: give either"):
        parse_workload({"train": {"model": "seed_cnn", "entry": "a:b", "epochs": 1, "batch_size": 2}})
    with pytest.raises(JobError, match=r"^train\.model: missing"):
        parse_workload({"train": {"epochs": 1, "batch_size": 2}})
    with pytest.raises(JobError, match=r"^train\.data: only meaningful"):
        parse_workload({"train": {"entry": "a:b", "data": "digits", "epochs": 1, "batch_size": 2}})
    with pytest.raises(JobError, match=r"^train\.epochs: missing"):
        parse_workload({"train": {"model": "seed_cnn", "batch_size": 2}})


def test_a_job_is_one_kind_and_op_fields_are_refused():
    with pytest.raises(JobError, match=r"^train: a job has one of"):
        parse_workload({"op": "matmul", "train": {"model": "seed_cnn", "epochs": 1, "batch_size": 2}})
    with pytest.raises(JobError, match=r"^a: only meaningful for an operation job"):
        parse_workload({"a": {"shape": [2], "dtype": "float32"},
                        "train": {"model": "seed_cnn", "epochs": 1, "batch_size": 2}})


def test_policy_deadline_constraints_apply_to_train_jobs():
    job = parse_workload({"train": {"model": "seed_cnn", "epochs": 1, "batch_size": 8},
                          "policy": "min_time", "deadline_s": 600, "constraints": {"kind": "cpu"}},
                         catalog=CAT)[0]
    assert job.policy == "min_time" and job.deadline_s == 600 and job.constraints.kinds == ("cpu",)
    p = place(job, CAT)
    assert p.winner is not None and p.winner.itype.kind == "cpu"
    with pytest.raises(JobError, match=r"^constraints\.instance_types\[0\]: unknown instance type"):
        parse_workload({"train": {"model": "seed_cnn", "epochs": 1, "batch_size": 8},
                        "constraints": {"instance_types": ["nope.large"]}}, catalog=CAT)
