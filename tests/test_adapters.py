"""hyperloom.adapters: LoRA factors as generated tensors, per-row adapters, PEFT export, errors."""

import copy
import json

import pytest
import torch
from torch import nn

import hyperloom as hl
from hyperloom import adapters as ad

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def tiny_bert(vocab: int = 100) -> nn.Module:
    config = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertModel(config).eval()


def inputs(n: int = 3, length: int = 7, vocab: int = 100) -> dict:
    ids = torch.randint(1, vocab, (n, length))
    mask = torch.ones(n, length, dtype=torch.long)
    mask[0, 4:] = 0  # one padded row
    return {"input_ids": ids, "attention_mask": mask}


def random_factors(lora: ad.LoRATarget, *lead: int) -> dict:
    return {p.name: torch.randn(*lead, *p.shape) * 0.3 for p in hl.select(lora)}


def state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    for name, m in model.named_modules():
        assert not m._forward_hooks, f"hook left on {name}"


QV = ("*.attention.self.query.*", "*.attention.self.value.*")


def test_selection_spec_and_zero_start():
    model = tiny_bert()
    lora = ad.LoRATarget(model, *QV, rank=4, alpha=8)
    assert lora.layers == tuple(
        f"encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")
    )
    spec = hl.select(lora)
    assert spec.shapes == ((4, 16), (16, 4)) * 4
    assert [p.init_const for p in spec][:2] == [None, 0.0]  # B starts at zero
    assert all(not p.requires_grad for p in model.parameters())
    assert sum(p.numel() for p in lora.parameters()) == 4 * 2 * 4 * 16
    x = inputs()
    ref = model(**x).last_hidden_state
    assert torch.equal(lora(**x).last_hidden_state, ref)  # zero B: the model's own outputs


def test_deepcopy_keeps_factors_and_model():
    lora = ad.LoRATarget(tiny_bert(), *QV, rank=2)
    twin = copy.deepcopy(lora)
    x = inputs()
    f = random_factors(lora)
    torch.testing.assert_close(hl.call(twin, f, **x), hl.call(lora, f, **x))


def test_call_equals_merged_weights_oracle():
    model = tiny_bert()
    lora = ad.LoRATarget(model, nn.Linear, rank=3, alpha=6)
    factors = random_factors(lora)
    x = inputs()
    got = hl.call(lora, factors, **x).last_hidden_state
    want = hl.call(model, ad.merged_weights(lora, factors), **x).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the merged weight is the LoRA formula by hand: W + (alpha / r) B A
    i = lora.layers.index("encoder.layer.0.attention.self.query")
    a, b = factors[f"factors.{i}.A"], factors[f"factors.{i}.B"]
    w = model.encoder.layer[0].attention.self.query.weight
    merged = ad.merged_weights(lora, factors)["encoder.layer.0.attention.self.query.weight"]
    torch.testing.assert_close(merged, w + 2.0 * b @ a)


def test_call_per_row_equals_loop_values_and_grads():
    model = tiny_bert()
    lora = ad.LoRATarget(model, *QV, rank=2)
    x = inputs(n=4)
    f1 = {k: v.requires_grad_() for k, v in random_factors(lora, 4).items()}
    out = ad.call_per_row(lora, f1, **x).last_hidden_state  # (4, T, H)
    f2 = {k: v.detach().clone().requires_grad_() for k, v in f1.items()}
    loop = torch.cat(
        [
            hl.call(
                lora, {k: v[i] for k, v in f2.items()}, **{k: v[i : i + 1] for k, v in x.items()}
            ).last_hidden_state
            for i in range(4)
        ]
    )
    torch.testing.assert_close(out, loop, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    (loop * g).sum().backward()
    for k in f1:
        torch.testing.assert_close(f1[k].grad, f2[k].grad, rtol=1e-4, atol=1e-5)


def test_peft_export_loads_and_gives_same_outputs(tmp_path):
    model = tiny_bert()
    lora = ad.LoRATarget(model, *QV, rank=4, alpha=8)
    factors = random_factors(lora)
    x = inputs()
    want = hl.call(lora, factors, **x).last_hidden_state
    folder = ad.export_peft(lora, factors, tmp_path / "adapter")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(model), folder).eval()
    got = loaded(**x).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # and back: PEFT's own LoRA weights, read into a LoRATarget, give PEFT's outputs
    peft_sd = peft.get_peft_model_state_dict(loaded)
    back = {}
    for layer, a, b in lora.factor_names():
        back[a] = peft_sd[f"base_model.model.{layer}.lora_A.weight"]
        back[b] = peft_sd[f"base_model.model.{layer}.lora_B.weight"]
    torch.testing.assert_close(hl.call(lora, back, **x).last_hidden_state, got)


def test_hypernetwork_task_and_description_conditioned():
    model = tiny_bert()
    lora = ad.LoRATarget(model, *QV, rank=2)
    x = inputs(n=4)
    ref = model(**x).last_hidden_state
    hnet = hl.HyperNetwork(
        lora, hl.TaskEmbedding(3, 8), hl.ComponentGenerator.factory(hidden=(16,))
    )
    # hyperfan gives the constant-initialised B its own zeroed head: every task starts at the model
    torch.testing.assert_close(hnet(**x, task=1).last_hidden_state, ref)
    assert len(hnet.generator.heads) == 2  # one head for every A, one for every B, any depth
    for p in hnet.generator.heads[1].parameters():
        p.data.normal_()
    tasks = torch.tensor([0, 2, 1, 2])
    per_row = ad.call_per_row(lora, hnet.generate(task=tasks), **x).last_hidden_state
    for i, t in enumerate(tasks):
        one = hnet(**{k: v[i : i + 1] for k, v in x.items()}, task=int(t)).last_hidden_state
        torch.testing.assert_close(per_row[i : i + 1], one, rtol=1e-5, atol=1e-5)
    desc = hl.HyperNetwork(
        lora,
        hl.SampleEncoder(nn.Identity(), 12, key="description"),
        hl.ComponentGenerator.factory(),
    )
    w = desc.generate(description=torch.randn(4, 12))
    assert w["factors.0.A"].shape == (4, 2, 16)
    out = ad.call_per_row(lora, w, **x).last_hidden_state
    out.sum().backward()
    assert all(p.grad is not None for p in desc.generator.parameters())


def test_bad_input_named_errors_and_model_untouched():
    model = tiny_bert()
    before = state(model)
    with pytest.raises(ValueError, match=r"q_proj"):  # a model without the selected modules
        ad.LoRATarget(model, "*.q_proj.*")
    with pytest.raises(ValueError, match=r"no nn\.Linear weight"):  # only LayerNorm selected
        ad.LoRATarget(model, nn.LayerNorm)
    with pytest.raises(ValueError, match=r"rank 17 exceeds layer 'encoder.layer.0"):
        ad.LoRATarget(model, *QV, rank=17)
    with pytest.raises(ValueError, match="rank must be a positive int, got 0"):
        ad.LoRATarget(model, rank=0)
    with pytest.raises(TypeError, match="got str"):
        ad.LoRATarget("bert")
    lora = ad.LoRATarget(model, *QV, rank=2)
    before = state(model)
    x = inputs()
    good = random_factors(lora)
    bad = dict(good)
    bad["factors.0.A"] = torch.randn(3, 16)
    with pytest.raises(ValueError, match=r"factors.0.A"):
        hl.call(lora, bad, **x)
    with pytest.raises(ValueError, match="needs 5 rows"):
        ad.call_per_row(lora, random_factors(lora, 5), **x)
    with pytest.raises(IndexError):  # the model itself raises mid-call: hooks still removed
        hl.call(lora, good, input_ids=torch.full((2, 4), 1000))
    with pytest.raises(ValueError, match="missing"):
        ad.export_peft(lora, {"factors.0.A": good["factors.0.A"]}, "unused")
    hl.call(lora, good, **x)
    ad.call_per_row(lora, random_factors(lora, 3), **x)
    assert_unchanged(model, before)


def test_tokenizer_model_mismatch_named():
    tok = transformers.AutoTokenizer.from_pretrained(ad.minilm_path(), local_files_only=True)
    small = tiny_bert(vocab=100)
    with pytest.raises(ValueError, match=r"tokenizer/model mismatch: .* 30522 tokens .* 100"):
        ad.check_tokenizer(tok, small)
    with pytest.raises(ValueError, match="tokenizer/model mismatch"):
        ad.tokenize(tok, small, ["a fortune"], 16)
    big = tiny_bert(vocab=30522)
    batch = ad.tokenize(tok, big, ["a fortune", "another, longer fortune"], 16)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    with pytest.raises(ValueError, match="max_length must be an int >= 2, got 1"):
        ad.tokenize(tok, big, ["x"], 1)
    with pytest.raises(ValueError, match="texts must be a non-empty sequence"):
        ad.tokenize(tok, big, "just a string", 8)


def test_import_hyperloom_loads_no_nlp_library():
    import subprocess
    import sys

    code = "import sys, hyperloom; print(sorted(m for m in sys.modules if m.split('.')[0] in "
    code += "{'transformers', 'peft', 'tokenizers'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_packaged_minilm_loads_offline():
    model, tok = ad.load_encoder()
    assert model.config.hidden_size == 384 and len(tok) == model.config.vocab_size
    emb = ad.embed_texts(model, tok, ["Eat, drink and be merry.", "The law is an ass."])
    assert emb.shape == (2, 384)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_fortunes_reader_and_splits(tmp_path):
    (tmp_path / "food").write_text("Eat.\n%\nDrink\nwater.\n%\nPie.\n%\nCake.\n%\n")
    assert ad.read_fortunes("food", tmp_path) == ["Eat.", "Drink water.", "Pie.", "Cake."]
    (tmp_path / "law").write_text("A\n%\nB\n%\nC\n%\nD\n")
    cats = ad.load_categories(("food", "law"), per_split=(2, 1, 1), seed=3, folder=tmp_path)
    for c in cats:
        parts = set(c.train) | set(c.valid) | set(c.test)
        assert len(parts) == 4 and c.description == ad.DESCRIPTIONS[c.name]
    with pytest.raises(ValueError, match="'law' has 4 distinct fortunes, 5 asked"):
        ad.load_categories(("law",), per_split=(3, 1, 1), folder=tmp_path)
    with pytest.raises(ValueError, match="no fortunes file 'sports'"):
        ad.read_fortunes("sports", tmp_path)
    with pytest.raises(ValueError, match=r"no description for categories \['nonsense'\]"):
        ad.load_categories(("nonsense",), folder=tmp_path)
    assert "computers" in ad.task_description(cats[0], cats[1]) or "food" in (
        ad.task_description(cats[0], cats[1])
    )


@pytest.mark.skipif(not ad.FORTUNES.is_dir(), reason="Debian's fortunes not installed")
def test_recipe_runs_tiny(tmp_path):
    from hyperloom.recipes import adapters as recipe

    tok = transformers.AutoTokenizer.from_pretrained(ad.minilm_path(), local_files_only=True)
    tiny_bert(vocab=len(tok)).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    config = recipe.Config(
        model=str(tmp_path / "model"),
        train_categories=("food", "law", "love"),
        heldout_categories=("sports", "work"),
        per_split=(4, 2, 3),
        max_length=12,
        layers=(1,),
        rank=2,
        steps=3,
        batch_size=4,
        head_steps=5,
        out=str(tmp_path),
        quiet=True,
    )
    out = recipe.run(config)
    names = {(s["setting"], s["method"]) for s in out["summary"]}
    assert names == {
        ("multi-task", m)
        for m in ("hnet", "lora-per-task", "lora-shared", "frozen-linear", "frozen-description")
    } | {("zero-shot", m) for m in ("hnet", "lora-shared", "frozen-description")}
    per_task = next(s for s in out["summary"] if s["method"] == "lora-per-task")
    assert per_task["trainable_params"] == 3 * (2 * 2 * 2 * 16 + 1)  # 3 tasks, q and v, A and B
    run_dir = tmp_path / out["run_dir"].split("/")[-1]
    assert (run_dir / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "peft_adapter" / "adapter_model.safetensors").is_file()
    for bad, match in (({"methods": ("x",)}, "methods"), ({"layers": (-1,)}, "layers")):
        with pytest.raises(ValueError, match=match):
            recipe.check_config(recipe.Config(**bad))


@pytest.mark.parametrize(
    "generator",
    [
        lambda: hl.ChunkedGenerator.factory(chunk_size=32, hidden=(16,)),
        lambda: hl.HeadsGenerator.factory(hidden=(16,)),
        lambda: hl.ComponentGenerator.factory(hidden=(16,)),
    ],
    ids=["chunked", "heads", "component"],
)
def test_core_generators_drive_lora(generator):
    model = tiny_bert()
    lora = ad.LoRATarget(model, *QV, rank=2)
    hnet = hl.HyperNetwork(lora, hl.TaskEmbedding(3, 8), generator())
    x = inputs(n=2)
    w = hnet.generate(task=torch.tensor([0, 2]))
    out = ad.call_per_row(lora, w, **x).last_hidden_state
    one = hl.call(lora, {k: v[1] for k, v in w.items()}, **{k: v[1:] for k, v in x.items()})
    torch.testing.assert_close(out[1:], one.last_hidden_state, rtol=1e-5, atol=1e-5)
    out.pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in hnet.parameters())
