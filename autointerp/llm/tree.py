"""A batch of prompts as one token tree, forwarded in packs (the local engine's tree mode).

After the batch's common prefix (whose key/values are computed once), the prompts' remaining tokens
form a tree: prompts that start alike share nodes (the exact simulator's chunk listings mostly start
with the same few lines, so a unit's ~5,200 listing tokens are ~3,000 nodes). Every node is forwarded
once: the nodes go into packs of at most `size`, each pack one row of a forward pass in which a node
sees the common prefix and its own ancestors only (`ancestors`, a 4D attention mask), at its position
in its own prompt (`positions`). A pack is closed under ancestors: a pack that starts inside a subtree
begins with that subtree's path from the root, forwarded again there (a few tokens per pack).
A token after a prompt's last read position is not part of the tree: nothing reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Tree:
    """Nodes in order of creation: token id, parent (-1: a child of the common prefix), depth (1: the
    first token after the prefix) and the row that created it (its forward tokens are counted there)."""

    token: list[int] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    reads: list[list[int]] = field(default_factory=list)  # per row: the node of each read position

    def __len__(self) -> int:
        return len(self.token)


def build(rows: list[list[int]], reads: list[list[int]]) -> Tree:
    """The tree of `rows` (token ids after the common prefix); `reads[r]`: indices into `rows[r]`
    whose logits are wanted. A row is cut after its last read."""
    tree, child = Tree(), {}
    for r, (ids, want) in enumerate(zip(rows, reads, strict=True)):
        nodes, parent = [], -1
        for tok in ids[: max(want, default=-1) + 1]:
            key = (parent, tok)
            node = child.get(key)
            if node is None:
                node = child[key] = len(tree)
                tree.token.append(tok)
                tree.parent.append(parent)
                tree.depth.append(tree.depth[parent] + 1 if parent >= 0 else 1)
                tree.owner.append(r)
            nodes.append(node)
            parent = node
        tree.reads.append([nodes[i] for i in want])
    return tree


def preorder(tree: Tree) -> list[int]:
    """Nodes in depth-first order (a parent before its children, a subtree contiguous)."""
    children: list[list[int]] = [[] for _ in range(len(tree))]
    roots = []
    for v, p in enumerate(tree.parent):
        (children[p] if p >= 0 else roots).append(v)
    order, stack = [], roots[::-1]
    while stack:
        v = stack.pop()
        order.append(v)
        stack.extend(children[v][::-1])
    return order


def packs(tree: Tree, size: int) -> tuple[list[list[int]], dict[int, int]]:
    """The nodes in packs of at most `size` (at least the deepest path + 1), each closed under
    ancestors; and each node's home pack (where it is forwarded for its own reads)."""
    size = max(size, max(tree.depth, default=0) + 1)
    out: list[list[int]] = []
    home: dict[int, int] = {}
    for v in preorder(tree):
        if not out or len(out[-1]) >= size:
            chain, p = [], tree.parent[v]
            while p >= 0:  # a new pack starts with v's path from the root (forwarded again there)
                chain.append(p)
                p = tree.parent[p]
            out.append(chain[::-1])
        home[v] = len(out) - 1
        out[-1].append(v)
    return out, home


def ancestors(tree: Tree, pack: list[int], width: int) -> np.ndarray:
    """[width, width] booleans: pack node j sees pack node k iff k is j or one of its ancestors
    (padding past the pack sees only itself)."""
    local = {v: j for j, v in enumerate(pack)}
    seen = np.zeros((width, width), dtype=bool)
    for j, v in enumerate(pack):
        p = tree.parent[v]
        if p >= 0:
            seen[j] = seen[local[p]]
        seen[j, j] = True
    for j in range(len(pack), width):
        seen[j, j] = True
    return seen


def positions(tree: Tree, pack: list[int], start: int, width: int) -> list[int]:
    """Each pack node's position in its own prompt (`start`: the common prefix's length)."""
    pos = [start + tree.depth[v] - 1 for v in pack]
    return pos + [start] * (width - len(pack))
