"""Every registry of the package refuses a second thing under a name it holds (one clear error), and
the first one stays registered."""

from __future__ import annotations

import pytest

from fieldguide.errors import DuplicateNameError


def _registries():
    from fieldguide.curation import pseudolabel, signals
    from fieldguide.models import backbones, entropy
    from fieldguide.models.heads import base as heads
    from fieldguide.platform import exports, sources

    return {
        "source format": (sources.FORMATS, "csv", lambda: sources.register("csv", takes="csv")(lambda *a: [])),
        "export format": (exports.FORMATS, "coco", lambda: exports.registry.register_format(
            "coco", media=False, labeled_only=False, summary="again")(lambda job: 0)),
        "signal": (signals.registered_signals(), "knn", lambda: signals.register_signal("knn")(lambda inp: {})),
        "head": (heads._HEADS, "logreg", lambda: heads.register_head("logreg")(lambda **kw: None)),
        "backbone": (backbones._REGISTRY, "efficientnet_lite0",
                     lambda: backbones.register_backbone("efficientnet_lite0")(lambda weights: None)),
        "training method": (entropy.METHODS, "grpo",
                            lambda: entropy.register_method("grpo", entropy_term=False)(lambda *a, **kw: 0)),
        "pseudo-labeling mode": (pseudolabel.MODES, "head", lambda: pseudolabel.register_mode("head")(lambda *a: None)),
    }


@pytest.mark.parametrize("kind", ["source format", "export format", "signal", "head", "backbone", "training method",
                                  "pseudo-labeling mode"])
def test_a_duplicate_name_raises_and_keeps_the_first(kind):
    registry, name, register_again = _registries()[kind]
    first = registry[name]
    with pytest.raises(DuplicateNameError, match=rf"^{kind} '{name}' is registered twice \(.+ and .+\); "
                                                 "register the second one under another name$"):
        register_again()
    assert _registries()[kind][0][name] is first


def test_a_new_name_registers():
    from fieldguide.models.heads.base import _HEADS, make_head, register_head

    @register_head("test_constant_head")
    def _factory(**params):
        return ("built", params)

    try:
        assert make_head("test_constant_head", k=3) == ("built", {"k": 3})
    finally:
        _HEADS.pop("test_constant_head")
