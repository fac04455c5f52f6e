"""Per-field confidence from token logprobs: value spans and the span -> token mapping."""

from __future__ import annotations

import json
import math

import pytest

from core.vlm.confidence import field_confidences, sglang_tokens, value_spans


def tokens_of(pieces: list[str | bytes], logprobs: list[float]) -> list[tuple[bytes, float]]:
    return [
        (p.encode() if isinstance(p, str) else p, lp)
        for p, lp in zip(pieces, logprobs, strict=True)
    ]


def test_value_spans_name_every_value_by_path_with_quotes_and_list_items():
    text = '{"scenery":"blue_sky","people":[{"age_group":"21-30","shirt_color":"red"}],"n":12}'
    spans = value_spans(text)
    assert {path: text[a:b] for path, (a, b) in spans.items()} == {
        "scenery": '"blue_sky"',
        "people": '[{"age_group":"21-30","shirt_color":"red"}]',
        "people[0]": '{"age_group":"21-30","shirt_color":"red"}',
        "people[0].age_group": '"21-30"',
        "people[0].shirt_color": '"red"',
        "n": "12}",  # the character that ended the number is its decision to stop
    }


def test_value_spans_handle_escapes_whitespace_literals_and_nested_objects():
    text = '{ "a\\"b" : "x\\\\", "t": [true, null, -1.5e3], "o": {"k": false} }'
    spans = value_spans(text)
    assert {path: text[a:b] for path, (a, b) in spans.items()} == {
        'a"b': '"x\\\\"',  # an escaped backslash, then the real closing quote
        "t": "[true, null, -1.5e3]",
        "t[0]": "true",
        "t[1]": "null",
        "t[2]": "-1.5e3]",
        "o": '{"k": false}',
        "o.k": "false",
    }


def test_value_spans_are_byte_offsets_in_utf8():
    text = '{"c":"grün","d":"x"}'
    data = text.encode()
    spans = value_spans(text)
    assert data[slice(*spans["c"])] == '"grün"'.encode()
    assert data[slice(*spans["d"])] == b'"x"'


@pytest.mark.parametrize("bad", ['{"a":', '{"a":"x"} extra', "", '{"a":"x}'])
def test_not_json_has_no_fields(bad):
    assert field_confidences(bad, [(bad.encode(), -0.1)]) is None


def test_a_multi_token_value_is_the_product_of_its_tokens_including_straddling_ones():
    # tokens: {"  scenery  ":"  blue  _sky  "}
    pieces = ['{"', "scenery", '":"', "blue", "_sky", '"}']
    logprobs = [0.0, 0.0, -0.05, -0.7, -0.2, -0.01]
    confidence = field_confidences('{"scenery":"blue_sky"}', tokens_of(pieces, logprobs))
    # the value "blue_sky" (quotes included) overlaps '":"', 'blue', '_sky', '"}'
    assert confidence == {"scenery": pytest.approx(math.exp(-0.05 - 0.7 - 0.2 - 0.01))}


def test_lists_get_the_whole_span_and_each_item_its_own():
    text = '{"tags":["a","b"]}'
    pieces = ['{"', "tags", '":["', "a", '","', "b", '"]', "}"]
    logprobs = [0.0, 0.0, -0.1, -0.2, -0.3, -0.4, -0.5, -0.6]
    confidence = field_confidences(text, tokens_of(pieces, logprobs))
    assert confidence is not None
    assert confidence["tags[0]"] == pytest.approx(math.exp(-0.1 - 0.2 - 0.3))
    assert confidence["tags[1]"] == pytest.approx(math.exp(-0.3 - 0.4 - 0.5))
    assert confidence["tags"] == pytest.approx(math.exp(-0.1 - 0.2 - 0.3 - 0.4 - 0.5))
    assert confidence["tags"] <= min(confidence["tags[0]"], confidence["tags[1]"])


def test_an_empty_list_has_a_confidence_too():
    pieces = ['{"', "people", '":[', "]}"]
    confidence = field_confidences('{"people":[]}', tokens_of(pieces, [0.0, 0.0, -0.4, -0.9]))
    assert confidence == {"people": pytest.approx(math.exp(-0.4 - 0.9))}


def test_nested_entity_fields_by_path():
    answer = {"people": [{"age": "21-30", "shirt": "dark blue"}, {"age": "31-40", "shirt": "red"}]}
    text = json.dumps(answer, separators=(",", ":"))
    # one token per character, logprob -0.01 * position: every span is checkable by hand
    tokens = [(ch.encode(), -0.01 * i) for i, ch in enumerate(text)]
    confidence = field_confidences(text, tokens)
    assert confidence is not None
    for path, fragment in (
        ("people[1].shirt", '"red"'),
        ("people[0].shirt", '"dark blue"'),
        ("people[1].age", '"31-40"'),
    ):
        start = text.index(fragment)  # each fragment occurs once
        expected = math.exp(sum(-0.01 * i for i in range(start, start + len(fragment))))
        assert confidence[path] == pytest.approx(expected), path
    assert set(confidence) == {
        "people",
        "people[0]",
        "people[0].age",
        "people[0].shirt",
        "people[1]",
        "people[1].age",
        "people[1].shirt",
    }


def test_a_character_split_over_tokens_is_mapped_by_bytes():
    text = '{"c":"grün"}'
    data = text.encode()
    u = data.index("ü".encode())
    # byte-level tokens: the two bytes of ü in different tokens
    pieces = [data[: u + 1], data[u + 1 : u + 3], data[u + 3 :]]
    confidence = field_confidences(text, tokens_of(pieces, [-0.1, -0.2, -0.3]))
    assert confidence == {"c": pytest.approx(math.exp(-0.1 - 0.2 - 0.3))}


def test_escapes_inside_a_value_are_part_of_its_span():
    text = '{"s":"a\\"b","t":"c"}'
    pieces = ['{"s":"', 'a\\"', 'b"', ',"t":"', 'c"}']
    confidence = field_confidences(text, tokens_of(pieces, [-0.1, -0.2, -0.3, -0.4, -0.5]))
    assert confidence == {
        "s": pytest.approx(math.exp(-0.1 - 0.2 - 0.3)),
        "t": pytest.approx(math.exp(-0.4 - 0.5)),
    }


def test_missing_logprobs_give_none_for_every_field_never_a_number():
    text = '{"a":"x","b":[1]}'
    assert field_confidences(text, None) == {"a": None, "b": None, "b[0]": None}
    assert field_confidences(text, []) == {"a": None, "b": None, "b[0]": None}


def test_tokens_that_do_not_spell_the_answer_give_none():
    text = '{"a":"x"}'
    assert field_confidences(text, [(b'{"a":"y"}', -0.1)]) == {"a": None}
    assert field_confidences(text, [(b'{"a":', -0.1)]) == {"a": None}  # too short


def test_a_stop_token_after_the_answer_is_not_counted():
    text = '{"a":"x"}'
    confidence = field_confidences(text, [(b'{"a":"x"}', -0.25), (b"<|im_end|>", -3.0)])
    assert confidence == {"a": pytest.approx(math.exp(-0.25))}


def test_sglang_tokens_read_the_openai_logprobs_shape():
    choice = {
        "logprobs": {
            "content": [
                {"token": '{"', "bytes": [123, 34], "logprob": -0.5, "top_logprobs": []},
                {"token": "a", "bytes": None, "logprob": 0.0, "top_logprobs": []},
            ]
        }
    }
    assert sglang_tokens(choice) == [(b'{"', -0.5), (b"a", 0.0)]
    assert sglang_tokens({"logprobs": None}) is None
    assert sglang_tokens({}) is None
    assert sglang_tokens({"logprobs": {"content": None}}) is None
