from dataclasses import dataclass
from typing import Literal, Optional

import pytest

from data_prep.config import ConfigError, FrozenConfig, require


@dataclass(frozen=True)
class Inner(FrozenConfig):
    k: int = 20
    tau: float = 0.1


@dataclass(frozen=True)
class Outer(FrozenConfig):
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    mode: Literal["a", "b"] = "a"
    init: Optional[str] = None
    inner: Inner = Inner()

    def validate(self):
        require(all(s > 0 for s in self.sizes), f"Outer.sizes must be positive, got {list(self.sizes)}")


def test_round_trip_through_json():
    c = Outer.from_dict({"sizes": [3, 4], "inner": {"k": 30}})
    assert c.sizes == (3, 4) and c.inner == Inner(k=30)
    assert Outer.from_json(c.to_json()) == c
    assert c.hash() == Outer.from_json(c.to_json()).hash() != Outer().hash()


@pytest.mark.parametrize("data, match", [
    ({"sizez": [1]}, "did you mean 'sizes'"),
    ({"inner": {"tua": 0.2}}, "did you mean 'tau'"),
    ({"mode": "c"}, r"mode='c' is not allowed"),
    ({"sizes": [0, 1]}, "must be positive"),
    ({"inner": {"k": "many"}}, "k must be an integer"),
    ({"sizes": "12"}, "must be a list"),
])
def test_bad_configs_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        Outer.from_dict(data)


def test_frozen_and_replace():
    c = Outer()
    with pytest.raises(Exception):
        c.name = "y"
    assert c.replace(name="y").name == "y" and c.name == "x"
    assert Inner(k=3.0).k == 3  # whole floats accepted as ints (JSON round trips)
