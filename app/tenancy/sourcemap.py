"""Where a manifest field sits in its YAML file, so validation errors can name the line."""

from __future__ import annotations

from collections.abc import Sequence

import yaml


class YamlSourceMap:
    """Line numbers (1-based) of the nodes of one YAML document, by JSON path."""

    def __init__(self, root: yaml.Node | None) -> None:
        self._root = root

    @classmethod
    def parse(cls, text: str) -> YamlSourceMap:
        """Compose (without constructing) the document to keep every node's position.

        Raises:
            yaml.YAMLError: The text is not valid YAML.
        """
        return cls(yaml.compose(text, Loader=yaml.SafeLoader))

    def line(self, path: Sequence[str | int]) -> int | None:
        """The line of the deepest node on `path` that exists (the field, or its parent).

        A missing field (a `required` error) is reported at its parent mapping's line.
        """
        node = self._root
        if node is None:
            return None
        found: int = node.start_mark.line + 1
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            key_node, node = child
            found = key_node.start_mark.line + 1
        return found


def _child(node: yaml.Node, part: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
        item: yaml.Node = node.value[part]
        return item, item
    return None
