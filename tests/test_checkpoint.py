"""Checkpoints: round trips, refusal of broken files, atomic writes, exact resume."""

import json
import struct

import pytest
import torch
from torch import nn

import hyperloom as hl
from hyperloom import checkpoint


def _hnet(gen="chunked", tasks=3):
    target = hl.build_target("mlp", in_features=6, hidden=[5], out_features=3)
    options = {"chunked": {"chunk_size": 16}}.get(gen, {})
    return hl.HyperNetwork(target, hl.TaskEmbedding(tasks, 4), hl.get_generator(gen)(**options))


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
    hnet = hl.HyperNetwork(target, hl.TaskEmbedding(2, 3), hl.FlatGenerator(), generate=nn.Linear)
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
        target, hl.Concat(hl.TaskEmbedding(2, 3), hl.Noise(2, seed=5)), hl.HeadsGenerator()
    )
    loaded = hl.load(hl.save(hnet, tmp_path / "h.safetensors"), target=nn.Linear(3, 2))
    z = torch.randn(2)
    x = torch.randn(4, 3)
    torch.testing.assert_close(loaded(x, task=1, z=z), hnet(x, task=1, z=z))
    assert loaded.conditioner.parts[1].seed == 5


def test_sample_encoder_needs_the_conditioner(tmp_path):
    enc = hl.SampleEncoder(nn.Linear(3, 4), 4)
    hnet = hl.HyperNetwork(nn.Linear(3, 2), enc, hl.FlatGenerator())
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
    hnet = hl.HyperNetwork(nn.Linear(3, 2), hl.TaskEmbedding(2, 3), hl.FlatGenerator())
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


def _rewrite_metadata(path, edit):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["hyperloom"])
    edit(meta)
    header["__metadata__"]["hyperloom"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_incompatible_format_is_refused(tmp_path):
    path = hl.save(_hnet(), tmp_path / "h.safetensors")
    _rewrite_metadata(path, lambda m: m.update(format=99, version="9.0"))
    with pytest.raises(
        ValueError, match=r"format 99; hyperloom .* reads format 1 \(written by version '9.0'\)"
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
    plain = hl.build_target("mlp", in_features=6, hidden=[5], out_features=3)
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
