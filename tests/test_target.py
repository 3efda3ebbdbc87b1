"""select(), TargetSpec and the filter language."""

import pytest
import torch
from torch import nn

import hyperloom as hl


def _net():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 10),
        nn.LayerNorm(10),
    )


def test_no_filter_selects_every_parameter_in_order():
    net = _net()
    spec = hl.select(net)
    assert spec.names == tuple(n for n, _ in net.named_parameters())
    assert spec.numel == sum(p.numel() for p in net.parameters())


def test_buffers_are_never_selected():
    spec = hl.select(_net())
    assert not any("running" in n or "num_batches" in n for n in spec.names)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ((nn.Linear,), ("3.weight", "3.bias")),
        (("*.bias",), ("0.bias", "1.bias", "3.bias", "4.bias")),
        ((lambda name, t: t.dim() == 4,), ("0.weight",)),
        (((nn.Conv2d, "4.*"),), ("0.weight", "0.bias", "4.weight", "4.bias")),
        ((nn.Conv2d, nn.LayerNorm), ("0.weight", "0.bias", "4.weight", "4.bias")),
    ],
)
def test_filters(filters, expected):
    assert hl.select(_net(), *filters).names == expected


def test_fans_and_constants():
    spec = hl.select(_net())
    assert (spec["0.weight"].fan_in, spec["0.weight"].fan_out) == (9, 36)
    assert (spec["0.bias"].fan_in, spec["0.bias"].fan_out) == (9, 36)  # its weight's fans
    assert (spec["3.weight"].fan_in, spec["3.weight"].fan_out) == (144, 10)
    assert spec["1.weight"].init_const == 1.0 and spec["1.bias"].init_const == 0.0
    assert spec["4.weight"].init_const == 1.0
    assert spec["3.weight"].init_const is None and spec["3.bias"].init_const is None
    assert (spec["4.weight"].fan_in, spec["4.weight"].fan_out) == (1, 1)  # element-wise


def test_recurrent_and_attention_bias_fans():
    lstm = hl.select(nn.LSTM(5, 7))
    assert lstm["bias_ih_l0"].fan_in == 5 and lstm["bias_hh_l0"].fan_in == 7
    mha = hl.select(nn.MultiheadAttention(8, 2))
    assert mha["in_proj_bias"].fan_in == 8


def test_tied_parameters_appear_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.out = nn.Linear(4, 10, bias=False)
            self.out.weight = self.emb.weight

    spec = hl.select(Tied())
    assert spec.names == ("emb.weight",)


def test_spec_is_frozen_printable_and_round_trips():
    spec = hl.select(_net())
    with pytest.raises(AttributeError):
        spec.params = ()  # type: ignore[misc]
    text = str(spec)
    assert "3.weight" in text and "10x144" in text and f"{spec.numel:,} elements" in text
    assert hl.TargetSpec.from_dict(spec.to_dict()) == spec
    assert hash(spec) == hash(hl.TargetSpec.from_dict(spec.to_dict()))


def test_select_does_not_touch_the_module():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    hl.select(net, nn.Linear)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_filter_selecting_nothing_names_filters_and_parameters():
    with pytest.raises(ValueError, match=r"nn\.GRU|GRU.*select no parameter") as e:
        hl.select(_net(), nn.GRU)
    assert "3.weight" in str(e.value)


@pytest.mark.parametrize("bad", [3, int, None])
def test_bad_filter_types(bad):
    with pytest.raises(TypeError, match="filter"):
        hl.select(_net(), bad)


def test_spec_check_lists_every_problem():
    spec = hl.select(nn.Linear(3, 2))
    with pytest.raises(ValueError) as e:
        spec.check({"weigth": torch.zeros(2, 3), "bias": torch.zeros(3)})
    msg = str(e.value)
    assert "missing: ['weight']" in msg and "'weigth'" in msg and "did you mean 'weight'" in msg
    assert "bias: shape (3,)" in msg
    spec.check({"weight": torch.zeros(5, 2, 3), "bias": torch.zeros(5, 2)}, batch_dims=1)
