r"""prompt_weights: weighted prompts in ComfyUI and A1111 syntax, one test per rule (pure, well under a second).

Expected weights are written as the products the rules say (`1.5 * 1.1`, `1 / 1.1 / 1.1`) and compared exactly.
"""

import pytest

from magicme.prompt_weights import WEIGHTINGS, parse_weighted, weighting_problems

BOTH = ("comfy", "a1111")


def test_weightings():
    assert WEIGHTINGS == ("comfy", "a1111", "none")


def test_none_takes_the_prompt_literally():
    text = r"a (b:1.2) \( \\ [c] (d:abc) ( ]"
    assert parse_weighted(text, "none") == [(text, 1.0)]
    assert weighting_problems(text, "none") == []
    assert parse_weighted("", "none") == [("", 1.0)]


def test_unknown_syntax_is_an_error():
    for function in (parse_weighted, weighting_problems):
        with pytest.raises(ValueError, match="unknown prompt weighting 'compel'; expected one of comfy, a1111, none"):
            function("a (b)", "compel")


@pytest.mark.parametrize("syntax", BOTH)
def test_explicit_weight(syntax):
    assert parse_weighted("(castle:1.3)", syntax) == [("castle", 1.3)]
    assert parse_weighted("a (castle:1.3) b", syntax) == [("a ", 1.0), ("castle", 1.3), (" b", 1.0)]


@pytest.mark.parametrize("syntax", BOTH)
def test_explicit_weight_and_the_enclosing_weights(syntax):
    """a1111 multiplies an explicit weight by the enclosing ones; ComfyUI's parser replaces them."""
    outer = {"a1111": 1.1, "comfy": 1.0}[syntax]
    assert parse_weighted("((castle:1.3))", syntax) == [("castle", 1.3 * outer)]
    assert parse_weighted("((castle:1.3):2)", syntax) == [("castle", 1.3 * {"a1111": 2, "comfy": 1}[syntax])]
    assert parse_weighted("((castle):0.5)", syntax) == [("castle", 0.5 * 1.1)]  # inner plain groups multiply


@pytest.mark.parametrize("syntax", BOTH)
def test_weight_is_after_the_last_colon(syntax):
    assert parse_weighted("(a:b:1.3)", syntax) == [("a:b", 1.3)]
    # a colon outside any parentheses is text
    assert parse_weighted("style: x (y)", syntax) == [("style: x ", 1.0), ("y", 1.1)]


@pytest.mark.parametrize("syntax", BOTH)
def test_identity_reference_colon_is_not_a_weight(syntax):
    assert parse_weighted("(embedding:ann man:1.2)", syntax) == [("embedding:ann man", 1.2)]
    assert parse_weighted("(embedding:ann man)", syntax) == [("embedding:ann man", 1.1)]
    assert parse_weighted("(a, embedding:ann)", syntax) == [("a, embedding:ann", 1.1)]
    # only the word `embedding` makes a reference
    assert parse_weighted("(myembedding:1.2)", syntax) == [("myembedding", 1.2)]


@pytest.mark.parametrize("syntax", BOTH)
@pytest.mark.parametrize(("written", "weight"), [
    ("1.2", 1.2), (".5", 0.5), ("2", 2.0), ("1e-1", 0.1), ("2E1", 20.0), (" 1.2 ", 1.2), ("+2", 2.0), ("3.", 3.0),
])
def test_weight_forms(syntax, written, weight):
    assert parse_weighted(f"(castle:{written})", syntax) == [("castle", weight)]


@pytest.mark.parametrize("syntax", BOTH)
@pytest.mark.parametrize(("text", "problem"), [
    ("(castle:abc)", "weight 'abc' in '(castle:abc)' is not a number"),
    ("(castle: abc )", "weight 'abc' in '(castle: abc )' is not a number"),
    ("(castle:1.2.3)", "weight '1.2.3' in '(castle:1.2.3)' is not a number"),
    ("(castle:nan)", "weight 'nan' in '(castle:nan)' is not a number"),
    ("(castle:inf)", "weight 'inf' in '(castle:inf)' is not a number"),
    ("(castle:1e999)", "weight '1e999' in '(castle:1e999)' is not a number"),
    ("(castle:1_0)", "weight '1_0' in '(castle:1_0)' is not a number"),
    ("(castle:1.2 (x))", "weight '1.2 (x)' in '(castle:1.2 (x))' is not a number"),
    ("(castle:)", "weight in '(castle:)' is empty"),
    ("(castle: )", "weight in '(castle: )' is empty"),
    ("(castle:0)", "weight 0.0 in '(castle:0)' must be > 0"),
    ("(castle:-1)", "weight -1.0 in '(castle:-1)' must be > 0"),
    ("(castle:-.5)", "weight -0.5 in '(castle:-.5)' must be > 0"),
])
def test_unusable_weights(syntax, text, problem):
    assert weighting_problems(f"a {text} b", syntax) == [problem]
    with pytest.raises(ValueError) as raised:
        parse_weighted(f"a {text} b", syntax)
    assert str(raised.value) == problem


@pytest.mark.parametrize("syntax", BOTH)
def test_group_without_weight_multiplies_by_1_1(syntax):
    assert parse_weighted("(castle)", syntax) == [("castle", 1.1)]
    assert parse_weighted("((castle))", syntax) == [("castle", 1.1 * 1.1)]
    assert parse_weighted("(((castle)))", syntax) == [("castle", 1.1 * 1.1 * 1.1)]
    assert parse_weighted("((castle:1.5))", syntax) == [("castle", 1.5 * (1.1 if syntax == "a1111" else 1.0))]


def test_square_brackets_divide_by_1_1_in_a1111():
    assert parse_weighted("[faded]", "a1111") == [("faded", 1 / 1.1)]
    assert parse_weighted("[[faded]]", "a1111") == [("faded", 1 / 1.1 / 1.1)]
    assert parse_weighted("[(faded:2)]", "a1111") == [("faded", 2 / 1.1)]
    assert parse_weighted("[(faded:1.3)]", "a1111") == [("faded", 1.3 / 1.1)]  # a division: 1.3 * (1 / 1.1) differs
    assert parse_weighted("a [b] c", "a1111") == [("a ", 1.0), ("b", 1 / 1.1), (" c", 1.0)]


def test_square_brackets_are_text_in_comfy():
    assert parse_weighted("[faded]", "comfy") == [("[faded]", 1.0)]
    assert parse_weighted("[(faded)]", "comfy") == [("[", 1.0), ("faded", 1.1), ("]", 1.0)]
    assert parse_weighted("a [b", "comfy") == [("a [b", 1.0)]
    assert weighting_problems("a [b ] c]", "comfy") == []


def test_a1111_bracket_content_is_text_even_with_a_colon():
    """`[a:1.2]` is A1111's prompt editing, not supported: the brackets divide, `a:1.2` stays text."""
    assert parse_weighted("[castle:1.2]", "a1111") == [("castle:1.2", 1 / 1.1)]
    assert parse_weighted("(a [b:2]:1.5)", "a1111") == [("a ", 1.5), ("b:2", 1 / 1.1 * 1.5)]


@pytest.mark.parametrize("syntax", BOTH)
@pytest.mark.parametrize(("text", "segments"), [
    (r"\(not weighted\)", [("(not weighted)", 1.0)]),
    (r"(a\)b:1.2)", [("a)b", 1.2)]),
    (r"a\\b", [("a\\b", 1.0)]),  # one backslash
    (r"\\(a)", [("\\", 1.0), ("a", 1.1)]),
    (r"\\\(", [("\\(", 1.0)]),
    (r"\n \: \x", [(r"\n \: \x", 1.0)]),  # a backslash before anything else stays
    ("a\\", [("a\\", 1.0)]),  # and so does a backslash at the end
])
def test_escapes(syntax, text, segments):
    assert weighting_problems(text, syntax) == []
    assert parse_weighted(text, syntax) == segments


def test_bracket_escapes_only_in_a1111():
    assert parse_weighted(r"\[x\]", "a1111") == [("[x]", 1.0)]
    assert parse_weighted(r"[x\]]", "a1111") == [("x]", 1 / 1.1)]
    assert parse_weighted(r"\[x\]", "comfy") == [(r"\[x\]", 1.0)]


def _paren(char: str, position: int, what: str) -> str:
    return f"unbalanced parentheses: '{char}' at character {position} {what}; write \\{char} for a literal parenthesis"


def _bracket(char: str, position: int, what: str) -> str:
    return f"unbalanced brackets: '{char}' at character {position} {what}; write \\{char} for a literal bracket"


@pytest.mark.parametrize("syntax", BOTH)
def test_unbalanced_parentheses(syntax):
    assert "a photo of a (castle".index("(") == 13
    assert weighting_problems("a photo of a (castle", syntax) == [_paren("(", 13, "is never closed")]
    assert weighting_problems("castle) x", syntax) == [_paren(")", 6, "has no matching '('")]
    assert weighting_problems("((a)", syntax) == [_paren("(", 0, "is never closed")]
    assert weighting_problems(r"\(a (b) c\)", syntax) == []
    with pytest.raises(ValueError) as raised:
        parse_weighted("a photo of a (castle", syntax)
    assert str(raised.value) == _paren("(", 13, "is never closed")


def test_unbalanced_brackets_in_a1111():
    assert weighting_problems("a [b", "a1111") == [_bracket("[", 2, "is never closed")]
    assert weighting_problems("a]b", "a1111") == [_bracket("]", 1, "has no matching '['")]
    assert weighting_problems("[(a])", "a1111") == [
        _bracket("]", 3, "cannot close '(' at character 1"), _bracket("[", 0, "is never closed")]
    assert weighting_problems("(a)]", "a1111") == [_bracket("]", 3, "has no matching '['")]


@pytest.mark.parametrize("syntax", BOTH)
def test_all_problems_in_reading_order_and_the_first_is_raised(syntax):
    text = "(a:x) ) ("
    problems = [
        "weight 'x' in '(a:x)' is not a number", _paren(")", 6, "has no matching '('"), _paren("(", 8, "is never closed")]
    assert weighting_problems(text, syntax) == problems
    with pytest.raises(ValueError) as raised:
        parse_weighted(text, syntax)
    assert str(raised.value) == problems[0]


@pytest.mark.parametrize("syntax", BOTH)
def test_whitespace_is_kept(syntax):
    assert parse_weighted("( castle :1.2)", syntax) == [(" castle ", 1.2)]
    assert parse_weighted(" a  (b)  c ", syntax) == [(" a  ", 1.0), ("b", 1.1), ("  c ", 1.0)]
    assert parse_weighted("  ", syntax) == [("  ", 1.0)]


@pytest.mark.parametrize("syntax", BOTH)
def test_weight_one_merges_with_its_neighbours(syntax):
    assert parse_weighted("a (photo:1.0) of x", syntax) == [("a photo of x", 1.0)]
    assert parse_weighted("a (photo:1) of (x)", syntax) == [("a photo of ", 1.0), ("x", 1.1)]


@pytest.mark.parametrize("syntax", BOTH)
def test_empty_segments_are_dropped(syntax):
    assert parse_weighted("", syntax) == []
    assert parse_weighted("a () b", syntax) == [("a  b", 1.0)]
    assert parse_weighted("a (:2) b", syntax) == [("a  b", 1.0)]
    assert parse_weighted("(:1.2)", syntax) == []
    assert parse_weighted("((x:2)())", syntax) == [("x", 2 * (1.1 if syntax == "a1111" else 1.0))]


def test_empty_brackets_are_dropped_in_a1111():
    assert parse_weighted("a [] b", "a1111") == [("a  b", 1.0)]


@pytest.mark.parametrize("syntax", BOTH)
def test_adjacent_equal_weights_merge(syntax):
    assert parse_weighted("(a)(b)", syntax) == [("ab", 1.1)]
    assert parse_weighted("(a:1.2)(b:1.2)", syntax) == [("ab", 1.2)]
    assert parse_weighted("(a:1.2) (b:1.2)", syntax) == [("a", 1.2), (" ", 1.0), ("b", 1.2)]
    assert parse_weighted("(a)(b:1.1)", syntax) == [("ab", 1.1)]


@pytest.mark.parametrize("syntax", BOTH)
def test_magic_me_prompt(syntax):
    text = "a photo of embedding:altman man, perfect anatomy, (in castle:1.2)."
    assert parse_weighted(text, syntax) == [
        ("a photo of embedding:altman man, perfect anatomy, ", 1.0), ("in castle", 1.2), (".", 1.0)]


@pytest.mark.parametrize("syntax", BOTH)
def test_quality_tags(syntax):
    assert parse_weighted("(masterpiece:1.2), (best quality), ((detailed))", syntax) == [
        ("masterpiece", 1.2), (", ", 1.0), ("best quality", 1.1), (", ", 1.0), ("detailed", 1.1 * 1.1)]


@pytest.mark.parametrize("syntax", BOTH)
def test_mixed_nesting(syntax):
    """a1111: the inner weight multiplies the outer one (b at 1.5 * 0.5); comfy: it replaces it (b at 1.5)."""
    b = 1.5 * 0.5 if syntax == "a1111" else 1.5
    assert parse_weighted("(a (b:1.5) c:0.5)", syntax) == [("a ", 0.5), ("b", b), (" c", 0.5)]
