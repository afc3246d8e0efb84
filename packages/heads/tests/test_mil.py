import pytest
import torch

from gpfm.heads import ABMIL, InvalidInputError, MILOutput, make_mil
from gpfm.heads.data import collate_bags
from gpfm.heads.mil import CLAM_SB, DSMIL, MIL_MODELS, MaxMIL, MeanMIL, TransMIL

SMALL = {
    "abmil": {"hidden_dim": 32, "attention_dim": 16},
    "transmil": {"hidden_dim": 32, "n_heads": 4},
    "clam_sb": {"hidden_dim": 32, "attention_dim": 16},
    "dsmil": {"hidden_dim": 32, "query_dim": 16},
    "mean": {"hidden_dim": 32},
    "max": {"hidden_dim": 32},
}


def _model(name, in_dim=12, n_classes=3):
    torch.manual_seed(0)
    return make_mil(name, in_dim, n_classes, **SMALL[name]).eval()


def _bags(sizes=(7, 3, 11), dim=12):
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(size, dim, generator=generator) for size in sizes]


@pytest.mark.parametrize("name", sorted(MIL_MODELS))
def test_every_model_returns_logits_and_attention_that_sums_to_one(name):
    bags = _bags()
    batch = collate_bags([{"features": bag} for bag in bags])
    output = _model(name)(batch["features"], batch["mask"])
    assert isinstance(output, MILOutput)
    assert output.logits.shape == (3, 3) and output.attention.shape == (3, 11)
    assert torch.allclose(output.attention.sum(dim=1), torch.ones(3), atol=1e-5)
    assert torch.all(output.attention >= 0)
    assert torch.all(output.attention[~batch["mask"]] == 0)


@pytest.mark.parametrize("name", sorted(MIL_MODELS))
def test_a_padded_batch_gives_what_each_bag_gives_alone(name):
    model, bags = _model(name), _bags()
    batch = collate_bags([{"features": bag} for bag in bags])
    together = model(batch["features"], batch["mask"])
    for row, bag in enumerate(bags):
        alone = model(bag)  # one (N, D) bag, no mask
        assert torch.allclose(together.logits[row], alone.logits[0], atol=1e-5), name
        n = len(bag)
        assert torch.allclose(together.attention[row, :n], alone.attention[0], atol=1e-5), name


@pytest.mark.parametrize("name", sorted(MIL_MODELS))
def test_padding_values_do_not_leak_into_the_output(name):
    model, bags = _model(name), _bags()
    batch = collate_bags([{"features": bag} for bag in bags])
    noisy = batch["features"].clone()
    noisy[~batch["mask"]] = 1e3
    assert torch.allclose(
        model(noisy, batch["mask"]).logits,
        model(batch["features"], batch["mask"]).logits,
        atol=1e-5,
    )


@pytest.mark.parametrize("name", sorted(MIL_MODELS))
def test_gradients_reach_every_parameter(name):
    model = _model(name, n_classes=2).train()
    bags = _bags(sizes=(20, 17))
    batch = collate_bags([{"features": bag} for bag in bags])
    output = model(batch["features"], batch["mask"], target=torch.tensor([0, 1]))
    loss = output.logits.sum()
    if output.instance_logits is not None:
        loss = loss + output.instance_logits.sum()
    if output.aux_loss is not None:
        loss = loss + output.aux_loss
    loss.backward()
    frozen = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert frozen == []


def test_abmil_attention_follows_the_tiles_that_carry_the_signal():
    torch.manual_seed(0)
    model = ABMIL(4, 2, hidden_dim=8, attention_dim=4, dropout=0.0)
    with torch.no_grad():  # hand-set weights: attention score grows with feature 0
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.zero_()
                layer.bias.zero_()
        model.embed[0].weight[0, 0] = 1.0
        model.attention.value[0].weight[0, 0] = 1.0
        model.attention.score.weight[0, 0] = 5.0
    bag = torch.zeros(5, 4)
    bag[3, 0] = 4.0
    attention = model(bag).attention[0]
    assert attention.argmax() == 3 and attention[3] > 0.5


def test_clam_instance_loss_is_added_only_with_labels():
    model = _model("clam_sb", n_classes=2)
    bag = _bags(sizes=(30,))[0]
    assert model(bag).aux_loss is None
    loss = model(bag, target=torch.tensor([1])).aux_loss
    assert loss is not None and loss.ndim == 0 and loss > 0
    subtyping = CLAM_SB(12, 3, hidden_dim=32, attention_dim=16, subtyping=True).eval()
    assert subtyping(bag, target=torch.tensor([2])).aux_loss > 0
    tiny = model(torch.randn(1, 12), target=torch.tensor([1])).aux_loss
    assert tiny is not None and float(tiny) == 0.0  # one tile: no top and bottom to contrast


def test_dsmil_has_a_max_instance_stream():
    model = DSMIL(12, 2, hidden_dim=32, query_dim=16).eval()
    bag = _bags(sizes=(9,))[0]
    output = model(bag)
    expected = model.instance_classifier(bag).max(dim=0).values
    assert torch.allclose(output.instance_logits[0], expected, atol=1e-6)


def test_mean_and_max_baselines_pool_as_their_names_say():
    mean_model = MeanMIL(12, 2, hidden_dim=8).eval()
    bag = _bags(sizes=(4,))[0]
    pooled = mean_model.embed(bag).mean(dim=0)
    assert torch.allclose(mean_model(bag).logits[0], mean_model.classifier(pooled), atol=1e-6)
    assert torch.allclose(mean_model(bag).attention, torch.full((1, 4), 0.25))
    max_model = MaxMIL(12, 2, hidden_dim=8).eval()
    pooled = max_model.embed(bag).max(dim=0).values
    assert torch.allclose(max_model(bag).logits[0], max_model.classifier(pooled), atol=1e-6)


def test_transmil_handles_bags_that_are_not_perfect_squares():
    model = TransMIL(12, 2, hidden_dim=16, n_heads=2).eval()
    for size in (1, 2, 5, 17):
        output = model(torch.randn(size, 12))
        assert output.logits.shape == (1, 2) and output.attention.shape == (1, size)


def test_inputs_are_checked():
    model = ABMIL(12, 2)
    with pytest.raises(InvalidInputError, match="at least one tile"):
        model(torch.randn(2, 4, 12), torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match=r"features must be \(N, D\) or \(B, N, D\)"):
        model(torch.randn(12))
    with pytest.raises(InvalidInputError, match="unknown MIL model 'gmil'"):
        make_mil("gmil", 12, 2)
    with pytest.raises(InvalidInputError, match="divisible"):
        TransMIL(12, 2, hidden_dim=30, n_heads=8)
