"""Prompt syntax for identities, import-light (checked before anything heavy is imported).

Prompts name an identity as `embedding:altman` (ComfyUI syntax, as in the original README) or `<altman>`; both
become the token `<altman>`, which diffusers expands to `<altman> <altman>_1 … <altman>_{N-1}`. Templates
(training captions, validation prompts, the evaluation protocol) use one placeholder, `{id}`, for "the identity and
its class word".
"""

import re

_NAME = r"[A-Za-z0-9_\-]+"
# `embedding:NAME` with an optional file suffix, as ComfyUI accepts; `<NAME>` as diffusers' placeholder tokens.
_COMFY_RE = re.compile(rf"embedding:({_NAME})(?:\.(?:pt|safetensors|bin))?")
_ANGLE_RE = re.compile(rf"<({_NAME})>")
_REFERENCE_RE = re.compile(f"{_COMFY_RE.pattern}|{_ANGLE_RE.pattern}")
# what a user meant as an identity reference: `embedding:` and everything up to a space, comma, colon or bracket
_COMFY_CANDIDATE_RE = re.compile(r"embedding:([^\s,:()\[\]]*)")
_COMFY_EXACT_RE = re.compile(rf"{_NAME}(?:\.(?:pt|safetensors|bin))?")
ID_PLACEHOLDER = "{id}"


def referenced_names(prompt: str) -> list[str]:
    """Names of the identities a prompt uses, in order of first appearance."""
    names = [m.group(1) for m in _COMFY_RE.finditer(prompt)] + [m.group(1) for m in _ANGLE_RE.finditer(prompt)]
    return list(dict.fromkeys(names))


def malformed_references(prompt: str) -> list[str]:
    """`embedding:` references that are not a valid name (`embedding:ann.jpg`, `embedding:`, `embedding:än`):
    they would otherwise reach CLIP as plain text and the identity would silently be missing."""
    bad = []
    for match in _COMFY_CANDIDATE_RE.finditer(prompt):
        name = match.group(1).rstrip(".;:!?")
        if not _COMFY_EXACT_RE.fullmatch(name):
            bad.append(match.group(0))
    return bad


def token_for(name: str) -> str:
    """The placeholder token of an identity; lower case because CLIP's tokenizer lower-cases prompts first."""
    return f"<{name.lower()}>"


def to_pipeline_prompt(prompt: str) -> str:
    """Rewrite `embedding:NAME` and `<NAME>` as the placeholder token the loaded embedding is registered under."""
    return _ANGLE_RE.sub(lambda m: token_for(m.group(1)), _COMFY_RE.sub(lambda m: token_for(m.group(1)), prompt))


def split_references(text: str) -> list[tuple[str, bool]]:
    """`text` as pieces in order, (the identity's placeholder token, True) for each reference and (text, False)
    between them; empty text pieces are dropped. The prompt encoder keeps an identity's vectors together."""
    pieces, start = [], 0
    for match in _REFERENCE_RE.finditer(text):
        pieces += [(text[start:match.start()], False), (token_for(match.group(1) or match.group(2)), True)]
        start = match.end()
    pieces.append((text[start:], False))
    return [(piece, identity) for piece, identity in pieces if piece]


def strip_id_tokens(prompt: str) -> str:
    """Remove identity references, keeping the class word: `a photo of embedding:altman man` → `a photo of man`.

    CLIP-T scores text alignment against this prompt, since a CLIP model has never seen the ID tokens.
    """
    stripped = _ANGLE_RE.sub("", _COMFY_RE.sub("", prompt))
    return re.sub(r"\s+", " ", stripped).strip()


def fill_identity(template: str, identity: str) -> str:
    """`a photo of {id} walking` + `embedding:ann woman` → `a photo of embedding:ann woman walking`."""
    return template.replace(ID_PLACEHOLDER, identity)


def slug(prompt: str, limit: int = 40) -> str:
    """File-name-safe words of a prompt: `a photo of embedding:ann woman, smiling` → `a-photo-of-ann-woman-smiling`."""
    words = re.findall(r"[a-z0-9]+", prompt.lower().replace("embedding:", ""))
    return "-".join(words)[:limit].strip("-") or "prompt"


# Prompt travel (magicme/travel.py): a prompt may be {frame: text}.
Prompt = str | dict[int, str]


def keyframes(prompt: Prompt) -> dict[int, str]:
    """{frame: text}, sorted; a plain prompt is the keyframe 0."""
    if isinstance(prompt, str):
        return {0: prompt}
    return dict(sorted((int(k), v) for k, v in prompt.items()))


def travels(prompt: Prompt) -> bool:
    return len(keyframes(prompt)) > 1


def frame_mix(keys: list[int], frames: int) -> list[tuple[int, int, float]]:
    """Per frame: (index of the keyframe before, index of the keyframe after, weight of the one after)."""
    mix = []
    for frame in range(frames):
        after = next((i for i, key in enumerate(keys) if key >= frame), len(keys) - 1)
        before = max(0, after - 1) if keys[after] > frame else after
        span = keys[after] - keys[before]
        mix.append((before, after, 0.0 if span == 0 or frame <= keys[before] else (frame - keys[before]) / span))
    return mix


def text_at(prompt: Prompt, frame: int) -> str:
    """The prompt text in force at `frame`: its latest keyframe at or before it (the first keyframe before that).
    Evaluation scores a travelling prompt's frames against these texts."""
    keyed = keyframes(prompt)
    return keyed[max((k for k in keyed if k <= frame), default=min(keyed))]
