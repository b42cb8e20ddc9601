"""The one YAML loader of config and sweep files (and ``--set`` values): bounded and unsurprising.

PyYAML's ``safe_load`` shares aliased nodes, so a 9-level anchor chain loads in
microseconds and only explodes later (validation walks it, errors quote it). Here the
composed graph is measured before anything is built: at most ``MAX_ALIASES`` aliases,
``MAX_NODES`` nodes once expanded and ``MAX_BYTES`` of text. Duplicate keys (the last one
silently won) and YAML 1.1 surprises (``yes``/``no``/``on``/``off`` as booleans, ``1:30`` as
90, ``010`` as 8) are refused. ``short`` truncates any value quoted in an error.
"""

from __future__ import annotations

import re

import yaml

MAX_BYTES = 1 << 20  # config and sweep files are a few KB
MAX_ALIASES = 100
MAX_NODES = 100_000  # expanded: every alias counted as a copy of what it names
SHORT = 80


class YAMLLimitError(yaml.YAMLError):
    """Too big, too many aliases, a duplicate key or an ambiguous scalar; one line."""

    def __init__(self, problem: str, mark=None):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


def clip(text: str, limit: int = SHORT) -> str:
    """``text`` cut to ``limit`` characters (with ``...``): huge values stay one short line."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(value, limit: int = SHORT) -> str:
    """``repr(value)``, clipped."""
    return clip(repr(value), limit)


_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?$")
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")


class _Loader(yaml.SafeLoader):
    aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise YAMLLimitError(f"more than {MAX_ALIASES} aliases (*name): refused", mark)
        return super().compose_node(parent, index)

    def construct_yaml_bool(self, node):
        if node.value.lower() not in ("true", "false"):
            raise YAMLLimitError(
                f"{node.value!r} is ambiguous: write true or false (or quote it for a string)",
                node.start_mark,
            )
        return super().construct_yaml_bool(node)

    def _number(self, node, build):
        if len(node.value) > 64:  # Python refuses int() of > 4300 digits; no config needs 64
            raise YAMLLimitError(
                f"{short(node.value)}: a number of {len(node.value)} characters", node.start_mark
            )
        if _SEXAGESIMAL.match(node.value) or _LEADING_ZERO.match(node.value):
            raise YAMLLimitError(
                f"{short(node.value)} reads as a base-60 or octal number in YAML 1.1: quote it or "
                "write it plainly",
                node.start_mark,
            )
        return build(self, node)

    def construct_yaml_int(self, node):
        return self._number(node, yaml.SafeLoader.construct_yaml_int)

    def construct_yaml_float(self, node):
        return self._number(node, yaml.SafeLoader.construct_yaml_float)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            if key_node.value in seen:
                raise YAMLLimitError(f"duplicate key {short(key_node.value)}", key_node.start_mark)
            seen.add(key_node.value)
        return super().construct_mapping(node, deep)


for _tag, _fn in (
    ("tag:yaml.org,2002:bool", _Loader.construct_yaml_bool),
    ("tag:yaml.org,2002:int", _Loader.construct_yaml_int),
    ("tag:yaml.org,2002:float", _Loader.construct_yaml_float),
    ("tag:yaml.org,2002:map", _Loader.construct_yaml_map),
):
    _Loader.add_constructor(_tag, _fn)


def _expanded_size(node, memo: dict) -> int:
    """Nodes of the tree the graph stands for (aliases expanded), memoised: linear time."""
    key = id(node)
    if key not in memo:
        memo[key] = MAX_NODES + 1  # a recursive alias counts as too big
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(_expanded_size(n, memo) for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
        else:
            size = 1
        memo[key] = min(size, MAX_NODES + 1)
    return memo[key]


def load(text: str):
    """``yaml.safe_load`` within the bounds above; raises ``yaml.YAMLError`` (one line)."""
    if len(text) > MAX_BYTES:
        raise YAMLLimitError(f"{len(text)} characters: more than the {MAX_BYTES} a config may hold")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise YAMLLimitError(f"expands to more than {MAX_NODES} values (an alias bomb?): refused")
        return loader.construct_document(node)
    finally:
        loader.dispose()
