"""Checkpoints: round trips, refusal of broken files, atomic writes, exact resume."""

import contextlib
import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import hyperloom as hl
from hyperloom import checkpoint


def _hnet(gen="chunked", tasks=3):
    target = hl.networks.build_target("mlp", in_features=6, hidden=[5], out_features=3)
    options = {"chunked": {"chunk_size": 16}}.get(gen, {})
    return hl.HyperNetwork(
        target, hl.TaskEmbedding(tasks, 4), hl.get_generator(gen).factory(**options)
    )


@pytest.mark.parametrize("gen", hl.list_generators())
def test_round_trip_every_generator(tmp_path, gen):
    hnet = _hnet(gen)
    path = hl.save(hnet, tmp_path / "h.safetensors", tasks=["a", "b", "c"])
    loaded = hl.load(path)
    x = torch.randn(4, 6)
    for t in range(3):
        torch.testing.assert_close(loaded(x, task=t), hnet(x, task=t))
    assert loaded.describe() == hnet.describe()
    assert checkpoint.read_checkpoint(path)[0]["tasks"] == ["a", "b", "c"]


def test_round_trip_keeps_non_generated_parameters_and_buffers(tmp_path):
    target = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    hnet = hl.HyperNetwork(
        target, hl.TaskEmbedding(2, 3), hl.FlatGenerator.factory(), generate=nn.Linear
    )
    hnet(torch.randn(8, 4), task=0)  # moves the running statistics
    with torch.no_grad():
        target[1].weight.mul_(3.0)
    path = hl.save(hnet, tmp_path / "h.safetensors")
    fresh = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))
    loaded = hl.load(path, target=fresh)
    torch.testing.assert_close(fresh[1].running_mean, target[1].running_mean)
    torch.testing.assert_close(fresh[1].weight, target[1].weight)
    hnet.eval()
    loaded.eval()
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded(x, task=1), hnet(x, task=1))


def test_noise_and_mixture_conditioners_round_trip(tmp_path):
    target = nn.Linear(3, 2)
    hnet = hl.HyperNetwork(
        target, hl.Concat(hl.TaskEmbedding(2, 3), hl.Noise(2, seed=5)), hl.HeadsGenerator.factory()
    )
    loaded = hl.load(hl.save(hnet, tmp_path / "h.safetensors"), target=nn.Linear(3, 2))
    z = torch.randn(2)
    x = torch.randn(4, 3)
    torch.testing.assert_close(loaded(x, task=1, z=z), hnet(x, task=1, z=z))
    assert loaded.conditioner.parts[1].seed == 5


def test_sample_encoder_needs_the_conditioner(tmp_path):
    enc = hl.SampleEncoder(nn.Linear(3, 4), 4)
    hnet = hl.HyperNetwork(nn.Linear(3, 2), enc, hl.FlatGenerator.factory())
    path = hl.save(hnet, tmp_path / "h.safetensors")
    with pytest.raises(ValueError, match="pass conditioner=SampleEncoder"):
        hl.load(path, target=nn.Linear(3, 2))
    loaded = hl.load(path, target=nn.Linear(3, 2), conditioner=hl.SampleEncoder(nn.Linear(3, 4), 4))
    x = torch.randn(5, 3)
    torch.testing.assert_close(loaded(x), hnet(x))


def test_target_that_does_not_match_is_refused(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    with pytest.raises(ValueError, match=r"select no parameter|does not match"):
        hl.load(path, target=nn.Linear(6, 3))


def test_unknown_target_builder_needs_a_target(tmp_path):
    hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.TaskEmbedding(2, 3), hl.FlatGenerator.factory())
    path = hl.save(hnet, tmp_path / "h.safetensors")
    with pytest.raises(ValueError, match="does not say how to build its target"):
        hl.load(path)


def test_truncated_file_is_refused(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        hl.load(path)


def test_tampered_tensor_is_refused(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256"):
        hl.load(path)


def _rewrite_metadata(path, edit, redigest=False):
    """Edit the metadata in place; ``redigest`` recomputes the SHA-256 as a forger would."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["hyperloom"])
    edit(meta)
    if redigest:
        from safetensors.torch import load_file

        meta["sha256"] = checkpoint._digest(load_file(str(path)), meta)
    header["__metadata__"]["hyperloom"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_incompatible_format_is_refused(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    _rewrite_metadata(path, lambda m: m.update(format=99, version="9.0"))
    with pytest.raises(
        ValueError, match=r"format 99; hyperloom .* reads formats 1, 2 \(written by version '9.0'\)"
    ):
        hl.load(path)


def test_plain_safetensors_file_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a hyperloom checkpoint"):
        hl.load(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        hl.load(tmp_path / "missing.safetensors")


def test_interrupted_save_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    hnet = _hnet()
    path = hl.save(hnet, tmp_path / "h.safetensors")
    before = path.read_bytes()
    import safetensors.torch

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(KeyboardInterrupt):
        hl.save(hnet, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["h.safetensors"]


def _train(hnet, opt, steps, start=0):
    for _ in range(start, steps):
        x = torch.randn(8, 6)
        task = torch.randint(0, 3, (8,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(hnet(x, task=task), torch.randint(0, 3, (8,))).backward()
        opt.step()


def test_resume_ends_with_the_same_weights(tmp_path):
    torch.manual_seed(0)
    straight = _hnet()
    opt = torch.optim.Adam(straight.parameters(), lr=1e-2)
    torch.manual_seed(1)
    _train(straight, opt, 10)

    torch.manual_seed(0)
    first = _hnet()
    opt = torch.optim.Adam(first.parameters(), lr=1e-2)
    torch.manual_seed(1)
    _train(first, opt, 5)
    path = hl.save(first, tmp_path / "h.safetensors", optimizer=opt, step=5)
    torch.manual_seed(12345)  # whatever happens in between

    resumed = hl.load(path)
    opt = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    assert hl.resume(path, opt) == 5
    _train(resumed, opt, 10, start=5)
    for (na, a), (nb, b) in zip(
        straight.named_parameters(), resumed.named_parameters(), strict=True
    ):
        assert na == nb
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resume_needs_training_state(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    with pytest.raises(ValueError, match="no optimizer state"):
        hl.resume(path, torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1))


def test_save_validates(tmp_path):
    with pytest.raises(ValueError, match=r"end in \.safetensors"):
        hl.save(_hnet(), tmp_path / "h.pt")
    with pytest.raises(ValueError, match="2 task names for a TaskEmbedding of 3 tasks"):
        hl.save(_hnet(), tmp_path / "h.safetensors", tasks=["a", "b"])
    with pytest.raises(TypeError, match="takes a HyperNetwork"):
        hl.save(nn.Linear(2, 2), tmp_path / "h.safetensors")


def test_export_writes_a_plain_state_dict(tmp_path):
    from safetensors.torch import load_file

    hnet = _hnet()
    path = hl.save(hnet, tmp_path / "h.safetensors")
    out = checkpoint.export_checkpoint(path, task=2, out=tmp_path / "w.safetensors")
    plain = hl.networks.build_target("mlp", in_features=6, hidden=[5], out_features=3)
    plain.load_state_dict(load_file(str(out)))
    x = torch.randn(4, 6)
    torch.testing.assert_close(plain(x), hnet(x, task=2))
    with pytest.raises(IndexError, match="task id 7 is out of range"):
        checkpoint.export_checkpoint(path, task=7, out=tmp_path / "w2.safetensors")


def test_describe_checkpoint(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors", tasks=["a", "b", "c"])
    text = checkpoint.describe_checkpoint(path)
    for piece in ("chunk-wise", "task-conditioned", "1.weight", "2: c", "built by mlp"):
        assert piece in text


# --------------------------------------------------------------------------------------------
# Hostile and corrupt files (issue 19): one error type, named fields, bounded work


def test_metadata_is_covered_by_the_digest(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    _rewrite_metadata(path, lambda m: m["target"]["kwargs"].update(activation="gelu"))
    with pytest.raises(ValueError, match="SHA-256 check: the tensors or the metadata"):
        hl.load(path)


def _task_num(m, num):
    m["hypernetwork"]["conditioner"]["num"] = num


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: _task_num(m, 2**40), "3 tensors|task embeddings but the file holds"),
        (lambda m: m["target"]["kwargs"].update(in_features=2**40), "checkpoint field target"),
        (
            lambda m: m["target"]["kwargs"].update(hidden=[2**20] * 3),
            "checkpoint field target|does not match",
        ),
        (
            lambda m: m["hypernetwork"]["spec"]["params"][0].update(shape=[2**40, 6]),
            "checkpoint field hypernetwork.spec: .* generated elements",
        ),
        (
            lambda m: m["hypernetwork"]["generator"]["options"].update(chunk_size=2**40),
            "generator",
        ),
        (
            lambda m: m["hypernetwork"]["generator"]["options"].update(hidden=[2**30]),
            "generator",
        ),
    ],
)
def test_huge_declared_sizes_are_refused_before_allocating(tmp_path, edit, message):
    import time

    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    _rewrite_metadata(path, edit, redigest=True)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        hl.load(path)
    assert time.perf_counter() - start < 5.0


def _deep(n):
    return json.loads("[" * n + "]" * n)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m.update(hypernetwork=5), "hypernetwork"),
        (lambda m: m["hypernetwork"].update(spec={"params": 3}), "hypernetwork.spec.params"),
        (lambda m: m["hypernetwork"]["spec"]["params"][0].pop("name"), r"params.0.name"),
        (lambda m: m["hypernetwork"]["spec"]["params"][0].update(dtype="int8"), "spec"),
        (lambda m: m["hypernetwork"]["spec"]["params"][0].update(dtype="__class__"), "spec"),
        (lambda m: m["hypernetwork"]["conditioner"].update(type=7), "conditioner.type"),
        (lambda m: m["hypernetwork"]["conditioner"].update(type="gpt"), "conditioner"),
        (lambda m: m["hypernetwork"]["conditioner"].update(num="3"), "conditioner.num"),
        (lambda m: m["hypernetwork"]["conditioner"].update(dim=-4), "conditioner"),
        (lambda m: m["hypernetwork"]["generator"].update(name=""), "generator"),
        (lambda m: m["hypernetwork"]["generator"]["options"].update(hidden="x"), "generator"),
        (lambda m: m["hypernetwork"]["generator"]["options"].update(bogus=1), "generator"),
        (lambda m: m["hypernetwork"].update(check_finite="yes"), "check_finite"),
        (lambda m: m["target"].update(builder="rm -rf"), "target"),
        (lambda m: m["target"].update(kwargs=[1]), "target.kwargs"),
        (lambda m: m["target"]["kwargs"].update(activation="gelu"), None),  # loads: valid
        (lambda m: m["target"]["kwargs"].update(hidden=[6]), "does not match|target"),
        (lambda m: m.update(tasks=[1, 2, 3]), "tasks.0"),
        (lambda m: m["criteria"].pop("inputs"), "criteria.inputs"),
        (lambda m: m["hypernetwork"]["conditioner"].update(x=_deep(9)), "x"),
    ],
)
def test_hostile_metadata_is_a_value_error_naming_the_field(tmp_path, edit, field):
    path = hl.save(_hnet(), tmp_path / "h.safetensors", tasks=["a", "b", "c"])
    _rewrite_metadata(path, edit, redigest=True)
    if field is None:
        hl.load(path)
        return
    with pytest.raises(ValueError, match=field):
        hl.load(path)
    with contextlib.suppress(ValueError):  # describe reads only the metadata: prints or refuses
        checkpoint.describe_checkpoint(path)


def test_metadata_nested_past_the_recursion_limit_is_a_value_error(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"]["hyperloom"] = "[" * 100_000 + "]" * 100_000
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(ValueError, match="corrupted hyperloom metadata"):
        hl.load(path)


def test_describe_escapes_terminal_sequences(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors", tasks=["a", "\x1b[2Jevil\x07", "c"])
    text = checkpoint.describe_checkpoint(path)
    assert "\x1b" not in text and "\x07" not in text
    assert "1: \\x1b[2Jevil\\x07" in text


def test_another_architecture_names_the_first_mismatch(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    other = hl.networks.build_target("mlp", in_features=6, hidden=[7], out_features=3)
    with pytest.raises(ValueError, match=r"parameter '1.weight': shape \(5, 6\) in the checkpoint"):
        hl.load(path, target=other)
    deeper = nn.Sequential(
        nn.Flatten(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 3)
    )
    with pytest.raises(ValueError, match=r"missing \['target.5.weight'"):
        hl.load(path, target=deeper)


def _norm_target():
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Linear(6, 2))


def test_init_const_disagreement_names_the_parameter(tmp_path):
    hnet = hl.HyperNetwork(_norm_target(), hl.TaskEmbedding(2, 3), hl.HeadsGenerator.factory())
    assert hnet.spec["1.weight"].init_const == 1.0
    path = hl.save(hnet, tmp_path / "h.safetensors")
    hl.load(path, target=_norm_target())  # the same record: loads
    changed = _norm_target()
    with torch.no_grad():
        changed[1].weight.normal_()  # no longer constant-initialised
    with pytest.raises(ValueError, match=r"parameter '1.weight': constant initialisation"):
        hl.load(path, target=changed)


def test_save_refuses_an_unregistered_generator(tmp_path):
    class Mine(hl.FlatGenerator):  # inherits the registry name of FlatGenerator, not its entry
        pass

    hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.TaskEmbedding(2, 3), Mine.factory())
    with pytest.raises(ValueError, match="generator Mine: it is not registered"):
        hl.save(hnet, tmp_path / "h.safetensors")
    assert not list(tmp_path.iterdir())


def test_dtype_round_trips(tmp_path):
    target = hl.networks.build_target("mlp", in_features=6, hidden=[5], out_features=3).double()
    hnet = hl.HyperNetwork(
        target, hl.TaskEmbedding(3, 4), hl.ChunkedGenerator.factory(chunk_size=16)
    )
    hnet = hnet.double()
    loaded = hl.load(hl.save(hnet, tmp_path / "h.safetensors"))
    assert {p.dtype for p in loaded.parameters()} == {torch.float64}
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(loaded(x, task=1), hnet(x, task=1), rtol=0, atol=0)


def _rng_states():
    import random

    import numpy as np

    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def _assert_rng_unchanged(before):
    after = _rng_states()
    assert torch.equal(before[0], after[0])
    assert (before[1] == after[1]).all() and before[2] == after[2]


def test_resume_refuses_another_optimizer_before_touching_the_rng(tmp_path):
    hnet = _hnet()
    opt = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    _train(hnet, opt, 2)
    path = hl.save(hnet, tmp_path / "h.safetensors", optimizer=opt, step=2)
    sgd = torch.optim.SGD(hl.load(path).parameters(), lr=0.1)
    torch.manual_seed(7)
    before = _rng_states()
    with pytest.raises(ValueError, match=r"optimizer_type: the checkpoint holds .*Adam, not .*SGD"):
        hl.resume(path, sgd)
    _assert_rng_unchanged(before)
    assert sgd.state_dict()["state"] == {}


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda t: t["optimizer"]["__dict__"][1][1][0]["__dict__"].pop(), "param_groups.0"),
        (lambda t: t["rng"]["__dict__"][0].__setitem__(1, [1, 2]), "rng"),
        (lambda t: t["rng"]["__dict__"][2][1]["__tuple__"].__setitem__(0, 4), "rng.python"),
        (lambda t: t.update(optimizer={"__tensor__": "nope"}), "not in file"),
        (lambda t: t["optimizer"]["__dict__"][0].__setitem__(1, {"__dict__": 3}), "optimizer"),
    ],
)
def test_resume_refuses_tampered_state_before_touching_anything(tmp_path, edit, field):
    hnet = _hnet()
    opt = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    _train(hnet, opt, 2)
    path = hl.save(hnet, tmp_path / "h.safetensors", optimizer=opt, step=2)
    _rewrite_metadata(path, lambda m: edit(m["training"]), redigest=True)
    fresh = torch.optim.Adam(hl.load(path).parameters(), lr=1e-2)
    torch.manual_seed(3)
    before = _rng_states()
    with pytest.raises(ValueError, match=field):
        hl.resume(path, fresh)
    _assert_rng_unchanged(before)
    assert fresh.state_dict()["state"] == {}


def test_resume_refuses_optimizer_tensors_of_the_wrong_shape(tmp_path):
    hnet = _hnet()
    opt = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    _train(hnet, opt, 1)
    path = hl.save(hnet, tmp_path / "h.safetensors", optimizer=opt, step=1)
    other = hl.HyperNetwork(  # the same number of parameters, other shapes
        hl.networks.build_target("mlp", in_features=6, hidden=[5], out_features=3),
        hl.TaskEmbedding(3, 5),
        hl.ChunkedGenerator.factory(chunk_size=16),
    )
    before = _rng_states()
    with pytest.raises(ValueError, match=r"training.optimizer.state.0.exp_avg: shape \(4,\)"):
        hl.resume(path, torch.optim.Adam(other.parameters(), lr=1e-2))
    _assert_rng_unchanged(before)


def test_seeded_noise_resumes_exactly(tmp_path):
    def make():
        torch.manual_seed(0)
        return hl.HyperNetwork(
            hl.networks.build_target("mlp", in_features=6, hidden=[5], out_features=3),
            hl.Noise(4, seed=11),
            hl.FlatGenerator.factory(),
        )

    def train(hnet, opt, steps):
        for _ in range(steps):
            x = torch.randn(8, 6)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(hnet(x), torch.randint(0, 3, (8,)))
            loss.backward()  # one noise draw per sample
            opt.step()

    straight = make()
    opt = torch.optim.SGD(straight.parameters(), lr=0.01)
    torch.manual_seed(1)
    train(straight, opt, 6)

    first = make()
    opt = torch.optim.SGD(first.parameters(), lr=0.01)
    torch.manual_seed(1)
    train(first, opt, 3)
    path = hl.save(first, tmp_path / "h.safetensors", optimizer=opt, step=3)
    resumed = hl.load(path)
    opt = torch.optim.SGD(resumed.parameters(), lr=0.01)
    hl.resume(path, opt)
    train(resumed, opt, 3)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_save_cleans_stale_temporaries_and_fsyncs(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(dead.stdout)
    stale = tmp_path / f".h.safetensors.{pid}.tmp"
    stale.write_bytes(b"x" * 1000)  # what a save killed by SIGKILL leaves
    alive = tmp_path / f".h.safetensors.{os.getppid()}.tmp"  # a save still running elsewhere
    alive.write_bytes(b"y")
    synced = []
    real = os.fsync
    monkeypatch.setattr(
        os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd)
    )
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    assert not stale.exists() and alive.exists()
    assert any(s.endswith(".tmp") for s in synced)  # the file, before the rename
    assert str(tmp_path) in synced  # the folder, after it
    hl.load(path)


def test_export_refuses_to_overwrite_its_checkpoint(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="is the checkpoint itself"):
        checkpoint.export_checkpoint(path, task=0, out=tmp_path / "." / "h.safetensors")
    assert path.read_bytes() == before


def test_fuzz_load_finds_nothing_but_value_error(tmp_path):
    """Mutated bytes and (re-digested) metadata: a ValueError or a valid load, nothing else."""
    import time

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    good = hl.save(_hnet(), tmp_path / "good.safetensors", tasks=["a", "b", "c"])
    data = good.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["hyperloom"])
    target = tmp_path / "fuzz.safetensors"
    start = time.perf_counter()

    def attempt():
        with contextlib.suppress(ValueError):
            hl.load(target)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=6),
        st.integers(0, len(data)),
    )
    def bytes_(flips, cut):
        raw = bytearray(data[:cut] if cut < 40 else data)
        for i, b in flips:
            if i < len(raw):
                raw[i] = b
        target.write_bytes(bytes(raw))
        attempt()

    json_values = st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats()
        | st.text(max_size=5),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=8,
    )

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, (*prefix, k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from paths(v, (*prefix, i))

    every = [p for p in paths(meta) if p and p[0] != "sha256"]

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(every), json_values)
    def metadata(where, value):
        import copy

        m = copy.deepcopy(meta)
        node = m
        for k in where[:-1]:
            node = node[k]
        node[where[-1]] = value
        target.write_bytes(data)
        _rewrite_metadata(target, lambda old: (old.clear(), old.update(m)), redigest=True)
        attempt()

    bytes_()
    metadata()
    assert time.perf_counter() - start < 10.0


def test_task_statistics_and_activation_modules_round_trip(tmp_path):
    def target():
        return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)).double()

    gen = hl.HeadsGenerator.factory(activation=nn.LeakyReLU(0.2), final_activation=False)
    hnet = hl.HyperNetwork(target(), hl.TaskEmbedding(3, 4), gen, task_statistics=True)
    hnet(torch.randn(6, 4, dtype=torch.float64), task=torch.tensor([0, 1, 1, 2, 2, 0]))
    hl.save(hnet, tmp_path / "h.safetensors")
    back = hl.load(tmp_path / "h.safetensors", target=target())
    assert back.generator.trunk.act.negative_slope == 0.2
    assert back.generator.trunk.final_activation is False
    for k, v in hnet.task_statistics.state_dict().items():
        assert torch.equal(back.task_statistics.state_dict()[k], v)
    back.eval(), hnet.eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(back(x, task=2), hnet(x, task=2))


def test_a_conditioner_load_cannot_build_is_given_back(tmp_path):
    class Custom(hl.TaskEmbedding):
        def config(self) -> dict:
            return {"type": "custom", "num": self.num, "dim": self.dim}

    hnet = hl.HyperNetwork(nn.Linear(3, 2), Custom(2, 4), hl.FlatGenerator.factory())
    hl.save(hnet, tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="'custom' is not one load\\(\\) builds"):
        hl.load(tmp_path / "c.safetensors", target=nn.Linear(3, 2))
    back = hl.load(tmp_path / "c.safetensors", target=nn.Linear(3, 2), conditioner=Custom(2, 4))
    x = torch.randn(2, 3)
    assert torch.equal(back(x, task=1), hnet(x, task=1))


# Checkpoints written by hyperloom 0.1 (format 1): tests/data/v01, made by make_fixtures.py there.
V01 = Path(__file__).parent / "data" / "v01"


@pytest.mark.parametrize("name", ["mlp_flat", "mlp_chunked", "lenet_chunked"])
def test_v01_task_checkpoints_give_what_v01_computed(name):
    from safetensors.torch import load_file

    expected = load_file(str(V01 / f"{name}.expected.safetensors"))
    hnet = hl.load(V01 / f"{name}.safetensors")
    x = expected["x"]
    with torch.no_grad():
        for key, want in expected.items():
            if key.startswith("y."):
                which = key.removeprefix("y.")
                task = (
                    torch.arange(x.shape[0]) % hnet.conditioner.num
                    if which == "ids"
                    else int(which)
                )
                torch.testing.assert_close(hnet(x, task=task), want, rtol=1e-5, atol=1e-6)


def test_v01_noise_checkpoint_gives_what_v01_computed():
    from safetensors.torch import load_file

    expected = load_file(str(V01 / "mlp_noise.expected.safetensors"))
    hnet = hl.load(V01 / "mlp_noise.safetensors")
    assert (hnet.conditioner.seed, hnet.conditioner.std) == (7, 0.5)
    with torch.no_grad():
        for z in ("z", "zs"):
            got = hnet(expected["x"], z=expected[z])
            torch.testing.assert_close(got, expected[f"y.{z}"], rtol=1e-5, atol=1e-6)


def test_v01_lenet_is_built_as_v01_built_it(tmp_path):
    hnet = hl.load(V01 / "lenet_chunked.safetensors")
    assert hnet.target.hyperloom_config["builder"] == "lenet_v01"
    assert hnet.spec.names[0] == "0.weight"
    again = hl.load(hl.save(hnet, tmp_path / "h.safetensors"))  # written again as format 2
    assert checkpoint.read_checkpoint(tmp_path / "h.safetensors")[0]["format"] == 2
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(again(x, task=1), hnet(x, task=1))


def test_v01_checkpoint_keeps_the_tensor_digest_and_the_checks(tmp_path):
    meta, _tensors = checkpoint.read_checkpoint(V01 / "mlp_flat.safetensors")
    assert (meta["format"], meta["version"], meta["tasks"]) == (1, "0.1.0", ["a", "b", "c"])
    data = bytearray((V01 / "mlp_flat.safetensors").read_bytes())
    data[-4] ^= 0xFF  # a byte of the last tensor
    (tmp_path / "bad.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 check: the tensors were modified"):
        hl.load(tmp_path / "bad.safetensors")
    (tmp_path / "v1.safetensors").write_bytes((V01 / "mlp_flat.safetensors").read_bytes())
    _rewrite_metadata(
        tmp_path / "v1.safetensors",
        lambda m: m["hypernetwork"]["spec"]["params"][0].update(shape=[5, 7]),
    )
    with pytest.raises(ValueError, match="does not match the checkpoint"):
        hl.load(tmp_path / "v1.safetensors")
