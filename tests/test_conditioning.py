"""Conditioners: shapes, growth, seeding, mixtures, and their errors."""

import pytest
import torch
from torch import nn

import hyperloom as hl


def test_task_embedding_keeps_leading_dims():
    emb = hl.TaskEmbedding(5, 7)
    assert emb(torch.tensor(3)).shape == (7,)
    assert emb(torch.tensor([1, 2])).shape == (2, 7)
    assert emb(torch.tensor([[0, 1, 2]])).shape == (1, 3, 7)
    torch.testing.assert_close(emb(torch.tensor([4]))[0], emb.rows[4])


def test_task_embedding_add_keeps_old_rows():
    emb = hl.TaskEmbedding(2, 3)
    old = emb.weight.detach().clone()
    new = emb.add(3)
    assert new == range(2, 5) and emb.num == 5
    torch.testing.assert_close(emb.weight[:2], old)
    assert emb(torch.tensor(4)).shape == (3,)


@pytest.mark.parametrize("bad", [5, -1, torch.tensor([0, 7])])
def test_task_id_out_of_range(bad):
    emb = hl.TaskEmbedding(5, 3)
    with pytest.raises(IndexError, match=r"task id (5|-1|7) is out of range: .* tasks 0\.\.4"):
        emb(torch.as_tensor(bad))


@pytest.mark.parametrize("bad", [torch.tensor([0.0, 1.0]), 1.5, True])
def test_task_ids_must_be_integers(bad):
    with pytest.raises(TypeError, match="task ids must be"):
        hl.TaskEmbedding(5, 3).from_call((), {"task": bad})


def test_task_from_call_deduplicates():
    emb = hl.TaskEmbedding(5, 3)
    cond, index = emb.from_call((), {"task": torch.tensor([3, 1, 3, 3, 1])})
    assert cond.shape == (2, 3)
    assert index.tolist() == [1, 0, 1, 1, 0]
    torch.testing.assert_close(cond[index], emb(torch.tensor([3, 1, 3, 3, 1])))
    cond, index = emb.from_call((), {"task": 2})
    assert cond.shape == (3,) and index is None
    with pytest.raises(TypeError, match="task-conditioned: call it with task="):
        emb.from_call((torch.zeros(2),), {})
    with pytest.raises(ValueError, match=r"scalar or of shape \(B,\), got \(1, 2\)"):
        emb.from_call((), {"task": torch.tensor([[0, 1]])})


def test_sample_encoder():
    enc = hl.SampleEncoder(nn.Linear(4, 6), dim=6)
    x = torch.randn(3, 4)
    cond, index = enc.from_call((x,), {})
    assert cond.shape == (3, 6) and index is None
    torch.testing.assert_close(cond, enc.encoder(x))
    other = torch.randn(3, 4)
    torch.testing.assert_close(enc.from_call((x,), {"x": other})[0], enc.encoder(other))
    with pytest.raises(ValueError, match=r"return \(\*, 5\), got \(3, 6\)"):
        hl.SampleEncoder(nn.Linear(4, 6), dim=5)(x)
    with pytest.raises(TypeError, match="data-conditioned"):
        enc.from_call((), {})


def test_noise_is_reproducible_and_draws_differ():
    a, b = hl.Noise(4, seed=3), hl.Noise(4, seed=3)
    za, zb = a.sample(5), b.sample(5)
    torch.testing.assert_close(za, zb)
    assert not torch.allclose(za[0], za[1])
    assert not torch.allclose(a.sample(5), za)  # the stream moves on
    a.reseed()
    torch.testing.assert_close(a.sample(5), za)
    assert hl.Noise(4, std=0.1, seed=0).sample(1000).std().item() == pytest.approx(0.1, rel=0.1)
    g = torch.Generator().manual_seed(9)
    torch.testing.assert_close(
        a.sample(2, generator=g), torch.randn(2, 4, generator=torch.Generator().manual_seed(9))
    )


def test_noise_from_call():
    noise = hl.Noise(4, seed=0)
    cond, index = noise.from_call((torch.zeros(7, 2),), {})
    assert cond.shape == (7, 4) and index is None
    z = torch.randn(4)
    assert noise.from_call((), {"z": z})[0] is not None
    with pytest.raises(ValueError, match=r"z must be \(4,\) or \(B, 4\), got \(3,\)"):
        noise.from_call((), {"z": torch.randn(3)})
    with pytest.raises(ValueError, match="dim >= 1"):
        hl.Noise(0)


def test_concat_mixes_and_broadcasts():
    cond = hl.Concat(hl.TaskEmbedding(3, 2), hl.Noise(4, seed=0))
    assert cond.dim == 6 and cond.dynamic and cond.kind == "mixture (task + noise)"
    assert set(cond.keys) == {"task", "z"}
    c, index = cond.from_call((torch.zeros(5, 1),), {"task": torch.tensor([0, 1, 2, 1, 0])})
    assert c.shape == (5, 6) and index is None
    torch.testing.assert_close(c[:, :2], cond.parts[0](torch.tensor([0, 1, 2, 1, 0])))
    c, _ = cond.from_call((), {"task": 1, "z": torch.zeros(4)})
    assert c.shape == (6,)
    static = hl.Concat(hl.TaskEmbedding(3, 2), hl.TaskEmbedding(3, 2))
    assert not static.dynamic and static.kind == "mixture (task + task)"
    with pytest.raises(ValueError, match="at least two"):
        hl.Concat(hl.Noise(2))


def test_configs():
    assert hl.TaskEmbedding(3, 2).config() == {"type": "task", "num": 3, "dim": 2, "init_std": 1.0}
    assert hl.Noise(2, seed=1).config() == {"type": "noise", "dim": 2, "std": 1.0, "seed": 1}
    mix = hl.Concat(hl.TaskEmbedding(3, 2), hl.Noise(2)).config()
    assert mix["type"] == "concat" and len(mix["parts"]) == 2
