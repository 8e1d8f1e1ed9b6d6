"""Reading YAML that other people wrote (``.raw`` sidecars, camera configs, calibrations, ``_locs.yaml``).

PyYAML's ``SafeLoader`` builds no objects but still lets a few hundred bytes of aliases (``&a [*a, *a, ...]``,
"billion laughs") describe a document of billions of nodes, which hangs whatever walks or dumps it (the sidecar's
keys are copied into ``_locs.yaml``). These loaders refuse a document whose fully expanded size is above
:data:`MAX_NODES`, and a file above :data:`MAX_BYTES`, before anything is built.
"""

from __future__ import annotations

import os

import yaml

#: the largest document (scalars, sequences and mappings after alias expansion) we load
MAX_NODES = 1_000_000
#: the largest YAML file we read (Picasso's files are kilobytes)
MAX_BYTES = 64 << 20


class YamlBombError(yaml.YAMLError):
    """A YAML document too large when its aliases are expanded."""


def _expanded_size(node, memo) -> int:
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # a recursive alias counts once (SafeLoader builds it as a self-reference)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, memo) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = size
    return size


def _limited(base):
    class Loader(base):
        def construct_document(self, node):
            size = _expanded_size(node, {})
            if size > MAX_NODES:
                raise YamlBombError(f"the document expands to {size:,} nodes through its aliases (more than "
                                    f"{MAX_NODES:,}); refusing it (an alias bomb?)")
            return super().construct_document(node)

    Loader.__name__ = "Limited" + base.__name__
    return Loader


#: SafeLoader with the expansion limit
LimitedSafeLoader = _limited(yaml.SafeLoader)


def limited(loader_class):
    """``loader_class`` (a SafeLoader subclass) with the expansion limit."""
    return _limited(loader_class)


def _text(source) -> str:
    if hasattr(source, "read"):
        text = source.read(MAX_BYTES + 1)
    else:
        size = os.path.getsize(source)
        if size > MAX_BYTES:
            raise YamlBombError(f"{size:,} bytes is too large for a metadata YAML file (limit {MAX_BYTES:,})")
        with open(source, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    if len(text) > MAX_BYTES:
        raise YamlBombError(f"too large for a metadata YAML file (limit {MAX_BYTES:,} bytes)")
    return text


def load(source, loader=LimitedSafeLoader):
    """The first document of ``source`` (a path or an open text file)."""
    return yaml.load(_text(source), Loader=loader)


def load_all(source, loader=LimitedSafeLoader) -> list:
    """All documents of ``source`` (a path or an open text file), as a list."""
    return list(yaml.load_all(_text(source), Loader=loader))
