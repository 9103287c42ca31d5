import pytest
import torch

from loadgen.data import SyntheticTokens
from loadgen.model import GPT, PRESETS, ModelConfig, count_parameters, resolve
from loadgen.trainer import Trainer


@pytest.mark.parametrize("name", ["tiny", "cpu-small"])
def test_parameter_count_matches_the_module(name: str) -> None:
    config = PRESETS[name]
    model = GPT(config)
    total, matmul = count_parameters(config)
    assert total == sum(p.numel() for p in model.parameters())  # tied weights count once
    assert total - matmul == config.context * config.width  # the position lookup


def test_gpt_1b_preset_is_about_a_billion_parameters() -> None:
    total, _ = count_parameters(PRESETS["gpt-1b"])
    assert 0.9e9 < total < 1.3e9


@pytest.fixture
def one_thread():
    # The machine is shared: OpenMP threads that outnumber free cores slow steps a lot.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_loss_falls_towards_the_data_floor(one_thread: None) -> None:
    trainer = Trainer(resolve("tiny"), torch.device("cpu"), lr=3e-3)
    losses = [trainer.step().loss for _ in range(120)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert first > 5.0  # about ln(256) = 5.5 at the start
    assert last < first - 3.0
    assert last < trainer.data.floor_loss() + 0.6


def test_synthetic_tokens_follow_the_chain_and_differ_by_rank() -> None:
    a = SyntheticTokens(256, 64, 16, seed=3, rank=0, noise=0.1)
    b = SyntheticTokens(256, 64, 16, seed=3, rank=1, noise=0.1)
    x, y = a.next_batch()
    assert x.shape == y.shape == (16, 64)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    follows = (a.successor(x) == y).float().mean().item()
    assert 0.8 < follows < 0.97  # 90 % successor plus chance hits of the noise
    assert torch.equal(a.successor(torch.arange(256)).sort().values, torch.arange(256))
    assert not torch.equal(x, b.next_batch()[0])  # ranks read different samples
    assert torch.equal(a.successor(x), b.successor(x))  # of the same "language"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"preset": "huge"}, "unknown model preset 'huge'"),
        ({"width": 100, "heads": 3}, "width 100 must be a multiple of heads 3"),
        ({"depth": 0}, "depth must be a positive integer"),
        ({"layers": 2}, "unknown model field"),
    ],
)
def test_bad_model_config_says_what_is_wrong(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve({"preset": "tiny", **fields})


def test_overrides_replace_preset_fields() -> None:
    config = resolve("tiny", {"depth": 3, "batch_size": None})
    assert config == ModelConfig(**{**PRESETS["tiny"].as_dict(), "depth": 3})
