"""llguidance's tokenizer and the end-of-generation tokens, read from llama.cpp's vocabulary by
edgeslm's own loop (issue #26, the first answer's cost): the same vocabulary llguidance's helper
reads, on both bundled models."""

from __future__ import annotations

import warnings

import pytest

import edgeslm

from .conftest import requires_smollm2


@requires_smollm2
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma-3-270m"])
def test_the_vocabulary_is_read_as_llguidance_reads_it(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    llamacpp = pytest.importorskip("llguidance.llamacpp")
    from llguidance import LLTokenizer

    try:
        model = edgeslm.load(name, n_ctx=256)
    except edgeslm.ModelNotFoundError:
        pytest.skip(f"{name} is not installed")
    with model:
        engine = model._engine
        seen: list[dict] = []
        real = LLTokenizer.from_llamacpp
        monkeypatch.setattr(LLTokenizer, "from_llamacpp",
                            staticmethod(lambda **kw: (seen.append(kw), real(**kw))[1]))
        ours = engine.constraint_tokenizer()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            theirs = llamacpp.lltokenizer_from_vocab(engine._vocab)
        a, b = seen
        assert a["tokens"] == b["tokens"] and a["eos_token"] == b["eos_token"]
        assert len(a["tokens"]) == engine.n_vocab and any(t.startswith(b"\xff") for t in a["tokens"])
        text = 'Hello {"name": "Zoë"} <|im_end|>'
        assert ours.tokenize_str(text) == theirs.tokenize_str(text)
        assert engine.eog_tokens() == [t for t in range(engine.n_vocab) if engine.is_eog(t)]
        assert model.extract("Ann is 31.", {"type": "object", "properties": {"age": {"type": "integer"}},
                                            "required": ["age"]}).data["age"] >= 0
