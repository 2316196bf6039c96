"""The writer's tree code against the independent verifier, and against RFC 6962 test vectors."""

import pytest

from audit import tree
from audit.hashes import leaf_hash
from audit.verifier import VerificationError, root_of, verify_consistency, verify_inclusion

# The eight leaves and roots used by Certificate Transparency's reference tests.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def _store(entries):
    nodes = {}
    frontier = tree.Frontier(0, {})
    roots = []
    for e in entries:
        for level, idx, h in frontier.append([e]):
            nodes[(level, idx)] = h
        roots.append(frontier.root())
    return nodes, roots


def test_tree_matches_rfc6962_vectors():
    nodes, roots = _store(CT_LEAVES)
    assert [r.hex() for r in roots] == CT_ROOTS
    get = lambda lv, i: nodes[(lv, i)]  # noqa: E731
    assert [tree.root(n, get).hex() for n in range(1, 9)] == CT_ROOTS
    for n in range(1, 9):
        assert root_of(leaf_hash(e) for e in CT_LEAVES[:n]).hex() == CT_ROOTS[n - 1]


def test_tree_frontier_resumes_from_stored_nodes():
    entries = [f"e{i}".encode() for i in range(37)]
    nodes, roots = _store(entries)
    resumed = tree.Frontier(20, {c: nodes[c] for c in tree.Frontier.coords(20)})
    created = resumed.append(entries[20:])
    assert resumed.root() == roots[-1]
    assert {(lv, i) for lv, i, _ in created} <= set(nodes)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 31, 32, 33, 64, 70])
def test_tree_inclusion_proofs_verify_independently(size):
    entries = [f"entry-{i}".encode() for i in range(size)]
    nodes, roots = _store(entries)
    get = lambda lv, i: nodes[(lv, i)]  # noqa: E731
    for index in range(size):
        proof = tree.inclusion_proof(index, size, get)
        verify_inclusion(leaf_hash(entries[index]), index, size, proof, roots[size - 1])
        assert tree.needed_nodes(lambda g, i=index: tree.inclusion_proof(i, size, g)) <= set(nodes)
    with pytest.raises(VerificationError):
        verify_inclusion(leaf_hash(b"forged"), 0, size, tree.inclusion_proof(0, size, get), roots[size - 1])


def test_tree_consistency_proofs_verify_independently():
    entries = [f"c{i}".encode() for i in range(40)]
    nodes, roots = _store(entries)
    get = lambda lv, i: nodes[(lv, i)]  # noqa: E731
    for second in range(1, 41):
        for first in range(1, second + 1):
            proof = tree.consistency_proof(first, second, get)
            verify_consistency(first, second, roots[first - 1], roots[second - 1], proof)
    _, other_roots = _store([b"x", *entries[1:]])
    with pytest.raises(VerificationError):
        verify_consistency(5, 9, roots[4], other_roots[8], tree.consistency_proof(5, 9, get))
    with pytest.raises(VerificationError):
        verify_consistency(7, 7, roots[6], other_roots[6], [])
