"""YAML for untrusted text: the safe loader without anchors/aliases (no "billion laughs": nothing can expand) and
without duplicate keys (a second value for a key is refused, not silently kept). Errors quote at most a short
excerpt and carry the line (``problem_mark``) like every PyYAML error."""
from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

EXCERPT = 60


def excerpt(value: Any, n: int = EXCERPT) -> str:
    """repr(value) cut to at most n characters (an error message never quotes a large value)."""
    if isinstance(value, (str, bytes)) and len(value) > n:
        value = value[:n]
    r = repr(value) if not isinstance(value, (list, dict, tuple)) else f"<{type(value).__name__}>"
    return r if len(r) <= n else r[: n - 3] + "..."


class StrictSafeLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        ev = self.peek_event()
        if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
            raise ComposerError(None, None, "YAML anchors and aliases (&name / *name) are not accepted",
                                ev.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    dup = key in seen
                except TypeError:
                    raise ConstructorError(None, None, "a mapping key must be a plain value",
                                           key_node.start_mark) from None
                if dup:
                    raise ConstructorError(None, None, f"duplicate key {excerpt(key)}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def load(text: str) -> Any:
    """yaml.safe_load, minus anchors/aliases and duplicate keys."""
    return yaml.load(text, Loader=StrictSafeLoader)  # noqa: S506 (a SafeLoader subclass)
