"""wrap / find_slots / unwrap: dormant slots are bitwise invisible, names stay stable, bad targets are refused."""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from esper.nn import SeedSlot, SlotMode, find_slots, unwrap, wrap
from esper.nn.hosts import CNN1dHost, CNN2dHost, ConvBlock1d, MLPHost
from esper.nn.slots import rebuild_problem, with_first
from esper.nn.wrap import SLOT_ATTR, slot_path

if TYPE_CHECKING:
    from collections.abc import Callable


def _transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)


CASES: list[tuple[str, Callable[[], nn.Module], list[type[nn.Module] | str], Callable[[], Tensor]]] = [
    ("cnn1d", CNN1dHost, [ConvBlock1d], lambda: torch.randn(8, 40)),
    ("cnn2d", CNN2dHost, ["blocks.0", "blocks.1", "blocks.2", "blocks.3"], lambda: torch.randn(4, 3, 32, 32)),
    ("mlp", MLPHost, ["blocks.0", "blocks.1", "blocks.2"], lambda: torch.randn(8, 40)),
    ("transformer", _transformer, [nn.TransformerEncoderLayer], lambda: torch.randn(2, 5, 16)),
]


@pytest.mark.parametrize(("name", "build", "targets", "make_input"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_dormant_slots_are_bitwise_identity(
    name: str,
    build: Callable[[], nn.Module],
    targets: list[type[nn.Module] | str],
    make_input: Callable[[], Tensor],
    train: bool,
) -> None:
    """Seeded: outputs, gradients and BatchNorm statistics of a dormantly wrapped model equal the plain model's."""
    torch.manual_seed(0)
    plain = build()
    wrapped = wrap(copy.deepcopy(plain), targets)
    assert len(find_slots(wrapped)) >= 3
    plain.train(train)
    wrapped.train(train)
    x = make_input()
    for _ in range(2):
        torch.manual_seed(1)
        y_plain = plain(x)
        torch.manual_seed(1)
        y_wrapped = wrapped(x)
        assert torch.equal(y_plain, y_wrapped)
        y_plain.square().sum().backward()
        y_wrapped.square().sum().backward()
    for (n1, p1), (n2, p2) in zip(plain.named_parameters(), wrapped.named_parameters(), strict=True):
        assert n1 == n2
        assert p1.grad is not None
        assert p2.grad is not None
        assert torch.equal(p1.grad, p2.grad), n1
    wrapped_buffers = dict(wrapped.named_buffers())
    for n, b in plain.named_buffers():
        assert torch.equal(b, wrapped_buffers[n]), n


def test_wrap_keeps_parameter_names_and_adds_only_slot_extra_state() -> None:
    host = CNN1dHost()
    before = list(host.state_dict())
    wrap(host, host.slot_targets)
    after = list(host.state_dict())
    extra = [k for k in after if k not in before]
    assert [k for k in after if k in before] == before
    assert extra == [f"{slot_path(t)}._extra_state" for t in host.slot_targets]
    assert isinstance(host.blocks[0], ConvBlock1d)


def test_state_dict_round_trip_restores_slot_control_state() -> None:
    torch.manual_seed(0)
    host = wrap(MLPHost(), "blocks.1")
    slot = find_slots(host)["blocks.1"]
    slot.attach(nn.Linear(64, 64), SlotMode.BLENDING, seed_id="s1")
    for _ in range(7):
        slot.advance_alpha()
    state = host.state_dict()
    assert "blocks.1.esper_slot.seed.weight" in state
    clone = wrap(MLPHost(), "blocks.1")
    clone_slot = find_slots(clone)["blocks.1"]
    clone_slot.attach(nn.Linear(64, 64), SlotMode.TRAINING, seed_id="s1")
    clone.load_state_dict(state)
    assert clone_slot.mode is SlotMode.BLENDING
    assert clone_slot.alpha_steps == 7
    assert clone_slot.alpha_value == slot.alpha_value
    assert torch.equal(clone_slot.alpha, slot.alpha)
    x = torch.randn(3, 40)
    assert torch.equal(clone(x), host(x))


def test_loading_a_live_slot_without_its_seed_is_refused() -> None:
    host = wrap(MLPHost(), "blocks.0")
    find_slots(host)["blocks.0"].attach(nn.Linear(64, 64), seed_id="s1")
    state = host.state_dict()
    fresh = wrap(MLPHost(), "blocks.0")
    with pytest.raises(ValueError, match="replay the graft log"):
        fresh.load_state_dict(state, strict=False)


def test_wrap_names_every_target_that_matches_nothing() -> None:
    with pytest.raises(ValueError, match=r"'blocks\.9', Conv2d match no submodule of MLPHost"):
        wrap(MLPHost(), ["blocks.0", "blocks.9", nn.Conv2d])


def test_a_second_name_of_a_shared_module_is_refused_naming_the_first() -> None:
    """named_modules() lists a module once, under its first name, so ``wrap(m, ["b"])`` said 'b' matched nothing."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = self.a
            self.head = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            y: Tensor = self.head(self.b(self.a(x)))
            return y

    model = Shared()
    with pytest.raises(ValueError, match=r"^wrap: target 'b' is the same module as 'a'; target 'a'$"):
        wrap(model, ["head", "b"])
    assert find_slots(model) == {}  # refused before any slot went in
    wrap(model, ["a"])
    assert list(find_slots(model)) == ["a"]
    assert find_slots(model)["a"].host_name == "a"
    assert model.b.esper_slot is find_slots(model)["a"]  # one slot, whichever name the forward uses


def test_wrap_refuses_bad_targets() -> None:
    host = wrap(MLPHost(), "blocks.0")
    with pytest.raises(ValueError, match="already has a slot"):
        wrap(host, "blocks.0")
    with pytest.raises(ValueError, match="has no forward"):
        wrap(MLPHost(), "blocks")
    with pytest.raises(TypeError, match="targets"):
        wrap(MLPHost(), [3])  # type: ignore[list-item]  # the wrong type is the point
    with pytest.raises(ValueError, match="at least one"):
        wrap(MLPHost(), [])


def test_find_slots_in_forward_order_and_never_inside_slots() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 3))
    wrap(model, [nn.Linear, "2"])
    slots = find_slots(model)
    assert list(slots) == ["0", "2.0", "2", "3"]
    assert all(model.get_submodule(slot_path(k)) is s for k, s in slots.items())
    assert [s.host_name for s in slots.values()] == list(slots)
    # A seed that itself contains a Linear is not a wrap candidate.
    slots["0"].attach(nn.Linear(8, 8), seed_id="a")
    with pytest.raises(ValueError, match="already has a slot"):
        wrap(model, nn.Linear)


def test_slot_acts_on_the_first_element_of_a_tuple_output() -> None:
    class TupleBlock(nn.Module):
        """Shaped like a Hugging Face GPT-2 block: returns (hidden, present)."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)

        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            return self.fc(x), x.sum(-1)

    torch.manual_seed(0)
    block = wrap(TupleBlock(), "")
    x = torch.randn(2, 6)
    dormant = block(x)
    slot = find_slots(block)[""]
    seed = nn.Linear(6, 6)
    slot.attach(seed, SlotMode.FULL)
    hidden, present = block(x)
    assert torch.equal(present, dormant[1])
    assert torch.equal(hidden, seed(dormant[0]))


class _Out(NamedTuple):
    hidden: Tensor
    aux: Tensor


class _Named(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: Tensor) -> _Out:
        return _Out(self.fc(x), x.sum(-1))


def test_a_namedtuple_output_stays_a_namedtuple_through_a_live_slot() -> None:
    """The slot rebuilt it as a plain tuple, so the model's next line (``out.hidden``) failed once a seed was live."""
    torch.manual_seed(0)
    block = wrap(_Named(), "")
    x = torch.randn(2, 6)
    dormant = block(x)
    seed = nn.Linear(6, 6)
    find_slots(block)[""].attach(seed, SlotMode.FULL)
    out = block(x)
    assert type(out) is _Out
    assert torch.equal(out.aux, dormant.aux)
    assert torch.equal(out.hidden, seed(dormant.hidden))


def test_with_first_keeps_the_type_of_tuples_it_can_rebuild() -> None:
    a, b, c = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    plain = with_first((a, b), c)
    assert type(plain) is tuple
    assert plain == (c, b)
    named = with_first(_Out(a, b), c)
    assert type(named) is _Out
    assert named.hidden is c
    assert named.aux is b
    struct = torch.max(torch.tensor([[1.0, 3.0]]), dim=1)  # a torch.return_types structseq
    rebuilt = with_first(struct, c)
    assert type(rebuilt) is type(struct)
    assert rebuilt.values is c
    assert rebuilt.indices is struct.indices
    assert all(rebuild_problem(t) is None for t in [(a, b), _Out(a, b), struct])


class _Pair(tuple[Tensor, ...]):
    def __new__(cls, hidden: Tensor, aux: Tensor) -> _Pair:
        return super().__new__(cls, (hidden, aux))


class _Tagged(tuple[Tensor, ...]):
    tag = ""


def test_rebuild_problem_names_outputs_a_slot_cannot_rebuild() -> None:
    a, b = torch.zeros(1), torch.ones(1)
    assert rebuild_problem(()) == "it returns an empty tuple"
    pair = rebuild_problem(_Pair(a, b))
    assert pair is not None
    assert pair.startswith(
        "it returns a _Pair, which a live slot cannot rebuild with the seed's output as its first element (TypeError: "
    )
    tagged = _Tagged((a, b))
    tagged.tag = "x"  # an instance attribute the constructor does not restore
    assert rebuild_problem(tagged) == (
        "it returns a _Tagged, which a live slot cannot rebuild with the seed's output as its first element"
        " (its constructor, given the elements, returns a different _Tagged)"
    )
    assert rebuild_problem(_Tagged((a, b))) is None


def _block_class(model: nn.Module, index: int) -> type[nn.Module]:
    blocks = model.get_submodule("blocks")
    assert isinstance(blocks, nn.Sequential)
    return type(blocks[index])


def test_the_class_is_swapped_only_while_a_seed_is_live_and_unwrap_restores_it() -> None:
    host = wrap(CNN1dHost(), ConvBlock1d)
    assert _block_class(host, 0) is ConvBlock1d, "a dormant slot leaves its host's forward alone"
    slot = find_slots(host)["blocks.0"]
    slot.attach(nn.Identity(), seed_id="a")
    assert _block_class(host, 0) is not ConvBlock1d
    assert isinstance(host.blocks[0], ConvBlock1d)
    assert _block_class(host, 1) is ConvBlock1d
    with pytest.raises(ValueError, match="not dormant"):
        unwrap(host)
    slot.detach()
    assert _block_class(host, 0) is ConvBlock1d
    # Loading a checkpoint with a live slot swaps the class in; a deep copy swaps its own host, not the original.
    slot.attach(nn.Identity(), seed_id="b")
    state = host.state_dict()
    twin = copy.deepcopy(host)
    slot.detach()
    assert _block_class(twin, 0) is not ConvBlock1d
    assert _block_class(host, 0) is ConvBlock1d
    find_slots(twin)["blocks.0"].detach()
    assert _block_class(twin, 0) is ConvBlock1d
    fresh = wrap(CNN1dHost(), ConvBlock1d)
    find_slots(fresh)["blocks.0"].attach(nn.Identity(), seed_id="b")
    find_slots(fresh)["blocks.0"].detach()
    assert _block_class(fresh, 0) is ConvBlock1d
    fresh_slot = find_slots(fresh)["blocks.0"]
    fresh_slot.attach(nn.Identity(), seed_id="b")
    fresh.load_state_dict(state)
    assert _block_class(fresh, 0) is not ConvBlock1d
    unwrap(host)
    assert _block_class(host, 0) is ConvBlock1d
    assert not find_slots(host)
    assert all(SLOT_ATTR not in k for k in host.state_dict())


def test_sequential_target_gets_the_slot_as_its_last_element() -> None:
    host = wrap(MLPHost(), "blocks.2")
    block = host.blocks[2]
    assert type(block) is nn.Sequential
    assert isinstance(block[-1], SeedSlot)


def test_one_argument_forwards_keep_their_signature_and_others_take_anything() -> None:
    class OneArg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, features: Tensor) -> Tensor:
            out: Tensor = self.fc(features)
            return out

    class TwoArgs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: Tensor, scale: float = 1.0) -> Tensor:
            out: Tensor = self.fc(x) * scale
            return out

    torch.manual_seed(0)
    x = torch.randn(3, 4)
    one = OneArg()
    plain = one(x)
    wrap(one, "")
    assert list(inspect.signature(type(one).forward).parameters) == ["self", "features"]
    assert torch.equal(one(x), plain)
    assert torch.equal(one(features=x), plain), "a keyword call by the original name still works"
    seed = nn.Linear(4, 4)
    find_slots(one)[""].attach(seed, SlotMode.FULL)
    assert torch.equal(one(features=x), seed(plain))

    two = TwoArgs()
    plain_two = two(x, scale=2.0)
    wrap(two, "")
    assert torch.equal(two(x, scale=2.0), plain_two)
    assert torch.equal(two(x, 2.0), plain_two)


@pytest.mark.parametrize(
    "argument", ["ref_attr", "base_forward", "_esper_slot_ref", "_esper_base_forward_x", "forward", "__builtins__"]
)
def test_a_one_argument_forward_works_whatever_its_argument_is_named(argument: str) -> None:
    """The generated wrapper's own names once shared the argument's namespace: ``forward(self, ref_attr)`` raised a
    KeyError as soon as its slot went live."""
    namespace: dict[str, object] = {}
    exec(f"def forward(self, {argument}):\n    return self.fc({argument})\n", namespace)  # the name is the case
    named = type("Named", (nn.Module,), {"forward": namespace["forward"]})
    torch.manual_seed(0)
    module = named()
    module.fc = nn.Linear(4, 4)
    x = torch.randn(3, 4)
    plain = module(x)
    wrap(module, "")
    seed = nn.Linear(4, 4)
    find_slots(module)[""].attach(seed, SlotMode.FULL)
    assert type(module).__name__ == "SlottedNamed"
    assert list(inspect.signature(type(module).forward).parameters) == ["self", argument]
    assert torch.equal(module(x), seed(plain))
    assert torch.equal(module(**{argument: x}), seed(plain))
