"""llguidance's tokenizer and the end-of-generation tokens, read from llama.cpp's vocabulary by
edgeslm's own loop (issue #26, the first answer's cost): the same vocabulary llguidance's helper
reads, on both bundled models."""

from __future__ import annotations

import warnings

import pytest

import edgeslm

from .conftest import requires_smollm2


def _load_or_skip(name: str) -> edgeslm.Model:
    """The bundled model *name* with a small context, or the test skipped where it is not installed."""
    try:
        return edgeslm.load(name, n_ctx=256)
    except edgeslm.ModelNotFoundError:
        pytest.skip(f"{name} is not installed")


@requires_smollm2
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma-3-270m"])
def test_the_vocabulary_is_read_as_llguidance_reads_it(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    llamacpp = pytest.importorskip("llguidance.llamacpp")
    from llguidance import LLTokenizer

    model = _load_or_skip(name)
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


@requires_smollm2
def test_the_pieces_are_cached_per_model_file_and_a_bad_copy_is_rebuilt(tmp_path, monkeypatch) -> None:
    from edgeslm.backends import _vocab_cache

    monkeypatch.setenv("EDGESLM_HOME", str(tmp_path / "home"))
    with edgeslm.load("smollm2-135m", n_ctx=256) as model:
        engine = model._engine
        truth = engine.vocab_pieces(cache=False)
        assert engine.vocab_pieces() == truth  # built, then written
        files = list((tmp_path / "home" / "vocab").glob("*.bin"))
        assert len(files) == 1
        assert _vocab_cache.read(files[0].stem, len(truth)) == truth
        assert engine.vocab_pieces() == truth  # read back
        good = files[0].read_bytes()
        # damage anywhere (a flipped byte in one piece, a cut file, another magic): rebuilt, and right
        i = good.rindex(truth[1000]) if truth[1000] else len(good) - 1
        for bad in (good[:i] + bytes([good[i] ^ 1]) + good[i + 1:], good[: len(good) // 2], b"junk" + good[4:]):
            files[0].write_bytes(bad)
            assert _vocab_cache.read(files[0].stem, len(truth)) is None
            assert engine.vocab_pieces() == truth
            assert files[0].read_bytes() == good
        # a copy that passes its checksum but is not this vocabulary (a sampled token differs): rebuilt
        wrong = list(truth)
        wrong[_vocab_cache.sample(len(truth))[5]] = b"not-this-token"
        _vocab_cache.write(files[0].stem, wrong)
        assert engine.vocab_pieces() == truth
        # a cache folder that cannot be written (here a file stands where it should be): only slower
        files[0].unlink()
        (tmp_path / "home" / "vocab").rmdir()
        (tmp_path / "home" / "vocab").write_text("in the way")
        assert engine.vocab_pieces() == truth


def test_a_validated_gguf_is_remembered_until_the_file_changes(tmp_path, monkeypatch, smollm2_path) -> None:
    import os
    import shutil

    from edgeslm.backends import gguf_file as validate

    monkeypatch.setenv("EDGESLM_HOME", str(tmp_path / "home"))
    f = tmp_path / "m.gguf"
    shutil.copyfile(smollm2_path, f)
    calls: list[object] = []
    real = validate.validate_gguf
    monkeypatch.setattr(validate, "validate_gguf", lambda p: (calls.append(p), real(p))[1])
    first = validate.validate_gguf_cached(f)
    assert validate.validate_gguf_cached(f) == first and len(calls) == 1  # remembered
    records = list((tmp_path / "home" / "validated").glob("*.json"))
    assert len(records) == 1
    records[0].write_text("{not json")  # a damaged record: checked again (and rewritten)
    assert validate.validate_gguf_cached(f) == first and len(calls) == 2
    assert validate.validate_gguf_cached(f) == first and len(calls) == 2
    # the file changes (here: cut short, as a hostile or damaged copy would be): checked again, refused
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 3)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    with pytest.raises(edgeslm.CorruptModelError):
        validate.validate_gguf_cached(f)
    assert len(calls) == 3


def test_a_download_checked_before_its_rename_leaves_one_record(tmp_path, monkeypatch, smollm2_path) -> None:
    import dataclasses
    import os
    import shutil

    from edgeslm.backends import gguf_file as validate

    monkeypatch.setenv("EDGESLM_HOME", str(tmp_path / "home"))
    part = tmp_path / "m.gguf.part"  # as the downloader checks it, before moving it into place
    shutil.copyfile(smollm2_path, part)
    calls: list[object] = []
    real = validate.validate_gguf
    monkeypatch.setattr(validate, "validate_gguf", lambda p: (calls.append(p), real(p))[1])
    first = validate.validate_gguf_cached(part)
    final = tmp_path / "m.gguf"
    os.replace(part, final)
    again = validate.validate_gguf_cached(final)
    assert again.path == final and dataclasses.replace(again, path=part) == first
    assert len(calls) == 1  # known: the same file
    assert len(list((tmp_path / "home" / "validated").glob("*.json"))) == 1  # nothing left for the .part
    copy = tmp_path / "copy.gguf"  # another file with the same bytes is checked on its own
    shutil.copyfile(final, copy)
    assert validate.validate_gguf_cached(copy).path == copy and len(calls) == 2


@requires_smollm2
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma-3-270m"])
def test_closing_tokens_from_the_pieces_are_those_of_the_per_token_scan(name: str) -> None:
    from edgeslm.decoding import constrain

    model = _load_or_skip(name)
    with model:
        e = model._engine
        slow = constrain._scan_closing(e.n_vocab, e.token_bytes, e.is_eog)
        fast = constrain.constraints(e).closing  # from the vocabulary's pieces
        for a, b in zip(slow, fast, strict=True):
            assert a.tolist() == b.tolist()
        assert all(len(x) for x in fast)


@requires_smollm2
@pytest.mark.parametrize("name", ["smollm2-135m", "gemma-3-270m"])
def test_the_single_slice_tokenizer_masks_exactly_as_the_default(name: str) -> None:
    """edgeslm builds llguidance's tokenizer with one precomputed slice (JSON_STRING_SLICE; half the
    build time on a 262k vocabulary): every mask along real outputs, schema and free text, equals the
    one from llguidance's default slices."""
    import json

    import numpy as np
    from llguidance import LLMatcher, LLTokenizer
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    from edgeslm.backends.llamacpp import JSON_STRING_SLICE

    assert JSON_STRING_SLICE in LLTokenizer.general_slices()
    model = _load_or_skip(name)
    with model:
        engine = model._engine
        ours = engine.constraint_tokenizer()
        default = engine.constraint_tokenizer(slices=None)
        schema = {"type": "object", "required": ["name", "note", "n"],
                  "properties": {"name": {"type": "string"}, "note": {"type": "string", "maxLength": 40},
                                 "n": {"type": "integer"}}}
        cases = [(LLMatcher.grammar_from_json_schema(json.dumps(schema)),
                  '{"name": "Zoë \\"Ann\\" Müller-Lüdenscheidt of the long name", "note": "short", "n": 31}'),
                 (LLMatcher.grammar_from_regex(r"(.|\n)*"), 'Free text, "quoted" \\ and\n{"json": 1} too')]
        for grammar, text in cases:
            a, b = LLMatcher(ours, grammar), LLMatcher(default, grammar)
            ma, mb = allocate_token_bitmask(1, ours.vocab_size), allocate_token_bitmask(1, default.vocab_size)
            steps = 0
            for tok in ours.tokenize_str(text):
                fill_next_token_bitmask(a, ma)
                fill_next_token_bitmask(b, mb)
                assert np.array_equal(ma, mb), (name, steps)
                assert a.consume_token(tok) and b.consume_token(tok)
                steps += 1
            assert steps > 10
