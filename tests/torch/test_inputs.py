"""ForwardInputs: a multi-argument batch slices by examples and calls the model with it."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from trainwatch.torch import ForwardInputs  # noqa: E402


def test_slicing_takes_the_first_examples_of_every_tensor_argument():
    x, mask = torch.arange(12.0).reshape(6, 2), np.arange(6) % 2 == 0
    pair = (torch.ones(6, 3), torch.zeros(6))
    inputs = ForwardInputs((x, 0.5, pair), {"mask": mask, "extra": {"t": torch.arange(6)},
                                            "scalar": torch.tensor(2.0)})
    head = inputs[:2]
    assert torch.equal(head.args[0], x[:2]) and head.args[1] == 0.5
    assert [tuple(t.shape) for t in head.args[2]] == [(2, 3), (2,)]
    np.testing.assert_array_equal(head.kwargs["mask"], mask[:2])
    assert torch.equal(head.kwargs["extra"]["t"], torch.arange(2))
    assert head.kwargs["scalar"].ndim == 0  # a 0-d argument is no batch: kept
    assert len(inputs) == 6 and len(head) == 2
    assert len(ForwardInputs((3.0,), {"x": x})) == 6


def test_call_passes_positional_and_keyword_arguments():
    seen = {}

    def model(a, b, *, scale):
        seen.update(a=a, b=b, scale=scale)
        return a * scale + b

    assert ForwardInputs((2.0, 1.0), {"scale": 3.0}).call(model) == 7.0
    assert seen == {"a": 2.0, "b": 1.0, "scale": 3.0}


def test_len_without_any_batch_argument_says_so():
    with pytest.raises(TypeError, match="no tensor or array argument"):
        len(ForwardInputs((1.0,), {"flag": True}))
    assert "Tensor(2, 3)" in repr(ForwardInputs((torch.ones(2, 3),), {"k": 1}))


def test_trainer_fits_a_two_input_model_from_forward_inputs():
    """Trainer's minibatches index a ForwardInputs by examples (shuffled index arrays), so a
    forward with two inputs trains, validates and is gradient-checked."""
    from torch import nn

    import trainwatch as tw
    from trainwatch.callbacks import GradientCheck
    from trainwatch.outputs import MemoryOutput

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

        def forward(self, x, side):
            return self.a(x) + self.b(side)

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    side = rng.standard_normal((64, 2)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    model = TwoInputs()
    check = GradientCheck(every=3, warmup_steps=1, budget=None)
    trainer = tw.Trainer(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                         callbacks=[check], progress=False, outputs=[MemoryOutput()],
                         raise_errors=True)
    history = trainer.fit(ForwardInputs((x, side)), y, epochs=2, batch_size=16,
                          validation_data=(ForwardInputs((x[:16], side[:16])), y[:16]))
    assert len(history["val_accuracy"]) == 2 and history["train_loss"][1] < history["train_loss"][0]
    assert [step for step, _ in check.reports] == [1, 4, 7]
    assert all(r.passed and list(r.params) == ["a.weight", "a.bias", "b.weight", "b.bias"]
               for _, r in check.reports)


def test_concatenate_joins_every_batch_argument_and_keeps_the_others():
    a = ForwardInputs((torch.zeros(2, 3), 0.5, (np.zeros(2), torch.zeros(2))),
                      {"mask": np.array([True, False]), "extra": {"t": torch.arange(2)}})
    b = ForwardInputs((torch.ones(3, 3), 0.7, (np.ones(3), torch.ones(3))),
                      {"mask": np.array([False, True, True]), "extra": {"t": torch.arange(3)}})
    joined = ForwardInputs.concatenate([a, b])
    assert len(joined) == 5 and torch.equal(joined.args[0], torch.cat([a.args[0], b.args[0]]))
    assert joined.args[1] == 0.5  # no batch: the first's
    np.testing.assert_array_equal(joined.args[2][0], [0, 0, 1, 1, 1])
    assert torch.equal(joined.args[2][1], torch.tensor([0.0, 0, 1, 1, 1]))
    np.testing.assert_array_equal(joined.kwargs["mask"], [True, False, False, True, True])
    assert torch.equal(joined.kwargs["extra"]["t"], torch.tensor([0, 1, 0, 1, 2]))
