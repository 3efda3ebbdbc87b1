"""Hypernetwork architectures: HyperLSTM against nn.LSTM, attention and convolutional generators."""

import math

import pytest
import torch
from torch import nn

import hyperloom as hl

# ---- HyperLSTM ------------------------------------------------------------------------------


def _pair(num_layers=2, batch_first=True, layer_norm=False, **kw):
    ref = nn.LSTM(5, 8, num_layers=num_layers, batch_first=batch_first)
    hyper = hl.architectures.HyperLSTM(
        5, 8, num_layers=num_layers, batch_first=batch_first, layer_norm=layer_norm, **kw
    )
    missing, unexpected = hyper.load_state_dict(ref.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("hyper.") for k in missing)
    return ref, hyper


def _randomise_auxiliary_lstms(hyper):
    with torch.no_grad():
        for cell in hyper.hyper:
            for p in cell.cell.parameters():
                p.normal_()


def _open_the_scaling_path(hyper, std=0.3):
    with torch.no_grad():
        for cell in hyper.hyper:
            cell.z_weight.normal_(0.0, std)
            cell.d_weight.add_(torch.randn_like(cell.d_weight) * std)


@pytest.mark.parametrize("batch_first", [True, False])
def test_hyperlstm_with_scales_fixed_at_one_reproduces_nn_lstm(batch_first):
    ref, hyper = _pair(batch_first=batch_first)
    _randomise_auxiliary_lstms(hyper)  # the auxiliary network runs, but every scale stays 1
    x = torch.randn(3, 7, 5) if batch_first else torch.randn(7, 3, 5)
    h0, c0 = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    want_out, (want_h, want_c) = ref(x, (h0, c0))
    out, (h, c) = hyper(x, (h0, c0))
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, want_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, want_c, rtol=1e-5, atol=1e-6)
    # gradients with respect to the shared main weights agree too
    (out.square().sum()).backward()
    (want_out.square().sum()).backward()
    for name, p in ref.named_parameters():
        torch.testing.assert_close(hyper.get_parameter(name).grad, p.grad, rtol=1e-4, atol=1e-5)


def test_hyperlstm_unbatched_and_default_state_match_nn_lstm():
    ref, hyper = _pair(num_layers=1, batch_first=False)
    x = torch.randn(6, 5)
    out, (h, c) = hyper(x)
    want_out, (_, want_c) = ref(x)
    assert out.shape == (6, 8) and h.shape == (1, 8)
    torch.testing.assert_close(out, want_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, want_c, rtol=1e-5, atol=1e-6)


def test_hyperlstm_departs_from_nn_lstm_once_the_scales_move():
    ref, hyper = _pair()
    _open_the_scaling_path(hyper)
    x = torch.randn(3, 7, 5)
    assert (hyper(x)[0] - ref(x)[0]).abs().max() > 1e-2


def test_hyperlstm_scales_change_with_every_step():
    # a constant input sequence: an LSTM with fixed weights would still vary through its state,
    # so compare the scales themselves, read from the auxiliary network
    _, hyper = _pair(num_layers=1)
    _open_the_scaling_path(hyper)
    seen = []
    hook = hyper.hyper[0].cell.register_forward_hook(lambda m, a, out: seen.append(out[0]))
    hyper(torch.randn(2, 5, 5))
    hook.remove()
    assert len(seen) == 5
    assert not torch.allclose(seen[1], seen[3])


@pytest.mark.parametrize("layer_norm", [True, False])
def test_gradients_reach_the_auxiliary_network(layer_norm):
    _, hyper = _pair(layer_norm=layer_norm)
    x = torch.randn(3, 7, 5)
    # from the first step: Ha et al.'s initialisation closes the path into the auxiliary LSTM
    # (z weights 0), but the z projections themselves learn
    hyper(x)[0].square().sum().backward()
    for cell in hyper.hyper:
        assert cell.z_weight.grad.abs().sum() > 0
    hyper.zero_grad()
    _open_the_scaling_path(hyper)
    hyper(x)[0].square().sum().backward()
    for name, p in hyper.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name


def test_hyperlstm_with_layer_norm_starts_as_a_layer_norm_lstm():
    _, hyper = _pair(num_layers=1, layer_norm=True)
    x = torch.randn(2, 4, 5)
    w_ih, w_hh = hyper.weight_ih_l0, hyper.weight_hh_l0
    b = hyper.bias_ih_l0 + hyper.bias_hh_l0
    h = c = torch.zeros(2, 8)
    outs = []
    for t in range(4):
        gates = (x[:, t] @ w_ih.T + h @ w_hh.T + b).view(2, 4, 8)
        i, f, g, o = nn.functional.layer_norm(gates, (8,)).unbind(1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(nn.functional.layer_norm(c, (8,)))
        outs.append(h)
    torch.testing.assert_close(hyper(x)[0], torch.stack(outs, 1), rtol=1e-5, atol=1e-6)


def test_hyperlstm_rejects_what_it_does_not_support():
    with pytest.raises(ValueError, match="bidirectional"):
        hl.architectures.HyperLSTM(3, 4, bidirectional=True)
    with pytest.raises(ValueError, match="proj_size"):
        hl.architectures.HyperLSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="hidden_size"):
        hl.architectures.HyperLSTM(3, 0)
    lstm = hl.architectures.HyperLSTM(3, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"got \(5, 2, 7\)"):
        lstm(torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match="hx must be"):
        lstm(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)))


def test_hyperlstm_dropout_between_layers_only_in_training():
    lstm = hl.architectures.HyperLSTM(3, 4, num_layers=2, dropout=0.5)
    x = torch.randn(5, 2, 3)
    lstm.eval()
    torch.testing.assert_close(lstm(x)[0], lstm(x)[0])
    lstm.train()
    assert not torch.equal(lstm(x)[0], lstm(x)[0])


# ---- attention generator --------------------------------------------------------------------


def _mlp():
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


SMALL_ATTENTION = {"token_dim": 8, "num_heads": 2, "ff_dim": 16}


@pytest.mark.parametrize(("depth", "mixes"), [(1, True), (0, False)])
def test_attention_tokens_depend_on_each_other(depth, mixes):
    spec = hl.select(_mlp())
    gen = hl.AttentionGenerator(spec, 4, depth=depth, **SMALL_ATTENTION)
    c = torch.randn(4)
    before = gen(c)
    with torch.no_grad():
        gen.token_embeddings[0].add_(torch.randn(8))  # the first layer's weight token only
    after = gen(c)
    assert not torch.allclose(before["0.weight"], after["0.weight"])
    assert (not torch.allclose(before["4.weight"], after["4.weight"])) == mixes


@pytest.mark.parametrize(
    ("output", "strategy", "tokens"),
    [
        ("component", "component-wise", 6),
        ("heads", "multiple heads", 6),
        ("chunked", "chunk-wise", 4),
    ],
)
def test_attention_output_strategies(output, strategy, tokens):
    spec = hl.select(_mlp())  # 147 numbers: 4 chunks of 40
    gen = hl.AttentionGenerator(spec, 4, output=output, chunk_size=40, **SMALL_ATTENTION)
    assert gen.num_tokens == tokens
    hl.hyperfan_in_(gen)
    c = torch.randn(3, 4)
    out = gen(c)
    for p in spec:
        assert out[p.name].shape == (3, *p.shape)
        torch.testing.assert_close(gen(c[1])[p.name], out[p.name][1], rtol=1e-5, atol=1e-6)
    rebuilt = hl.build_generator(gen.config(), spec, 4)
    rebuilt.load_state_dict(gen.state_dict())
    torch.testing.assert_close(rebuilt(c), out)
    hnet = hl.HyperNetwork(
        _mlp(), hl.TaskEmbedding(2, 4), hl.AttentionGenerator.factory(output=output)
    )
    assert hnet.describe().outputs == strategy
    assert hnet.describe().architecture == "attention"


def test_attention_readout_groups_share_heads():
    net = nn.Sequential(*[nn.Linear(8, 8) for _ in range(6)])
    gen = hl.AttentionGenerator(hl.select(net), 4, **SMALL_ATTENTION)
    assert len(gen.readouts) == 2  # (8, 8) weights and (8,) biases
    heads = hl.AttentionGenerator(hl.select(net), 4, output="heads", **SMALL_ATTENTION)
    assert len(heads.readouts) == 12


def test_attention_rejects_bad_options():
    with pytest.raises(ValueError, match="output must be one of"):
        hl.AttentionGenerator(hl.select(nn.Linear(2, 2)), 4, output="flat")
    with pytest.raises(ValueError, match="num_heads=3 must divide token_dim=8"):
        hl.AttentionGenerator(hl.select(nn.Linear(2, 2)), 4, token_dim=8, num_heads=3)


def test_attention_trains_a_target():
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x[:, :3] * 2).sum(-1, keepdim=True).repeat(1, 3)
    hnet = hl.HyperNetwork(
        _mlp(), hl.TaskEmbedding(1, 4), hl.AttentionGenerator.factory(**SMALL_ATTENTION)
    )
    opt = torch.optim.Adam(hnet.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = (hnet(x, task=0) - y).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first


# ---- convolutional generator ----------------------------------------------------------------


def test_conv_generator_has_ha_et_als_parameter_count():
    # Ha et al.'s MNIST layer: 7x7, 16 -> 16; z of size 4 (here: c of size 1 and z of size 3)
    # and d = 4 give their 4,240 generator weights, plus the embedding z itself
    spec = hl.select(nn.Conv2d(16, 16, 7), "weight")
    gen = hl.ConvGenerator(spec, 1, embedding_dim=3, projection_dim=4)
    n = sum(p.numel() for p in gen.parameters())
    assert n == 16 * 4 * (1 + 3) + 16 * 4 + 4 * 7 * 7 * 16 + 7 * 7 * 16 + 3 == 4240 + 3
    assert gen.num_slices == 1
    assert spec.numel == 12544


def test_conv_kernel_slices_come_from_two_linear_steps():
    # each output channel's filter is W_out a + B_out with a in R^d: the (C_out, C_in * k * k)
    # matrix of one slice has rank at most d + 1
    spec = hl.select(nn.Conv2d(16, 16, 7), "weight")
    gen = hl.ConvGenerator(spec, 2, projection_dim=4)
    with torch.no_grad():
        gen.second[0].bias.normal_()
    w = gen(torch.randn(2))["weight"].reshape(16, -1)
    assert torch.linalg.matrix_rank(w).item() == 5
    direct = nn.Conv2d(16, 16, 7).weight.reshape(16, -1)
    assert torch.linalg.matrix_rank(direct).item() == 16


def test_conv_generator_shares_across_layers_and_crops():
    net = nn.Sequential(*[nn.Conv2d(16, 16, 3) for _ in range(4)], nn.Conv2d(16, 40, 3))
    spec = hl.select(net, "*.weight")
    gen = hl.ConvGenerator(spec, 3)
    # four 16x16 kernels and a 40x16 one tiled into 3 slices (48 channels, cropped to 40)
    assert gen.num_slices == 4 + 3
    assert len(gen.second) == 1  # one generator for every 16x16x3x3 slice
    assert not hasattr(gen, "trunk")  # no non-kernel tensor
    out = gen(torch.randn(2, 3))
    assert out["4.weight"].shape == (2, 40, 16, 3, 3)
    deeper = hl.ConvGenerator(hl.select(nn.Sequential(*[nn.Conv2d(16, 16, 3)] * 1), "*.weight"), 3)
    grown = sum(p.numel() for p in gen.parameters()) - sum(p.numel() for p in deeper.parameters())
    assert grown == (gen.num_slices - 1) * 4  # only slice embeddings grow with depth


def test_conv_generator_falls_back_to_heads_for_other_tensors():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)
    )
    spec = hl.select(net)
    gen = hl.hyperfan_in_(hl.ConvGenerator(spec, 4, block_out=4, block_in=4))
    assert gen.num_slices == 2 and len(gen.heads) == len(spec) - 1
    out = gen(torch.randn(3, 4))
    torch.testing.assert_close(out["1.weight"], torch.ones(3, 8))  # BatchNorm scale: its 1
    hnet = hl.HyperNetwork(net, hl.TaskEmbedding(2, 4), hl.ConvGenerator.factory())
    assert hnet.describe().architecture == "convolutional"
    assert hnet(torch.randn(2, 3, 6, 6), task=1).shape == (2, 5)


def test_conv_hyperfan_hits_the_kernel_fan_in():
    same = nn.Sequential(nn.Conv2d(16, 16, 3), nn.Conv2d(16, 16, 3))
    gen = hl.ConvGenerator(hl.select(same, "*.weight"), 16, embedding_dim=8, projection_dim=16)
    w = hl.hyperfan_in_(gen)(torch.randn(256, 16))
    for name in ("0.weight", "1.weight"):
        assert w[name].var().item() == pytest.approx(1 / (16 * 9), rel=0.25)
    # slices of a 16 -> 32 and a 32 -> 32 layer are all 16x16x3x3: one shared W_out aiming at
    # the mean of the two fans
    mixed = nn.Sequential(nn.Conv2d(16, 32, 3), nn.Conv2d(32, 32, 3))
    gen = hl.ConvGenerator(hl.select(mixed, "*.weight"), 16, embedding_dim=8, projection_dim=16)
    w = hl.hyperfan_in_(gen)(torch.randn(256, 16))
    want = (1 / (16 * 9) + 1 / (32 * 9)) / 2
    both = torch.cat([w["0.weight"].flatten(), w["1.weight"].flatten()])
    assert both.pow(2).mean().item() == pytest.approx(want, rel=0.25)
    without = hl.ConvGenerator(hl.select(same, "*.weight"), 16)(torch.randn(256, 16))
    assert not 0.5 < without["0.weight"].var().item() * 16 * 9 < 2


# ---- recipes --------------------------------------------------------------------------------


def test_charlm_recipe_runs_on_a_text_file(tmp_path):
    from hyperloom.recipes import charlm

    text = tmp_path / "corpus.txt"
    text.write_text(
        "\n\n".join(f"the quick brown fox {i} jumps over the lazy dog" for i in range(60))
    )
    config = charlm.Config(
        text=str(text),
        steps=3,
        batch_size=4,
        seq_len=16,
        hidden=12,
        hyper_size=6,
        embedding_size=2,
        embed_dim=6,
        eval_every=2,
        eval_windows=4,
        val_fraction=0.2,
        sample_chars=5,
        out=str(tmp_path),
        quiet=True,
    )
    result = charlm.run(config)
    rows = {r["model"]: r for r in result["results"]}
    assert set(rows) == {"hyperlstm", "lstm"}
    assert abs(rows["hyperlstm"]["params"] - rows["lstm"]["params"]) < 0.02 * rows["lstm"]["params"]
    assert all(0 < r["val_bpc"] < 10 for r in rows.values())
    run_dir = next(tmp_path.glob("*-charlm"))
    assert (run_dir / "curves.png").stat().st_size > 0
    assert (run_dir / "results.json").exists()


def test_charlm_matches_parameter_counts_at_the_default_size():
    from hyperloom.recipes import charlm

    models = charlm.build_models(charlm.Config(), vocab=96)
    counts = {n: hl.recipes.runs.count_trainable(m) for n, m in models.items()}
    assert isinstance(models["hyperlstm"].rnn, hl.architectures.HyperLSTM)
    assert abs(counts["hyperlstm"] - counts["lstm"]) < 1000


def test_hyperconv_recipe_runs_and_stays_within_ha_et_als_budget(tmp_path):
    from hyperloom.recipes import hyperconv

    config = hyperconv.Config(
        dataset="digits", epochs=1, max_train=200, out=str(tmp_path), quiet=True
    )
    result = hyperconv.run(config)
    s = result["summary"]
    assert s["hypernetwork_params"] <= 4240 and s["generated_weights"] == 12544
    assert {r["model"] for r in result["results"]} == {"direct", "generated"}
    assert math.isfinite(s["gap_points"])
