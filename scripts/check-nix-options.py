#!/usr/bin/env python3
"""Checks every NixOS option path that flake.nix and nix/ set against nix/nixos-options.txt.

Nix cannot evaluate the flake here (no nixpkgs), so a misspelt or removed option (such as
`services.nats.host`, which the nixos-25.11 nats module does not declare) would only show on
a machine with nixpkgs. This script finds, without evaluating anything, the attribute sets
that are NixOS module configurations and the option paths they set, and requires each path to
be one that nix/nixos-options.txt lists (options read from the nixpkgs source, see there).

How: `nix-instantiate --parse FILE` prints the file's syntax tree in one canonical form (every
`a.b.c = v` nested as `a = { b = { c = v; }; }`, every string in double quotes). In that text,
an attribute set literal is taken as a module configuration when every one of its keys is a
top-level NixOS name (ROOTS, or imports/options/config/meta) and at least one is in ROOTS;
each path it sets under ROOTS (down to a value that is not an attribute set literal) is then
checked. Not reached: sets built by functions at evaluation time (the chat-zinx module's units
are built by `service name node`), checked by hand (nix/README.md); `services.chat-zinx` is
this repository's own module (checks.<system>.module and tests/nix_module_keys.rs).

A path P is accepted when a listed option O is P or extends P (P is a namespace such as
`services.nats`), or when a listed option O with no listed sub-options is a prefix of P (a
freeform value such as `services.nats.settings.cluster`). `<name>` in a listed option matches
any one attribute name.

Usage: check-nix-options.py OPTIONS_FILE NIX_FILE...
"""

import re
import subprocess
import sys

ROOTS = {
    "assertions",
    "boot",
    "environment",
    "fileSystems",
    "networking",
    "nixpkgs",
    "services",
    "system",
    "systemd",
    "users",
    "virtualisation",
    "warnings",
}
MODULE_KEYS = ROOTS | {"imports", "options", "config", "meta", "disabledModules"}
# Paths under these are not nixpkgs options: this repository's module.
OWN = [("services", "chat-zinx")]

TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<punct>[{}()\[\];=:,@?])
  | (?P<word>[^\s{}()\[\];=:,@?"]+)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokens(text):
    out = []
    pos = 0
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if not m:
            raise SyntaxError(f"cannot tokenise at {text[pos:pos + 40]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append(m.group())
    return out


def matching(toks, i):
    """Index of the bracket closing the one at toks[i]."""
    pairs = {"{": "}", "(": ")", "[": "]"}
    stack = []
    for j in range(i, len(toks)):
        t = toks[j]
        if t in pairs:
            stack.append(pairs[t])
        elif t in ("}", ")", "]"):
            if not stack or stack.pop() != t:
                raise SyntaxError(f"unbalanced {t!r}")
            if not stack:
                return j
    raise SyntaxError("unclosed bracket")


def key_name(tok):
    if tok.startswith('"'):
        inner = tok[1:-1]
        # A dynamic key ("${unit}") names any attribute.
        return "<dynamic>" if "${" in inner else inner.replace('\\"', '"')
    return tok


def is_key(tok):
    return tok.startswith('"') or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_'-]*", tok) is not None


def attrset_bindings(toks, i):
    """The bindings of the attribute set literal opening at toks[i], or None when the brace
    opens a function's argument pattern. Each binding: (key, start, end) with the value at
    toks[start:end]."""
    end = matching(toks, i)
    if end + 1 < len(toks) and toks[end + 1] in (":", "@"):
        return None  # `{ a, b, ... }:` or `{ ... }@args`
    bindings = []
    j = i + 1
    while j < end:
        if toks[j] == "inherit":
            while toks[j] != ";":
                j += 1
            j += 1
            continue
        if not is_key(toks[j]) or toks[j + 1] != "=":
            return None
        start = j + 2
        k = start
        while toks[k] != ";":
            if toks[k] in ("{", "(", "["):
                k = matching(toks, k)
            k += 1
        bindings.append((key_name(toks[j]), start, k))
        j = k + 1
    return bindings


def leaf_paths(toks, bindings, prefix):
    for key, start, end in bindings:
        path = prefix + (key,)
        nested = None
        if toks[start] == "{" and matching(toks, start) == end - 1:
            nested = attrset_bindings(toks, start)
        if nested:
            yield from leaf_paths(toks, nested, path)
        else:
            yield path


def is_string(toks, start):
    """Whether the value at toks[start] is a string (or a concatenation of strings)."""
    while toks[start] == "(":
        start += 1
    return toks[start].startswith('"')


def module_paths(toks):
    """Every option path set by a module configuration in the token list."""
    i = 0
    while i < len(toks):
        t = toks[i]
        # A flake's `inputs = { nixpkgs = { url = ...; }; }` is not a module.
        if t == "inputs" and toks[i + 1 : i + 3] == ["=", "{"]:
            i = matching(toks, i + 2) + 1
            continue
        i += 1
        if t != "{":
            continue
        bindings = attrset_bindings(toks, i - 1)
        if not bindings:
            continue
        keys = {k for k, _, _ in bindings}
        roots = [b for b in bindings if b[0] in ROOTS]
        # Every root of a module is a namespace or a list: a root key bound to a string
        # (`{ systemd = "reason"; }`) is some other attribute set.
        if not keys <= MODULE_KEYS or not roots or any(is_string(toks, s) for _, s, _ in roots):
            continue
        for path in leaf_paths(toks, roots, ()):
            if not any(path[: len(own)] == own for own in OWN):
                yield path
        i = matching(toks, i - 1) + 1


def seg_match(pattern, name):
    return pattern == "<name>" or pattern == name


def accepted(path, options, leaves):
    for opt in options:
        n = len(path)
        if len(opt) >= n and all(seg_match(o, p) for o, p in zip(opt[:n], path)):
            return True
    for opt in leaves:
        if len(opt) <= len(path) and all(seg_match(o, p) for o, p in zip(opt, path)):
            return True
    return False


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    options = []
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line:
                options.append(tuple(line.split(".")))
    leaves = [
        o
        for o in options
        if not any(len(p) > len(o) and p[: len(o)] == o for p in options)
    ]
    bad = []
    checked = 0
    for nix_file in sys.argv[2:]:
        parsed = subprocess.run(
            ["nix-instantiate", "--parse", nix_file],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        toks = tokens(parsed)
        for path in module_paths(toks):
            checked += 1
            if not accepted(path, options, leaves):
                bad.append(f"{nix_file}: {'.'.join(path)}")
    if bad:
        print("check-nix-options: these options are not declared by nixos-25.11 (as listed in "
              f"{sys.argv[1]}):", file=sys.stderr)
        for b in sorted(set(bad)):
            print(f"  {b}", file=sys.stderr)
        print("Check each against the nixpkgs source of nixos-25.11: a misspelt or removed "
              "option fails evaluation there. Fix the Nix file, or, for an option that does "
              f"exist, add it to {sys.argv[1]} with the file you read it in.", file=sys.stderr)
        sys.exit(1)
    print(f"check-nix-options: {checked} option paths in {len(sys.argv) - 2} files are "
          "declared nixos-25.11 options")


if __name__ == "__main__":
    main()
