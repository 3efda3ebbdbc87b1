"""Uncertainty: sampling K weight sets, batched prediction, objectives, calibration metrics."""

import math

import pytest
import torch
from torch import nn

import hyperloom as hl


def _hnet(seed=None, z_dim=4):
    target = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    return hl.HyperNetwork(
        target, hl.Noise(z_dim, seed=seed), hl.ChunkedGenerator.factory(chunk_size=16)
    )


# Sampling and prediction ---------------------------------------------------------------------
def test_sampled_weight_sets_differ_and_are_reproducible_from_a_seed():
    torch.manual_seed(1)
    a = _hnet(seed=7)
    torch.manual_seed(1)
    b = _hnet(seed=7)  # same hypernetwork parameters, same noise seed
    wa, wb = hl.uncertainty.sample_weights(a, 6), hl.uncertainty.sample_weights(b, 6)
    for name in wa:
        assert wa[name].shape[0] == 6
        assert torch.equal(wa[name], wb[name])
    flat = hl.uncertainty.flatten_weights(wa)  # (6, P)
    assert torch.cdist(flat, flat)[~torch.eye(6, dtype=torch.bool)].min() > 1e-3
    a.conditioner.reseed()
    assert torch.equal(hl.uncertainty.flatten_weights(hl.uncertainty.sample_weights(a, 6)), flat)
    other = hl.uncertainty.sample_weights(a, 6, generator=torch.Generator().manual_seed(99))
    assert not torch.equal(hl.uncertainty.flatten_weights(other), flat)


def test_k_samples_in_one_call_equal_k_separate_calls():
    hnet = _hnet(seed=0)
    x = torch.randn(9, 5)
    ws = hl.uncertainty.sample_weights(hnet, 4)
    out = hl.uncertainty.sample_outputs(hnet.target, ws, x)  # (4, 9, 3)
    loop = torch.stack(
        [hl.call(hnet.target, {k: v[i] for k, v in ws.items()}, x) for i in range(4)]
    )
    assert out.shape == (4, 9, 3)
    torch.testing.assert_close(out, loop)
    pred = hl.uncertainty.predict_classification(hnet, x, k=4, z=torch.randn(4, 4))
    assert pred.member_probs.shape == (4, 9, 3)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(9))


def test_sample_weights_uses_given_z_and_checks_it():
    hnet = _hnet()
    z = torch.randn(3, 4)
    torch.testing.assert_close(
        hl.uncertainty.sample_weights(hnet, 3, z=z)["0.weight"], hnet.generate(z=z)["0.weight"]
    )
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        hl.uncertainty.sample_weights(hnet, 3, z=torch.randn(2, 4))
    with pytest.raises(ValueError, match="positive"):
        hl.uncertainty.sample_weights(hnet, 0)
    task_net = hl.HyperNetwork(nn.Linear(2, 2), hl.TaskEmbedding(2, 4), hl.FlatGenerator.factory())
    with pytest.raises(TypeError, match="TaskEmbedding"):
        hl.uncertainty.sample_weights(task_net, 2)


def test_predictive_classification_against_hand_computation():
    p1, p2 = torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5])
    logits = torch.stack([p1.log(), p2.log()])[:, None]  # (K=2, B=1, C=2)
    pred = hl.uncertainty.summarize_classification(logits)
    mean = (p1 + p2) / 2

    def h(p):
        return -(p * p.log()).sum()

    torch.testing.assert_close(pred.probs[0], mean)
    torch.testing.assert_close(pred.entropy[0], h(mean))
    torch.testing.assert_close(pred.expected_entropy[0], (h(p1) + h(p2)) / 2)
    torch.testing.assert_close(pred.mutual_information[0], h(mean) - (h(p1) + h(p2)) / 2)
    agree = hl.uncertainty.summarize_classification(torch.stack([p1.log(), p1.log()])[:, None])
    assert agree.mutual_information.abs().max() < 1e-6
    assert (
        hl.uncertainty.summarize_classification(torch.randn(5, 7, 4)).mutual_information >= 0
    ).all()


def test_predictive_regression_is_the_law_of_total_variance():
    means = torch.tensor([1.0, 2.0, 6.0])[:, None, None]  # (K=3, B=1, D=1)
    pred = hl.uncertainty.summarize_regression(
        means, noise_variance=torch.tensor([0.1, 0.2, 0.3])[:, None, None]
    )
    assert pred.mean.item() == pytest.approx(3.0)
    assert pred.epistemic.item() == pytest.approx(((1 - 3) ** 2 + (2 - 3) ** 2 + (6 - 3) ** 2) / 3)
    assert pred.aleatoric.item() == pytest.approx(0.2)
    assert pred.variance.item() == pytest.approx(14 / 3 + 0.2)


# Objectives ----------------------------------------------------------------------------------
def test_kernel_repulsion_hand_value_and_its_gradient_pushes_samples_apart():
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    d2 = torch.tensor([1.0, 4.0, 5.0])  # pairs (0,1), (0,2), (1,2)
    assert hl.uncertainty.kernel_repulsion(s, bandwidth=2.0).item() == pytest.approx(
        torch.exp(-d2 / 2).mean().item()
    )
    h = 4.0 / math.log(3)  # median heuristic: median squared distance / log K
    assert hl.uncertainty.kernel_repulsion(s).item() == pytest.approx(
        torch.exp(-d2 / h).mean().item(), rel=1e-5
    )
    x = torch.randn(5, 10, requires_grad=True)
    hl.uncertainty.kernel_repulsion(x).backward()
    with torch.no_grad():
        moved = x - 0.5 * x.grad
    assert torch.pdist(moved).min() > torch.pdist(x.detach()).min()
    assert hl.uncertainty.kernel_repulsion(
        torch.zeros(3, 2), bandwidth=1.0
    ).item() == pytest.approx(1.0)


def test_entropy_surrogate_is_mean_log_nearest_distance():
    s = torch.tensor([[0.0], [1.0], [3.0], [7.0]])  # nearest distances 1, 1, 2, 4
    want = (0 + 0 + math.log(2) + math.log(4)) / 4
    assert hl.uncertainty.entropy_surrogate(s).item() == pytest.approx(want, abs=1e-5)
    assert hl.uncertainty.entropy_surrogate(2 * s).item() == pytest.approx(
        want + math.log(2), abs=1e-5
    )


def test_implicit_loss_combines_data_term_and_diversity():
    data, s = torch.tensor(0.7), torch.randn(4, 3)
    assert hl.uncertainty.implicit_loss(data, s, diversity=0.0) is data
    k = hl.uncertainty.implicit_loss(data, s, diversity=0.5, term="kernel", bandwidth=1.0)
    assert k.item() == pytest.approx(0.7 + 0.5 * hl.uncertainty.kernel_repulsion(s, 1.0).item())
    e = hl.uncertainty.implicit_loss(data, s, diversity=0.5, term="entropy")
    assert e.item() == pytest.approx(0.7 - 0.5 * hl.uncertainty.entropy_surrogate(s).item())
    with pytest.raises(ValueError, match="term"):
        hl.uncertainty.implicit_loss(data, s, term="gan")
    with pytest.raises(ValueError, match="K >= 2"):
        hl.uncertainty.kernel_repulsion(torch.randn(1, 3))


def test_mixture_nll_is_the_nll_of_the_averaged_prediction():
    p1, p2 = torch.tensor([0.9, 0.1]), torch.tensor([0.5, 0.5])
    logits = torch.stack([p1.log(), p2.log()])[:, None].repeat(1, 2, 1)  # (K=2, B=2, C=2)
    labels = torch.tensor([0, 1])
    want = -(math.log(0.7) + math.log(0.3)) / 2  # mixture probabilities 0.7 and 0.3
    assert hl.uncertainty.mixture_nll(logits, labels).item() == pytest.approx(want, rel=1e-6)
    x, y = torch.randn(6, 9, 4), torch.randint(0, 4, (9,))
    mean_ce = torch.nn.functional.cross_entropy(x.flatten(0, 1), y.repeat(6))
    assert (
        hl.uncertainty.mixture_nll(x, y) < mean_ce
    )  # Jensen: at most the members' mean cross-entropy
    same = x[:1].expand(6, -1, -1)
    torch.testing.assert_close(
        hl.uncertainty.mixture_nll(same, y), torch.nn.functional.cross_entropy(x[0], y)
    )
    x.requires_grad_(True)
    hl.uncertainty.mixture_nll(x, y).backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(K, B, C\)"):
        hl.uncertainty.mixture_nll(torch.randn(9, 4), y)


def test_gaussian_posterior_kl_matches_torch_distributions_and_elbo():
    q = hl.uncertainty.GaussianPosterior(3, prior_std=2.0)
    with torch.no_grad():
        q.mean.copy_(torch.tensor([0.5, -1.0, 0.0]))
        q.log_std.copy_(torch.tensor([0.1, -0.5, 1.0]))
    dist = torch.distributions
    want = dist.kl_divergence(dist.Normal(q.mean, q.std), dist.Normal(0.0, 2.0)).sum()
    torch.testing.assert_close(q.kl(), want)
    z = q.rsample(4)
    z.sum().backward()
    assert q.mean.grad is not None and q.log_std.grad is not None
    loss = hl.uncertainty.elbo_loss(
        torch.tensor(0.3), torch.tensor(50.0), num_data=100, kl_weight=2.0
    )
    assert loss.item() == pytest.approx(0.3 + 2.0 * 50.0 / 100)
    assert hl.uncertainty.GaussianPosterior(5).kl().item() == pytest.approx(0.0, abs=1e-7)


# Metrics -------------------------------------------------------------------------------------
def test_nll_brier_accuracy_against_hand_computation():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    y = torch.tensor([0, 1])
    assert hl.uncertainty.accuracy(probs, y) == pytest.approx(0.5)
    assert hl.uncertainty.nll(probs, y) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    b0 = 0.3**2 + 0.2**2 + 0.1**2
    b1 = 0.1**2 + 0.7**2 + 0.6**2
    assert hl.uncertainty.brier_score(probs, y) == pytest.approx((b0 + b1) / 2)


def test_ece_and_reliability_bins_against_hand_computation():
    # confidences 0.95, 0.95, 0.55, 0.55, 0.55 (two bins of 15); correctness 1, 0, 1, 1, 0
    probs = torch.tensor([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.45, 0.55], [0.55, 0.45]])
    y = torch.tensor([0, 1, 0, 1, 1])
    d = hl.uncertainty.reliability_diagram(probs, y, bins=15)
    hi, lo = 14, 8  # 0.95 in (14/15, 1], 0.55 in (8/15, 9/15]
    assert d["count"][hi] == 2 and d["count"][lo] == 3 and sum(d["count"]) == 5
    assert d["accuracy"][hi] == pytest.approx(0.5) and d["confidence"][hi] == pytest.approx(0.95)
    assert d["accuracy"][lo] == pytest.approx(2 / 3) and d["confidence"][lo] == pytest.approx(0.55)
    assert d["accuracy"][0] is None
    want = 2 / 5 * abs(0.5 - 0.95) + 3 / 5 * abs(2 / 3 - 0.55)
    assert hl.uncertainty.expected_calibration_error(probs, y, bins=15) == pytest.approx(want)
    # a confidence exactly on a bin edge belongs to the lower bin: 0.75 = 3/4 -> bin 2 of 4
    edge = hl.uncertainty.reliability_diagram(
        torch.tensor([[0.75, 0.25]]), torch.tensor([0]), bins=4
    )
    assert edge["count"] == [0, 0, 1, 0]
    perfect = torch.eye(3)
    assert hl.uncertainty.expected_calibration_error(perfect, torch.arange(3)) == pytest.approx(0.0)


def test_auroc_hand_cases_and_against_sklearn():
    assert (
        hl.uncertainty.auroc(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 1, 1])) == 1.0
    )
    assert (
        hl.uncertainty.auroc(torch.tensor([4.0, 3.0, 2.0, 1.0]), torch.tensor([0, 0, 1, 1])) == 0.0
    )
    assert hl.uncertainty.auroc(torch.ones(6), torch.tensor([0, 1, 0, 1, 0, 1])) == 0.5  # all tied
    # positives {2, 2}, negatives {1, 2}: pairs (2>1) 1, (2=2) 0.5, twice -> 3 / 4
    assert (
        hl.uncertainty.auroc(torch.tensor([1.0, 2.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1])) == 0.75
    )
    assert hl.uncertainty.ood_auroc(torch.tensor([0.1, 0.2]), torch.tensor([0.3, 0.4])) == 1.0
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (300,), generator=g).double()  # many ties
    labels = torch.rand(300, generator=g) < 0.3
    want = metrics.roc_auc_score(labels.numpy(), scores.numpy())
    assert hl.uncertainty.auroc(scores, labels) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="both classes"):
        hl.uncertainty.auroc(torch.rand(4), torch.zeros(4, dtype=torch.bool))


def test_gaussian_nll_hand_value():
    got = hl.uncertainty.gaussian_nll(torch.tensor([0.0]), torch.tensor([4.0]), torch.tensor([2.0]))
    assert got == pytest.approx(0.5 * math.log(2 * math.pi * 4.0) + 0.5)


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        hl.uncertainty.nll(torch.rand(3), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError, match="K, B, C"):
        hl.uncertainty.summarize_classification(torch.randn(4, 3))


# Recipe --------------------------------------------------------------------------------------
def _tiny_config(tmp_path, **options):
    """A seconds-long configuration of the recipe on the digits, ``options`` on top."""
    from hyperloom.recipes import uncertainty

    tiny = dict(dataset="digits", n_test=100, hidden=(16,), epochs=1, eval_samples=3)
    tiny.update(train_samples=2, quiet=True, out=str(tmp_path))
    return uncertainty.Config(**{**tiny, **options})


def test_recipe_runs_on_a_tiny_scenario(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from hyperloom.recipes import uncertainty

    config = _tiny_config(
        tmp_path, n_train=200, reg_points=30, reg_hidden=(8,), reg_steps=5, ensemble=2
    )
    results = uncertainty.run(config)
    methods = [s["method"] for s in results["summary"]]
    assert methods == [
        "single",
        "mc dropout",
        "deep ensemble",
        "hypernet",
        "hypernet (variational)",
    ]
    for s in results["summary"]:
        assert 0 <= s["acc"] <= 100 and 0 <= s["auroc"] <= 100 and s["nll"] > 0
        assert s["val_nll"] > 0 and 0 <= s["val_acc"] <= 100
        assert "gap_std_ratio" in s
    assert results["data"]["validation"] > 0
    run_dir = results["run_dir"]
    for name in ("results.json", "results.csv", "reliability.png", "regression.png"):
        assert (tmp_path / run_dir.split("/")[-1] / name).is_file()
    ood = results["data"]["ood"]
    assert "held-out" in ood


def noise_hypernet(target, config):
    from hyperloom.recipes.uncertainty import noise_hypernets

    (hnet,) = noise_hypernets(target, config)
    return hnet


def test_noise_hypernet_designs_sphere_gaussian_and_shared_layers():
    from hyperloom.recipes.uncertainty import Config, hypernet_parameters, mlp

    z = torch.randn(4, 6)
    zero = torch.zeros(1, 6)
    sphere = noise_hypernet(mlp(5, (8,), 3), Config(z_dim=6))
    flat = hl.uncertainty.flatten_weights
    # RMS-normalised z: only its direction reaches the weights
    torch.testing.assert_close(flat(sphere.generate(z=2 * z)), flat(sphere.generate(z=z)))
    gauss = noise_hypernet(mlp(5, (8,), 3), Config(z_dim=6, gen_norm=False))
    # no normalisation: the weights are affine in z, theta(z) = b + W z
    w0, w1, w2 = (flat(gauss.generate(z=v)) for v in (zero, z, 2 * z))
    torch.testing.assert_close(w2 - w0, 2 * (w1 - w0))
    assert (w2 - w1).abs().max() > 1e-3
    shared = noise_hypernet(mlp(5, (8, 7), 3), Config(z_dim=6, shared_layers=1, gen_norm=False))
    assert shared.spec.names == ("3.weight", "3.bias", "5.weight", "5.bias")
    generated = 8 * 7 + 7 + 7 * 3 + 3
    assert shared.spec.numel == generated
    trainable = sum(p.numel() for p in shared.parameters() if p.requires_grad)
    assert trainable == (5 * 8 + 8) + generated * (6 + 1)  # shared layer + readout (W, b)
    assert sum(p.numel() for p in hypernet_parameters([shared])) == trainable
    x = torch.randn(9, 5)
    ws = hl.uncertainty.sample_weights(shared, 3)
    first = torch.relu(shared.target[1](x))  # the one shared first layer, for every draw
    for i in range(3):
        hidden = torch.relu(first @ ws["3.weight"][i].T + ws["3.bias"][i])
        want = hidden @ ws["5.weight"][i].T + ws["5.bias"][i]
        torch.testing.assert_close(hl.uncertainty.sample_outputs(shared.target, ws, x)[i], want)
    with pytest.raises(ValueError, match="shared_layers"):
        noise_hypernet(mlp(5, (8,), 3), Config(shared_layers=2))


def test_z_per_layer_draws_each_layer_from_its_own_z():
    from hyperloom.recipes.uncertainty import (
        Config,
        draw_weights,
        hypernet_parameters,
        mlp,
        noise_hypernets,
    )

    target = mlp(5, (8, 7), 3)
    config = Config(z_dim=3, z_per_layer=True)
    hnets = noise_hypernets(target, config)
    assert [h.spec.names for h in hnets] == [
        ("1.weight", "1.bias"),
        ("3.weight", "3.bias"),
        ("5.weight", "5.bias"),
    ]
    numel = sum(p.numel() for p in target.parameters())
    # the same parameter count as one hypernetwork with z of 3: (3 + 1) coefficients per weight
    assert sum(p.numel() for p in hypernet_parameters(hnets)) == numel * (3 + 1)
    z = torch.randn(4, 9)
    ws = draw_weights(hnets, 4, z=z)
    assert sorted(ws) == sorted(n for n, _ in target.named_parameters())
    torch.testing.assert_close(ws["3.weight"], hnets[1].generate(z=z[:, 3:6])["3.weight"])
    z2 = z.clone()
    z2[:, 3:6] = torch.randn(4, 3)  # a new z for the middle layer only
    ws2 = draw_weights(hnets, 4, z=z2)
    assert torch.equal(ws2["1.weight"], ws["1.weight"]) and torch.equal(ws2["5.bias"], ws["5.bias"])
    assert not torch.equal(ws2["3.weight"], ws["3.weight"])
    g = torch.Generator().manual_seed(3)
    again = draw_weights(hnets, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(draw_weights(hnets, 4, generator=g), again)
    with pytest.raises(ValueError, match=r"\(4, 9\)"):
        draw_weights(hnets, 4, z=torch.randn(4, 3))


def _toy_dataset(n_train=60, n_test=20, classes=3):
    """Images whose first pixel is a unique id (train 0.., test 1000..), labels id % classes."""
    ids_train, ids_test = torch.arange(n_train), 1000 + torch.arange(n_test)

    def images(ids):
        x = torch.rand(len(ids), 1, 4, 4)
        x[:, 0, 0, 0] = ids.float()
        return x

    from hyperloom.data import Dataset

    names = tuple(str(c) for c in range(classes))
    return Dataset(
        "toy", images(ids_train), ids_train % classes, images(ids_test), ids_test % classes, names
    )


def test_validation_split_is_disjoint_from_training_and_test(monkeypatch):
    from hyperloom.recipes import uncertainty

    data = _toy_dataset()
    rest, x_val, y_val = uncertainty.split_validation(data, 12)
    ids = {
        "train": rest.x_train[:, 0, 0, 0].long().tolist(),
        "val": x_val[:, 0, 0, 0].long().tolist(),
        "test": rest.x_test[:, 0, 0, 0].long().tolist(),
    }
    assert ids["val"] == list(range(48, 60)) and ids["train"] == list(range(48))
    assert torch.equal(y_val, data.y_train[48:]) and torch.equal(rest.x_test, data.x_test)
    with pytest.raises(ValueError, match="val_size"):
        uncertainty.split_validation(data, 60)
    # through the recipe's loader: held-out classes removed first, then the split, normalised
    monkeypatch.setattr(uncertainty, "load_dataset", lambda name, root=None: data)
    config = uncertainty.Config(dataset="toy", ood="heldout", heldout=(2,), val_size=8)
    train, (x_val, y_val), x_ood, _ = uncertainty.load_problem(config)
    first = {
        "train": set(train.x_train[:, 0, 0, 0].tolist()),
        "val": set(x_val[:, 0, 0, 0].tolist()),
        "test": set(train.x_test[:, 0, 0, 0].tolist()) | set(x_ood[:, 0, 0, 0].tolist()),
    }
    assert len(first["val"]) == len(y_val) == 8 and len(first["train"]) == 40 - 8
    assert not first["train"] & first["val"]
    assert not (first["train"] | first["val"]) & first["test"]
    assert (y_val < 2).all() and (train.y_train < 2).all()  # in-distribution classes only
    assert train.x_train.mean().abs() < 1e-5  # normalised with the training part's statistics
    default = uncertainty.Config(dataset="toy", ood="heldout", heldout=(2,))
    assert len(uncertainty.load_problem(default)[1][1]) == 4  # a tenth of 40
    none = uncertainty.Config(dataset="toy", ood="heldout", heldout=(2,), val_size=0)
    assert len(uncertainty.load_problem(none)[1][1]) == 0
    with pytest.raises(ValueError, match="val_size"):
        uncertainty.load_problem(
            uncertainty.Config(dataset="toy", ood="heldout", heldout=(2,), val_size=-1)
        )


def test_recipe_designs_shared_layers_and_z_per_layer_count_their_parameters(tmp_path):
    pytest.importorskip("sklearn")
    from hyperloom.recipes import uncertainty

    config = _tiny_config(
        tmp_path,
        n_train=300,
        methods=("hypernet", "variational"),
        fit="mixture",
        z_per_layer=True,
        z_dim=5,
        gen_norm=False,
        shared_layers=1,
        reg_steps=0,
        reg_hidden=(8,),
    )
    results = uncertainty.run(config)
    # digits with held-out classes: 64-16-5; the first layer shared, the second from z (5)
    params = {s["method"]: s["params"] for s in results["summary"]}
    assert params["hypernet"] == (64 * 16 + 16) + (16 * 5 + 5) * (5 + 1)
    assert params["hypernet (variational)"] == params["hypernet"] + 2 * 5
    for s in results["summary"]:
        assert s["val_nll"] > 0
    with pytest.raises(ValueError, match="shared_layers"):
        uncertainty.run(uncertainty.Config(hidden=(16,), shared_layers=2))
